//! The operator as users run it: the image built from the Dockerfile, the
//! chart installed by Helm's engine onto a real node (`hack/node.sh`:
//! kubelet + containerd), two replicas under exactly the chart's
//! ServiceAccount and RBAC with in-cluster configuration, a PostgreSQL on the
//! host that pods reach over the pod network. The walk-through, a kind
//! outside `allowedKinds`, `/metrics` from the Pod, a `Database` provisioned
//! through the chart's RBAC, failover after the
//! leader Pod is force-deleted (and no interleaved writes of two replicas,
//! from the API server's audit log), `helm upgrade` and `helm uninstall`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::eventually;
use common::node::{self, step, Image, Imaged};
use common::operator::{configmaps, create_secret, wait_for_condition};
use dbqo::api::DatabaseQueryResource;
use dbqo_testenv::{Postgres, PostgresOptions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

const RELEASE: &str = "dbqo";
const RELEASE_NS: &str = "dbqo-system";
/// The chart's default full name for release `dbqo`.
const FULL_NAME: &str = "dbqo-db-query-operator";
const APP_NS: &str = "shop";
const LEASE_DURATION: Duration = Duration::from_secs(15);

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.name}}\"\ndata:\n  color: \"{{Row.color}}\"\n";
const SA: &str =
    "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: \"robot-{{Row.name}}\"\n";

fn helm(action: &str, kubeconfig: &Path, values: Value) -> Value {
    let answer = common::helm(&json!({
        "action": action,
        "kubeconfig": kubeconfig,
        "release": RELEASE,
        "namespace": RELEASE_NS,
        "values": values,
    }));
    assert!(answer["error"].is_null(), "helm {action}: {}", answer["error"]);
    answer
}

fn values(image: &str, allowed: &[(&str, &str, &str)], concurrency: u32) -> Value {
    let (repository, tag) = image.rsplit_once(':').unwrap();
    let kinds: Vec<Value> = allowed
        .iter()
        .map(|(group, kind, resource)| json!({"group": group, "kind": kind, "resource": resource}))
        .collect();
    // Namespace-scoped: Roles and RoleBindings in the application
    // namespace only, no ClusterRole (the chart's tests cover the
    // cluster-wide install against the API server).
    json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "watchNamespace": APP_NS,
        "allowedKinds": kinds,
        "concurrency": concurrency,
        "leaderElection": {"leaseDurationSeconds": LEASE_DURATION.as_secs()},
    })
}

/// Waits until the Deployment has rolled out its current generation with
/// every replica ready (ready = `/readyz`, the chart's readiness probe).
async fn wait_rolled_out(client: &Client) -> Deployment {
    let api: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NS);
    eventually(Duration::from_secs(120), "the Deployment rolled out", || async {
        let d = api.get_opt(FULL_NAME).await.ok()??;
        let want = d.spec.as_ref()?.replicas.unwrap_or(1);
        let s = d.status.as_ref()?;
        let done = s.observed_generation == d.metadata.generation
            && s.updated_replicas == Some(want)
            && s.ready_replicas == Some(want)
            && s.replicas == Some(want);
        done.then_some(d.clone())
    })
    .await
}

async fn operator_pods(client: &Client) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), RELEASE_NS)
        .list(&ListParams::default().labels("app.kubernetes.io/name=db-query-operator"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The Pod holding the Lease (its identity is `<pod name>_<pid>`), once
/// its IP is known; a Pod other than `not` if given.
async fn leader(client: &Client, not: Option<&str>) -> Pod {
    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NS);
    eventually(Duration::from_secs(60), "a leader Pod", || async {
        let lease = leases.get_opt("db-query-operator").await.ok()??;
        let holder = lease.spec?.holder_identity?;
        let pod_name = holder.rsplit_once('_')?.0.to_owned();
        if not == Some(pod_name.as_str()) {
            return None;
        }
        operator_pods(client).await.into_iter().find(|p| {
            p.metadata.name.as_deref() == Some(&pod_name)
                && p.status.as_ref().is_some_and(|s| s.pod_ip.is_some())
        })
    })
    .await
}

fn pod_ip(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("a Pod IP")
}

async fn wait_for_items(client: &Client, expected: &[(&str, &str)]) {
    let want: BTreeMap<String, String> =
        expected.iter().map(|(name, color)| (format!("item-{name}"), color.to_string())).collect();
    eventually(Duration::from_secs(60), &format!("ConfigMaps {want:?}"), || async {
        let have: BTreeMap<String, String> = configmaps(client, APP_NS)
            .await
            .into_iter()
            .map(|(name, data)| (name, data.get("color").cloned().unwrap_or_default()))
            .collect();
        (have == want).then_some(())
    })
    .await;
}

/// One write in the audit log.
struct Write {
    at: String,
    source: String,
    what: String,
}

/// The operator's writes of ConfigMaps and DBQRs, in time order.
fn operator_writes(audit_log: &Path) -> Vec<Write> {
    let user = format!("system:serviceaccount:{RELEASE_NS}:{FULL_NAME}");
    let text = std::fs::read_to_string(audit_log).expect("read the audit log");
    let mut writes: Vec<Write> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete" && e["user"]["username"] == user.as_str())
        .filter(|e| {
            let resource = e["objectRef"]["resource"].as_str().unwrap_or_default();
            resource == "configmaps" || resource == "databasequeryresources"
        })
        .map(|e| Write {
            at: e["requestReceivedTimestamp"].as_str().unwrap_or_default().to_owned(),
            source: e["sourceIPs"][0].as_str().unwrap_or_default().to_owned(),
            what: format!(
                "{} {}/{}",
                e["verb"].as_str().unwrap_or_default(),
                e["objectRef"]["resource"].as_str().unwrap_or_default(),
                e["objectRef"]["name"].as_str().unwrap_or_default()
            ),
        })
        .collect();
    // RFC 3339 with fixed microsecond precision: text order is time order.
    writes.sort_by(|a, b| a.at.cmp(&b.at));
    writes
}

/// The first write by a source that had already been followed by another
/// source's writes: two replicas writing in the same period.
fn interleaved(writes: &[Write]) -> Option<&Write> {
    let mut finished: Vec<&str> = Vec::new();
    let mut current = writes.first()?.source.as_str();
    for w in writes {
        if w.source != current {
            finished.push(current);
            current = &w.source;
        }
        if finished.contains(&current) {
            return Some(w);
        }
    }
    None
}

#[test]
fn interleaved_writes_are_found() {
    let writes = |sources: &[&str]| -> Vec<Write> {
        sources
            .iter()
            .enumerate()
            .map(|(i, s)| Write {
                at: format!("t{i}"),
                source: s.to_string(),
                what: "patch configmaps/x".into(),
            })
            .collect()
    };
    assert!(interleaved(&writes(&["a", "a", "b", "b", "c"])).is_none());
    assert!(interleaved(&[]).is_none());
    let found = writes(&["a", "b", "a", "b"]);
    assert_eq!(interleaved(&found).map(|w| w.at.as_str()), Some("t2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_runs_the_operator_on_a_real_node() {
    let started = Instant::now();
    let Imaged { node, image, dir } = node::start("in-cluster", Image::Operator, started).await;
    let postgres = {
        let (dir, ip) = (dir.join("postgres"), node.info.host_ip);
        tokio::task::spawn_blocking(move || {
            Postgres::start(
                &dir,
                PostgresOptions { listen: Some(ip), ..PostgresOptions::default() },
            )
        })
        .await
        .unwrap()
        .expect("a PostgreSQL pods reach")
    };
    let db = common::connect(&postgres.info.url("postgres")).await;
    db.batch_execute(
        "CREATE TABLE items (name text PRIMARY KEY, color text);
         INSERT INTO items VALUES ('anchor', 'red'), ('buoy', 'green'), ('cleat', 'blue');",
    )
    .await
    .unwrap();
    let client = common::kube_client_for(&node.info.kubeconfig).await;

    // The application namespace first: the namespace-scoped chart puts
    // its Roles there.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": APP_NS}})).unwrap(),
        )
        .await
        .unwrap();
    // Install: the chart's CRD, RBAC from allowedKinds (ConfigMaps only) and
    // two replicas of the image, which pull nothing.
    helm("install", &node.info.kubeconfig, values(&image, &[("", "ConfigMap", "configmaps")], 16));
    wait_rolled_out(&client).await;
    step(started, "chart installed and rolled out");
    let pods = operator_pods(&client).await;
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some(FULL_NAME));
        let container = &spec.containers[0];
        assert_eq!(container.image.as_deref(), Some(image.as_str()));
        let env = container.env.clone().unwrap_or_default();
        assert!(env.iter().all(|e| e.name != "KUBECONFIG"), "in-cluster configuration only");
    }

    // The walk-through, against the database over the pod network.
    let keys = BTreeMap::from([
        ("host", postgres.info.host.clone()),
        ("port", postgres.info.port.to_string()),
        ("username", postgres.info.user.clone()),
        ("password", postgres.info.password.clone()),
        ("dbname", "postgres".to_owned()),
        ("sslmode", "disable".to_owned()),
    ]);
    create_secret(&client, APP_NS, "db", keys).await;
    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(client.clone(), APP_NS);
    let dbqr = |name: &str, query: &str, template: &str| -> DatabaseQueryResource {
        serde_json::from_value(json!({
            "apiVersion": "dbqo.dev/v1alpha1",
            "kind": "DatabaseQueryResource",
            "metadata": {"name": name},
            "spec": {
                "pollInterval": "1s",
                "database": {"connectionSecretRef": {"name": "db"}},
                "query": query,
                "template": template,
            }
        }))
        .unwrap()
    };
    dbqrs
        .create(
            &PostParams::default(),
            &dbqr("items", "SELECT name, color FROM items ORDER BY name", CM),
        )
        .await
        .unwrap();
    wait_for_items(&client, &[("anchor", "red"), ("buoy", "green"), ("cleat", "blue")]).await;
    wait_for_condition(&client, APP_NS, "items", "Ready=True/Ready").await;
    db.batch_execute("UPDATE items SET color = 'yellow' WHERE name = 'buoy'").await.unwrap();
    wait_for_items(&client, &[("anchor", "red"), ("buoy", "yellow"), ("cleat", "blue")]).await;
    db.batch_execute("DELETE FROM items WHERE name = 'cleat'").await.unwrap();
    wait_for_items(&client, &[("anchor", "red"), ("buoy", "yellow")]).await;
    step(started, "walk-through done");

    // A kind outside allowedKinds fails its rows, clearly.
    dbqrs.create(&PostParams::default(), &dbqr("robots", "SELECT 'r2' AS name", SA)).await.unwrap();
    let message =
        wait_for_condition(&client, APP_NS, "robots", "Synced=False/KindNotAllowed").await;
    assert!(message.contains("ServiceAccount"), "{message}");

    // /metrics from the leader Pod, over the pod network.
    let first_leader = leader(&client, None).await;
    let addr = format!("{}:8080", pod_ip(&first_leader));
    let metrics = eventually(Duration::from_secs(30), "metrics from the Pod", || async {
        let (status, body) = common::http_get(&addr, "/metrics").await?;
        (status == 200).then_some(body)
    })
    .await;
    let passes = common::metric_sample(&metrics, "dbqo_passes_total{result=\"success\"}");
    assert!(passes.is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(metrics.contains("dbqo_objects_total"), "{metrics}");
    step(started, "metrics read");

    // Failover: the leader Pod is force-deleted; another replica takes the
    // Lease (the dying one releases it on SIGTERM; a crash would leave it to
    // expire) and converges a new row.
    let first_name = first_leader.metadata.name.clone().unwrap();
    let deleted_at = Instant::now();
    Api::<Pod>::namespaced(client.clone(), RELEASE_NS)
        .delete(
            &first_name,
            &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() },
        )
        .await
        .unwrap();
    let second_leader = leader(&client, Some(&first_name)).await;
    let takeover = deleted_at.elapsed();
    db.batch_execute("INSERT INTO items VALUES ('davit', 'black')").await.unwrap();
    wait_for_items(&client, &[("anchor", "red"), ("buoy", "yellow"), ("davit", "black")]).await;
    let converged = deleted_at.elapsed();
    eprintln!(
        "failover: Lease taken over {takeover:?}, new row converged {converged:?} after the leader Pod was force-deleted"
    );
    assert!(
        converged < LEASE_DURATION,
        "the new row took {converged:?}, more than the lease duration"
    );
    // No interleaving: once another replica has written, an earlier writer
    // never writes again.
    let writes = operator_writes(&node.info.audit_log);
    assert!(!writes.is_empty(), "the audit log shows the operator's writes");
    if let Some(w) = interleaved(&writes) {
        panic!("{} wrote {} at {} after another replica had written", w.source, w.what, w.at);
    }
    let sources: Vec<&str> = writes.iter().map(|w| w.source.as_str()).collect();
    assert!(sources.contains(&pod_ip(&first_leader).as_str()));
    assert_eq!(sources.last().copied(), Some(pod_ip(&second_leader).as_str()));

    // helm upgrade: ServiceAccounts allowed now (RBAC and flag), and a
    // lower concurrency: a new rollout, and the failing DBQR converges.
    let before = wait_rolled_out(&client).await.metadata.generation;
    helm(
        "upgrade",
        &node.info.kubeconfig,
        values(
            &image,
            &[("", "ConfigMap", "configmaps"), ("", "ServiceAccount", "serviceaccounts")],
            8,
        ),
    );
    let after = wait_rolled_out(&client).await;
    step(started, "upgrade rolled out");
    assert!(after.metadata.generation > before);
    for pod in operator_pods(&client).await {
        let args = pod.spec.unwrap().containers[0].args.clone().unwrap();
        assert!(args.contains(&"--concurrency=8".to_owned()), "{args:?}");
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), APP_NS);
    eventually(Duration::from_secs(60), "robot-r2 created", || async {
        accounts.get_opt("robot-r2").await.ok()?
    })
    .await;
    wait_for_condition(&client, APP_NS, "robots", "Ready=True/Ready").await;

    // The finalizer: a deleted DBQR takes its objects with it.
    dbqrs.delete("items", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(60), "items and its ConfigMaps gone", || async {
        let gone = dbqrs.get_opt("items").await.ok()?.is_none();
        (gone && configmaps(&client, APP_NS).await.is_empty()).then_some(())
    })
    .await;

    step(started, "finalizer done");
    // Databases for teams, in-cluster: the chart's RBAC lets the operator
    // create a database, its user and the credentials Secret, which works.
    let servers: Api<dbqo::api::server::DatabaseServer> = Api::namespaced(client.clone(), APP_NS);
    servers
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "dbqo.dev/v1alpha1",
                "kind": "DatabaseServer",
                "metadata": {"name": "main"},
                "spec": {"engine": "postgres", "connectionSecretRef": {"name": "db"}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let databases: Api<dbqo::api::database::Database> = Api::namespaced(client.clone(), APP_NS);
    databases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "dbqo.dev/v1alpha1",
                "kind": "Database",
                "metadata": {"name": "orders"},
                "spec": {"serverRef": {"name": "main"}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), APP_NS);
    let credentials =
        eventually(Duration::from_secs(60), "orders Ready with its Secret", || async {
            let ready = databases.get_opt("orders").await.ok()??.status?.phase
                == Some(dbqo::api::database::Phase::Ready);
            let secret = secrets.get_opt("orders-credentials").await.ok()??;
            ready.then_some(secret)
        })
        .await;
    let value =
        |key: &str| String::from_utf8(credentials.data.as_ref().unwrap()[key].0.clone()).unwrap();
    let team = common::connect(&format!(
        "postgresql://{}:{}@{}:{}/{}?sslmode=disable",
        value("username"),
        value("password"),
        value("host"),
        value("port"),
        value("dbname")
    ))
    .await;
    team.batch_execute("CREATE TABLE orders (id int PRIMARY KEY)")
        .await
        .expect("the team's credentials work");

    step(started, "database provisioned");
    // helm uninstall: the operator goes; the CRD, the DBQRs and what they
    // made stay (Helm never deletes a chart's CRDs).
    helm("uninstall", &node.info.kubeconfig, json!({}));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NS);
    eventually(Duration::from_secs(60), "the operator gone", || async {
        let gone = deployments.get_opt(FULL_NAME).await.ok()?.is_none();
        (gone && operator_pods(&client).await.is_empty()).then_some(())
    })
    .await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(crds.get_opt("databasequeryresources.dbqo.dev").await.unwrap().is_some());
    assert!(dbqrs.get_opt("robots").await.unwrap().is_some());
    assert!(accounts.get_opt("robot-r2").await.unwrap().is_some());
    drop(postgres);
    drop(node);
}
