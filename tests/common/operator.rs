//! Running the real operator binary against the shared environment, and the
//! objects tests create for it.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use dbqo::api::DatabaseQueryResource;
use dbqo_testenv::process::Supervised;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    api::{Api, ListParams, Patch, PatchParams, PostParams},
    Client,
};
use serde_json::{json, Value};

use super::{eventually, shared, unique};

/// The label tests put on their DBQRs; each operator only sees its test's.
pub const TEST_LABEL: &str = "dbqo.dev/test";

static RUST_LOG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The operators this process starts log at `filter` instead of the tests'
/// per-pass debug records (the benchmarks measure the operator at `info`).
pub fn set_rust_log(filter: &str) {
    let _ = RUST_LOG.set(filter.to_owned());
}

/// A running `db-query-operator run`, stopped when dropped.
pub struct Operator {
    pub id: String,
    process: Supervised,
    /// Where it serves `/metrics`, and `/healthz` and `/readyz`.
    metrics: String,
    probes: String,
}

/// A loopback address with a port nothing listens on now (the kernel hands
/// ephemeral ports out in turn, so it is not handed out again at once).
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().to_string()
}

impl Operator {
    /// Starts the operator for DBQRs labelled with a fresh test id.
    pub fn start(extra_args: &[&str]) -> Self {
        let id = unique("op");
        Self::start_with_id(&id, extra_args)
    }

    pub fn start_with_id(id: &str, extra_args: &[&str]) -> Self {
        Self::start_on(&shared().control_plane.kubeconfig, id, extra_args)
    }

    /// Starts the operator against the control plane of `kubeconfig`.
    pub fn start_on(kubeconfig: &std::path::Path, id: &str, extra_args: &[&str]) -> Self {
        Self::spawn(kubeconfig, id, id, extra_args)
    }

    /// Stops this operator (SIGTERM, as a rollout does) and starts another
    /// for the same DBQRs on the shared control plane.
    pub fn restart(self, extra_args: &[&str]) -> Self {
        let id = self.id.clone();
        drop(self);
        Self::start_with_id(&id, extra_args)
    }

    /// One of several replicas for the DBQRs labelled `id`, with a log of its own.
    pub fn start_replica(id: &str, replica: &str, extra_args: &[&str]) -> Self {
        let log = format!("{id}-{replica}");
        Self::spawn(&shared().control_plane.kubeconfig, id, &log, extra_args)
    }

    fn spawn(kubeconfig: &std::path::Path, id: &str, log: &str, extra_args: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("{log}.operator.log"));
        // Ports of its own for the HTTP endpoints: tests run operators side
        // by side, and observe passes through /metrics.
        let (metrics, probes) = (free_address(), free_address());
        let mut args: Vec<String> = vec![
            "run".into(),
            "--log-format".into(),
            "json".into(),
            "--label-selector".into(),
            format!("{TEST_LABEL}={id}"),
            "--metrics-bind-address".into(),
            metrics.clone(),
            "--health-probe-bind-address".into(),
            probes.clone(),
        ];
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let kubeconfig = kubeconfig.to_string_lossy().into_owned();
        // DBQO_OPERATOR_WRAPPER runs the operator under a profiler
        // (e.g. `heaptrack`), for the benchmarks.
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_db-query-operator"));
        let (program, args) = match std::env::var_os("DBQO_OPERATOR_WRAPPER") {
            Some(wrapper) => {
                let mut wrapped = vec![binary.to_string_lossy().into_owned()];
                wrapped.extend(args);
                (PathBuf::from(wrapper), wrapped)
            }
            None => (binary, args),
        };
        let process = Supervised::start_with_env(
            "db-query-operator",
            &[],
            &program,
            &args,
            &[
                ("KUBECONFIG", &kubeconfig),
                (
                    "RUST_LOG",
                    RUST_LOG.get().map_or("info,dbqo=debug,dbqo_actors=debug", String::as_str),
                ),
            ],
            log,
        )
        .expect("start the operator");
        Self { id: id.to_owned(), process, metrics, probes }
    }

    /// Everything the operator logged so far. For checks that something
    /// is *absent* from every log line (a Secret's value); results are
    /// observed in the cluster, the database and `/metrics`, not here.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.process.log).unwrap_or_default()
    }

    /// The text of `/metrics` now (empty before it answers).
    async fn metrics_text(&self) -> String {
        super::http_get(&self.metrics, "/metrics").await.map(|(_, body)| body).unwrap_or_default()
    }

    /// What `/metrics` says of passes now (zero before it answers).
    pub async fn totals(&self) -> PassTotals {
        PassTotals::from_metrics(&self.metrics_text().await)
    }

    /// One sample of `/metrics` (`name` with its labels), 0 if absent.
    pub async fn metric(&self, name: &str) -> f64 {
        super::metric_sample(&self.metrics_text().await, name).unwrap_or(0.0)
    }

    /// Whether this replica runs the actors, by its `dbqo_leader` gauge.
    pub async fn leads(&self) -> bool {
        self.metric("dbqo_leader").await == 1.0
    }

    /// Failed passes so far whose condition reason is `reason`.
    pub async fn failures_of(&self, reason: &str) -> u64 {
        self.metric(&format!("dbqo_errors_total{{reason=\"{reason}\"}}")).await as u64
    }

    /// Waits for passes after `since` that satisfy `check`: the passes
    /// between two looks at `/metrics` (at least one), taken together; what
    /// they did. Passes that do not satisfy it are left behind.
    pub async fn wait_for_pass(
        &self,
        since: PassTotals,
        what: &str,
        check: impl Fn(&PassTotals) -> bool,
    ) -> PassTotals {
        let base = std::cell::Cell::new(since);
        eventually(Duration::from_secs(60), what, || async {
            let now = self.totals().await;
            let done = now.since(&base.get());
            if done.passes == 0 {
                return None;
            }
            base.set(now);
            check(&done).then_some(done)
        })
        .await
    }

    /// Waits until `count` more passes than `since` have finished.
    pub async fn wait_for_passes(&self, since: PassTotals, count: u64, timeout: Duration) {
        eventually(timeout, &format!("{count} more passes"), || async {
            (self.totals().await.since(&since).passes >= count).then_some(())
        })
        .await
    }

    /// Where it serves `what` ("metrics", "probes"), once it accepts
    /// connections there.
    pub async fn http_address(&self, what: &str) -> String {
        let address = match what {
            "metrics" => self.metrics.clone(),
            _ => self.probes.clone(),
        };
        eventually(Duration::from_secs(10), &format!("{what} on {address}"), || async {
            tokio::net::TcpStream::connect(&address).await.ok().map(|_| ())
        })
        .await;
        address
    }

    /// The operator's process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends signal `name` (`TERM`, `INT`, ...) to the operator.
    pub fn signal(&self, name: &str) {
        let kill = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(kill.success(), "kill -{name}");
    }

    /// SIGTERM, then waits until `/readyz` says the drain has begun (503);
    /// the probes' address.
    pub async fn start_draining(&self) -> String {
        let probes = self.http_address("probes").await;
        self.signal("TERM");
        eventually(Duration::from_secs(10), "/readyz 503 while draining", || async {
            (super::http_get(&probes, "/readyz").await?.0 == 503).then_some(())
        })
        .await;
        probes
    }

    /// Waits for the process to exit; its exit status, or `None` on timeout.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.process.wait_timeout(timeout)
    }
}

/// What the operator's `/metrics` count of its DBQR passes, all DBQRs
/// together; `since` makes it what happened in between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassTotals {
    pub passes: u64,
    pub failed: u64,
    pub rows: u64,
    pub applied: u64,
    pub skipped: u64,
    pub pruned: u64,
    /// Deletions the prune guard held, summed over passes.
    pub held: u64,
    /// Passes restricted to the keys of a notification (also in `passes`).
    pub keyed: u64,
}

impl PassTotals {
    pub fn from_metrics(text: &str) -> Self {
        let sample = |name: &str| super::metric_sample(text, name).unwrap_or(0.0) as u64;
        let objects =
            |operation: &str| sample(&format!("dbqo_objects_total{{operation=\"{operation}\"}}"));
        let failed = sample("dbqo_passes_total{result=\"failure\"}");
        Self {
            passes: sample("dbqo_passes_total{result=\"success\"}") + failed,
            failed,
            rows: sample("dbqo_rows_total"),
            applied: objects("applied"),
            skipped: objects("skipped"),
            pruned: objects("pruned"),
            held: objects("held"),
            keyed: sample("dbqo_keyed_passes_total"),
        }
    }

    /// What happened after `before`.
    pub fn since(&self, before: &PassTotals) -> PassTotals {
        PassTotals {
            passes: self.passes - before.passes,
            failed: self.failed - before.failed,
            rows: self.rows - before.rows,
            applied: self.applied - before.applied,
            skipped: self.skipped - before.skipped,
            pruned: self.pruned - before.pruned,
            held: self.held - before.held,
            keyed: self.keyed - before.keyed,
        }
    }

    /// Every pass succeeded.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }

    /// Every pass succeeded, sent no write and skipped `objects` objects:
    /// the DBQR (or the DBQRs, `objects` between them) is converged.
    pub fn converged(&self, objects: u64) -> bool {
        self.ok() && self.applied == 0 && self.pruned == 0 && self.skipped == objects * self.passes
    }
}

/// A DBQR manifest for tests.
pub struct DbqrBuilder {
    value: Value,
}

impl DbqrBuilder {
    pub fn new(name: &str, operator: &Operator) -> Self {
        Self {
            value: json!({
                "apiVersion": "dbqo.dev/v1alpha1",
                "kind": "DatabaseQueryResource",
                "metadata": { "name": name, "labels": { TEST_LABEL: operator.id } },
                "spec": {
                    "pollInterval": "1s",
                    "database": { "connectionSecretRef": { "name": "db" } },
                    "query": "SELECT 1 AS id",
                    "template": "",
                }
            }),
        }
    }

    pub fn query(mut self, sql: &str) -> Self {
        self.value["spec"]["query"] = json!(sql);
        self
    }

    pub fn template(mut self, template: &str) -> Self {
        self.value["spec"]["template"] = json!(template);
        self
    }

    pub fn secret(mut self, name: &str) -> Self {
        self.value["spec"]["database"]["connectionSecretRef"]["name"] = json!(name);
        self
    }

    /// Sets any spec field by JSON pointer below `spec`, e.g. `/deletionPolicy`.
    pub fn set(mut self, pointer: &str, value: Value) -> Self {
        let mut target = &mut self.value["spec"];
        let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len() - 1] {
            target = &mut target[*part];
        }
        target[parts[parts.len() - 1]] = value;
        self
    }

    pub async fn create(self, client: &Client, namespace: &str) -> DatabaseQueryResource {
        let dbqr: DatabaseQueryResource = serde_json::from_value(self.value).expect("a valid DBQR");
        Api::<DatabaseQueryResource>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &dbqr)
            .await
            .expect("create the DBQR")
    }
}

/// A connection Secret with individual keys for a database URL of the test PostgreSQL.
pub async fn create_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    data: BTreeMap<&str, String>,
) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": name },
        "stringData": data,
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::apply("dbqo-tests").force(), &Patch::Apply(&secret))
        .await
        .expect("apply the secret");
}

/// Secret keys pointing at `database` on the shared PostgreSQL.
pub fn secret_keys(database_url: &str) -> BTreeMap<&'static str, String> {
    let env = shared();
    let dbname = database_url.rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
    BTreeMap::from([
        ("host", env.postgres.host.clone()),
        ("port", env.postgres.port.to_string()),
        ("username", env.postgres.user.clone()),
        ("password", env.postgres.password.clone()),
        ("dbname", dbname),
        ("sslmode", "disable".to_owned()),
    ])
}

/// ConfigMaps in `namespace` by name, their data.
pub async fn configmaps(
    client: &Client,
    namespace: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list configmaps")
        .items
        .into_iter()
        .filter(|cm| cm.metadata.name.as_deref() != Some("kube-root-ca.crt"))
        .map(|cm| (cm.metadata.name.unwrap_or_default(), cm.data.unwrap_or_default()))
        .collect()
}

/// Waits until the ConfigMap names in `namespace` are exactly `names`.
pub async fn wait_for_configmaps(
    client: &Client,
    namespace: &str,
    names: &[&str],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    eventually(
        Duration::from_secs(30),
        &format!("configmaps {expected:?} in {namespace}"),
        || async {
            let cms = configmaps(client, namespace).await;
            (cms.keys().cloned().collect::<Vec<_>>() == expected).then_some(cms)
        },
    )
    .await
}

/// A condition of a DBQR as (status, reason, message).
pub async fn condition(
    client: &Client,
    namespace: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let dbqr = Api::<DatabaseQueryResource>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .ok()??;
    dbqr.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason, c.message))
}

/// Waits for condition `expected` of DBQR `name`, written as kubectl's
/// `--for` reads: `"Synced=False/PruneHeld"` (type=status/reason); the
/// condition's message.
pub async fn wait_for_condition(
    client: &Client,
    namespace: &str,
    name: &str,
    expected: &str,
) -> String {
    let (type_, rest) = expected.split_once('=').expect("Type=Status/Reason");
    let (status, reason) = rest.split_once('/').expect("Type=Status/Reason");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = condition(client, namespace, name, type_).await;
        if let Some((s, r, m)) = &seen {
            if s == status && r == reason {
                return m.clone();
            }
        }
        // The condition it has instead says what went wrong.
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after 30s waiting for {name}: {expected}; it is {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What most operator tests start from.
pub struct Setup {
    pub client: Client,
    pub namespace: String,
    pub url: String,
    pub db: tokio_postgres::Client,
}

/// [`setup`], and an operator for the test's DBQRs.
pub async fn setup_and_start(prefix: &str, schema: &str) -> (Setup, Operator) {
    (setup(prefix, schema).await, Operator::start(&[]))
}

/// A namespace, a database holding `schema`, and a Secret `db` pointing at it.
pub async fn setup(prefix: &str, schema: &str) -> Setup {
    let client = super::kube_client().await;
    super::install_crd(&client).await;
    let namespace = super::namespace(&client, prefix).await;
    let url = super::database(prefix).await;
    let db = super::connect(&url).await;
    db.batch_execute(schema).await.expect("schema");
    create_secret(&client, &namespace, "db", secret_keys(&url)).await;
    Setup { client, namespace, url, db }
}

/// The SQL of `db-query-operator trigger-sql` for `table` and `channel`.
pub fn trigger_sql(table: &str, channel: &str) -> String {
    trigger_sql_with(&["--table", table, "--channel", channel])
}

/// The SQL of `db-query-operator trigger-sql` with `args`.
pub fn trigger_sql_with(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_db-query-operator"))
        .arg("trigger-sql")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until the operator LISTENs on `db`'s database.
pub async fn wait_for_listen(db: &tokio_postgres::Client) {
    eventually(Duration::from_secs(10), "the LISTEN connection", || async {
        let row = db
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE '%(listen)'", &[])
            .await
            .ok()?;
        (row.get::<_, i64>(0) == 1).then_some(())
    })
    .await;
}

/// Event reasons about objects in `namespace`.
pub async fn event_reasons(client: &Client, namespace: &str) -> Vec<String> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map(|l| l.items.into_iter().filter_map(|e| e.reason).collect())
        .unwrap_or_default()
}
