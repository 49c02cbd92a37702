//! Running the operator as users run operators: `/metrics`, `/healthz`,
//! `/readyz` on the flags controller-runtime users know, and leader election
//! on a Lease between two replicas (takeover after a crash, release on
//! SIGTERM).

mod common;

use std::time::{Duration, Instant};

use common::operator::{
    configmaps, wait_for_condition, wait_for_configmaps, DbqrBuilder, Operator, PassTotals,
};
use common::{eventually, http_get as get, metric_sample as sample};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.id}}\"\n";

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    let (s, operator) = common::operator::setup_and_start(
        "endpoints",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);",
    )
    .await;
    let metrics = operator.http_address("metrics").await;
    let probes = operator.http_address("probes").await;
    assert_ne!(metrics, probes, "separate listeners for separate flags");
    assert_eq!(get(&probes, "/healthz").await.map(|r| r.0), Some(200));
    eventually(Duration::from_secs(10), "ready", || async {
        (get(&probes, "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(
        get(&metrics, "/healthz").await.map(|r| r.0),
        Some(404),
        "probes are not on the metrics port"
    );

    DbqrBuilder::new("items", &operator)
        .query("SELECT id FROM t")
        .template(CM)
        .create(&s.client, &s.namespace)
        .await;
    wait_for_configmaps(&s.client, &s.namespace, &["cm-1", "cm-2"]).await;
    operator.wait_for_pass(PassTotals::default(), "a converged pass", |p| p.converged(2)).await;
    let (status, text) = get(&metrics, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    let at_least = |name: &str, min: f64| {
        let value = sample(&text, name).unwrap_or_else(|| panic!("{name} missing in:\n{text}"));
        assert!(value >= min, "{name} = {value}, expected at least {min}");
    };
    at_least("dbqo_passes_total{result=\"success\"}", 2.0);
    at_least("dbqo_objects_total{operation=\"applied\"}", 2.0);
    at_least("dbqo_objects_total{operation=\"skipped\"}", 2.0);
    at_least("dbqo_rows_total", 4.0);
    at_least("dbqo_query_actors", 1.0);
    at_least("dbqo_pass_duration_seconds_count{result=\"success\"}", 2.0);
    at_least("dbqo_query_duration_seconds_count", 2.0);
    assert!(text.lines().any(|l| l.starts_with("dbqo_database_connections{server=")), "{text}");
    // The allocator's own counts: live bytes, and the resident pages they need.
    at_least("dbqo_heap_allocated_bytes", 1_000_000.0);
    let resident = sample(&text, "dbqo_heap_resident_bytes").unwrap();
    assert!(resident >= sample(&text, "dbqo_heap_allocated_bytes").unwrap(), "{text}");
    assert!(!text.contains(&common::shared().postgres.password), "no secrets in metrics");
}

/// Runs a replica that elects on the Lease `lease` in `ns`, with short
/// timings (lease 4 s, renew deadline 3 s, retry 1 s).
fn replica(id: &str, name: &str, ns: &str, lease: &str) -> Operator {
    Operator::start_replica(
        id,
        name,
        &[
            "--leader-elect",
            "--leader-election-namespace",
            ns,
            "--leader-election-id",
            lease,
            "--leader-election-lease-duration",
            "4",
            "--leader-election-renew-deadline",
            "3",
            "--leader-election-retry-period",
            "1",
        ],
    )
}

async fn leads(operator: &Operator) -> bool {
    operator.leads().await
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get_opt(name).await.ok()??.spec?.holder_identity
}

#[tokio::test]
async fn one_replica_leads_and_another_takes_over_after_a_crash_or_a_release() {
    let s = common::operator::setup("leader", "CREATE TABLE t (id int); INSERT INTO t VALUES (1);")
        .await;
    let ns = s.namespace.as_str();
    let id = common::unique("replicas");
    let lease = "dbqo-test-lease";
    let mut first = replica(&id, "first", ns, lease);
    eventually(Duration::from_secs(10), "the first replica to lead", || async {
        leads(&first).await.then_some(())
    })
    .await;
    let second = replica(&id, "second", ns, lease);
    let second_probes = second.http_address("probes").await;
    // Waiting for the lease, the second replica is ready to take over.
    eventually(Duration::from_secs(10), "the standby to be ready", || async {
        (get(&second_probes, "/readyz").await?.0 == 200).then_some(())
    })
    .await;

    DbqrBuilder::new("items", &first)
        .query("SELECT id FROM t")
        .template(CM)
        .create(&s.client, ns)
        .await;
    wait_for_condition(&s.client, ns, "items", "Ready=True/Ready").await;
    assert!(!leads(&second).await, "one leader at a time");
    assert_eq!(second.totals().await.passes, 0, "the standby runs no pass");
    let led = first.totals().await;
    assert!(led.passes > 0, "the leader did the work: {led:?}");
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), ns);
    let first_holder = holder(&leases, lease).await.unwrap();

    // The leader crashes: the standby takes over once the lease expires.
    let crashed = Instant::now();
    std::process::Command::new("kill").args(["-KILL", &first.pid().to_string()]).status().unwrap();
    assert!(first.wait_for_exit(Duration::from_secs(5)).is_some());
    s.db.batch_execute("INSERT INTO t VALUES (2)").await.unwrap();
    wait_for_configmaps(&s.client, ns, &["cm-1", "cm-2"]).await;
    let took = crashed.elapsed();
    assert!(leads(&second).await);
    assert!(took < Duration::from_secs(15), "took over in {took:?}");
    let second_holder = holder(&leases, lease).await.unwrap();
    assert_ne!(first_holder, second_holder);

    // A third replica waits; the leader stops on SIGTERM, releases the lease,
    // and the third takes over without waiting for it to expire.
    let third = replica(&id, "third", ns, lease);
    let third_probes = third.http_address("probes").await;
    eventually(Duration::from_secs(10), "the third replica to stand by", || async {
        (get(&third_probes, "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    let mut second = second;
    let stopped = Instant::now();
    std::process::Command::new("kill").args(["-TERM", &second.pid().to_string()]).status().unwrap();
    let status = second.wait_for_exit(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status:?}");
    eventually(Duration::from_secs(10), "the third replica to lead", || async {
        leads(&third).await.then_some(())
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_secs(4),
        "a released lease is taken at once, not after it expires ({:?})",
        stopped.elapsed()
    );
    s.db.batch_execute("INSERT INTO t VALUES (3)").await.unwrap();
    let names: Vec<String> = eventually(Duration::from_secs(20), "cm-3", || async {
        let cms = configmaps(&s.client, ns).await;
        cms.contains_key("cm-3").then(|| cms.keys().cloned().collect())
    })
    .await;
    assert_eq!(names, ["cm-1", "cm-2", "cm-3"]);
    dbqo_testenv::reliability::record(
        "leader-failover",
        &dbqo_testenv::reliability::Outcome::passed(2, 1, None),
    );
}

/// A leader that finds the Lease held by someone else stops at once (exit
/// 1, so Kubernetes restarts it as a candidate) rather than write beside
/// the new holder.
#[tokio::test]
async fn a_leader_that_loses_its_lease_stops_writing() {
    let s =
        common::operator::setup("lost", "CREATE TABLE t (id int); INSERT INTO t VALUES (1);").await;
    let ns = s.namespace.as_str();
    let lease = "dbqo-lost-lease";
    let mut leader = replica(&common::unique("lost"), "only", ns, lease);
    eventually(Duration::from_secs(10), "the replica to lead", || async {
        leads(&leader).await.then_some(())
    })
    .await;
    let leases: Api<Lease> = Api::namespaced(s.client.clone(), ns);
    leases
        .patch(
            lease,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"holderIdentity": "intruder"}})),
        )
        .await
        .unwrap();
    let status = leader.wait_for_exit(Duration::from_secs(10)).expect("the replica stops");
    assert_eq!(status.code(), Some(1), "a replica that lost its Lease exits 1");
    assert_eq!(holder(&leases, lease).await.as_deref(), Some("intruder"));
}

/// The leader SIGKILLed part-way through a pass over 1,000 rows: the
/// standby takes over within the lease duration, finishes the work, and
/// deletes nothing a row still asks for.
#[tokio::test]
async fn a_leader_killed_during_a_pass_is_replaced_and_the_pass_completes() {
    const ROWS: usize = 1000;
    let s = common::operator::setup(
        "failover",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, value text NOT NULL); \
             INSERT INTO t SELECT i, 'v0' FROM generate_series(1, {ROWS}) i;"
        ),
    )
    .await;
    let ns = s.namespace.as_str();
    let id = common::unique("replicas");
    let lease = "dbqo-failover-lease";
    let mut first = replica(&id, "first", ns, lease);
    eventually(Duration::from_secs(10), "the first replica to lead", || async {
        leads(&first).await.then_some(())
    })
    .await;
    let second = replica(&id, "second", ns, lease);
    let values = || async {
        configmaps(&s.client, ns)
            .await
            .into_values()
            .filter_map(|d| d.get("value").cloned())
            .collect::<Vec<String>>()
    };
    DbqrBuilder::new("items", &first)
        .query("SELECT id, value FROM t")
        .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"cm-{{Row.id}}\"\ndata:\n  value: \"{{Row.value}}\"\n")
        .create(&s.client, ns)
        .await;
    eventually(Duration::from_secs(60), "the first pass", || async {
        (values().await.len() == ROWS).then_some(())
    })
    .await;

    // Every row changes; the leader dies a third of the way through.
    s.db.batch_execute("UPDATE t SET value = 'v1'").await.unwrap();
    let done = eventually(Duration::from_secs(60), "a third of the update", || async {
        let done = values().await.iter().filter(|v| *v == "v1").count();
        (done >= ROWS / 3).then_some(done)
    })
    .await;
    let killed = Instant::now();
    first.signal("KILL");
    assert!(first.wait_for_exit(Duration::from_secs(5)).is_some());
    eventually(Duration::from_secs(60), "every object updated by the new leader", || async {
        let now = values().await;
        (now.len() == ROWS && now.iter().all(|v| v == "v1")).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(leads(&second).await, "the standby leads");
    assert!(took < Duration::from_secs(30), "took over and finished in {took:?}");
    wait_for_condition(&s.client, ns, "items", "Ready=True/Ready").await;
    dbqo_testenv::reliability::record(
        "leader-killed-mid-pass",
        &dbqo_testenv::reliability::Outcome::passed(1, ROWS as u64, Some(took))
            .with_note(format!("killed after {done} of {ROWS} updates")),
    );
}
