//! Whether a live object already holds what a DBQR renders, so a steady state
//! sends nothing: also for objects that existed before the operator started,
//! and for values the API server stores in another form (`cpu: 1000m` comes
//! back as `1`, `stringData` as `data`, empty maps vanish).
//!
//! Every apply is stamped with a hash of the manifest it sends
//! ([`APPLIED_HASH`]). An object is in place when it holds every rendered field
//! exactly (whoever wrote it), or when it carries the hash of what the DBQR
//! renders now and the operator's field manager still owns every rendered
//! field. Server-side apply moves a field's ownership to whoever changes its
//! value, so lost ownership is exactly "someone else changed it": drift.

use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::kube_api::CachedObject;

/// Annotation holding the hash of the manifest the operator last applied.
pub const APPLIED_HASH: &str = "dbqo.dev/applied-hash";

/// Stamps `manifest` with the hash of its own content. The hash is taken with
/// the stamp present but empty, so stamping again gives the same stamp.
pub fn stamp(manifest: &mut Json) {
    let metadata = &mut manifest["metadata"];
    if !metadata["annotations"].is_object() {
        metadata["annotations"] = Json::Object(Map::new());
    }
    metadata["annotations"][APPLIED_HASH] = Json::String(String::new());
    let digest = Sha256::digest(manifest.to_string().as_bytes());
    let hash: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    manifest["metadata"]["annotations"][APPLIED_HASH] = Json::String(hash);
}

/// Whether `live` holds `desired` (a stamped manifest): see the module docs.
pub fn in_place(live: &CachedObject, desired: &Json) -> bool {
    if live.live.deleting {
        return false;
    }
    if covers(&live.manifest, desired) {
        return true;
    }
    let stamp = |o: &Json| o["metadata"]["annotations"][APPLIED_HASH].as_str().map(str::to_owned);
    stamp(desired).is_some()
        && stamp(desired) == stamp(&live.manifest)
        && live.owned_fields.as_ref().is_some_and(|fields| owns(fields, desired))
}

/// Whether `live` holds every field of `desired` with the same value: what a
/// server-side apply of `desired` would leave unchanged. Fields others added
/// (status, defaults, other managers' fields) do not matter. `apiVersion` and
/// `kind` are identity, not content (list items of built-in kinds lack them).
pub fn covers(live: &Json, desired: &Json) -> bool {
    match (live, desired) {
        (Json::Object(l), Json::Object(d)) => d
            .iter()
            .filter(|(k, _)| *k != "apiVersion" && *k != "kind")
            .all(|(k, v)| l.get(k).is_some_and(|lv| covers_value(lv, v))),
        _ => live == desired,
    }
}

fn covers_value(live: &Json, desired: &Json) -> bool {
    match (live, desired) {
        (Json::Object(l), Json::Object(d)) => {
            d.iter().all(|(k, v)| l.get(k).is_some_and(|lv| covers_value(lv, v)))
        }
        (Json::Array(l), Json::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| covers_value(lv, dv))
        }
        (Json::Number(l), Json::Number(d)) => l == d || l.as_f64() == d.as_f64(),
        _ => live == desired,
    }
}

/// Whether the managed-fields set `fields` (the operator's `fieldsV1`) owns
/// every field `desired` sets.
pub fn owns(fields: &Json, desired: &Json) -> bool {
    let Json::Object(desired) = desired else {
        return true;
    };
    desired.iter().all(|(key, value)| match key.as_str() {
        // Identity: never listed in managed fields.
        "apiVersion" | "kind" => true,
        "metadata" => {
            let Json::Object(metadata) = value else {
                return true;
            };
            let rest: Map<String, Json> = metadata
                .iter()
                .filter(|(k, _)| *k != "name" && *k != "namespace")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            owns_map(fields.get("f:metadata"), &rest)
        }
        // The API server turns a Secret's stringData into data on write.
        "stringData" => owns_map(
            fields.get("f:stringData").or(fields.get("f:data")),
            value.as_object().unwrap_or(&Map::new()),
        ),
        _ => owns_value(fields.get(format!("f:{key}")), value),
    })
}

fn owns_map(fields: Option<&Json>, desired: &Map<String, Json>) -> bool {
    if desired.values().all(dropped) {
        return true;
    }
    let Some(fields) = fields else {
        return false;
    };
    // A field without members is owned as a whole (an atomic map such as a
    // Deployment's selector, or a list element recorded by its key alone).
    if fields.as_object().is_some_and(|m| m.is_empty()) {
        return true;
    }
    desired.iter().all(|(k, v)| owns_value(fields.get(format!("f:{k}")), v))
}

/// Values the API server drops rather than stores: nothing to own.
fn dropped(value: &Json) -> bool {
    match value {
        Json::Null => true,
        Json::Object(m) => m.values().all(dropped),
        Json::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn owns_value(fields: Option<&Json>, desired: &Json) -> bool {
    if dropped(desired) {
        return true;
    }
    let Some(fields) = fields else {
        return false;
    };
    match desired {
        Json::Object(map) => owns_map(Some(fields), map),
        Json::Array(items) => owns_list(fields, items),
        _ => true,
    }
}

/// A list: owned as a whole (atomic lists list no members), by merge key
/// (`k:{"name":"web"}`) or by value (`v:"a"`).
fn owns_list(fields: &Json, items: &[Json]) -> bool {
    let Some(members) = fields.as_object() else {
        return true;
    };
    let keyed: Vec<(Map<String, Json>, &Json)> = members
        .iter()
        .filter_map(|(k, v)| {
            let key = serde_json::from_str::<Json>(k.strip_prefix("k:")?).ok()?;
            Some((key.as_object()?.clone(), v))
        })
        .collect();
    let values: Vec<Json> =
        members.keys().filter_map(|k| serde_json::from_str(k.strip_prefix("v:")?).ok()).collect();
    if keyed.is_empty() && values.is_empty() {
        return true;
    }
    items.iter().all(|item| match item {
        Json::Object(element) => keyed
            .iter()
            .find(|(key, _)| matches_key(key, element))
            .is_some_and(|(_, member)| owns_map(Some(member), element)),
        scalar => values.iter().any(|v| same(v, scalar)),
    })
}

/// A list element matches a merge key when every key field it sets has the
/// key's value; fields it leaves to the server's defaults (a port's
/// `protocol`) may be absent.
fn matches_key(key: &Map<String, Json>, element: &Map<String, Json>) -> bool {
    let mut any = false;
    for (k, v) in key {
        match element.get(k) {
            Some(mine) if same(mine, v) => any = true,
            Some(_) => return false,
            None => {}
        }
    }
    any
}

fn same(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn covers_ignores_what_others_added_but_not_a_changed_or_missing_field() {
        let desired = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "1"},
            "spec": {"replicas": 2, "ports": [{"port": 80}]}});
        let live = json!({"data": {"a": "1", "b": "2"}, "status": {},
            "spec": {"replicas": 2.0, "ports": [{"port": 80, "protocol": "TCP"}]}});
        assert!(covers(&live, &desired), "apiVersion and kind are identity");
        assert!(!covers(&json!({"data": {"a": "2"}}), &json!({"data": {"a": "1"}})));
        assert!(!covers(&json!({}), &json!({"data": {"a": "1"}})));
        assert!(!covers(
            &json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}}),
            &json!({"spec": {"ports": [{"port": 80}]}})
        ));
    }

    #[test]
    fn the_stamp_is_a_hash_of_the_content() {
        let mut a = json!({"metadata": {"name": "x"}, "data": {"k": "1"}});
        let mut b = a.clone();
        stamp(&mut a);
        stamp(&mut b);
        assert_eq!(a, b);
        let hash = a["metadata"]["annotations"][APPLIED_HASH].as_str().unwrap().to_owned();
        assert_eq!(hash.len(), 32);
        stamp(&mut a);
        assert_eq!(
            a["metadata"]["annotations"][APPLIED_HASH],
            hash.as_str(),
            "restamping is stable"
        );
        let mut c = json!({"metadata": {"name": "x"}, "data": {"k": "2"}});
        stamp(&mut c);
        assert_ne!(c["metadata"]["annotations"][APPLIED_HASH], hash.as_str());
    }

    /// A Deployment as rendered, and the fields its apply left the operator owning.
    fn deployment() -> (Json, Json) {
        let desired = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "apps", "labels": {"app": "web"}, "annotations": {}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{
                    "name": "c", "image": "busybox", "args": ["a", "b"],
                    "env": [{"name": "A", "value": "1"}],
                    "ports": [{"containerPort": 80}],
                    "resources": {"limits": {"cpu": "1000m", "memory": "1024Mi"}}}]}}}
        });
        let fields = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}},
                "f:annotations": {".": {}, "f:dbqo.dev/applied-hash": {}}},
            "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {
                    ".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                    "f:env": {"k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}},
                    "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}},
                    "f:resources": {"f:limits": {"f:cpu": {}, "f:memory": {}}}}}}}}
        });
        (desired, fields)
    }

    #[test]
    fn owning_every_rendered_field_is_owning_the_object() {
        let (desired, fields) = deployment();
        assert!(owns(&fields, &desired));
    }

    #[test]
    fn a_field_someone_else_changed_is_no_longer_owned() {
        let (desired, fields) = deployment();
        for path in [
            "/f:spec/f:replicas",
            "/f:metadata/f:labels/f:app",
            "/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"c\"}/f:image",
            "/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"c\"}/f:env/k:{\"name\":\"A\"}/f:value",
            "/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"c\"}/f:resources/f:limits/f:cpu",
        ] {
            let mut lost = fields.clone();
            let (parent, leaf) = path.rsplit_once('/').unwrap();
            lost.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(leaf);
            assert!(!owns(&lost, &desired), "{path} lost");
        }
    }

    #[test]
    fn secrets_own_string_data_as_data() {
        let desired = json!({"stringData": {"password": "x"}, "data": {"b": "eA=="}});
        let fields = json!({"f:data": {".": {}, "f:password": {}, "f:b": {}}});
        assert!(owns(&fields, &desired));
    }

    #[test]
    fn in_place_needs_the_stamp_and_the_ownership_or_equal_values() {
        let (mut desired, fields) = deployment();
        stamp(&mut desired);
        // The server's form of the same object: quantities normalised.
        let mut live = desired.clone();
        live["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] =
            json!({"cpu": "1", "memory": "1Gi"});
        let cached = |manifest: Json, owned: Option<Json>| CachedObject {
            live: crate::kube_api::LiveObject {
                namespace: Some("apps".into()),
                name: "web".into(),
                labels: Default::default(),
                controller_uid: None,
                owners_json: "".into(),
                deleting: false,
                uid: None,
                adopt: None,
                prune_disabled: false,
            },
            manifest,
            owned_fields: owned,
        };
        assert!(in_place(&cached(live.clone(), Some(fields.clone())), &desired));
        assert!(!in_place(&cached(live.clone(), None), &desired), "ownership unknown");
        let mut unstamped = live.clone();
        unstamped["metadata"]["annotations"] = json!({});
        assert!(
            !in_place(&cached(unstamped, Some(fields.clone())), &desired),
            "applied before stamps"
        );
        let mut changed = desired.clone();
        changed["spec"]["replicas"] = json!(3);
        stamp(&mut changed);
        assert!(!in_place(&cached(live, Some(fields)), &changed), "the row changed");
    }
}
