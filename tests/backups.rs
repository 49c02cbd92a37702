//! Backups and restores of teams' databases on a real node (`hack/node.sh`:
//! kubelet + containerd): the backup image (`hack/image.sh backup`, the
//! client tools and the operator binary) runs as Jobs the operator creates;
//! dumps go to an S3-compatible server on the host (moto's, from PyPI); a
//! PostgreSQL and a MariaDB on the host are reached over the pod network.
//! What is asserted is what a team and the platform see: backups Completed
//! with the dump's size in the bucket, a new database holding the rows, one
//! Job at a time per Database, a failing Job shown as Failed with its
//! reason, retention letting old dumps go, and a backup before a delete.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::app::{App, Engine};
use common::node::{self, step, Image, Imaged};
use common::operator::{create_secret, Operator};
use common::{eventually, namespace};
use dbqo::api::backup::{BackupPhase, DatabaseBackup};
use dbqo::api::database::{Database, Phase};
use dbqo::api::server::DatabaseServer;
use dbqo_testenv::{MariaDb, MariaDbOptions, Postgres, PostgresOptions, S3Server};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

const TEST_LABEL: &str = "dbqo.dev/test";
const BUCKET: &str = "dumps";
/// A Job: pod start, the tool, the upload; twice for a failing one.
const WAIT: Duration = Duration::from_secs(180);

/// The test's world on the node: its client, namespaces and operator.
struct World {
    client: Client,
    platform: String,
    team: String,
    labels: Value,
    s3: S3Server,
}

impl World {
    fn databases(&self) -> Api<Database> {
        Api::namespaced(self.client.clone(), &self.team)
    }

    fn backups(&self) -> Api<DatabaseBackup> {
        Api::namespaced(self.client.clone(), &self.team)
    }

    async fn create<K>(&self, namespace: &str, object: Value) -> K
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let mut object = object;
        object["metadata"]["labels"] = self.labels.clone();
        let object: K = serde_json::from_value(object).unwrap();
        Api::<K>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &object)
            .await
            .expect("create")
    }

    async fn server(&self, name: &str, engine: Engine, admin: &str, bucket: &str, prefix: &str) {
        let server: DatabaseServer = self
            .create(
                &self.platform,
                json!({
                    "apiVersion": "dbqo.dev/v1alpha1", "kind": "DatabaseServer",
                    "metadata": {"name": name},
                    "spec": {
                        "engine": engine.name(),
                        "connectionSecretRef": {"name": admin},
                        "allowedNamespaces": [self.team],
                        "allowDelete": true,
                        "backupStorage": {
                            "endpoint": self.s3.endpoint, "bucket": bucket, "prefix": prefix,
                            "credentialsSecretRef": {"name": "s3"},
                        },
                    },
                }),
            )
            .await;
        drop(server);
    }

    async fn database(&self, name: &str, server: &str, extra: Value) {
        let mut spec = json!({"serverRef": {"name": server, "namespace": self.platform}});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let _: Database = self
            .create(
                &self.team,
                json!({"apiVersion": "dbqo.dev/v1alpha1", "kind": "Database",
                       "metadata": {"name": name}, "spec": spec}),
            )
            .await;
    }

    async fn backup(&self, name: &str, database: &str) {
        let _: DatabaseBackup = self
            .create(
                &self.team,
                json!({"apiVersion": "dbqo.dev/v1alpha1", "kind": "DatabaseBackup",
                       "metadata": {"name": name}, "spec": {"databaseRef": {"name": database}}}),
            )
            .await;
    }

    /// Waits for the `Database`'s phase and Ready reason.
    async fn wait_database(&self, name: &str, phase: Phase, reason: &str) -> String {
        let what = format!("Database {name}: {phase:?} ({reason})");
        eventually(WAIT, &what, || async {
            let status = self.databases().get_opt(name).await.ok()??.status?;
            let ready = status.conditions.first()?;
            (status.phase == Some(phase) && ready.reason == reason).then(|| ready.message.clone())
        })
        .await
    }

    /// Waits for the backup to reach a final phase; its status.
    async fn wait_backup(&self, name: &str) -> dbqo::api::backup::DatabaseBackupStatus {
        eventually(WAIT, &format!("backup {name} final"), || async {
            let status = self.backups().get_opt(name).await.ok()??.status?;
            status.phase.is_some_and(BackupPhase::is_final).then_some(status)
        })
        .await
    }

    async fn secret(&self, name: &str) -> BTreeMap<String, String> {
        let secret = Api::<Secret>::namespaced(self.client.clone(), &self.team)
            .get(name)
            .await
            .expect("the credentials Secret");
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect()
    }

    async fn events(&self) -> Vec<(String, String)> {
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(self.client.clone(), &self.team)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    fn dumps(&self, prefix: &str) -> Vec<(String, u64)> {
        self.s3.objects(BUCKET, prefix).expect("list the bucket")
    }
}

/// One engine, end to end.
async fn engine_backups(w: &World, engine: Engine, started: Instant) {
    let server = format!("{}-main", engine.name());
    let prefix = format!("{}/", engine.name());
    let team_prefix = format!("{prefix}{}/", w.team);
    w.server(&server, engine, &format!("{}-admin", engine.name()), BUCKET, &prefix).await;
    let shop = format!("{}-shop", engine.name());
    w.database(&shop, &server, json!({})).await;
    w.wait_database(&shop, Phase::Ready, "Ready").await;
    let data = w.secret(&format!("{shop}-credentials")).await;
    let mut app = App::connect(engine, &data, None).await.expect("the credentials work");
    app.exec("CREATE TABLE orders (id int PRIMARY KEY, item text)").await.unwrap();
    app.exec("INSERT INTO orders VALUES (1, 'anchor'), (2, 'buoy'), (3, 'cleat')").await.unwrap();
    drop(app);

    // Two backups at once: one Job at a time, both complete.
    let (first_name, second_name) =
        (format!("{}-first", engine.name()), format!("{}-second", engine.name()));
    w.backup(&first_name, &shop).await;
    w.backup(&second_name, &shop).await;
    let first = w.wait_backup(&first_name).await;
    let second = w.wait_backup(&second_name).await;
    step(started, &format!("{}: two backups done", engine.name()));
    for status in [&first, &second] {
        assert_eq!(status.phase, Some(BackupPhase::Completed), "{status:?}");
        assert!(status.size_bytes.unwrap() > 0);
    }
    let (a, b) = (&first.started_at, &second.started_at);
    let (first_done, second_start) = if a <= b {
        (first.completed_at.clone().unwrap(), b.clone().unwrap())
    } else {
        (second.completed_at.clone().unwrap(), a.clone().unwrap())
    };
    assert!(second_start >= first_done, "the second Job started before the first finished");
    let destination = first.destination.clone().unwrap();
    let key = destination.strip_prefix(&format!("s3://{BUCKET}/")).unwrap().to_owned();
    let shop_db = shop.replace('-', "_");
    assert!(key.starts_with(&format!("{team_prefix}{shop_db}/{first_name}-")), "{key}");
    let stored = w.dumps(&team_prefix);
    assert!(
        stored.contains(&(key.clone(), first.size_bytes.unwrap() as u64)),
        "the dump in the bucket, of the size the status says: {stored:?}"
    );
    let events = w.events().await;
    assert!(events.iter().any(|(r, _)| r == "BackupCompleted"), "{events:?}");

    // A restore into a new Database holds the rows, and they are the new user's.
    let copy = format!("{}-copy", engine.name());
    w.database(&copy, &server, json!({"restoreFrom": {"backup": first_name}})).await;
    w.wait_database(&copy, Phase::Ready, "Ready").await;
    step(started, &format!("{}: restored", engine.name()));
    let copied = w.secret(&format!("{copy}-credentials")).await;
    let mut app = App::connect(engine, &copied, None).await.expect("the credentials work");
    assert_eq!(app.count("orders").await, 3, "the restored database holds the rows");
    app.exec("INSERT INTO orders VALUES (4, 'davit')").await.unwrap();
    let restored = w.databases().get(&copy).await.unwrap().status.unwrap().restore.unwrap();
    assert_eq!((&restored.backup, restored.phase.as_str()), (&first_name, "Restored"));
    assert!(w
        .events()
        .await
        .iter()
        .any(|(r, n)| r == "Restored" && n.contains(&copy.replace('-', "_"))));

    // A Job that fails (its bucket does not exist): Failed, with the reason.
    let broken = format!("{}-nobucket", engine.name());
    w.server(&broken, engine, &format!("{}-admin", engine.name()), "no-such-bucket", "x/").await;
    let lost = format!("{}-lost", engine.name());
    w.database(&lost, &broken, json!({})).await;
    w.wait_database(&lost, Phase::Ready, "Ready").await;
    let doomed_name = format!("{}-doomed", engine.name());
    w.backup(&doomed_name, &lost).await;
    let doomed = w.wait_backup(&doomed_name).await;
    step(started, &format!("{}: failing backup reported", engine.name()));
    assert_eq!(doomed.phase, Some(BackupPhase::Failed));
    let reason = &doomed.conditions[0];
    assert_eq!(reason.reason, "BackupFailed", "{reason:?}");
    assert!(reason.message.contains("the Job failed"), "{}", reason.message);
    assert!(reason.message.contains("backup storage"), "the step that failed: {}", reason.message);
    assert!(
        reason.message.contains("no such object or bucket"),
        "in our words: {}",
        reason.message
    );
    // Nothing of the request or the storage's answer: its address, the
    // access key id an S3 answer can echo.
    let address = w.s3.endpoint.trim_start_matches("http://");
    for secret in [
        data["password"].as_str(),
        &copied["password"],
        dbqo_testenv::s3::SECRET_KEY,
        dbqo_testenv::s3::ACCESS_KEY,
        address,
    ] {
        assert!(!reason.message.contains(secret), "{}", reason.message);
    }

    // Scheduled backups with a retention of 2: older dumps go.
    let nightly = format!("{}-nightly", engine.name());
    w.database(&nightly, &server, json!({"backup": {"schedule": "*/4 * * * * *", "retention": 2}}))
        .await;
    let selector = format!("dbqo.dev/scheduled-for={}", {
        w.wait_database(&nightly, Phase::Ready, "Ready").await;
        w.databases().get(&nightly).await.unwrap().metadata.uid.unwrap()
    });
    let completed = std::sync::Mutex::new(std::collections::BTreeSet::new());
    eventually(WAIT, "four scheduled backups completed", || async {
        let list = w.backups().list(&ListParams::default().labels(&selector)).await.ok()?;
        let mut completed = completed.lock().unwrap();
        for b in list.items {
            if b.status.and_then(|s| s.phase) == Some(BackupPhase::Completed) {
                completed.insert(b.metadata.name.unwrap());
            }
        }
        (completed.len() >= 4).then_some(())
    })
    .await;
    let completed = completed.into_inner().unwrap();
    step(started, &format!("{}: four scheduled backups", engine.name()));
    // Once a year from now on: what is left settles.
    w.databases()
        .patch(
            &nightly,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"backup": {"schedule": "0 0 1 1 *", "retention": 2}}})),
        )
        .await
        .unwrap();
    let nightly_prefix = format!("{team_prefix}{}/", nightly.replace('-', "_"));
    let kept = eventually(WAIT, "two scheduled backups and two dumps left", || async {
        let list = w.backups().list(&ListParams::default().labels(&selector)).await.ok()?;
        let running = list
            .items
            .iter()
            .any(|b| !b.status.as_ref().and_then(|s| s.phase).is_some_and(BackupPhase::is_final));
        let dumps = w.dumps(&nightly_prefix);
        (!running && list.items.len() == 2 && dumps.len() == 2).then_some(dumps)
    })
    .await;
    let oldest = completed.iter().next().unwrap();
    assert!(kept.iter().all(|(k, _)| !k.contains(&format!("/{oldest}-"))), "{kept:?}");
    assert!(w.events().await.iter().any(|(r, _)| r == "BackupsPruned"));

    // Backup before delete: the dump of the last state, then the drop.
    let last = format!("{}-last", engine.name());
    w.database(&last, &server, json!({"deletionPolicy": "BackupThenDelete"})).await;
    w.wait_database(&last, Phase::Ready, "Ready").await;
    let mut app =
        App::connect(engine, &w.secret(&format!("{last}-credentials")).await, None).await.unwrap();
    app.exec("CREATE TABLE ledger (id int PRIMARY KEY)").await.unwrap();
    app.exec("INSERT INTO ledger VALUES (1), (2)").await.unwrap();
    drop(app);
    w.databases().delete(&last, &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "the Database gone after its backup", || async {
        w.databases().get_opt(&last).await.ok()?.is_none().then_some(())
    })
    .await;
    step(started, &format!("{}: backed up, then deleted", engine.name()));
    let finals = w
        .backups()
        .list(&ListParams::default().labels("dbqo.dev/before-delete"))
        .await
        .unwrap()
        .items;
    let final_backup =
        finals.iter().find(|b| b.spec.database_ref.name == last).expect("the backup before delete");
    let status = final_backup.status.clone().unwrap();
    assert_eq!(status.phase, Some(BackupPhase::Completed));
    assert!(w
        .events()
        .await
        .iter()
        .any(|(r, n)| r == "Dropped" && n.contains(&last.replace('-', "_"))));
    let again = format!("{}-again", engine.name());
    let from = final_backup.metadata.name.clone().unwrap();
    w.database(&again, &server, json!({"restoreFrom": {"backup": from}})).await;
    w.wait_database(&again, Phase::Ready, "Ready").await;
    let mut app =
        App::connect(engine, &w.secret(&format!("{again}-credentials")).await, None).await.unwrap();
    assert_eq!(app.count("ledger").await, 2, "the dump taken before the drop holds the rows");
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_and_restores_run_as_jobs_on_a_real_node() {
    let started = Instant::now();
    let Imaged { node, image, dir } = node::start("backups", Image::Backup, started).await;
    let ip = node.info.host_ip;
    let (postgres, mariadb, s3) = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            let pg = Postgres::start(
                &dir.join("postgres"),
                PostgresOptions { listen: Some(ip), ..PostgresOptions::default() },
            )
            .expect("a PostgreSQL pods reach");
            let my = MariaDb::start(
                &dir.join("mariadb"),
                MariaDbOptions { listen: Some(ip), ..MariaDbOptions::default() },
            )
            .expect("a MariaDB pods reach");
            let s3 = S3Server::start(&dir.join("s3"), ip).expect("an S3 server pods reach");
            (pg, my, s3)
        })
        .await
        .unwrap()
    };
    s3.create_bucket(BUCKET).unwrap();
    step(started, "servers up");

    let client = common::kube_client_for(&node.info.kubeconfig).await;
    common::install_crd(&client).await;
    let id = common::unique("backups");
    let operator = Operator::start_on(
        &node.info.kubeconfig,
        &id,
        &["--backup-image", &image, "--min-backup-interval-seconds", "1"],
    );
    let platform = namespace(&client, "platform").await;
    let team = namespace(&client, "team").await;
    let pg_keys = BTreeMap::from([
        ("host", postgres.info.host.clone()),
        ("port", postgres.info.port.to_string()),
        ("username", postgres.info.user.clone()),
        ("password", postgres.info.password.clone()),
        ("dbname", "postgres".to_owned()),
        ("sslmode", "disable".to_owned()),
    ]);
    create_secret(&client, &platform, "postgres-admin", pg_keys).await;
    let my_keys = BTreeMap::from([
        ("host", mariadb.info.host.clone()),
        ("port", mariadb.info.port.to_string()),
        ("username", mariadb.info.user.clone()),
        ("password", mariadb.info.password.clone()),
        ("sslmode", "disable".to_owned()),
    ]);
    create_secret(&client, &platform, "mariadb-admin", my_keys).await;
    let s3_keys = BTreeMap::from([
        ("accessKeyId", dbqo_testenv::s3::ACCESS_KEY.to_owned()),
        ("secretAccessKey", dbqo_testenv::s3::SECRET_KEY.to_owned()),
    ]);
    create_secret(&client, &platform, "s3", s3_keys).await;
    let world = World { client, platform, team, labels: json!({ TEST_LABEL: id }), s3 };

    engine_backups(&world, Engine::Postgres, started).await;
    engine_backups(&world, Engine::MariaDb, started).await;

    // Passes that waited on a restore or a backup Job are neither failures
    // nor errors in the metrics.
    for waiting in ["Restoring", "BackingUp"] {
        let errors = format!("dbqo_database_errors_total{{reason=\"{waiting}\"}}");
        assert_eq!(operator.metric(&errors).await, 0.0, "{errors}");
    }
    assert!(operator.metric("dbqo_database_passes_total{result=\"success\"}").await > 0.0);

    // The storage credentials never reach the team's view or the log.
    let log = operator.log();
    assert!(!log.contains(dbqo_testenv::s3::SECRET_KEY), "the storage secret in the log");
    for (reason, note) in world.events().await {
        assert!(!note.contains(dbqo_testenv::s3::SECRET_KEY), "the storage secret in {reason}");
    }
    drop(operator);
    drop(node);
}
