//! Tenancy: a DBQR author gets no more than their namespace grants. Existing
//! objects the operator did not make are never taken over or deleted, and
//! deletions name the uid the operator saw. Real binary, API server,
//! controller manager and PostgreSQL.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::eventually;
use common::operator::{
    create_secret, event_reasons, secret_keys, setup, wait_for_condition, DbqrBuilder, Operator,
    TEST_LABEL,
};
use dbqo::api::database::Database;
use dbqo::api::server::DatabaseServer;
use dbqo::api::DatabaseQueryResource;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ApiResource, DeleteParams, ObjectMeta, PostParams};
use serde_json::json;

/// One object per row: the row names the kind and the object; the
/// annotation shows whether the operator wrote it.
const ANY_OBJECT: &str = "apiVersion: v1
kind: {{Row.kind}}
metadata:
  name: \"{{Row.name}}\"
  annotations:
    from-row: \"{{Row.id}}\"
";

fn meta(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
    let map = |pairs: &[(&str, &str)]| {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>())
    };
    ObjectMeta {
        name: Some(name.into()),
        labels: map(labels),
        annotations: map(annotations),
        ..ObjectMeta::default()
    }
}

async fn create<K>(api: &Api<K>, object: K) -> K
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.create(&PostParams::default(), &object).await.unwrap()
}

fn untouched(meta: &ObjectMeta) -> bool {
    let labels = meta.labels.clone().unwrap_or_default();
    let annotations = meta.annotations.clone().unwrap_or_default();
    !labels.keys().any(|k| k.starts_with("dbqo.dev/"))
        && labels.get("app.kubernetes.io/managed-by").map(String::as_str)
            != Some("db-query-operator")
        && !annotations.contains_key("from-row")
        && meta.deletion_timestamp.is_none()
        && meta.owner_references.clone().unwrap_or_default().is_empty()
}

/// A pre-existing plain ConfigMap, a Helm release Secret and a Namespace
/// named by rows are refused (`ObjectExists`), never written, and survive
/// the DBQR's deletion; one handed over with `dbqo.dev/adopt` is taken
/// over, and deleted with the DBQR like the one it created.
#[tokio::test]
async fn existing_objects_are_not_taken_over_unless_handed_over() {
    let s = setup(
        "takeover",
        "CREATE TABLE objects (id int PRIMARY KEY, kind text NOT NULL, name text NOT NULL);",
    )
    .await;
    let c = &s.client;
    let ns = s.namespace.as_str();
    let victim_ns = common::namespace(c, "takeover-victim").await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(c.clone(), ns);
    let namespaces: Api<Namespace> = Api::all(c.clone());
    let plain = create(
        &cms,
        ConfigMap {
            metadata: meta("plain", &[], &[]),
            data: Some(BTreeMap::from([("value".into(), "mine".into())])),
            ..ConfigMap::default()
        },
    )
    .await;
    let helm = create(
        &secrets,
        Secret {
            metadata: meta("sh.helm.release.v1.app.v1", &[("owner", "helm"), ("name", "app")], &[]),
            type_: Some("helm.sh/release.v1".into()),
            ..Secret::default()
        },
    )
    .await;
    let adopt_value = format!("{ns}/objects");
    create(
        &cms,
        ConfigMap {
            metadata: meta("handed-over", &[], &[("dbqo.dev/adopt", &adopt_value)]),
            ..ConfigMap::default()
        },
    )
    .await;
    s.db.batch_execute(&format!(
        "INSERT INTO objects VALUES (1, 'ConfigMap', 'plain'), \
         (2, 'Secret', 'sh.helm.release.v1.app.v1'), (3, 'Namespace', '{victim_ns}'), \
         (4, 'ConfigMap', 'handed-over'), (5, 'ConfigMap', 'fresh')"
    ))
    .await
    .unwrap();

    let operator = Operator::start(&[
        "--allowed-kinds",
        "ConfigMap,Secret,Namespace",
        "--allowed-namespaces",
        "*",
    ]);
    DbqrBuilder::new("objects", &operator)
        .query("SELECT id, kind, name FROM objects ORDER BY id")
        .template(ANY_OBJECT)
        .create(c, ns)
        .await;
    let message = wait_for_condition(c, ns, "objects", "Synced=False/ObjectExists").await;
    // The message names the first rows' objects; the count covers the Namespace's.
    for expected in [
        "3 problem(s), nothing pruned",
        "ConfigMap plain already exists",
        "Secret sh.helm.release.v1.app.v1 already exists",
        &format!("dbqo.dev/adopt: {adopt_value}"),
    ] {
        assert!(message.contains(expected), "{expected:?} in {message}");
    }
    // The rows that may write did: the new object and the handed-over one.
    eventually(Duration::from_secs(20), "fresh and handed-over written", || async {
        let fresh = cms.get_opt("fresh").await.ok()??;
        let handed = cms.get_opt("handed-over").await.ok()??;
        let written = |m: &ObjectMeta| m.annotations.as_ref()?.get("from-row").cloned();
        (written(&fresh.metadata)? == "5" && written(&handed.metadata)? == "4").then_some(())
    })
    .await;
    // The Event follows the status write.
    eventually(Duration::from_secs(10), "an ObjectExists Event", || async {
        event_reasons(c, ns).await.contains(&"ObjectExists".to_owned()).then_some(())
    })
    .await;
    let now_plain = cms.get("plain").await.unwrap();
    assert!(untouched(&now_plain.metadata), "{:?}", now_plain.metadata);
    assert_eq!(now_plain.data, plain.data);
    assert_eq!(
        now_plain.metadata.resource_version, plain.metadata.resource_version,
        "never written"
    );
    let now_helm = secrets.get(&helm.metadata.name.clone().unwrap()).await.unwrap();
    assert!(untouched(&now_helm.metadata));
    assert_eq!(now_helm.metadata.resource_version, helm.metadata.resource_version);
    assert!(untouched(&namespaces.get(&victim_ns).await.unwrap().metadata));

    // The DBQR goes (deletionPolicy Delete): what it made or was handed goes
    // with it, what it refused stays.
    Api::<DatabaseQueryResource>::namespaced(c.clone(), ns)
        .delete("objects", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the DBQR released", || async {
        let dbqrs = Api::<DatabaseQueryResource>::namespaced(c.clone(), ns);
        dbqrs.get_opt("objects").await.ok()?.is_none().then_some(())
    })
    .await;
    for name in ["fresh", "handed-over"] {
        let cm = cms.get_opt(name).await.unwrap();
        assert!(
            cm.is_none_or(|cm| cm.metadata.deletion_timestamp.is_some()),
            "{name} deleted with the DBQR"
        );
    }
    assert!(untouched(&cms.get("plain").await.unwrap().metadata));
    assert!(untouched(&secrets.get(&helm.metadata.name.clone().unwrap()).await.unwrap().metadata));
    assert!(untouched(&namespaces.get(&victim_ns).await.unwrap().metadata));
    dbqo_testenv::reliability::record(
        "takeover",
        &dbqo_testenv::reliability::Outcome::passed(1, 1, None),
    );
}

/// A deletion names the uid the operator saw: the API server refuses to
/// delete a same-named object made since, and that counts as done.
#[tokio::test]
async fn a_delete_with_a_stale_uid_leaves_the_replacement() {
    let client = common::kube_client().await;
    let ns = common::namespace(&client, "uid-precondition").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let first =
        create(&cms, ConfigMap { metadata: meta("same-name", &[], &[]), ..ConfigMap::default() })
            .await;
    cms.delete("same-name", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(10), "the first one gone", || async {
        cms.get_opt("same-name").await.ok()?.is_none().then_some(())
    })
    .await;
    let second =
        create(&cms, ConfigMap { metadata: meta("same-name", &[], &[]), ..ConfigMap::default() })
            .await;
    let target = dbqo::kube_api::Target {
        resource: ApiResource::erase::<ConfigMap>(&()),
        namespace: Some(ns.clone()),
        name: "same-name".into(),
    };
    dbqo::kube_api::delete(&client, &target, first.metadata.uid.as_deref())
        .await
        .expect("a uid that no longer matches counts as deleted");
    let live = cms.get("same-name").await.expect("the replacement stays");
    assert_eq!(live.metadata.uid, second.metadata.uid);
    assert!(live.metadata.deletion_timestamp.is_none());
    dbqo::kube_api::delete(&client, &target, second.metadata.uid.as_deref()).await.unwrap();
    eventually(Duration::from_secs(10), "deleted with its own uid", || async {
        cms.get_opt("same-name").await.ok()?.is_none().then_some(())
    })
    .await;
    dbqo_testenv::reliability::record(
        "stale-uid-delete",
        &dbqo_testenv::reliability::Outcome::passed(1, 1, None),
    );
}

/// A value no message may hold; valid as a host, user and database name, so
/// each key it is mapped onto reaches a different failure.
const MARKER: &str = "m4rkerq7zx";

const SECRET_KEYS: [&str; 8] = [
    "uriKey",
    "hostKey",
    "portKey",
    "userKey",
    "passwordKey",
    "dbNameKey",
    "sslModeKey",
    "caCertKey",
];

fn server(name: &str, operator: &Operator, secret_ref: serde_json::Value) -> DatabaseServer {
    serde_json::from_value(json!({
        "apiVersion": "dbqo.dev/v1alpha1",
        "kind": "DatabaseServer",
        "metadata": {"name": name, "labels": {TEST_LABEL: operator.id}},
        "spec": {"engine": "postgres", "connectionSecretRef": secret_ref},
    }))
    .unwrap()
}

/// A Secret value that a spec maps onto any connection key (of a DBQR or a
/// DatabaseServer) never shows in a status, an Event, the operator's log or
/// `/metrics`, whatever it makes fail.
#[tokio::test]
async fn a_secret_value_mapped_onto_any_connection_key_is_never_shown() {
    let s = setup("marker", "").await;
    let (c, ns) = (&s.client, s.namespace.as_str());
    let mut keys = secret_keys(&s.url);
    keys.insert("token", MARKER.to_owned());
    create_secret(c, ns, "marked", keys).await;
    let operator = Operator::start(&[]);
    let servers: Api<DatabaseServer> = Api::namespaced(c.clone(), ns);
    for field in SECRET_KEYS {
        let name = format!("k-{}", field.to_lowercase());
        DbqrBuilder::new(&name, &operator)
            .secret("marked")
            .set(&format!("/database/connectionSecretRef/{field}"), json!("token"))
            .template("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"x{{Row.id}}\"\n")
            .create(c, ns)
            .await;
        let reference = json!({"name": "marked", field: "token"});
        servers.create(&PostParams::default(), &server(&name, &operator, reference)).await.unwrap();
    }
    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(c.clone(), ns);
    // Every DBQR and server has been tried; the reasons show each mapping
    // reached the step that used to quote it.
    let reasons = eventually(Duration::from_secs(60), "every mapping tried", || async {
        let mut reasons = BTreeMap::new();
        for field in SECRET_KEYS {
            let name = format!("k-{}", field.to_lowercase());
            let dbqr = dbqrs.get(&name).await.ok()?;
            let connected =
                dbqr.status?.conditions.into_iter().find(|c| c.type_ == "DatabaseConnected")?;
            let server = servers.get(&name).await.ok()?.status?;
            let checked = server.conditions.first()?.reason.clone();
            reasons.insert(field, (connected.reason, checked));
        }
        Some(reasons)
    })
    .await;
    for (field, expected) in [
        ("uriKey", "SecretInvalid"),
        ("portKey", "SecretInvalid"),
        ("sslModeKey", "SecretInvalid"),
        ("userKey", "AuthenticationFailed"),
        ("dbNameKey", "ConnectionFailed"),
        ("hostKey", "ConnectionFailed"),
    ] {
        assert_eq!(reasons[field].0, expected, "DBQR with {field}: {reasons:?}");
        assert_eq!(reasons[field].1, expected, "server with {field}: {reasons:?}");
    }

    let mut shown = Vec::new();
    for dbqr in dbqrs.list(&Default::default()).await.unwrap() {
        shown.push(serde_json::to_string(&dbqr.status).unwrap());
    }
    for server in servers.list(&Default::default()).await.unwrap() {
        shown.push(serde_json::to_string(&server.status).unwrap());
    }
    // The Events follow the status writes: wait for those of each failure.
    let events = eventually(Duration::from_secs(10), "the failures' Events", || async {
        let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(c.clone(), ns)
            .list(&Default::default())
            .await
            .ok()?;
        let reasons: Vec<&str> = events.items.iter().filter_map(|e| e.reason.as_deref()).collect();
        ["SecretInvalid", "AuthenticationFailed", "ConnectionFailed"]
            .iter()
            .all(|r| reasons.contains(r))
            .then_some(events)
    })
    .await;
    shown.extend(events.items.iter().map(|e| serde_json::to_string(e).unwrap()));
    let metrics = operator.http_address("metrics").await;
    let (_, body) = common::http_get(&metrics, "/metrics").await.unwrap();
    shown.push(body);
    shown.push(operator.log());
    for text in shown {
        assert!(!text.contains(MARKER), "the marker is shown: {text}");
    }
    dbqo_testenv::reliability::record(
        "secret-values",
        &dbqo_testenv::reliability::Outcome::passed(1, 1, None),
    );
}

/// A team's own DatabaseServer cannot use another namespace's admin Secret
/// (unless the operator allows cross-namespace Secrets): the server says
/// `SecretNotAllowed`, and a Database on it is not created.
#[tokio::test]
async fn a_database_server_cannot_borrow_another_namespaces_admin_secret() {
    let s = setup("borrow", "").await;
    let c = &s.client;
    let team = common::namespace(c, "borrow-team").await;
    let operator = Operator::start(&[]);
    // The platform's admin Secret is `db` in s.namespace.
    let mut borrowed =
        server("borrowed", &operator, json!({"name": "db", "namespace": s.namespace}));
    borrowed.spec.allowed_namespaces = vec![team.clone()];
    Api::<DatabaseServer>::namespaced(c.clone(), &team)
        .create(&PostParams::default(), &borrowed)
        .await
        .unwrap();
    let database: Database = serde_json::from_value(json!({
        "apiVersion": "dbqo.dev/v1alpha1",
        "kind": "Database",
        "metadata": {"name": "stolen", "labels": {TEST_LABEL: operator.id}},
        "spec": {"serverRef": {"name": "borrowed"}, "databaseName": "borrow_stolen"},
    }))
    .unwrap();
    let databases: Api<Database> = Api::namespaced(c.clone(), &team);
    databases.create(&PostParams::default(), &database).await.unwrap();
    let servers: Api<DatabaseServer> = Api::namespaced(c.clone(), &team);
    let message = eventually(Duration::from_secs(30), "the server refused", || async {
        let status = servers.get("borrowed").await.ok()?.status?;
        let ready = status.conditions.first()?;
        (ready.reason == "SecretNotAllowed").then(|| ready.message.clone())
    })
    .await;
    assert!(message.contains("--allow-cross-namespace-secrets"), "{message}");
    eventually(Duration::from_secs(30), "the Database refused", || async {
        let status = databases.get("stolen").await.ok()?.status?;
        (status.conditions.first()?.reason == "SecretNotAllowed").then_some(())
    })
    .await;
    let exists: i64 =
        s.db.query_one("SELECT count(*) FROM pg_database WHERE datname = 'borrow_stolen'", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(exists, 0, "no database was created with the borrowed Secret");
    dbqo_testenv::reliability::record(
        "borrowed-admin-secret",
        &dbqo_testenv::reliability::Outcome::passed(1, 1, None),
    );
}

/// Hostile input does not take the operator down: a 300 MB row fails alone
/// (RowTooLarge) and is never decoded, a template bomb fails its rows
/// (RenderLimitExceeded), another DBQR converges meanwhile, and `/healthz`
/// answers within a second throughout. Prints the peak RSS and probe latency.
#[tokio::test]
async fn a_huge_row_and_a_template_bomb_fail_alone_while_health_answers() {
    let s = setup("bomb", "").await;
    let (c, ns) = (&s.client, s.namespace.as_str());
    let operator = Operator::start(&[]);
    let probes = operator.http_address("probes").await;
    let item = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"{{Row.name}}\"\n";
    DbqrBuilder::new("huge", &operator)
        .query(
            "SELECT 'huge-1' AS name, repeat('x', 300000000) AS big \
             UNION ALL SELECT 'huge-2', 'small' ORDER BY 1",
        )
        .template(item)
        .create(c, ns)
        .await;
    DbqrBuilder::new("bomb", &operator)
        .query("SELECT 'bomb-1' AS name, array_agg(i) AS items FROM generate_series(1, 1000) i")
        .template(
            "{{#each Row.items}}{{#each ../Row.items}}{{#each ../../Row.items}}\
             {{/each}}{{/each}}{{/each}}apiVersion: v1\nkind: ConfigMap\n\
             metadata:\n  name: \"{{Row.name}}\"\n",
        )
        .create(c, ns)
        .await;
    DbqrBuilder::new("indent", &operator)
        .query("SELECT 'indent-1' AS name")
        .template("{{indent 100000000000 \"x\"}}")
        .create(c, ns)
        .await;
    DbqrBuilder::new("healthy", &operator)
        .query("SELECT 'healthy-1' AS name")
        .template(item)
        .create(c, ns)
        .await;

    let pid = operator.pid();
    let (mut worst, mut peak_rss) = (Duration::ZERO, 0f64);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut settled = None;
    let (begun, mut last) = (std::time::Instant::now(), None);
    while std::time::Instant::now() < deadline {
        let started = std::time::Instant::now();
        let answer = common::http_get(&probes, "/healthz").await;
        worst = worst.max(started.elapsed());
        assert_eq!(answer.map(|a| a.0), Some(200), "/healthz answers");
        peak_rss = peak_rss.max(common::rss_mib(pid));
        let reason = |name: &'static str| async move {
            common::operator::condition(c, ns, name, "Synced").await.map(|(_, reason, _)| reason)
        };
        let now = (
            reason("huge").await,
            reason("bomb").await,
            reason("indent").await,
            reason("healthy").await,
        );
        if last.as_ref() != Some(&now) {
            println!("{:?}: huge, bomb, indent, healthy: {now:?}", started.duration_since(begun));
            last = Some(now.clone());
        }
        let done = now.0.as_deref() == Some("RowTooLarge")
            && now.1.as_deref() == Some("RenderLimitExceeded")
            && now.2.as_deref() == Some("RenderLimitExceeded")
            && now.3.as_deref() == Some("Synced");
        // Keep probing for a few more heavy passes once every verdict is in.
        match (done, settled) {
            (true, None) => settled = Some(std::time::Instant::now()),
            (true, Some(at)) if at.elapsed() > Duration::from_secs(5) => break,
            (false, _) => settled = None,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("/healthz worst latency {worst:?}, peak RSS {peak_rss:.0} MiB");
    assert!(settled.is_some(), "every DBQR reached its verdict; the last seen: {last:?}");
    assert!(worst < Duration::from_secs(1), "/healthz took {worst:?} during the heavy passes");
    // The 300 MB row is buffered once by the driver; it is never decoded.
    assert!(peak_rss < 1024.0, "peak RSS {peak_rss:.0} MiB");
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
    assert!(
        cms.get_opt("huge-2").await.unwrap().is_some(),
        "the small row of the huge DBQR applied"
    );
    assert!(cms.get_opt("healthy-1").await.unwrap().is_some());
    assert!(cms.get_opt("huge-1").await.unwrap().is_none());
    dbqo_testenv::reliability::record(
        "template-bomb",
        &dbqo_testenv::reliability::Outcome::passed(2, 1, None),
    );
}

/// A ServiceAccount `name` in `ns` allowed `rules` there.
async fn service_account(c: &kube::Client, ns: &str, name: &str, rules: serde_json::Value) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    create(&Api::namespaced(c.clone(), ns), sa).await;
    let role: Role =
        serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules})).unwrap();
    create(&Api::namespaced(c.clone(), ns), role).await;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    }))
    .unwrap();
    create(&Api::namespaced(c.clone(), ns), binding).await;
}

/// With `--default-service-account`, a DBQR acts with the rights of that
/// ServiceAccount of its namespace, `spec.serviceAccountName` overrides it,
/// and neither borrows the operator's own rights: an object the account
/// may not write fails its row (`Forbidden`, naming the account, the verb
/// and the resource), a Secret it may not read is not used, and the DBQR's
/// deletion deletes as it.
#[tokio::test]
async fn a_dbqr_acts_with_its_service_accounts_rights_only() {
    let s =
        setup("impersonate", "CREATE TABLE items (name text NOT NULL, ns text NOT NULL);").await;
    let (c, ns) = (&s.client, s.namespace.as_str());
    let other = common::namespace(c, "impersonate-other").await;
    let configmaps = json!({"apiGroups": [""], "resources": ["configmaps"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"]});
    let secret = json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["db"],
        "verbs": ["get"]});
    service_account(c, ns, "deployer", json!([configmaps, secret])).await;
    service_account(c, ns, "no-secret", json!([configmaps])).await;
    s.db.batch_execute(&format!(
        "INSERT INTO items VALUES ('mine', '{ns}'), ('theirs', '{other}')"
    ))
    .await
    .unwrap();
    // The operator itself may write in every namespace.
    let operator =
        Operator::start(&["--allowed-namespaces", "*", "--default-service-account", "deployer"]);
    let template = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"{{Row.name}}\"\n  namespace: \"{{Row.ns}}\"\n";
    DbqrBuilder::new("by-default", &operator)
        .query("SELECT name, ns FROM items ORDER BY name")
        .template(template)
        .create(c, ns)
        .await;
    DbqrBuilder::new("no-secret", &operator)
        .query("SELECT name || '-2' AS name, ns FROM items ORDER BY name")
        .template(template)
        .set("/serviceAccountName", json!("no-secret"))
        .create(c, ns)
        .await;

    let deployer = format!("system:serviceaccount:{ns}:deployer");
    let message = wait_for_condition(c, ns, "by-default", "Synced=False/Forbidden").await;
    assert!(
        message.contains(&format!("{deployer} may not get configmaps in namespace {other}")),
        "{message}"
    );
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
    eventually(Duration::from_secs(20), "its own namespace's object", || async {
        cms.get_opt("mine").await.ok()?.map(|_| ())
    })
    .await;
    let theirs = Api::<ConfigMap>::namespaced(c.clone(), &other);
    assert!(theirs.get_opt("theirs").await.unwrap().is_none());

    let message = wait_for_condition(c, ns, "no-secret", "DatabaseConnected=False/Forbidden").await;
    assert!(
        message.contains(&format!(
            "system:serviceaccount:{ns}:no-secret may not get secrets in namespace {ns}"
        )),
        "{message}"
    );
    assert!(cms.get_opt("mine-2").await.unwrap().is_none());

    // The DBQR's deletion deletes what it made, as its account.
    Api::<DatabaseQueryResource>::namespaced(c.clone(), ns)
        .delete("by-default", &DeleteParams::default())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the DBQR released, its object gone", || async {
        let dbqrs = Api::<DatabaseQueryResource>::namespaced(c.clone(), ns);
        let released = dbqrs.get_opt("by-default").await.ok()?.is_none();
        let gone = cms
            .get_opt("mine")
            .await
            .ok()?
            .is_none_or(|cm| cm.metadata.deletion_timestamp.is_some());
        (released && gone).then_some(())
    })
    .await;
    dbqo_testenv::reliability::record(
        "service-account",
        &dbqo_testenv::reliability::Outcome::passed(1, 1, None),
    );
}

/// Two notify-mode DBQRs for the same server and user, one with a wrong
/// password: they do not share a LISTEN connection, so the wrong one
/// neither makes the right one's connection reconnect with its password
/// nor receives notifications through it.
#[tokio::test]
async fn a_listen_connection_is_shared_only_with_the_same_credentials() {
    use common::operator::{trigger_sql, wait_for_listen};
    let s = setup("listenshare", "CREATE TABLE items (name text PRIMARY KEY);").await;
    let (c, ns) = (&s.client, s.namespace.as_str());
    s.db.batch_execute(&trigger_sql("items", "items")).await.unwrap();
    let mut wrong = secret_keys(&s.url);
    wrong.insert("password", "not-the-password".into());
    create_secret(c, ns, "wrong", wrong).await;
    let operator = Operator::start(&[]);
    let notify = json!({"enabled": true, "mode": "notify", "channel": "items"});
    let template =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \"{{Row.name}}{{Metadata.Name}}\"\n";
    DbqrBuilder::new("right", &operator)
        .query("SELECT name FROM items")
        .template(template)
        .set("/pollInterval", json!("1h"))
        .set("/changeDetection", notify.clone())
        .create(c, ns)
        .await;
    wait_for_condition(c, ns, "right", "Ready=True/Ready").await;
    wait_for_listen(&s.db).await;
    DbqrBuilder::new("wrong", &operator)
        .query("SELECT name FROM items")
        .template(template)
        .secret("wrong")
        .set("/pollInterval", json!("1h"))
        .set("/changeDetection", notify)
        .create(c, ns)
        .await;
    wait_for_condition(c, ns, "wrong", "DatabaseConnected=False/AuthenticationFailed").await;
    // Only a notification can bring the row before the hour-long poll.
    s.db.batch_execute("INSERT INTO items VALUES ('a')").await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), ns);
    eventually(Duration::from_secs(15), "the notified row applied", || async {
        cms.get_opt("aright").await.ok()?.map(|_| ())
    })
    .await;
    assert!(cms.get_opt("awrong").await.unwrap().is_none());
}
