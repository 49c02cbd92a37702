//! Shared helpers of the acceptance tests: clients for the real control plane
//! and PostgreSQL of [`dbqo_testenv`], per-test isolation, deadline polling.
#![allow(dead_code)]

use std::{
    future::Future,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    api::{Api, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    Client, Config,
};
use tokio_postgres::NoTls;

pub use dbqo_testenv::shared;

pub mod app;
pub mod node;
pub mod operator;

/// A name unique within this test run: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A client of the shared control plane, as cluster admin.
pub async fn kube_client() -> Client {
    kube_client_for(&shared().control_plane.kubeconfig).await
}

/// A client of the control plane behind `kubeconfig`.
pub async fn kube_client_for(kubeconfig: &std::path::Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig is usable");
    Client::try_from(config).expect("build kube client")
}

/// A fresh namespace for one test.
pub async fn namespace(client: &Client, prefix: &str) -> String {
    let name = unique(prefix);
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": name } })).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// A fresh database for one test; returns its connection URL (superuser, no TLS).
pub async fn database(prefix: &str) -> String {
    let env = shared();
    let name = unique(prefix).replace('-', "_");
    let admin = connect(&env.postgres.url("postgres")).await;
    admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.expect("create database");
    env.postgres.url(&name)
}

/// A plain connection, for test setup.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(url, NoTls).await.expect("connect to test PostgreSQL");
    tokio::spawn(connection);
    client
}

/// A plain connection, or `None` if the server cannot be reached.
pub async fn connect_opt(url: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The CRDs as the `crd` subcommand prints them (DBQR, DatabaseServer, Database).
pub async fn install_crd(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in dbqo::cli::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(&name, &PatchParams::apply("dbqo-tests").force(), &Patch::Apply(&crd))
            .await
            .expect("apply the CRD");
        eventually(Duration::from_secs(30), "the CRD to be established", || {
            let crds = crds.clone();
            let name = name.clone();
            async move {
                let crd = crds.get(&name).await.ok()?;
                let established = crd
                    .status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        })
        .await;
    }
}

/// A control plane of its own (so no other test's requests count), with the
/// CRD and namespace `ns`; the control plane stops when dropped.
pub async fn private_cluster(ns: &str) -> (dbqo_testenv::ControlPlane, Client, std::path::PathBuf) {
    let dir = dbqo_testenv::run_dir().with_extension(format!("{ns}-kube"));
    let control_plane = tokio::task::spawn_blocking(move || {
        dbqo_testenv::ControlPlane::start(&dir, &dbqo_testenv::assets().unwrap()).unwrap()
    })
    .await
    .unwrap();
    let kubeconfig = control_plane.info.kubeconfig.clone();
    let client = kube_client_for(&kubeconfig).await;
    install_crd(&client).await;
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace");
    (control_plane, client, kubeconfig)
}

/// API requests counted by (verb, resource).
pub type RequestCounts = std::collections::BTreeMap<(String, String), f64>;

/// `apiserver_request_total` of JSON clients, summed by (verb, resource).
/// The control plane's own clients speak protobuf (the API server GETs the
/// `kubernetes` Service every 10 s, the controllers list and watch), the
/// operator speaks JSON: counting JSON requests counts the operator's (and
/// the test's, which makes none while measuring).
pub async fn request_counts(client: &Client) -> RequestCounts {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.expect("read /metrics");
    let mut counts = RequestCounts::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        if label("contentType") != "application/json" {
            continue;
        }
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *counts.entry((label("verb"), label("resource"))).or_insert(0.0) += value;
    }
    counts
}

/// Requests counted between two readings whose (verb, resource) `pick` accepts.
pub fn requests_between(
    before: &RequestCounts,
    after: &RequestCounts,
    pick: impl Fn(&str, &str) -> bool,
) -> f64 {
    after
        .iter()
        .filter(|((verb, resource), _)| pick(verb, resource))
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0.0))
        .sum()
}

/// Resident memory of process `pid` in MiB (`VmRSS`), 0 if it is gone.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Connection Secret keys for database `dbname` on a PostgreSQL of a test's own.
pub fn server_secret_keys(
    server: &dbqo_testenv::PostgresInfo,
    dbname: &str,
) -> std::collections::BTreeMap<&'static str, String> {
    std::collections::BTreeMap::from([
        ("host", server.host.clone()),
        ("port", server.port.to_string()),
        ("username", server.user.clone()),
        ("password", server.password.clone()),
        ("dbname", dbname.to_owned()),
        ("sslmode", "disable".to_owned()),
    ])
}

/// A PostgreSQL of the test's own (`name` tells its directory apart), with
/// `max_connections` when given; stopped when dropped.
pub async fn private_postgres(name: &str, max_connections: Option<u32>) -> dbqo_testenv::Postgres {
    let dir = dbqo_testenv::run_dir().with_extension(format!("{name}-pg"));
    let options = dbqo_testenv::PostgresOptions {
        max_connections,
        ..dbqo_testenv::PostgresOptions::default()
    };
    tokio::task::spawn_blocking(move || dbqo_testenv::Postgres::start(&dir, options))
        .await
        .unwrap()
        .expect("a private PostgreSQL")
}

/// A kubeconfig of the shared control plane in which the admin impersonates
/// `user` (kubeconfig `as:`): a user of a test's own, with no rights but what
/// the test grants it by RBAC.
pub fn impersonating_kubeconfig(user: &str) -> std::path::PathBuf {
    let env = shared();
    let admin = std::fs::read_to_string(&env.control_plane.kubeconfig).expect("admin kubeconfig");
    let token = format!("    token: {}\n", env.control_plane.token);
    assert!(admin.contains(&token), "the admin kubeconfig has its token line");
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique("as")));
    std::fs::write(&path, admin.replace(&token, &format!("{token}    as: {user}\n")))
        .expect("write kubeconfig");
    path
}

/// Waits until one backend in `db`'s database waits for a lock (a
/// statement the test holds up on purpose). Ask on a connection outside any
/// transaction: a transaction sees one snapshot of pg_stat_activity.
pub async fn wait_for_a_lock_waiter(db: &tokio_postgres::Client, what: &str) {
    eventually(Duration::from_secs(60), what, || async {
        let waiting: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .ok()?
            .get(0);
        (waiting == 1).then_some(())
    })
    .await
}

/// `GET path` over plain HTTP/1.0: the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response).await.ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The value of the sample `name` (with its labels, as printed) in `text`.
pub fn metric_sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Runs `hack/chart.py` (Helm's engine) with `request`; its JSON answer.
pub fn helm(request: &serde_json::Value) -> serde_json::Value {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let venv = std::process::Command::new("bash")
        .arg(format!("{root}/hack/helm-venv.sh"))
        .output()
        .expect("run hack/helm-venv.sh");
    assert!(venv.status.success(), "{}", String::from_utf8_lossy(&venv.stderr));
    let python = String::from_utf8(venv.stdout).unwrap().trim().to_owned();
    let mut child = std::process::Command::new(python)
        .arg(format!("{root}/hack/chart.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "hack/chart.py failed");
    serde_json::from_slice(&out.stdout).expect("hack/chart.py answers JSON")
}
