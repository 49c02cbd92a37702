//! The pass and its plan against a recording in-memory [`Cluster`]: the
//! guards that keep a pass from deleting or taking over what it must not.
//! (The real API server is exercised by the acceptance tests in `tests/`.)

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use futures_util::FutureExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ApiResource;
use serde_json::{json, Value as Json};

use super::guard::{Ruling, RELEASE_ANNOTATION};
use super::labels::{MANAGED_BY, MANAGED_BY_VALUE, OWNER_NAME, OWNER_NAMESPACE};
use super::plan::{self, Desired, Inputs, Live, Owned};
use super::*;
use crate::api::DatabaseQueryResource;
use crate::fake_cluster::{kinds, live, merge, FakeCluster};
use crate::kube_api::{CachedObject, KubeError, LiveObject, Target};
use crate::kube_api::{GroupKind, Gvk, ObjectKey};
use crate::render::ObjectPolicy;
use crate::settings::Settings;

const TEMPLATE: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: "{{Row.name}}"
data:
  value: "{{Row.value}}"
"#;

fn config(prune: bool) -> PassConfig {
    let dbqr: DatabaseQueryResource = serde_json::from_value(json!({
        "apiVersion": "dbqo.dev/v1alpha1",
        "kind": "DatabaseQueryResource",
        "metadata": { "name": "users", "namespace": "apps", "uid": "uid-users" },
        "spec": {
            "pollInterval": "10s",
            "prune": prune,
            "database": { "connectionSecretRef": { "name": "db" } },
            "query": "SELECT name, value FROM t",
            "template": TEMPLATE,
        }
    }))
    .unwrap();
    let settings = Settings {
        policy: Arc::new(ObjectPolicy::default()),
        allow_cross_namespace_secrets: false,
        default_service_account: None,
        watch_namespace: None,
        label_selector: None,
        concurrency: 1,
        api_timeout: Duration::from_secs(1),
        writer_queue: 1,
        drain: Duration::from_secs(1),
        connections_per_server: 1,
        backups: crate::backup::database::BackupSettings {
            image: "dbqo-backup:test".into(),
            min_interval: Duration::from_secs(300),
        },
    };
    PassConfig::new(&dbqr, &settings, &crate::db::Connections::new(1)).unwrap()
}

fn rows(rows: &[(&str, &str)]) -> Vec<Row> {
    rows.iter()
        .map(|(name, value)| json!({ "name": name, "value": value }).as_object().unwrap().clone())
        .collect()
}

/// Runs the part of a pass after the query; the fake answers at once.
fn pass(
    config: &PassConfig,
    state: &mut PassState,
    writer: &FakeCluster,
    rows: &[Row],
) -> PassReport {
    let mut report = PassReport::default();
    reconcile_rows(config, state, writer, rows, "2024-01-01T00:00:00Z", &mut report)
        .now_or_never()
        .expect("the fake writer never waits");
    report
}

/// A DBQR whose first pass applied `first`; the writer's record is cleared.
fn converged(prune: bool, first: &[(&str, &str)]) -> (PassConfig, FakeCluster, PassState) {
    let (config, writer) = (config(prune), FakeCluster::default());
    let mut state = PassState::default();
    let report = pass(&config, &mut state, &writer, &rows(first));
    assert!(report.succeeded(), "{:?}", report.failure());
    writer.calls.borrow_mut().clear();
    (config, writer, state)
}

fn cm_gvk() -> Gvk {
    "v1/ConfigMap".parse().unwrap()
}

fn owner_labels(name: &str) -> Json {
    json!({ MANAGED_BY: MANAGED_BY_VALUE, OWNER_NAME: name, OWNER_NAMESPACE: "apps" })
}

#[test]
fn a_converged_pass_writes_nothing_and_reads_nothing() {
    let (config, writer) = (config(true), FakeCluster::default());
    let mut state = PassState::default();
    let first = pass(&config, &mut state, &writer, &rows(&[("a", "1"), ("b", "2")]));
    assert!(first.succeeded(), "{:?}", first.failure());
    assert_eq!((first.applied, first.skipped), (2, 0));
    writer.calls.borrow_mut().clear();

    let second = pass(&config, &mut state, &writer, &rows(&[("a", "1"), ("b", "2")]));
    assert_eq!((second.applied, second.skipped, second.pruned), (0, 2, 0));
    assert!(writer.calls.borrow().is_empty(), "{:?}", writer.calls.borrow());
    assert_eq!(state.managed_kinds, BTreeSet::from([cm_gvk()]));
}

#[test]
fn a_changed_row_is_applied_and_a_removed_row_pruned() {
    let (config, writer, mut state) = converged(true, &[("a", "1"), ("b", "2")]);

    let report = pass(&config, &mut state, &writer, &rows(&[("a", "changed")]));
    assert!(report.succeeded());
    assert_eq!((report.applied, report.pruned), (1, 1));
    assert_eq!(writer.writes(), ["apply ConfigMap apps/a", "delete ConfigMap apps/b"]);
}

#[test]
fn an_empty_result_holds_every_deletion_until_a_later_pass_confirms_it() {
    let (config, writer, mut state) = converged(true, &[("a", "1"), ("b", "2"), ("c", "3")]);

    // TRUNCATE committed, INSERT not yet: nothing is deleted.
    let report = pass(&config, &mut state, &writer, &[]);
    assert!(report.succeeded(), "{:?}", report.failure());
    let guard = report.guard.unwrap();
    assert_eq!((report.pruned, guard.held, guard.owned), (0, 3, 3));
    assert_eq!(guard.ruling, Ruling::Holding);
    assert!(guard.confirm_in.is_some_and(|d| d <= Duration::from_secs(30)));
    assert!(writer.writes().is_empty(), "{:?}", writer.writes());
    assert_eq!(state.managed_kinds, BTreeSet::from([cm_gvk()]), "the inventory stays");

    // The rows are back: the hold ends, nothing was ever deleted.
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1"), ("b", "2"), ("c", "3")]));
    assert_eq!(report.guard.unwrap().ruling, Ruling::Nothing);
    assert!(writer.writes().is_empty(), "{:?}", writer.writes());

    // A deleted row (a small prune) goes at once.
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1"), ("b", "2")]));
    assert_eq!(report.pruned, 1);
    assert_eq!(writer.writes(), ["delete ConfigMap apps/c"]);
}

#[test]
fn the_release_annotation_and_a_zero_interval_prune_at_once() {
    let (mut config, writer, mut state) = converged(true, &[("a", "1"), ("b", "2")]);
    config.metadata.annotations.insert(RELEASE_ANNOTATION.into(), "true".into());
    let report = pass(&config, &mut state, &writer, &[]);
    assert_eq!(report.pruned, 2);
    assert_eq!(report.guard.unwrap().ruling, Ruling::Released);
    assert!(report.guard.unwrap().released);

    let (mut config, writer, mut state) = converged(true, &[("a", "1"), ("b", "2")]);
    config.guard.confirmation = Duration::ZERO;
    let report = pass(&config, &mut state, &writer, &[]);
    assert_eq!((report.pruned, report.guard.unwrap().held), (2, 0));
}

#[test]
fn nothing_is_pruned_after_a_row_fails() {
    let (config, writer, mut state) = converged(true, &[("a", "1"), ("b", "2")]);

    // Row 1 renders an invalid name; "b" is gone from the rows.
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1"), ("Not_Valid", "x")]));
    assert!(!report.succeeded());
    assert_eq!(report.failure().unwrap().reason(), "InvalidName");
    assert!(writer.writes().is_empty(), "{:?}", writer.writes());
    assert_eq!(writer.names(), ["a", "b"]);
}

#[test]
fn nothing_is_pruned_after_an_apply_fails() {
    let (config, mut writer, mut state) = converged(true, &[("a", "1"), ("b", "2")]);
    writer.refuse_apply.insert("a".into());

    let report = pass(&config, &mut state, &writer, &rows(&[("a", "new")]));
    let failure = report.failure().expect("the refused apply fails the pass");
    assert_eq!(failure.reason(), "Invalid");
    assert!(failure.to_string().contains("row 0: cannot apply ConfigMap a"));
    assert!(!writer.writes().iter().any(|w| w.starts_with("delete")));
    assert_eq!(writer.names(), ["a", "b"]);
}

#[test]
fn an_object_of_another_owner_is_not_taken_over() {
    let (config, writer) = (config(true), FakeCluster::default());
    // Another DBQR's object, in the cache.
    writer.put(
        "ConfigMap",
        "apps",
        "a",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "a", "namespace": "apps", "labels": owner_labels("other")},
               "data": {"value": "theirs"}}),
    );
    // An object someone else's controller owns, not labelled (read with a GET).
    writer.put(
        "ConfigMap",
        "apps",
        "b",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "b", "namespace": "apps", "ownerReferences": [
                   {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "uid-rs", "controller": true}]}}),
    );
    let mut state = PassState::default();
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1"), ("b", "2"), ("c", "3")]));

    let failure = report.failure().expect("both rows fail");
    assert_eq!(failure.reason(), "ObjectOwnedElsewhere");
    assert!(failure.to_string().starts_with("2 problem(s), nothing pruned; row 0"));
    assert_eq!(writer.writes(), ["apply ConfigMap apps/c"]);
    assert_eq!(
        writer.objects.borrow()[&("ConfigMap".into(), Some("apps".into()), "a".into())]["data"]
            ["value"],
        "theirs"
    );
    assert!(writer.calls.borrow().contains(&"get ConfigMap apps/b".to_owned()));
}

#[test]
fn repair_recreates_a_deleted_object_but_never_takes_over_one_created_meanwhile() {
    let (config, writer, state) = converged(true, &[("a", "1")]);
    let key = ObjectKey {
        group_kind: GroupKind::new("", "ConfigMap"),
        namespace: Some("apps".into()),
        name: "a".into(),
    };
    let wanted = state.applied(&key).unwrap().clone();
    let run = |w: &FakeCluster| {
        repair(w, &config.owner, &wanted)
            .now_or_never()
            .expect("the fake writer never waits")
            .unwrap()
    };
    assert_eq!(run(&writer), Repair::Nothing, "in place");

    // Edited: applied again.
    merge(
        writer.objects.borrow_mut().values_mut().next().unwrap(),
        &json!({"data": {"value": "edited"}}),
    );
    assert_eq!(run(&writer), Repair::Reapplied);

    // Deleted: created again.
    writer.objects.borrow_mut().clear();
    writer.calls.borrow_mut().clear();
    assert_eq!(run(&writer), Repair::Recreated);
    assert_eq!(writer.writes(), ["create ConfigMap apps/a"]);

    // Deleted, and someone else created one of that name (unlabelled, so
    // not in the cache): left alone.
    writer.objects.borrow_mut().clear();
    writer.objects.borrow_mut().insert(
        ("ConfigMap".into(), Some("apps".into()), "a".into()),
        json!({"metadata": {"name": "a"}, "data": {"value": "theirs"}}),
    );
    assert_eq!(run(&writer), Repair::TakenElsewhere);
    let objects = writer.objects.borrow();
    assert_eq!(objects.values().next().unwrap()["data"]["value"], "theirs");
}

#[test]
fn an_object_another_owner_took_is_no_longer_repaired() {
    let (config, writer, mut state) = converged(true, &[("a", "1")]);
    let key = ObjectKey {
        group_kind: GroupKind::new("", "ConfigMap"),
        namespace: Some("apps".into()),
        name: "a".into(),
    };
    assert!(state.applied(&key).is_some(), "a converged object is repaired");
    merge(
        writer.objects.borrow_mut().values_mut().next().unwrap(),
        &json!({"metadata": {"labels": owner_labels("other")}}),
    );
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1")]));
    assert_eq!(report.failure().unwrap().reason(), "ObjectOwnedElsewhere");
    assert!(state.applied(&key).is_none(), "drift repair must not take it back");
    assert!(writer.writes().is_empty());
}

#[test]
fn a_kind_discovery_confirms_gone_drops_out_and_one_of_an_unavailable_group_stays() {
    let (config, writer) = (config(true), FakeCluster::default());
    // Served by no group that answered: its CRD was deleted.
    let widgets: Gvk = "example.com/v1/Widget".parse().unwrap();
    let mut state = PassState::new(BTreeSet::from([cm_gvk(), widgets]));
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1")]));
    assert!(report.succeeded(), "{:?}", report.failure());
    assert_eq!(state.managed_kinds, BTreeSet::from([cm_gvk()]));

    // Its group did not answer discovery: it may still hold objects.
    let writer = FakeCluster {
        unavailable: ["metrics.example.com".to_owned()].into(),
        ..FakeCluster::default()
    };
    let gauges: Gvk = "metrics.example.com/v1/Gauge".parse().unwrap();
    let mut state = PassState::new(BTreeSet::from([cm_gvk(), gauges.clone()]));
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1")]));
    assert_eq!(report.failure().map(|e| e.reason()), Some("PruneFailed"));
    assert!(state.managed_kinds.contains(&gauges));
}

#[test]
fn a_version_that_is_not_served_fails_only_its_rows() {
    let (config, writer) = (config(true), FakeCluster::default());
    let mut state = PassState::default();
    let kinds = kinds();
    let gvk: Gvk = "v2/ConfigMap".parse().unwrap();
    let err = crate::kube_api::resolve(&kinds, &gvk).unwrap_err();
    assert_eq!(err.reason(), "VersionNotServed");
    assert!(err.to_string().contains("serves v1"), "{err}");
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1")]));
    assert!(report.succeeded());
}

#[test]
fn the_inventory_is_kept_when_a_pass_fails() {
    let (config, writer) = (config(true), FakeCluster::default());
    let deployments: Gvk = "apps/v1/Deployment".parse().unwrap();
    let mut state = PassState::new(BTreeSet::from([deployments.clone()]));
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1"), ("Not_Valid", "x")]));
    assert!(!report.succeeded());
    assert_eq!(state.managed_kinds, BTreeSet::from([cm_gvk(), deployments.clone()]));
    assert_eq!(report.managed_kinds, state.managed_kinds);

    // Once a pass succeeds and finds no Deployment of this DBQR, the kind drops out.
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1")]));
    assert!(report.succeeded());
    assert_eq!(state.managed_kinds, BTreeSet::from([cm_gvk()]));
}

#[test]
fn a_cached_object_holding_every_rendered_field_is_skipped() {
    let (config, writer, mut state) = converged(true, &[("a", "1")]);
    // Fields others add (annotations, status, defaults) do not matter ...
    merge(
        writer.objects.borrow_mut().values_mut().next().unwrap(),
        &json!({"metadata": {"annotations": {"someone": "else"}, "resourceVersion": "7"}, "data": {"extra": "x"}}),
    );
    writer.calls.borrow_mut().clear();
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1")]));
    assert_eq!((report.applied, report.skipped), (0, 1));
    assert!(writer.calls.borrow().is_empty());

    // ... a rendered field that differs does.
    merge(
        writer.objects.borrow_mut().values_mut().next().unwrap(),
        &json!({"data": {"value": "edited"}}),
    );
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1")]));
    assert_eq!((report.applied, report.skipped), (1, 0));
}

#[test]
fn without_prune_nothing_is_deleted_and_kinds_accumulate() {
    let (config, writer, mut state) = converged(false, &[("a", "1"), ("b", "2")]);
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1")]));
    assert!(report.succeeded());
    assert!(!writer.writes().iter().any(|w| w.starts_with("delete")));
    assert_eq!(state.managed_kinds, BTreeSet::from([cm_gvk()]));
}

// The plan on its own.

fn desired(name: &str, row: usize) -> Desired {
    let mut manifest = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "apps", "labels": owner_labels("users")},
        "data": {"value": "1"}});
    manifest["metadata"]["labels"] = owner_labels("users");
    Desired {
        row,
        gvk: cm_gvk(),
        target: Target {
            resource: ApiResource::erase::<ConfigMap>(&()),
            namespace: Some("apps".into()),
            name: name.into(),
        },
        manifest,
    }
}

fn owner() -> Owner {
    Owner { name: "users".into(), namespace: "apps".into(), uid: "uid-users".into() }
}

fn live_cm(name: &str, labels: Json, deleting: bool) -> LiveObject {
    let mut object = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "apps", "labels": labels}});
    if deleting {
        object["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
    }
    live(&object)
}

fn owned(objects: Vec<LiveObject>) -> BTreeMap<GroupKind, Owned> {
    BTreeMap::from([(
        GroupKind::new("", "ConfigMap"),
        Owned { gvk: cm_gvk(), listing: Ok((ApiResource::erase::<ConfigMap>(&()), objects)) },
    )])
}

fn inputs<'a>(owner: &'a Owner, inventory: &'a BTreeSet<Gvk>) -> Inputs<'a> {
    Inputs {
        owner,
        desired: Vec::new(),
        failed: Vec::new(),
        live: HashMap::new(),
        owned: BTreeMap::new(),
        inventory,
        prune: true,
    }
}

#[test]
fn plan_applies_an_object_the_cache_shows_being_deleted() {
    let (owner, inventory) = (owner(), BTreeSet::new());
    let wanted = desired("a", 0);
    let mut cached = live(&wanted.manifest);
    cached.deleting = true;
    let mut input = inputs(&owner, &inventory);
    input.live = HashMap::from([(
        wanted.key(),
        Live::cached(
            CachedObject { live: cached, manifest: wanted.manifest.clone(), owned_fields: None },
            &wanted,
        ),
    )]);
    input.desired = vec![wanted];
    let plan = plan::plan(input);
    assert_eq!((plan.apply.len(), plan.skip.len()), (1, 0));
}

#[test]
fn plan_creates_a_create_only_object_when_missing_and_never_updates_it() {
    let (owner, inventory) = (owner(), BTreeSet::new());
    let mut wanted = desired("once", 0);
    wanted.manifest["metadata"]["annotations"] = json!({"dbqo.dev/apply": "create-only"});
    // The live copy differs in data: an ordinary object would be applied.
    let mut live_manifest = wanted.manifest.clone();
    live_manifest["data"]["value"] = json!("changed by hand");
    let cached = Live::cached(
        CachedObject { live: live(&live_manifest), manifest: live_manifest, owned_fields: None },
        &wanted,
    );
    for (state, applied) in [(cached, 0), (Live::Absent, 1)] {
        let mut input = inputs(&owner, &inventory);
        input.live = HashMap::from([(wanted.key(), state)]);
        input.desired = vec![wanted.clone()];
        let plan = plan::plan(input);
        assert_eq!((plan.apply.len(), plan.skip.len()), (applied, 1 - applied));
    }
}

#[test]
fn plan_holds_a_rows_later_wave_until_its_earlier_wave_is_in_place_and_ready() {
    let (owner, inventory) = (owner(), BTreeSet::new());
    let waved = |name: &str, wave: &str| {
        let mut d = desired(name, 0);
        d.manifest["metadata"]["annotations"] = json!({"dbqo.dev/wave": wave});
        d
    };
    let (first, second) = (waved("first", "0"), waved("second", "1"));
    let cached = |manifest: &Json| {
        Live::cached(
            CachedObject { live: live(manifest), manifest: manifest.clone(), owned_fields: None },
            &first,
        )
    };
    let plan_with = |first_live: Live| {
        let mut input = inputs(&owner, &inventory);
        input.live = HashMap::from([(first.key(), first_live), (second.key(), Live::Absent)]);
        // Another row without waves is not held by this one.
        input.desired = vec![first.clone(), second.clone(), desired("plain", 1)];
        plan::plan(input)
    };
    let names =
        |objects: &[Desired]| objects.iter().map(|d| d.target.name.clone()).collect::<Vec<_>>();

    // Wave 0 missing: applied, wave 1 waits.
    let plan = plan_with(Live::Absent);
    assert_eq!(names(&plan.apply), ["first", "plain"]);
    assert_eq!(names(&plan.waiting), ["second"]);
    assert_eq!(plan.waiting_rows, BTreeSet::from([0]));
    assert!(plan.produced.contains(&second.key()), "a waiting object is never pruned");

    // Wave 0 in place and Ready (a ConfigMap that exists): wave 1 goes.
    let plan = plan_with(cached(&first.manifest));
    assert_eq!(names(&plan.apply), ["second", "plain"]);
    assert!(plan.waiting.is_empty() && plan.waiting_rows.is_empty());

    // Wave 0 in place but not Ready: wave 1 still waits.
    let mut unready = first.manifest.clone();
    unready["status"] = json!({"conditions": [{"type": "Ready", "status": "False"}]});
    let plan = plan_with(cached(&unready));
    assert_eq!(names(&plan.waiting), ["second"]);
}

#[test]
fn plan_detaches_instead_of_deleting_an_object_whose_prune_is_disabled() {
    let (owner, inventory) = (owner(), BTreeSet::from([cm_gvk()]));
    let mut input = inputs(&owner, &inventory);
    let mut kept = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kept", "namespace": "apps", "labels": owner_labels("users"),
                     "annotations": {"dbqo.dev/prune": "disabled"}}});
    kept["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
        "name": "other", "uid": "uid-other"}]);
    input.owned = owned(vec![live(&kept), live_cm("gone", owner_labels("users"), false)]);
    let plan = plan::plan(input);
    let decided: Vec<_> =
        plan.prune.iter().map(|c| (c.target.name.as_str(), c.detach.is_some())).collect();
    assert_eq!(decided, [("kept", true), ("gone", false)]);
    let patch = owner.detach_patch(plan.prune[0].detach.as_ref().unwrap(), true);
    assert_eq!(patch["metadata"]["labels"][MANAGED_BY], Json::Null);
    assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "uid-other", "others' stay");
    assert_eq!(patch["metadata"]["annotations"]["dbqo.dev/adopt"], "apps/users");
}

#[test]
fn plan_prunes_only_this_owners_objects_not_produced_and_not_going() {
    let (owner, inventory) = (owner(), BTreeSet::from([cm_gvk()]));
    let mut input = inputs(&owner, &inventory);
    input.desired = vec![desired("keep", 0)];
    input.live = HashMap::from([(desired("keep", 0).key(), Live::Absent)]);
    input.owned = owned(vec![
        live_cm("keep", owner_labels("users"), false),
        live_cm("gone", owner_labels("users"), false),
        live_cm("going", owner_labels("users"), true),
        live_cm("theirs", owner_labels("other"), false),
        // Our labels (another DBQR named like our hashed label value), not our uid.
        LiveObject {
            controller_uid: Some("uid-of-another".into()),
            ..live_cm("lookalike", owner_labels("users"), false)
        },
    ]);
    let plan = plan::plan(input);
    let pruned: Vec<_> = plan.prune.iter().map(|c| c.target.name.as_str()).collect();
    assert_eq!(pruned, ["gone"]);
    assert_eq!(plan.owned, 2, "keep and gone");
    assert_eq!(plan.next_inventory(false, []), BTreeSet::from([cm_gvk()]));
}

#[test]
fn plan_prunes_nothing_when_a_row_failed_and_keeps_the_inventory() {
    let deployments: Gvk = "apps/v1/Deployment".parse().unwrap();
    let (owner, inventory) = (owner(), BTreeSet::from([deployments.clone()]));
    let mut input = inputs(&owner, &inventory);
    input.failed = vec![RowFailure {
        row: 3,
        error: ObjectError::OwnedElsewhere {
            kind: GroupKind::new("", "ConfigMap"),
            name: "x".into(),
        },
    }];
    input.owned = owned(vec![live_cm("gone", owner_labels("users"), false)]);
    let plan = plan::plan(input);
    assert!(plan.prune.is_empty() && !plan.pruning);
    assert_eq!(plan.next_inventory(false, []), BTreeSet::from([deployments]));
}

#[test]
fn plan_keeps_a_kind_it_could_not_look_at() {
    let old: Gvk = "example.com/v1/Widget".parse().unwrap();
    let (owner, inventory) = (owner(), BTreeSet::from([old.clone()]));
    let mut input = inputs(&owner, &inventory);
    input.owned = BTreeMap::from([(
        old.group_kind(),
        Owned {
            gvk: old.clone(),
            listing: Err(PruneFailure::UnknownKind(KubeError::UnknownKind {
                kind: old.to_string(),
            })),
        },
    )]);
    let plan = plan::plan(input);
    assert_eq!(plan.prune_failures.len(), 1);
    assert_eq!(plan.next_inventory(false, []), BTreeSet::from([old]));
}

#[test]
fn object_keys_ignore_the_api_version() {
    let key: ObjectKey = desired("a", 0).key();
    assert_eq!(key.group_kind, GroupKind::new("", "ConfigMap"));
}

#[test]
fn many_new_objects_are_checked_with_one_list_and_existing_ones_still_read() {
    let (config, writer) = (config(true), FakeCluster::default());
    // Someone else's ConfigMap (another controller's) has the name one of
    // the rows renders; not labelled as the operator's, so not cached.
    writer.put(
        "ConfigMap",
        "apps",
        "n7",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "n7", "namespace": "apps", "ownerReferences": [
                   {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                    "uid": "uid-other", "controller": true}]}}),
    );
    let names: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    let input: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let mut state = PassState::default();
    let report = pass(&config, &mut state, &writer, &rows(&input));
    let calls = writer.calls.borrow().clone();
    let reads: Vec<&String> =
        calls.iter().filter(|c| c.starts_with("get") || c.starts_with("names")).collect();
    assert_eq!(
        reads,
        ["names ConfigMap apps", "get ConfigMap apps/n7"],
        "one list, and a read of the one that exists"
    );
    assert_eq!(report.failure().unwrap().reason(), "ObjectOwnedElsewhere");
    assert_eq!(report.applied, 19);
    assert!(!writer.writes().iter().any(|w| w.ends_with("/n7")));
}

#[test]
fn a_few_new_objects_are_read_one_by_one() {
    let (config, writer) = (config(true), FakeCluster::default());
    let mut state = PassState::default();
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1"), ("b", "2")]));
    assert!(report.succeeded(), "{:?}", report.failure());
    let calls = writer.calls.borrow().clone();
    assert_eq!(calls.iter().filter(|c| c.starts_with("get")).count(), 2);
    assert!(!calls.iter().any(|c| c.starts_with("names")));
}

/// A ConfigMap someone made by hand in the DBQR's namespace, with `annotations`.
fn hand_made(writer: &FakeCluster, name: &str, annotations: Json) {
    writer.put(
        "ConfigMap",
        "apps",
        name,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "apps", "uid": format!("uid-{name}"),
                            "labels": {"app.kubernetes.io/managed-by": "Helm"},
                            "annotations": annotations},
               "data": {"value": "mine"}}),
    );
}

#[test]
fn an_existing_object_nobody_handed_over_is_refused_by_name_and_left_alone() {
    let (config, writer) = (config(true), FakeCluster::default());
    hand_made(&writer, "a", json!({}));
    // Adoption names a DBQR: a different one does not count.
    hand_made(&writer, "b", json!({"dbqo.dev/adopt": "apps/other"}));
    let mut state = PassState::default();
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1"), ("b", "2"), ("c", "3")]));

    let failure = report.failure().expect("rows a and b fail");
    assert_eq!(failure.reason(), "ObjectExists");
    let message = failure.to_string();
    assert!(message.contains("row 0: ConfigMap a already exists"), "{message}");
    assert!(message.contains("dbqo.dev/adopt: apps/users"), "{message}");
    assert_eq!(writer.writes(), ["apply ConfigMap apps/c"]);
    for name in ["a", "b"] {
        let object =
            &writer.objects.borrow()[&("ConfigMap".into(), Some("apps".into()), name.into())];
        assert_eq!(object["data"]["value"], "mine");
        assert_eq!(object["metadata"]["labels"][MANAGED_BY], "Helm");
    }
}

#[test]
fn an_object_handed_over_with_the_adopt_annotation_is_applied_and_then_owned() {
    let (config, writer) = (config(true), FakeCluster::default());
    hand_made(&writer, "a", json!({"dbqo.dev/adopt": "apps/users"}));
    let mut state = PassState::default();
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1")]));
    assert!(report.succeeded(), "{:?}", report.failure());
    assert_eq!(writer.writes(), ["apply ConfigMap apps/a"]);
    let object =
        writer.objects.borrow()[&("ConfigMap".into(), Some("apps".into()), "a".into())].clone();
    assert_eq!(object["metadata"]["labels"][OWNER_NAME], "users");
}

#[test]
fn an_object_with_this_dbqrs_labels_the_cache_has_not_seen_yet_is_its_own() {
    let (config, writer) = (config(true), FakeCluster::default());
    let mut mine = desired("a", 0).manifest;
    mine["metadata"]["uid"] = json!("uid-a");
    writer.put("ConfigMap", "apps", "a", mine);
    writer.uncached.borrow_mut().insert("a".into());
    let mut state = PassState::default();
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1")]));
    assert!(report.succeeded(), "{:?}", report.failure());
    assert!(writer.calls.borrow().contains(&"get ConfigMap apps/a".to_owned()));
}

#[test]
fn a_prune_names_the_uid_it_saw_so_a_replacement_is_not_deleted() {
    let (config, writer, mut state) = converged(true, &[("a", "1"), ("b", "2"), ("c", "3")]);
    // b is deleted and made again by someone else, with our labels copied.
    let key = ("ConfigMap".to_owned(), Some("apps".to_owned()), "b".to_owned());
    writer.objects.borrow_mut().get_mut(&key).unwrap()["metadata"]["uid"] = json!("uid-b");
    *writer.replaced.borrow_mut() = Some(("b".into(), "uid-b-replacement".into()));
    let report = pass(&config, &mut state, &writer, &rows(&[("a", "1"), ("c", "3")]));
    assert!(report.succeeded(), "{:?}", report.failure());
    assert_eq!(writer.deletions.borrow().clone(), [("b".to_owned(), Some("uid-b".to_owned()))]);
    assert!(writer.objects.borrow().contains_key(&key), "the replacement stays");
}

/// A full pass of a keyed DBQR whose key is the row's `name`.
fn keyed_full(
    config: &PassConfig,
    state: &mut PassState,
    writer: &FakeCluster,
    rows: &[Row],
) -> PassReport {
    state.by_row = true;
    let report = pass(config, state, writer, rows);
    state.index_keys(rows.iter().map(|r| Some(r["name"].as_str().unwrap().to_owned())).collect());
    state.complete = report.succeeded();
    report
}

/// A keyed pass of `keys`, the query having returned `rows` for them.
fn keyed_pass(
    config: &PassConfig,
    state: &mut PassState,
    writer: &FakeCluster,
    rows: &[Row],
    keys: &[&str],
) -> (keyed::Keyed, PassReport) {
    let result = crate::db::QueryResult {
        columns: vec!["name".into(), "value".into()],
        keys: rows.iter().map(|r| Some(r["name"].as_str().unwrap().to_owned())).collect(),
        rows: rows.to_vec(),
    };
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    let mut report = PassReport::default();
    let ended = keyed::reconcile(config, state, writer, result, &keys, "now", &mut report)
        .now_or_never()
        .expect("the fake writer never waits");
    (ended, report)
}

#[test]
fn a_keyed_pass_touches_only_its_keys_and_ends_where_a_full_pass_would() {
    let (config, writer) = (config(true), FakeCluster::default());
    let mut state = PassState::default();
    keyed_full(&config, &mut state, &writer, &rows(&[("a", "1"), ("b", "2"), ("c", "3")]));
    assert!(state.keyed_ready());
    writer.calls.borrow_mut().clear();

    // b changed, c deleted, d inserted: one statement's keys.
    let (ended, report) = keyed_pass(
        &config,
        &mut state,
        &writer,
        &rows(&[("b", "new"), ("d", "4")]),
        &["b", "c", "d"],
    );
    assert_eq!(ended, keyed::Keyed::Done);
    assert!(report.succeeded(), "{:?}", report.failure());
    assert_eq!(
        writer.writes(),
        ["apply ConfigMap apps/b", "apply ConfigMap apps/d", "delete ConfigMap apps/c"]
    );
    assert!(!writer.calls.borrow().iter().any(|c| c.contains("apps/a")), "a is not looked at");
    // The DBQR's totals, as a full pass would report them.
    assert_eq!((report.rows, report.objects, report.applied, report.pruned), (3, 3, 2, 1));
    let mut produced: Vec<String> = state.produced().map(|k| k.name).collect();
    produced.sort();
    assert_eq!(produced, ["a", "b", "d"]);

    // A full pass of the same rows finds everything in place.
    writer.calls.borrow_mut().clear();
    let full = pass(&config, &mut state, &writer, &rows(&[("a", "1"), ("b", "new"), ("d", "4")]));
    assert_eq!((full.applied, full.skipped, full.pruned), (0, 3, 0));
    assert!(writer.writes().is_empty(), "{:?}", writer.writes());
}

#[test]
fn a_keyed_pass_that_cannot_decide_alone_hands_over_to_a_full_pass() {
    let (config, writer) = (config(true), FakeCluster::default());
    let mut state = PassState::default();
    keyed_full(&config, &mut state, &writer, &rows(&[("a", "1"), ("b", "2")]));
    writer.calls.borrow_mut().clear();
    // Key x's row now renders the object row a produces: a duplicate only
    // a full pass can see.
    let mut row = rows(&[("a", "2")]);
    let result_key = "x";
    let result = crate::db::QueryResult {
        columns: vec!["name".into(), "value".into()],
        keys: vec![Some(result_key.to_owned())],
        rows: std::mem::take(&mut row),
    };
    let mut report = PassReport::default();
    let ended =
        keyed::reconcile(&config, &mut state, &writer, result, &["x".into()], "now", &mut report)
            .now_or_never()
            .unwrap();
    assert_eq!(ended, keyed::Keyed::Full("an object another row produces"));
    assert!(writer.writes().is_empty(), "nothing written before the full pass");

    // A row that fails to render: the full pass reports it.
    let bad = vec![json!({"name": "", "value": "1"}).as_object().unwrap().clone()];
    let result = crate::db::QueryResult {
        columns: vec!["name".into(), "value".into()],
        keys: vec![Some("b".into())],
        rows: bad,
    };
    let ended =
        keyed::reconcile(&config, &mut state, &writer, result, &["b".into()], "now", &mut report)
            .now_or_never()
            .unwrap();
    assert_eq!(ended, keyed::Keyed::Full("a row failed"));
    assert!(writer.writes().is_empty());
}

#[test]
fn a_keyed_prune_is_judged_against_every_object_of_the_dbqr() {
    let (config, writer) = (config(true), FakeCluster::default());
    let mut state = PassState::default();
    let all: Vec<(String, String)> = (0..10).map(|i| (format!("r{i}"), i.to_string())).collect();
    let all: Vec<(&str, &str)> = all.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    keyed_full(&config, &mut state, &writer, &rows(&all));
    writer.calls.borrow_mut().clear();
    // One key deleted of ten: a small prune, immediate.
    let (ended, report) = keyed_pass(&config, &mut state, &writer, &[], &["r3"]);
    assert_eq!(ended, keyed::Keyed::Done);
    assert_eq!(report.guard.map(|g| (g.ruling, g.owned)), Some((Ruling::Immediate, 10)));
    assert_eq!(writer.writes(), ["delete ConfigMap apps/r3"]);
    // Six keys at once of the nine left: held, like a full pass would.
    let six = ["r0", "r1", "r2", "r4", "r5", "r6"];
    let (_, report) = keyed_pass(&config, &mut state, &writer, &[], &six);
    assert_eq!(report.guard.map(|g| (g.ruling, g.held)), Some((Ruling::Holding, 6)));
    assert!(!state.keyed_ready(), "held deletions are a full pass's to confirm");
}
