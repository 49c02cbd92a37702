//! The Helm chart, linted and rendered by Helm's own engine (PyPI's
//! helm-python-sdk, installed by `hack/helm-venv.sh`), and its RBAC proven
//! on the real control plane: the operator runs with the chart's arguments
//! as the chart's ServiceAccount and does everything a DBQR needs, and
//! nothing outside `allowedKinds`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::eventually;
use common::operator::{wait_for_condition, wait_for_configmaps, DbqrBuilder, Operator};
use dbqo::api::DatabaseQueryResource;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{json, Value};

struct Rendered {
    lint: Value,
    chart: Value,
    /// Every rendered document.
    objects: Vec<Value>,
}

impl Rendered {
    fn kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.kind(kind);
        assert_eq!(all.len(), 1, "one {kind}");
        all[0]
    }

    fn args(&self) -> Vec<String> {
        self.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    }
}

/// Lints and renders the chart with `values`; `Err` carries Helm's message.
fn render(values: Value, release: &str, namespace: &str) -> Result<Rendered, String> {
    let answer =
        common::helm(&json!({"values": values, "release": release, "namespace": namespace}));
    if let Some(error) = answer["error"].as_str() {
        return Err(error.to_owned());
    }
    let mut objects = Vec::new();
    for text in answer["manifests"].as_object().unwrap().values() {
        for doc in serde_yaml::Deserializer::from_str(text.as_str().unwrap()) {
            let value: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !value.is_null() {
                objects.push(value);
            }
        }
    }
    Ok(Rendered {
        lint: answer["lint"].clone(),
        chart: answer["chart"].clone(),
        objects,
    })
}

fn managed_rules(role: &Value) -> BTreeMap<(String, String), Vec<String>> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["verbs"].as_array().unwrap().iter().any(|v| v == "delete"))
        .map(|r| {
            (
                (
                    r["apiGroups"][0].as_str().unwrap().to_owned(),
                    r["resources"][0].as_str().unwrap().to_owned(),
                ),
                r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn the_chart_lints_and_renders_what_the_values_say() {
    let defaults = render(json!({}), "dbqo", "dbqo-system").unwrap();
    assert_eq!(
        defaults.chart["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "appVersion = crate version"
    );
    let problems: Vec<&Value> = defaults.lint["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["severity"].as_u64().unwrap_or(0) >= 2)
        .collect();
    assert!(problems.is_empty(), "lint: {problems:?}");

    let deployment = defaults.one("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let args = defaults.args();
    for expected in [
        "--allowed-kinds=ConfigMap,Secret,Service,ServiceAccount,apps/Deployment,apps/StatefulSet,batch/Job,batch/CronJob",
        "--leader-elect",
        "--leader-election-namespace=dbqo-system",
        "--metrics-bind-address=:8080",
        "--health-probe-bind-address=:8081",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
    }
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > 10,
        "the grace period ({grace}) outlasts the drain deadline"
    );
    assert!(container["resources"]["requests"].is_object());

    // RBAC: exactly the verbs the operator uses, on exactly the allowed kinds.
    let role = defaults.one("ClusterRole");
    let rules = managed_rules(role);
    let verbs: Vec<String> = ["get", "list", "watch", "create", "patch", "delete"]
        .map(String::from)
        .to_vec();
    let expected: BTreeMap<(String, String), Vec<String>> = [
        ("", "configmaps"),
        ("", "secrets"),
        ("", "services"),
        ("", "serviceaccounts"),
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
    ]
    .into_iter()
    .map(|(g, r)| ((g.to_owned(), r.to_owned()), verbs.clone()))
    .collect();
    assert_eq!(rules, expected);
    assert!(!role.to_string().contains("\"*\""), "no wildcard: {role}");
    assert_eq!(defaults.one("Role")["rules"][0]["resources"][0], "leases");
    assert_eq!(defaults.kind("ServiceMonitor").len(), 0);

    // Other values, other objects.
    let custom = render(
        json!({
            "replicaCount": 1,
            "leaderElection": {"enabled": false},
            "allowedKinds": [{"group": "", "kind": "ConfigMap", "resource": "configmaps"}],
            "watchNamespace": "team-a",
            "labelSelector": "dbqo.dev/shard=a",
            "metrics": {"serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true}},
        }),
        "shard-a",
        "ops",
    )
    .unwrap();
    let args = custom.args();
    assert!(
        args.contains(&"--allowed-kinds=ConfigMap".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--watch-namespace=team-a".to_owned()),
        "{args:?}"
    );
    assert!(
        args.contains(&"--label-selector=dbqo.dev/shard=a".to_owned()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--leader-elect")),
        "{args:?}"
    );
    assert_eq!(
        custom.kind("Role").len(),
        0,
        "no Lease rights without leader election"
    );
    assert_eq!(
        managed_rules(custom.one("ClusterRole"))
            .into_keys()
            .collect::<Vec<_>>(),
        [("".to_owned(), "configmaps".to_owned())]
    );
    assert_eq!(custom.kind("ServiceMonitor").len(), 1);
    assert_eq!(custom.kind("PrometheusRule").len(), 1);

    // values.schema.json refuses what the templates could not use.
    let err = render(json!({"replicaCount": "two"}), "dbqo", "dbqo-system")
        .err()
        .unwrap();
    assert!(err.contains("/replicaCount"), "{err}");
    let err = render(
        json!({"allowedKinds": [{"group": "", "kind": "ConfigMap"}]}),
        "dbqo",
        "dbqo-system",
    )
    .err()
    .unwrap();
    assert!(err.contains("resource"), "{err}");
}

/// The chart's RBAC and arguments on the real control plane: the operator,
/// as the chart's ServiceAccount, converges a DBQR, prunes, elects itself,
/// cleans up on deletion, and a kind outside `allowedKinds` fails its row.
#[tokio::test]
async fn the_charts_rbac_and_arguments_run_the_operator() {
    let s = common::operator::setup(
        "chartrbac",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2), (3);",
    )
    .await;
    let release_ns = common::namespace(&s.client, "dbqo-system").await;
    let release = common::unique("rel");
    let rendered = render(
        json!({"allowedKinds": [
            {"group": "", "kind": "ConfigMap", "resource": "configmaps"},
            {"group": "", "kind": "Secret", "resource": "secrets"},
        ]}),
        &release,
        &release_ns,
    )
    .unwrap();
    let pp = PostParams::default();
    macro_rules! create {
        ($t:ty, $api:expr) => {
            for object in rendered.kind(stringify!($t)) {
                let typed: $t = serde_json::from_value((*object).clone()).unwrap();
                $api.create(&pp, &typed).await.unwrap();
            }
        };
    }
    create!(
        ServiceAccount,
        Api::<ServiceAccount>::namespaced(s.client.clone(), &release_ns)
    );
    create!(ClusterRole, Api::<ClusterRole>::all(s.client.clone()));
    create!(
        ClusterRoleBinding,
        Api::<ClusterRoleBinding>::all(s.client.clone())
    );
    create!(Role, Api::<Role>::namespaced(s.client.clone(), &release_ns));
    create!(
        RoleBinding,
        Api::<RoleBinding>::namespaced(s.client.clone(), &release_ns)
    );

    // The chart's arguments (HTTP on ports of its own, and the JSON log the
    // harness sets anyway), as the chart's ServiceAccount.
    let account = rendered.one("ServiceAccount")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let kubeconfig =
        common::impersonating_kubeconfig(&format!("system:serviceaccount:{release_ns}:{account}"));
    let args: Vec<String> = rendered
        .args()
        .into_iter()
        .skip(1) // `run`
        .filter(|a| {
            ![
                "--metrics-bind-address",
                "--health-probe-bind-address",
                "--log-format",
            ]
            .iter()
            .any(|flag| a.starts_with(flag))
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let operator = Operator::start_on(&kubeconfig, &common::unique("chart"), &args);
    eventually(Duration::from_secs(15), "the leader election", || async {
        operator.log().contains("became leader").then_some(())
    })
    .await;

    let template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.id}}\"\n";
    DbqrBuilder::new("items", &operator)
        .query("SELECT id FROM t")
        .template(template)
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["cm-1", "cm-2", "cm-3"]).await;
    wait_for_condition(&s.client, &s.namespace, "items", "Ready", "True", "Ready").await;
    s.db.batch_execute("DELETE FROM t WHERE id = 3")
        .await
        .unwrap();
    wait_for_configmaps(&s.client, &s.namespace, &["cm-1", "cm-2"]).await;

    // A Service is not in allowedKinds: its row fails, clearly.
    DbqrBuilder::new("services", &operator)
        .query("SELECT 1 AS id")
        .template("apiVersion: v1\nkind: Service\nmetadata:\n  name: \"svc-{{Row.id}}\"\nspec:\n  ports: [{port: 80}]\n")
        .create(&s.client, &s.namespace)
        .await;
    let message = wait_for_condition(
        &s.client,
        &s.namespace,
        "services",
        "Synced",
        "False",
        "KindNotAllowed",
    )
    .await;
    assert!(message.contains("Service"), "{message}");

    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(s.client.clone(), &s.namespace);
    dbqrs
        .delete("items", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the DBQR and its objects to go",
        || async {
            let gone = dbqrs.get_opt("items").await.ok()?.is_none();
            let cms = common::operator::configmaps(&s.client, &s.namespace).await;
            (gone && cms.is_empty()).then_some(())
        },
    )
    .await;
    let log = operator.log();
    let forbidden: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Forbidden") || l.contains("forbidden"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "the chart's RBAC refused the operator: {forbidden:?}"
    );
}
