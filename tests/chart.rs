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

    fn to_string_all(&self) -> String {
        serde_json::to_string(&self.objects).unwrap()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.kind(kind);
        assert_eq!(all.len(), 1, "one {kind}");
        all[0]
    }

    /// The one object of `kind` whose name ends in `suffix` (`""` for the
    /// operator's own role, which carries the bare full name).
    fn role(&self, kind: &str, suffix: &str) -> &Value {
        let all: Vec<&Value> = self
            .kind(kind)
            .into_iter()
            .filter(|o| {
                let name = o["metadata"]["name"].as_str().unwrap_or_default();
                let role_suffix = ["-edit", "-view", "-platform", "-leader-election"]
                    .into_iter()
                    .find(|s| name.ends_with(s))
                    .unwrap_or("");
                role_suffix == suffix
            })
            .collect();
        assert_eq!(all.len(), 1, "one {kind} *{suffix}");
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
    Ok(Rendered { lint: answer["lint"].clone(), chart: answer["chart"].clone(), objects })
}

fn managed_rules(role: &Value) -> BTreeMap<(String, String), Vec<String>> {
    role["rules"]
        .as_array()
        .unwrap()
        .iter()
        // The operator's own kinds (dbqo.dev) and its backup Jobs (no list)
        // are rules of their own; the managed kinds' rules have every verb.
        .filter(|r| {
            let verbs = r["verbs"].as_array().unwrap();
            r["apiGroups"][0] != "dbqo.dev"
                && ["list", "delete"].iter().all(|verb| verbs.iter().any(|v| v == verb))
        })
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
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > 10, "the grace period ({grace}) outlasts the drain deadline");
    assert!(container["resources"]["requests"].is_object());

    // RBAC: exactly the verbs the operator uses, on exactly the allowed kinds.
    let role = defaults.role("ClusterRole", "");
    let rules = managed_rules(role);
    let verbs: Vec<String> =
        ["get", "list", "watch", "create", "patch", "delete"].map(String::from).to_vec();
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
    assert!(
        role["rules"].as_array().unwrap().iter().any(|r| r["resources"][0]
            == "serviceaccounts"
            && r["verbs"] == json!(["impersonate"])),
        "impersonate on serviceaccounts only: {role}"
    );
    assert_eq!(defaults.one("Role")["rules"][0]["resources"][0], "leases");
    // Users' rights join Kubernetes' own roles; DatabaseServers stay the platform's.
    let aggregate =
        |suffix: &str| defaults.role("ClusterRole", suffix)["metadata"]["labels"].clone();
    assert_eq!(aggregate("-edit")["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    assert_eq!(aggregate("-edit")["rbac.authorization.k8s.io/aggregate-to-admin"], "true");
    assert_eq!(aggregate("-view")["rbac.authorization.k8s.io/aggregate-to-view"], "true");
    assert!(!aggregate("-platform").to_string().contains("aggregate-to"));
    assert!(!defaults.role("ClusterRole", "-edit").to_string().contains("databaseservers"));
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
    assert!(args.contains(&"--allowed-kinds=ConfigMap".to_owned()), "{args:?}");
    assert!(args.contains(&"--watch-namespace=team-a".to_owned()), "{args:?}");
    assert!(args.contains(&"--label-selector=dbqo.dev/shard=a".to_owned()), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--leader-elect")), "{args:?}");
    assert!(!custom.to_string_all().contains("leases"), "no Lease rights without leader election");
    // watchNamespace (and no other namespace): Roles and RoleBindings only.
    assert_eq!(custom.kind("ClusterRole").len(), 0);
    assert_eq!(custom.kind("ClusterRoleBinding").len(), 0);
    let role = custom.role("Role", "");
    assert_eq!(role["metadata"]["namespace"], "team-a");
    assert_eq!(custom.one("RoleBinding")["metadata"]["namespace"], "team-a");
    assert_eq!(
        managed_rules(role).into_keys().collect::<Vec<_>>(),
        [("".to_owned(), "configmaps".to_owned())]
    );
    for suffix in ["-edit", "-view", "-platform"] {
        let role = custom.role("Role", suffix);
        assert_eq!(role["metadata"]["namespace"], "team-a");
        assert!(!role.to_string().contains("aggregate-to"), "{role}");
    }
    assert_eq!(custom.kind("ServiceMonitor").len(), 1);
    assert_eq!(custom.kind("PrometheusRule").len(), 1);

    // values.schema.json refuses what the templates could not use.
    let err = render(json!({"replicaCount": "two"}), "dbqo", "dbqo-system").err().unwrap();
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
/// Cluster-wide; the namespace-scoped install below runs the same checks.
#[tokio::test]
async fn the_charts_rbac_and_arguments_run_the_operator() {
    let s = common::operator::setup(
        "chartrbac",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2), (3);",
    )
    .await;
    let rendered = install(&s, json!({})).await;
    run_as_the_charts_account(&s, &rendered).await;

    // The chart's user roles joined Kubernetes' own (the controller
    // manager's clusterrole-aggregation): a namespace editor may write
    // DBQRs and Databases and read them, never DatabaseServers.
    let editor = common::unique("editor");
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": editor},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": editor}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(s.client.clone(), &s.namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let as_editor = common::kube_client_for(&common::impersonating_kubeconfig(&editor)).await;
    let dbqr: DatabaseQueryResource = serde_json::from_value(json!({
        "apiVersion": "dbqo.dev/v1alpha1", "kind": "DatabaseQueryResource",
        "metadata": {"name": "by-an-editor"},
        "spec": {"pollInterval": "1h", "database": {"connectionSecretRef": {"name": "db"}},
                 "query": "SELECT 1 AS id", "template": "a: 1"},
    }))
    .unwrap();
    eventually(Duration::from_secs(20), "edit to include DBQRs", || async {
        Api::<DatabaseQueryResource>::namespaced(as_editor.clone(), &s.namespace)
            .create(&PostParams::default(), &dbqr)
            .await
            .ok()
    })
    .await;
    let server: dbqo::api::server::DatabaseServer = serde_json::from_value(json!({
        "apiVersion": "dbqo.dev/v1alpha1", "kind": "DatabaseServer",
        "metadata": {"name": "by-an-editor"},
        "spec": {"engine": "postgres", "connectionSecretRef": {"name": "db"}},
    }))
    .unwrap();
    let refused = Api::<dbqo::api::server::DatabaseServer>::namespaced(as_editor, &s.namespace)
        .create(&PostParams::default(), &server)
        .await
        .unwrap_err();
    assert!(matches!(refused, kube::Error::Api(ref e) if e.code == 403), "{refused}");
}

/// `watchNamespace` set: the chart renders Roles and RoleBindings only, and
/// the operator does everything with them (its watches of managed objects
/// stay in that namespace).
#[tokio::test]
async fn a_namespace_scoped_install_runs_the_operator_with_roles_only() {
    let s = common::operator::setup(
        "chartscoped",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2), (3);",
    )
    .await;
    let rendered = install(&s, json!({"watchNamespace": s.namespace})).await;
    assert_eq!(rendered.kind("ClusterRole").len(), 0);
    assert_eq!(rendered.kind("ClusterRoleBinding").len(), 0);
    run_as_the_charts_account(&s, &rendered).await;
}

/// Renders the chart (ConfigMaps and Secrets allowed, plus `values`) and
/// creates its ServiceAccount and RBAC in the cluster.
async fn install(s: &common::operator::Setup, values: Value) -> Rendered {
    let release_ns = common::namespace(&s.client, "dbqo-system").await;
    let release = common::unique("rel");
    let mut all = json!({"allowedKinds": [
        {"group": "", "kind": "ConfigMap", "resource": "configmaps"},
        {"group": "", "kind": "Secret", "resource": "secrets"},
    ]});
    all.as_object_mut().unwrap().extend(values.as_object().unwrap().clone());
    let rendered = render(all, &release, &release_ns).unwrap();
    let pp = PostParams::default();
    // Namespaced objects go where they say, else to the release namespace.
    let ns_of =
        |object: &Value| object["metadata"]["namespace"].as_str().unwrap_or(&release_ns).to_owned();
    macro_rules! create {
        ($t:ty, namespaced) => {
            for object in rendered.kind(stringify!($t)) {
                let typed: $t = serde_json::from_value((*object).clone()).unwrap();
                Api::<$t>::namespaced(s.client.clone(), &ns_of(object))
                    .create(&pp, &typed)
                    .await
                    .unwrap();
            }
        };
        ($t:ty, cluster) => {
            for object in rendered.kind(stringify!($t)) {
                let typed: $t = serde_json::from_value((*object).clone()).unwrap();
                Api::<$t>::all(s.client.clone()).create(&pp, &typed).await.unwrap();
            }
        };
    }
    create!(ServiceAccount, namespaced);
    create!(ClusterRole, cluster);
    create!(ClusterRoleBinding, cluster);
    create!(Role, namespaced);
    create!(RoleBinding, namespaced);
    rendered
}

async fn run_as_the_charts_account(s: &common::operator::Setup, rendered: &Rendered) {
    let release_ns = rendered.one("ServiceAccount")["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // The chart's arguments (HTTP on ports of its own, and the JSON log the
    // harness sets anyway), as the chart's ServiceAccount.
    let account = rendered.one("ServiceAccount")["metadata"]["name"].as_str().unwrap().to_owned();
    let kubeconfig =
        common::impersonating_kubeconfig(&format!("system:serviceaccount:{release_ns}:{account}"));
    let args: Vec<String> = rendered
        .args()
        .into_iter()
        .skip(1) // `run`
        .filter(|a| {
            !["--metrics-bind-address", "--health-probe-bind-address", "--log-format"]
                .iter()
                .any(|flag| a.starts_with(flag))
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let operator = Operator::start_on(&kubeconfig, &common::unique("chart"), &args);
    eventually(Duration::from_secs(15), "the leader election", || async {
        operator.leads().await.then_some(())
    })
    .await;

    let template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.id}}\"\n";
    DbqrBuilder::new("items", &operator)
        .query("SELECT id FROM t")
        .template(template)
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["cm-1", "cm-2", "cm-3"]).await;
    wait_for_condition(&s.client, &s.namespace, "items", "Ready=True/Ready").await;
    s.db.batch_execute("DELETE FROM t WHERE id = 3").await.unwrap();
    wait_for_configmaps(&s.client, &s.namespace, &["cm-1", "cm-2"]).await;

    // A Service is not in allowedKinds: its row fails, clearly.
    DbqrBuilder::new("services", &operator)
        .query("SELECT 1 AS id")
        .template("apiVersion: v1\nkind: Service\nmetadata:\n  name: \"svc-{{Row.id}}\"\nspec:\n  ports: [{port: 80}]\n")
        .create(&s.client, &s.namespace)
        .await;
    let message =
        wait_for_condition(&s.client, &s.namespace, "services", "Synced=False/KindNotAllowed")
            .await;
    assert!(message.contains("Service"), "{message}");

    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(s.client.clone(), &s.namespace);
    dbqrs.delete("items", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(30), "the DBQR and its objects to go", || async {
        let gone = dbqrs.get_opt("items").await.ok()?.is_none();
        let cms = common::operator::configmaps(&s.client, &s.namespace).await;
        (gone && cms.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        operator.failures_of("Forbidden").await,
        0,
        "the chart's RBAC refused the operator a pass's request"
    );
}
