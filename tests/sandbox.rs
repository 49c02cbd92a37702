//! The README's first command, `hack/sandbox.sh`, in the mode that leaves the
//! sandbox running: it prints a KUBECONFIG and a database URL that work from
//! another shell (a row inserted there becomes a ConfigMap), and the stop
//! command it prints ends everything with exit 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::eventually;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

fn value_after<'a>(lines: &'a [String], prefix: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| l.strip_prefix(prefix))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sandbox_stays_up_until_stopped() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut sandbox = Command::new("bash")
        .arg(format!("{root}/hack/sandbox.sh"))
        .arg("--keep")
        // Its own environment, not the test run's.
        .env_remove(dbqo_testenv::ENV_VAR)
        .env_remove("KUBECONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start hack/sandbox.sh");
    // Read to the end on a thread of its own: the sandbox writes after the
    // stop too, and a closed pipe would fail it.
    let stdout = sandbox.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(300)) {
            let done = line.starts_with("Stop:");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    })
    .await
    .unwrap();
    let kubeconfig = value_after(&lines, "export KUBECONFIG=")
        .unwrap_or_else(|| panic!("no KUBECONFIG in {lines:#?}"));
    let url = value_after(&lines, "DATABASE_URL=").expect("a database URL");
    let stop_pid = value_after(&lines, "Stop: Ctrl-C here, or: kill ").expect("a stop command");

    // The team database: listed Ready, and the team's own connection worked.
    assert!(
        lines.iter().any(|l| l.contains("database.dbqo.dev/orders") && l.contains("Ready")),
        "the Database is shown Ready: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.split_whitespace().eq(["orders", "|", "orders"])),
        "psql with the Secret's uri connects as orders to orders: {lines:#?}"
    );
    let db = common::connect(url).await;
    db.batch_execute("INSERT INTO users (username, email) VALUES ('erin', 'erin@example.com')")
        .await
        .unwrap();
    let client = common::kube_client_for(std::path::Path::new(kubeconfig)).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(client, "default");
    let erin = eventually(Duration::from_secs(30), "user-erin", || async {
        configmaps.get_opt("user-erin").await.ok()?
    })
    .await;
    assert_eq!(erin.data.unwrap().get("email").map(String::as_str), Some("erin@example.com"));

    let status = Command::new("kill").arg(stop_pid).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = sandbox.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "the sandbox did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "the sandbox stopped with {exit}");
    assert!(common::connect_opt(url).await.is_none(), "PostgreSQL still up after the stop");
}
