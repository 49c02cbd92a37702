//! `diff`: what applying a DBQR manifest would change in the live cluster,
//! before it is applied. The query runs read-only; every object the rows
//! render is server-side applied with `dryRun=All` as the operator's field
//! manager, so defaults, admission and conversion are the API server's own;
//! the result is compared with the live object. The live DBQR's objects no
//! row renders any more are listed as pruned. Nothing is written. Exit codes
//! follow `kubectl diff`: 0 nothing would change, 1 something would, 2 error.

use std::{collections::BTreeSet, path::PathBuf};

use clap::Args;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::{Map, Value as Json};

use super::policy::PolicyArgs;
use super::render::{load_dbqr, query_rows};
use crate::api::DatabaseQueryResource;
use crate::kube_api::{self, selector, Discovered, Gvk, FIELD_MANAGER};
use crate::reconcile::{pass::DiscoveredScopes, plan, Owner};
use crate::render::{render_rows, Metadata};

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// DBQR manifest (YAML) to compare with the live cluster.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: PathBuf,
    /// Connection string (libpq URI or key=value) to read the rows from;
    /// default: the DBQR's connection Secret, read from the cluster.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Namespace assumed when the manifest has none.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// What would happen to one object.
enum Change {
    Create(String),
    Update(String),
    Prune(String),
    /// The object exists and is not this DBQR's: the row would fail.
    Refuse(String),
}

pub(super) async fn run(args: DiffArgs) -> i32 {
    match diff(&args).await {
        Ok(changes) if changes.is_empty() => 0,
        Ok(changes) => {
            for change in changes {
                match change {
                    Change::Create(text) | Change::Update(text) => print!("{text}"),
                    Change::Prune(what) => println!("pruned: {what}"),
                    Change::Refuse(why) => println!("refused: {why}"),
                }
            }
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

async fn diff(args: &DiffArgs) -> Result<Vec<Change>, String> {
    let label = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file).map_err(|e| format!("{label}: {e}"))?;
    let (mut dbqr, template) = load_dbqr(&text).map_err(|e| format!("dbqr {label}: {e}"))?;
    let namespace = dbqr.metadata.namespace.get_or_insert(args.namespace.clone()).clone();
    let name = dbqr.metadata.name.clone().unwrap_or_default();
    let who = format!("dbqr {namespace}/{name}");
    let policy = args.policy.policy().map_err(|e| format!("--allowed-kinds: {e}"))?;
    let client = Client::try_default().await.map_err(|e| format!("no cluster: {e}"))?;

    // The live DBQR gives the owner uid its objects carry and the kinds it
    // has written (where pruned objects are looked for).
    let dbqrs: Api<DatabaseQueryResource> = Api::namespaced(client.clone(), &namespace);
    let live_dbqr = dbqrs.get_opt(&name).await.map_err(|e| format!("{who}: {e}"))?;
    if let Some(live) = &live_dbqr {
        dbqr.metadata.uid = live.metadata.uid.clone();
    }
    let rows = match &args.database_url {
        Some(url) => query_rows(url, &dbqr).await,
        None => rows_with_secret(&client, &dbqr).await,
    }
    .map_err(|e| format!("{who}: {e}"))?;

    let kinds = kube_api::discover(&client).await.map_err(|e| format!("discovery: {e}"))?;
    let metadata = Metadata::of(&dbqr);
    let now = crate::reconcile::pass::template_now();
    let outcome =
        render_rows(&template, &rows, &metadata, &now, &policy, &DiscoveredScopes(&kinds));
    if let Some(failure) = outcome.failures.first() {
        return Err(format!("{who}: {}: {}", failure.row, failure.error));
    }
    let owner = Owner::of(&dbqr);
    let mut changes = Vec::new();
    let mut produced = BTreeSet::new();
    let mut written: BTreeSet<Gvk> = BTreeSet::new();
    for object in outcome.objects {
        let mut manifest = object.manifest;
        // A DBQR not yet in the cluster has no uid to reference: its objects
        // are shown with the owner labels only.
        let referenced = if owner.uid.is_empty() { None } else { object.namespace.as_deref() };
        owner.decorate(&mut manifest, referenced);
        // As the pass sends it: the hash of what it renders, which tells
        // later passes the object is in place.
        crate::reconcile::compare::stamp(&mut manifest);
        let resource = kube_api::resolve(&kinds, &object.gvk).map_err(|e| e.to_string())?;
        let api: Api<DynamicObject> =
            kube_api::api(&client, &resource, object.namespace.as_deref());
        let what = describe(&object.gvk, object.namespace.as_deref(), &object.name);
        let live = api.get_opt(&object.name).await.map_err(|e| format!("{what}: {e}"))?;
        // An object the operator would not take over: the row would fail.
        let key = kube_api::ObjectKey {
            group_kind: object.group_kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
        };
        let refused =
            live.as_ref().and_then(|l| plan::refusal(&owner, &key, &kube_api::LiveObject::from(l)));
        produced.insert((object.gvk.group_kind(), object.namespace.clone(), object.name.clone()));
        if let Some(error) = refused {
            changes.push(Change::Refuse(error.to_string()));
            continue;
        }
        let dry_run = PatchParams { dry_run: true, ..PatchParams::apply(FIELD_MANAGER).force() };
        let merged = api
            .patch(&object.name, &dry_run, &Patch::Apply(&manifest))
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let (before, after) = (live.map(comparable), comparable(merged));
        if before.as_ref() != Some(&after) {
            let text = unified(&what, before.as_ref(), &after);
            changes.push(if before.is_none() {
                Change::Create(text)
            } else {
                Change::Update(text)
            });
        }
        written.insert(object.gvk);
    }
    if dbqr.spec.prune {
        let recorded = crate::reconcile::managed_kinds(live_dbqr.and_then(|d| d.status).as_ref());
        for gvk in written.iter().chain(&recorded).collect::<BTreeSet<_>>() {
            changes.extend(pruned(&client, &kinds, &owner, gvk, &produced).await?);
        }
    }
    Ok(changes)
}

/// Rows read with the DBQR's connection Secret, as the operator would.
async fn rows_with_secret(
    client: &Client,
    dbqr: &DatabaseQueryResource,
) -> Result<Vec<Map<String, Json>>, String> {
    let reference = &dbqr.spec.database.connection_secret_ref;
    let namespace =
        reference.namespace.clone().or_else(|| dbqr.metadata.namespace.clone()).unwrap_or_default();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &namespace);
    let label = format!("Secret {namespace}/{}", reference.name);
    let secret = secrets
        .get_opt(&reference.name)
        .await
        .map_err(|e| format!("{label}: {e}"))?
        .ok_or_else(|| format!("{label} not found"))?;
    let data = kube_api::SecretData::of(&secret).data;
    let info =
        crate::db::conninfo_from_secret(&label, &data, reference).map_err(|e| e.to_string())?;
    super::render::rows_over(&info, dbqr).await
}

/// The live objects of this DBQR of one kind that no row renders now.
async fn pruned(
    client: &Client,
    kinds: &Discovered,
    owner: &Owner,
    gvk: &Gvk,
    produced: &BTreeSet<(kube_api::GroupKind, Option<String>, String)>,
) -> Result<Vec<Change>, String> {
    // A kind no longer served holds nothing to prune.
    let Ok(resource) = kube_api::resolve(kinds, gvk) else {
        return Ok(Vec::new());
    };
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let listed = api
        .list(&ListParams::default().labels(&selector(&owner.labels())))
        .await
        .map_err(|e| format!("list {gvk}: {e}"))?;
    Ok(listed
        .items
        .into_iter()
        .map(kube_api::LiveObject::from)
        .filter(|o| owner.owns_object(o) && !o.deleting)
        .filter(|o| !produced.contains(&(gvk.group_kind(), o.namespace.clone(), o.name.clone())))
        .map(|o| {
            let what = describe(gvk, o.namespace.as_deref(), &o.name);
            Change::Prune(if o.prune_disabled {
                format!("{what} (detached: prune disabled)")
            } else {
                what
            })
        })
        .collect())
}

fn describe(gvk: &Gvk, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{gvk} {ns}/{name}"),
        None => format!("{gvk} {name}"),
    }
}

/// The object as YAML without the fields every write changes.
fn comparable(object: DynamicObject) -> String {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(metadata) = value["metadata"].as_object_mut() {
        for field in ["managedFields", "resourceVersion", "generation", "creationTimestamp", "uid"]
        {
            metadata.remove(field);
        }
    }
    serde_yaml::to_string(&value).unwrap_or_default()
}

fn unified(what: &str, before: Option<&String>, after: &str) -> String {
    let before = before.map(String::as_str).unwrap_or("");
    let diff = similar::TextDiff::from_lines(before, after);
    let live = if before.is_empty() { "/dev/null".to_owned() } else { format!("live {what}") };
    diff.unified_diff().context_radius(3).header(&live, &format!("merged {what}")).to_string()
}
