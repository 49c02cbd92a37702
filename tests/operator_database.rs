//! The database side of the operator (SPEC §10): outages, credentials, TLS,
//! Secret changes and cross-namespace Secrets, against real PostgreSQL servers.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::operator::{
    create_secret, secret_keys, wait_for_condition, wait_for_configmaps, DbqrBuilder, Operator,
};
use common::{eventually, kube_client, shared};
use kube::{
    api::{Api, Patch, PatchParams},
    Client,
};
use serde_json::json;

const ITEMS: &str =
    "CREATE TABLE items (name text PRIMARY KEY); INSERT INTO items VALUES ('one'), ('two');";
const ITEM_CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"item-{{Row.name}}\"\n";

/// Condition `type_` of DBQR `items` still has `reason` (the fault still shows).
async fn condition_still(client: &Client, ns: &str, type_: &str, reason: &str) {
    let now = common::operator::condition(client, ns, "items", type_).await;
    assert_eq!(now.map(|c| c.1).as_deref(), Some(reason), "{type_} while the fault lasts");
}

async fn cluster(prefix: &str) -> (Client, String) {
    let client = kube_client().await;
    common::install_crd(&client).await;
    let namespace = common::namespace(&client, prefix).await;
    (client, namespace)
}

#[tokio::test]
async fn a_database_outage_flips_conditions_prunes_nothing_and_recovers() {
    let (client, ns) = cluster("outage").await;
    let mut server = common::private_postgres("outage", None).await;
    let url = server.info.url("postgres");
    common::connect(&url).await.batch_execute(ITEMS).await.unwrap();
    let mut keys = secret_keys(&url);
    keys.insert("port", server.info.port.to_string());
    create_secret(&client, &ns, "db", keys).await;

    let operator = Operator::start(&[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name FROM items")
        .template(ITEM_CM)
        .set("/database/pool/connectTimeout", json!("1s"))
        .create(&client, &ns)
        .await;
    wait_for_configmaps(&client, &ns, &["item-one", "item-two"]).await;
    wait_for_condition(&client, &ns, "items", "DatabaseConnected=True/Connected").await;

    let stopped = std::time::Instant::now();
    let server = tokio::task::spawn_blocking(move || {
        server.pause();
        server
    })
    .await
    .unwrap();
    let message =
        wait_for_condition(&client, &ns, "items", "DatabaseConnected=False/ConnectionFailed").await;
    let shown = stopped.elapsed();
    assert!(!message.contains(&shared().postgres.password), "{message}");
    wait_for_condition(&client, &ns, "items", "Ready=False/ConnectionFailed").await;
    // Several failed passes later, every object is still there.
    eventually(Duration::from_secs(30), "three failed passes", || async {
        (operator.totals().await.failed >= 3).then_some(())
    })
    .await;
    assert_eq!(
        common::operator::configmaps(&client, &ns).await.len(),
        2,
        "nothing pruned while the database is down"
    );
    // The outage lasts 30 s (its length is the fault, not a wait for a result).
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    assert_eq!(common::operator::configmaps(&client, &ns).await.len(), 2, "nothing pruned in 30 s");
    condition_still(&client, &ns, "DatabaseConnected", "ConnectionFailed").await;

    let mut server = server;
    let restarted = std::time::Instant::now();
    let _server = tokio::task::spawn_blocking(move || {
        server.resume().unwrap();
        server
    })
    .await
    .unwrap();
    wait_for_condition(&client, &ns, "items", "Ready=True/Ready").await;
    let recovered = restarted.elapsed();
    dbqo_testenv::reliability::record(
        "database-stopped",
        &dbqo_testenv::reliability::Outcome::passed(1, 2, Some(recovered))
            .with_note(format!("shown after {:.1} s", shown.as_secs_f64())),
    );
}

#[tokio::test]
async fn wrong_password_unknown_host_and_tls_mismatch_have_clear_reasons() {
    let (client, ns) = cluster("connerr").await;
    let url = common::database("connerr").await;
    let operator = Operator::start(&[]);

    let mut wrong_password = secret_keys(&url);
    wrong_password.insert("password", "not-the-password".into());
    create_secret(&client, &ns, "wrong-password", wrong_password).await;
    let mut unknown_host = secret_keys(&url);
    unknown_host.insert("host", "no-such-host.invalid".into());
    create_secret(&client, &ns, "unknown-host", unknown_host).await;

    // A server without TLS, and a client that requires it.
    let plain = common::private_postgres("plain", None).await;
    let mut requires_tls = secret_keys(&url);
    requires_tls.insert("port", plain.info.port.to_string());
    requires_tls.insert("dbname", "postgres".into());
    requires_tls.insert("sslmode", "require".into());
    create_secret(&client, &ns, "requires-tls", requires_tls).await;

    for secret in ["wrong-password", "unknown-host", "requires-tls", "missing-secret"] {
        DbqrBuilder::new(secret, &operator)
            .query("SELECT 1 AS id")
            .template(ITEM_CM)
            .secret(secret)
            .create(&client, &ns)
            .await;
    }
    let m = wait_for_condition(
        &client,
        &ns,
        "wrong-password",
        "DatabaseConnected=False/AuthenticationFailed",
    )
    .await;
    assert!(m.contains("password authentication failed"), "{m}");
    assert!(!m.contains("not-the-password"), "{m}");
    let m = wait_for_condition(
        &client,
        &ns,
        "unknown-host",
        "DatabaseConnected=False/ConnectionFailed",
    )
    .await;
    assert!(
        m.contains("no-such-host.invalid")
            || m.to_lowercase().contains("resolve")
            || m.contains("lookup"),
        "{m}"
    );
    let m = wait_for_condition(
        &client,
        &ns,
        "requires-tls",
        "DatabaseConnected=False/ConnectionFailed",
    )
    .await;
    assert!(m.to_lowercase().contains("tls") || m.to_lowercase().contains("ssl"), "{m}");
    let m = wait_for_condition(
        &client,
        &ns,
        "missing-secret",
        "DatabaseConnected=False/SecretNotFound",
    )
    .await;
    assert!(m.contains("missing-secret"), "{m}");
    drop(plain);
    dbqo_testenv::reliability::record(
        "tls-not-offered",
        &dbqo_testenv::reliability::Outcome::passed(4, 4, None),
    );
}

#[tokio::test]
async fn tls_modes_behave_as_libpq_defines() {
    let (client, ns) = cluster("tls").await;
    let url = common::database("tls").await;
    common::connect(&url).await.batch_execute(ITEMS).await.unwrap();
    let env = shared();
    let ca =
        std::fs::read_to_string(env.postgres.ca_cert.as_ref().expect("the shared server has TLS"))
            .unwrap();
    let operator = Operator::start(&[]);

    // verify-full with the right CA, by IP (in the certificate's SANs).
    let mut full = secret_keys(&url);
    full.insert("sslmode", "verify-full".into());
    full.insert("ca.crt", ca.clone());
    create_secret(&client, &ns, "verify-full", full).await;
    // verify-full against `localhost` is also in the SANs; a wrong CA must fail.
    let mut wrong_ca = secret_keys(&url);
    wrong_ca.insert("sslmode", "verify-ca".into());
    wrong_ca.insert("ca.crt", include_str!("fixtures/unrelated-ca.pem").into());
    create_secret(&client, &ns, "wrong-ca", wrong_ca).await;
    // A full URI with sslmode=require (no verification) and application_name.
    let uri = url.replace("sslmode=disable", "sslmode=require&application_name=dbqo-tls-test");
    create_secret(&client, &ns, "uri-require", BTreeMap::from([("uri", uri)])).await;

    DbqrBuilder::new("full", &operator)
        .query("SELECT name FROM items WHERE (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())")
        .template(ITEM_CM)
        .secret("verify-full")
        .set("/database/connectionSecretRef/caCertKey", json!("ca.crt"))
        .create(&client, &ns)
        .await;
    wait_for_configmaps(&client, &ns, &["item-one", "item-two"]).await;

    DbqrBuilder::new("wrong-ca", &operator)
        .query("SELECT name FROM items")
        .template(ITEM_CM)
        .secret("wrong-ca")
        .set("/database/connectionSecretRef/caCertKey", json!("ca.crt"))
        .create(&client, &ns)
        .await;
    let m =
        wait_for_condition(&client, &ns, "wrong-ca", "DatabaseConnected=False/ConnectionFailed")
            .await;
    assert!(m.to_lowercase().contains("certificate"), "{m}");

    DbqrBuilder::new("uri", &operator)
        .query("SELECT 'uri' AS name WHERE current_setting('application_name') = 'dbqo-tls-test' AND (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())")
        .template(ITEM_CM)
        .secret("uri-require")
        .set("/database/connectionSecretRef/uriKey", json!("uri"))
        .create(&client, &ns)
        .await;
    wait_for_configmaps(&client, &ns, &["item-one", "item-two", "item-uri"]).await;
}

/// Every verifying sslmode with the server's CA and with an unrelated one,
/// as libpq defines them: `require` verifies the chain when it is given a
/// CA; `verify-ca` needs a CA; `sslrootcert=system` verifies fully against
/// the system store (which does not hold the test CA).
#[tokio::test]
async fn every_verifying_mode_with_a_right_and_a_wrong_ca() {
    let (client, ns) = cluster("tlsmatrix").await;
    let url = common::database("tlsmatrix").await;
    let env = shared();
    let right = std::fs::read_to_string(env.postgres.ca_cert.as_ref().unwrap()).unwrap();
    let wrong = include_str!("fixtures/unrelated-ca.pem").to_owned();
    let operator = Operator::start(&[]);
    let dbqr = |name: &str| {
        // A row only over TLS, so a plain connection could not pass.
        DbqrBuilder::new(name, &operator)
            .query(&format!(
                "SELECT '{name}' AS name WHERE (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
            ))
            .template(ITEM_CM)
            .secret(name)
    };
    let mut converged = Vec::new();
    let mut refused = Vec::new();
    for mode in ["require", "verify-ca", "verify-full"] {
        for (which, ca) in [("right", &right), ("wrong", &wrong)] {
            let name = format!("{mode}-{which}");
            let mut keys = secret_keys(&url);
            keys.insert("sslmode", mode.into());
            keys.insert("ca.crt", ca.clone());
            create_secret(&client, &ns, &name, keys).await;
            dbqr(&name)
                .set("/database/connectionSecretRef/caCertKey", json!("ca.crt"))
                .create(&client, &ns)
                .await;
            if which == "right" {
                converged.push(format!("item-{name}"));
            } else {
                refused.push(name);
            }
        }
    }
    let mut keys = secret_keys(&url);
    keys.insert("sslmode", "verify-ca".into());
    create_secret(&client, &ns, "no-ca", keys).await;
    dbqr("no-ca").create(&client, &ns).await;
    let system = url.replace("sslmode=disable", "sslrootcert=system");
    create_secret(&client, &ns, "system", BTreeMap::from([("uri", system)])).await;
    dbqr("system")
        .set("/database/connectionSecretRef/uriKey", json!("uri"))
        .create(&client, &ns)
        .await;

    let names: Vec<&str> = converged.iter().map(String::as_str).collect();
    wait_for_configmaps(&client, &ns, &names).await;
    for name in refused.iter().map(String::as_str).chain(["system"]) {
        let m = wait_for_condition(&client, &ns, name, "DatabaseConnected=False/ConnectionFailed")
            .await;
        assert!(m.to_lowercase().contains("certificate"), "{name}: {m}");
    }
    let m =
        wait_for_condition(&client, &ns, "no-ca", "DatabaseConnected=False/TlsConfigError").await;
    assert!(m.contains("sslmode=verify-ca") && m.contains("caCertKey"), "{m}");
}

#[tokio::test]
async fn secret_changes_are_picked_up_and_cross_namespace_secrets_are_refused() {
    let (client, ns) = cluster("secrets").await;
    let first = common::database("secret-a").await;
    let second = common::database("secret-b").await;
    common::connect(&first)
        .await
        .batch_execute("CREATE TABLE items (name text); INSERT INTO items VALUES ('from-a')")
        .await
        .unwrap();
    common::connect(&second)
        .await
        .batch_execute("CREATE TABLE items (name text); INSERT INTO items VALUES ('from-b')")
        .await
        .unwrap();
    create_secret(&client, &ns, "db", secret_keys(&first)).await;
    let elsewhere = common::namespace(&client, "secrets-other").await;
    create_secret(&client, &elsewhere, "db", secret_keys(&second)).await;

    let operator = Operator::start(&[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name FROM items")
        .template(ITEM_CM)
        .create(&client, &ns)
        .await;
    wait_for_configmaps(&client, &ns, &["item-from-a"]).await;

    // Same Secret, new database: the pool is rebuilt without restarting the operator.
    create_secret(&client, &ns, "db", secret_keys(&second)).await;
    wait_for_configmaps(&client, &ns, &["item-from-b"]).await;

    DbqrBuilder::new("cross", &operator)
        .query("SELECT 'cross' AS name")
        .template(ITEM_CM)
        .set("/database/connectionSecretRef/namespace", json!(elsewhere))
        .create(&client, &ns)
        .await;
    let m =
        wait_for_condition(&client, &ns, "cross", "DatabaseConnected=False/SecretNotAllowed").await;
    assert!(m.contains(&elsewhere), "{m}");
    drop(operator);

    // With the operator's permission, the same DBQR works.
    let allowed = Operator::start_with_id(
        &operator_id(&client, &ns).await,
        &["--allow-cross-namespace-secrets"],
    );
    wait_for_configmaps(&client, &ns, &["item-cross", "item-from-b"]).await;
    drop(allowed);

    // An invalid spec is reported, not run.
    let dbqrs: Api<dbqo::api::DatabaseQueryResource> = Api::namespaced(client.clone(), &ns);
    let patch = json!({ "spec": { "pollInterval": "500ms" } });
    dbqrs.patch("items", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let op = Operator::start_with_id(&operator_id(&client, &ns).await, &[]);
    let m = wait_for_condition(&client, &ns, "items", "Synced=False/InvalidSpec").await;
    assert!(m.contains("spec.pollInterval is 500ms"), "{m}");
    // The same operator keeps running the other DBQR (its Secret is refused
    // again without the flag): two of its passes later, the invalid DBQR has
    // run none and deleted nothing: every pass is one of "cross", refused
    // its Secret.
    let (since, refused) = (op.totals().await, op.failures_of("SecretNotAllowed").await);
    op.wait_for_passes(since, 2, Duration::from_secs(30)).await;
    let (passes, refused) = (
        op.totals().await.since(&since).passes,
        op.failures_of("SecretNotAllowed").await - refused,
    );
    assert_eq!(refused, passes, "only the refused DBQR ran passes");
    assert_eq!(common::operator::configmaps(&client, &ns).await.len(), 2);
    drop(op);
}

/// The test label of the DBQRs in `namespace` (to restart their operator).
async fn operator_id(client: &Client, namespace: &str) -> String {
    let dbqrs: Api<dbqo::api::DatabaseQueryResource> = Api::namespaced(client.clone(), namespace);
    let first = dbqrs.list(&Default::default()).await.unwrap().items.remove(0);
    first.metadata.labels.unwrap()[common::operator::TEST_LABEL].clone()
}

/// A server that answers "too many clients" is back-pressure: a clear reason,
/// backoff, and recovery once connections free up; never a credentials problem.
#[tokio::test]
async fn a_server_with_no_connection_to_spare_is_reported_and_recovers() {
    let (client, ns) = cluster("busy").await;
    // Six connections, three of them reserved for superusers: the admin
    // connection below and two of `app` take the other three.
    let server = common::private_postgres("busy", Some(6)).await;
    let admin = common::connect(&server.info.url("postgres")).await;
    admin
        .batch_execute(&format!(
            "{ITEMS} CREATE ROLE app LOGIN PASSWORD 'app-pw'; GRANT SELECT ON items TO app;"
        ))
        .await
        .unwrap();
    let app_url = format!(
        "postgresql://app:app-pw@{}:{}/postgres?sslmode=disable",
        server.info.host, server.info.port
    );
    let held = [common::connect(&app_url).await, common::connect(&app_url).await];
    let mut keys = common::server_secret_keys(&server.info, "postgres");
    keys.insert("username", "app".into());
    keys.insert("password", "app-pw".into());
    create_secret(&client, &ns, "db", keys).await;

    let operator = Operator::start(&[]);
    DbqrBuilder::new("items", &operator)
        .query("SELECT name FROM items")
        .template(ITEM_CM)
        .create(&client, &ns)
        .await;
    let message =
        wait_for_condition(&client, &ns, "items", "DatabaseConnected=False/TooManyConnections")
            .await;
    assert!(!message.contains("app-pw"), "{message}");
    drop(held);
    wait_for_configmaps(&client, &ns, &["item-one", "item-two"]).await;
    wait_for_condition(&client, &ns, "items", "DatabaseConnected=True/Connected").await;
    drop(operator);
    drop(admin);
}
