//! Whether a live object is Ready, by the rules of kstatus (the library
//! behind `kubectl wait`, Flux and Argo CD health) that a row's waves wait
//! for: the controller has seen the current generation; a Deployment,
//! StatefulSet or DaemonSet has every replica updated and available; a Job
//! is complete; an object with a `Ready` condition has it True; anything
//! else is Ready once it exists. Pure: the object comes from the watch cache.

use serde_json::Value as Json;

/// Whether `object` (a live object, status included) of kind `kind` in API
/// group `group` (`""` for the core group) is Ready. The kind is given, not
/// read from the object: objects of a list carry no `kind`.
pub fn ready(group: &str, kind: &str, object: &Json) -> bool {
    let status = &object["status"];
    if !generation_observed(object, status) {
        return false;
    }
    match (group, kind) {
        ("apps", "Deployment") => {
            let want = replicas(object);
            status["observedGeneration"].is_i64()
                && count(status, "updatedReplicas") == want
                && count(status, "availableReplicas") == want
                // No replica of an older revision left.
                && count(status, "replicas") == want
        }
        ("apps", "StatefulSet") => {
            let want = replicas(object);
            status["observedGeneration"].is_i64()
                && count(status, "updatedReplicas") == want
                && count(status, "availableReplicas").max(count(status, "readyReplicas")) == want
        }
        ("apps", "DaemonSet") => {
            let want = count(status, "desiredNumberScheduled");
            status["observedGeneration"].is_i64()
                && count(status, "updatedNumberScheduled") == want
                && count(status, "numberAvailable") == want
        }
        ("batch", "Job") => condition_true(status, "Complete"),
        _ => match condition(status, "Ready") {
            Some(ready) => ready == "True",
            None => true,
        },
    }
}

/// A controller that reports `observedGeneration` has seen `generation`.
fn generation_observed(object: &Json, status: &Json) -> bool {
    match (object["metadata"]["generation"].as_i64(), status["observedGeneration"].as_i64()) {
        (Some(generation), Some(observed)) => observed >= generation,
        _ => true,
    }
}

/// `spec.replicas`, 1 when unset (the API server's default).
fn replicas(object: &Json) -> i64 {
    object["spec"]["replicas"].as_i64().unwrap_or(1)
}

/// A replica count in the status; an absent count is 0.
fn count(status: &Json, field: &str) -> i64 {
    status[field].as_i64().unwrap_or(0)
}

fn condition<'a>(status: &'a Json, type_: &str) -> Option<&'a str> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?["status"].as_str()
}

fn condition_true(status: &Json, type_: &str) -> bool {
    condition(status, type_) == Some("True")
}

#[cfg(test)]
mod tests {
    use super::ready;
    use serde_json::json;

    fn deployment(generation: i64, status: serde_json::Value) -> serde_json::Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "generation": generation},
               "spec": {"replicas": 2}, "status": status})
    }

    #[test]
    fn a_deployment_is_ready_once_its_generation_is_rolled_out_and_available() {
        let rolled = json!({"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2,
                            "availableReplicas": 2});
        assert!(ready("apps", "Deployment", &deployment(3, rolled.clone())));
        assert!(
            !ready("apps", "Deployment", &deployment(4, rolled)),
            "a new generation not yet observed"
        );
        let rolling = json!({"observedGeneration": 3, "replicas": 3, "updatedReplicas": 2,
                             "availableReplicas": 2});
        assert!(
            !ready("apps", "Deployment", &deployment(3, rolling)),
            "an old replica still there"
        );
        assert!(!ready("apps", "Deployment", &deployment(1, json!({}))), "no status yet");
        // A Deployment read from a list carries no kind: the kind given decides.
        let mut listed = deployment(1, json!({"observedGeneration": 1, "replicas": 1}));
        listed.as_object_mut().unwrap().remove("kind");
        assert!(!ready("apps", "Deployment", &listed));
    }

    #[test]
    fn a_job_is_ready_when_complete_and_other_kinds_by_their_ready_condition_or_existence() {
        let job = |conditions| json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": conditions}});
        assert!(ready("batch", "Job", &job(json!([{"type": "Complete", "status": "True"}]))));
        assert!(!ready("batch", "Job", &job(json!([{"type": "Failed", "status": "True"}]))));
        assert!(!ready("batch", "Job", &job(json!([]))));
        let custom = |status: &str| {
            json!({"apiVersion": "example.com/v1", "kind": "Database",
            "status": {"conditions": [{"type": "Ready", "status": status}]}})
        };
        assert!(ready("example.com", "Database", &custom("True")));
        assert!(!ready("example.com", "Database", &custom("False")));
        assert!(ready("", "ConfigMap", &json!({"data": {}})));
        let statefulset = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"generation": 1}, "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "updatedReplicas": 1, "readyReplicas": 1}});
        assert!(ready("apps", "StatefulSet", &statefulset));
    }
}
