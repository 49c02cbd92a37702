//! A full pass: connect, query, render, validate, plan, apply, prune.
//!
//! Pruning happens only after a fully successful pass; any failure before it
//! (database, query, a row, an apply) means nothing is deleted.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use deadpool_postgres::Pool;
use futures_util::future::join_all;
use kube::api::{ApiResource, GroupVersionKind};
use serde_json::Value as Json;

use super::{labels::Owner, writer::Writer};
use crate::api::DatabaseQueryResourceSpec;
use crate::db::{self, ConnectError, QueryOptions};
use crate::kube_api::{resource_for, CachedObject, KindInfo, KubeError};
use crate::render::{
    render_rows, GroupKind, Metadata, ObjectKey, ObjectPolicy, RenderOutcome, RenderedObject,
    RowTemplate, Scope, ScopeLookup,
};

/// Everything fixed for the life of one spec.
pub struct PassConfig {
    pub owner: Owner,
    pub metadata: Metadata,
    pub spec: DatabaseQueryResourceSpec,
    pub template: RowTemplate,
    pub policy: Arc<ObjectPolicy>,
    pub allow_cross_namespace_secrets: bool,
    /// `statusUpdateQueryTemplate`, compiled.
    pub status_template: Option<crate::writeback::StatusTemplate>,
}

/// Carried from pass to pass.
#[derive(Default)]
pub struct PassState {
    pool: Option<(String, Pool)>,
    /// The connection the pool was built from (for the LISTEN connection).
    conninfo: Option<crate::db::ConnInfo>,
    /// What this process applied (or found already in place), per object:
    /// the reference for drift repair between passes.
    applied: HashMap<ObjectKey, Applied>,
    /// The row that produced each object in the last pass (for status write-back).
    rows: HashMap<ObjectKey, serde_json::Map<String, Json>>,
    /// `apiVersion/Kind` of everything this DBQR has written and not yet pruned.
    pub managed_kinds: BTreeSet<String>,
}

/// An object as this DBQR wants it, and where it lives.
#[derive(Debug, Clone)]
pub struct Applied {
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
    pub manifest: Json,
}

impl PassState {
    /// The row that produced `key` in the last pass.
    pub fn row(&self, key: &ObjectKey) -> Option<&serde_json::Map<String, Json>> {
        self.rows.get(key)
    }

    /// The wanted state of `key`, if this DBQR produced it in the last pass.
    pub fn applied(&self, key: &ObjectKey) -> Option<Applied> {
        self.applied.get(key).cloned()
    }

    /// The current pool and the connection it was built from, once a pass has made them.
    pub fn connection(&self) -> Option<(Pool, crate::db::ConnInfo)> {
        Some((self.pool.as_ref()?.1.clone(), self.conninfo.clone()?))
    }

    /// Closes the connection pool; idle connections go at once, busy ones when returned.
    pub fn close(self) {
        if let Some((_, pool)) = self.pool {
            pool.close();
        }
    }

    pub fn with_managed_kinds(kinds: impl IntoIterator<Item = String>) -> Self {
        Self {
            managed_kinds: kinds.into_iter().collect(),
            ..Self::default()
        }
    }
}

/// A failure with its stable reason and a message fit for a condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: String,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// `None` when the pass never got as far as the database.
    pub database: Option<Result<(), Problem>>,
    pub sync: Option<Result<(), Problem>>,
    pub rows: usize,
    pub objects: usize,
    pub applied: usize,
    pub skipped: usize,
    pub pruned: usize,
    pub managed_kinds: Vec<String>,
}

impl PassReport {
    pub fn succeeded(&self) -> bool {
        matches!(self.sync, Some(Ok(())))
    }

    /// The stable reason of the first failure, if any.
    pub fn failure_reason(&self) -> Option<&str> {
        match (&self.database, &self.sync) {
            (Some(Err(p)), _) | (_, Some(Err(p))) => Some(&p.reason),
            _ => None,
        }
    }
}

struct DiscoveredScopes<'a>(&'a HashMap<GroupKind, KindInfo>);

impl ScopeLookup for DiscoveredScopes<'_> {
    fn scope(&self, gk: &GroupKind) -> Option<Scope> {
        self.0.get(gk).map(|k| k.scope)
    }
}

fn api_version_kind(object: &RenderedObject) -> String {
    format!("{}/{}", object.api_version, object.group_kind.kind)
}

/// `v1/ConfigMap`, `apps/v1/Deployment` → group/version/kind.
pub fn parse_managed_kind(s: &str) -> Option<GroupVersionKind> {
    let (api_version, kind) = s.rsplit_once('/')?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    Some(GroupVersionKind::gvk(group, version, kind))
}

fn resource(
    kinds: &HashMap<GroupKind, KindInfo>,
    gvk: &GroupVersionKind,
) -> Result<ApiResource, KubeError> {
    kinds
        .get(&GroupKind::new(gvk.group.clone(), gvk.kind.clone()))
        .map(|info| resource_for(gvk, info))
        .ok_or_else(|| KubeError::UnknownKind {
            kind: format!("{}/{}", gvk.group, gvk.kind),
        })
}

async fn pool<W: Writer>(
    config: &PassConfig,
    state: &mut PassState,
    writer: &W,
) -> Result<Pool, Problem> {
    let reference = &config.spec.database.connection_secret_ref;
    let namespace = reference
        .namespace
        .clone()
        .unwrap_or_else(|| config.owner.namespace.clone());
    if namespace != config.owner.namespace && !config.allow_cross_namespace_secrets {
        return Err(Problem::new(
            "SecretNotAllowed",
            format!("secrets in other namespaces ({namespace}) are not allowed by the operator"),
        ));
    }
    let label = format!("{namespace}/{}", reference.name);
    let (version, data) = writer
        .read_secret(namespace, reference.name.clone())
        .await
        .map_err(|e| Problem::new(e.reason(), format!("cannot read secret {label}: {e}")))?
        .ok_or_else(|| Problem::new("SecretNotFound", format!("secret {label} not found")))?;
    if let Some((cached, pool)) = &state.pool {
        if *cached == version {
            return Ok(pool.clone());
        }
    }
    let info = db::conninfo_from_secret(&label, &data, reference)
        .map_err(|e| Problem::new(e.reason(), e.to_string()))?;
    let pool_spec = &config.spec.database.pool;
    let pool = db::build_pool(
        &info,
        pool_spec.max_connections as usize,
        pool_spec.connect_timeout.get(),
    )
    .map_err(|e| Problem::new("TlsConfigError", e.to_string()))?;
    state.conninfo = Some(info);
    if let Some((_, old)) = state.pool.replace((version, pool.clone())) {
        old.close();
    }
    Ok(pool)
}

fn pool_problem(e: deadpool_postgres::PoolError) -> Problem {
    use deadpool_postgres::PoolError as E;
    match e {
        E::Backend(e) => {
            let e: ConnectError = db::connect_error(&e);
            Problem::new(e.reason(), e.to_string())
        }
        E::Timeout(_) => Problem::new("ConnectionFailed", "timed out connecting to the database"),
        other => Problem::new("ConnectionFailed", other.to_string()),
    }
}

/// Runs one full pass. `now` is what templates see as `now`.
pub async fn run_pass<W: Writer>(
    config: &PassConfig,
    state: &mut PassState,
    writer: &W,
    now: &str,
) -> PassReport {
    let mut report = PassReport {
        managed_kinds: state.managed_kinds.iter().cloned().collect(),
        ..PassReport::default()
    };
    let pool = match pool(config, state, writer).await {
        Ok(pool) => pool,
        Err(problem) => {
            report.database = Some(Err(problem));
            return report;
        }
    };
    let mut client = match pool.get().await {
        Ok(client) => client,
        Err(e) => {
            report.database = Some(Err(pool_problem(e)));
            return report;
        }
    };
    report.database = Some(Ok(()));
    let options = QueryOptions {
        read_only: config.spec.read_only,
        max_rows: config.spec.max_rows,
        statement_timeout: config.spec.database.statement_timeout.get(),
    };
    let result = db::run_query(&mut client, &config.spec.query, &options).await;
    drop(client);
    let rows = match result {
        Ok(result) => result.rows,
        Err(e) => {
            report.sync = Some(Err(Problem::new(e.reason(), e.to_string())));
            return report;
        }
    };
    report.rows = rows.len();

    let mut kinds = match writer.kinds(false).await {
        Ok(kinds) => kinds,
        Err(e) => {
            report.sync = Some(Err(Problem::new(
                e.reason(),
                format!("discovery failed: {e}"),
            )));
            return report;
        }
    };
    let mut outcome = render(config, &rows, &kinds, now);
    if outcome
        .failures
        .iter()
        .any(|f| f.error.reason() == "UnknownKind")
    {
        // A CRD may have been installed since the last discovery.
        if let Ok(fresh) = writer.kinds(true).await {
            kinds = fresh;
            outcome = render(config, &rows, &kinds, now);
        }
    }

    let mut failures: Vec<String> = outcome
        .failures
        .iter()
        .map(|f| format!("row {}: {}", f.row.index, f.error))
        .collect();
    let mut first_reason = outcome
        .failures
        .first()
        .map(|f| f.error.reason().to_owned());
    let produced: HashSet<ObjectKey> = outcome.objects.iter().map(RenderedObject::key).collect();
    state.rows = outcome
        .objects
        .iter()
        .map(|o| (o.key(), rows[o.row].clone()))
        .collect();
    report.objects = produced.len();

    let applied = apply_all(config, state, writer, &kinds, outcome.objects).await;
    // Only what this pass produced is worth repairing; pruned or failed rows' objects are not.
    state.applied.retain(|key, _| produced.contains(key));
    report.applied = applied.applied;
    report.skipped = applied.skipped;
    for (row, problem) in &applied.failures {
        first_reason.get_or_insert_with(|| problem.reason.clone());
        failures.push(format!("row {row}: {}", problem.message));
    }
    let mut written_kinds = applied.kinds;

    if !failures.is_empty() {
        // Keep everything we knew about plus what we wrote: nothing is pruned
        // this pass, so nothing may drop out of the inventory either.
        written_kinds.extend(state.managed_kinds.iter().cloned());
        state.managed_kinds = written_kinds;
        report.managed_kinds = state.managed_kinds.iter().cloned().collect();
        let count = failures.len();
        let mut message = format!("{count} problem(s), nothing pruned; {}", failures[0]);
        if count > 1 {
            message.push_str(&format!("; {}", failures[1]));
        }
        report.sync = Some(Err(Problem::new(
            first_reason.as_deref().unwrap_or("SyncFailed"),
            truncate(message),
        )));
        return report;
    }

    let mut to_check: BTreeSet<String> = state.managed_kinds.clone();
    to_check.extend(written_kinds.iter().cloned());
    let mut prune_failures = Vec::new();
    if config.spec.prune {
        for kind in &to_check {
            match prune_kind(config, writer, &kinds, kind, &produced).await {
                Ok(n) => report.pruned += n,
                Err(problem) => {
                    written_kinds.insert(kind.clone());
                    prune_failures.push(problem);
                }
            }
        }
    } else {
        written_kinds = to_check;
    }
    state.managed_kinds = written_kinds;
    report.managed_kinds = state.managed_kinds.iter().cloned().collect();
    report.sync = Some(match prune_failures.first() {
        None => Ok(()),
        Some(p) => Err(Problem::new(
            "PruneFailed",
            truncate(format!(
                "{} kind(s) not pruned; {}",
                prune_failures.len(),
                p.message
            )),
        )),
    });
    report
}

fn truncate(mut message: String) -> String {
    const LIMIT: usize = 1000;
    if message.len() > LIMIT {
        let mut cut = LIMIT;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

fn render(
    config: &PassConfig,
    rows: &[serde_json::Map<String, Json>],
    kinds: &HashMap<GroupKind, KindInfo>,
    now: &str,
) -> RenderOutcome {
    render_rows(
        &config.template,
        rows,
        &config.metadata,
        now,
        &config.policy,
        &DiscoveredScopes(kinds),
    )
}

struct ApplyOutcome {
    applied: usize,
    skipped: usize,
    failures: Vec<(usize, Problem)>,
    kinds: BTreeSet<String>,
}

/// Whether `live` holds every field of `desired` with the same value: what a
/// server-side apply of `desired` would leave unchanged. Fields others added
/// (status, defaults, other managers' fields) do not matter.
pub fn covers(live: &Json, desired: &Json) -> bool {
    match (live, desired) {
        (Json::Object(l), Json::Object(d)) => d
            .iter()
            .all(|(k, v)| l.get(k).is_some_and(|lv| covers(lv, v))),
        (Json::Array(l), Json::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| covers(lv, dv))
        }
        (Json::Number(l), Json::Number(d)) => l == d || l.as_f64() == d.as_f64(),
        _ => live == desired,
    }
}

async fn apply_all<W: Writer>(
    config: &PassConfig,
    state: &mut PassState,
    writer: &W,
    kinds: &HashMap<GroupKind, KindInfo>,
    objects: Vec<RenderedObject>,
) -> ApplyOutcome {
    let mut outcome = ApplyOutcome {
        applied: 0,
        skipped: 0,
        failures: Vec::new(),
        kinds: BTreeSet::new(),
    };
    let mut watched = HashSet::new();
    let mut pending = Vec::new();
    for mut object in objects {
        config
            .owner
            .decorate(&mut object.manifest, object.namespace.as_deref());
        outcome.kinds.insert(api_version_kind(&object));
        let gvk = match object.api_version.rsplit_once('/') {
            Some((group, version)) => {
                GroupVersionKind::gvk(group, version, &object.group_kind.kind)
            }
            None => GroupVersionKind::gvk("", &object.api_version, &object.group_kind.kind),
        };
        let resource = match resource(kinds, &gvk) {
            Ok(r) => r,
            Err(e) => {
                outcome
                    .failures
                    .push((object.row, Problem::new(e.reason(), e.to_string())));
                continue;
            }
        };
        if watched.insert(object.group_kind.clone()) {
            if let Err(e) = writer.watch(resource.clone()).await {
                outcome.failures.push((
                    object.row,
                    Problem::new(
                        e.reason(),
                        format!("cannot watch {}: {e}", object.group_kind),
                    ),
                ));
                continue;
            }
        }
        pending.push((object, resource));
    }

    let results = join_all(pending.into_iter().map(|(object, resource)| async move {
        let result = apply_one(config, writer, &resource, &object).await;
        let applied = Applied {
            resource,
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            manifest: object.manifest,
        };
        (object.row, object.group_kind, applied, result)
    }))
    .await;
    for (row, group_kind, applied, result) in results {
        let key = ObjectKey {
            group_kind,
            namespace: applied.namespace.clone(),
            name: applied.name.clone(),
        };
        match result {
            Ok(sent) => {
                if sent {
                    outcome.applied += 1;
                } else {
                    outcome.skipped += 1;
                }
                state.applied.insert(key, applied);
            }
            Err(problem) => {
                state.applied.remove(&key);
                outcome.failures.push((row, problem));
            }
        }
    }
    outcome.failures.sort_by_key(|(row, _)| *row);
    outcome
}

/// Applies `object` unless the watch cache shows it already in place.
/// Returns whether a write was sent.
async fn apply_one<W: Writer>(
    config: &PassConfig,
    writer: &W,
    resource: &ApiResource,
    object: &RenderedObject,
) -> Result<bool, Problem> {
    let what = format!("{} {}", object.group_kind, object.name);
    let cached = writer
        .cached(
            resource.clone(),
            object.namespace.clone(),
            object.name.clone(),
        )
        .await
        .map_err(|e| Problem::new(e.reason(), format!("cannot read {what}: {e}")))?;
    let live = match cached {
        Some(CachedObject { live, manifest }) => Some((live, Some(manifest))),
        // Not labelled as ours (or not there): one GET, so we never take over someone else's object.
        None => writer
            .get(
                resource.clone(),
                object.namespace.clone(),
                object.name.clone(),
            )
            .await
            .map_err(|e| Problem::new(e.reason(), format!("cannot read {what}: {e}")))?
            .map(|l| (l, None)),
    };
    if let Some((live, manifest)) = live {
        let foreign_controller = live
            .controller_uid
            .as_ref()
            .is_some_and(|uid| *uid != config.owner.uid);
        if config.owner.is_foreign(&live.labels) || foreign_controller {
            return Err(Problem::new(
                "ObjectOwnedElsewhere",
                format!("{what} exists and belongs to another owner; not taken over"),
            ));
        }
        if manifest.is_some_and(|m| !live.deleting && covers(&m, &object.manifest)) {
            return Ok(false);
        }
    }
    writer
        .apply(
            resource.clone(),
            object.namespace.clone(),
            object.name.clone(),
            object.manifest.clone(),
        )
        .await
        .map_err(|e| Problem::new(e.reason(), format!("cannot apply {what}: {e}")))?;
    Ok(true)
}

/// Puts one object back the way this DBQR wants it if the cache shows it
/// deleted or changed. Returns whether a write was sent.
pub async fn repair<W: Writer>(writer: &W, wanted: &Applied) -> Result<bool, Problem> {
    let live = writer
        .cached(
            wanted.resource.clone(),
            wanted.namespace.clone(),
            wanted.name.clone(),
        )
        .await
        .map_err(|e| Problem::new(e.reason(), e.to_string()))?;
    if live.is_some_and(|l| covers(&l.manifest, &wanted.manifest)) {
        return Ok(false);
    }
    writer
        .apply(
            wanted.resource.clone(),
            wanted.namespace.clone(),
            wanted.name.clone(),
            wanted.manifest.clone(),
        )
        .await
        .map_err(|e| {
            Problem::new(
                e.reason(),
                format!(
                    "cannot repair {} {}: {e}",
                    wanted.resource.kind, wanted.name
                ),
            )
        })?;
    Ok(true)
}

async fn prune_kind<W: Writer>(
    config: &PassConfig,
    writer: &W,
    kinds: &HashMap<GroupKind, KindInfo>,
    kind: &str,
    produced: &HashSet<ObjectKey>,
) -> Result<usize, Problem> {
    let gvk = parse_managed_kind(kind)
        .ok_or_else(|| Problem::new("PruneFailed", format!("bad managed kind {kind:?}")))?;
    let resource = resource(kinds, &gvk).map_err(|e| Problem::new(e.reason(), e.to_string()))?;
    writer
        .watch(resource.clone())
        .await
        .map_err(|e| Problem::new(e.reason(), format!("cannot watch {kind}: {e}")))?;
    let live = writer
        .cached_list(resource.clone(), config.owner.selector())
        .await
        .map_err(|e| Problem::new(e.reason(), format!("cannot list {kind}: {e}")))?;
    let group_kind = GroupKind::new(gvk.group.clone(), gvk.kind.clone());
    let mut pruned = 0;
    for object in live {
        let key = ObjectKey {
            group_kind: group_kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
        };
        if produced.contains(&key) || object.deleting || !config.owner.owns(&object.labels) {
            continue;
        }
        writer
            .delete(
                resource.clone(),
                object.namespace.clone(),
                object.name.clone(),
            )
            .await
            .map_err(|e| {
                Problem::new(
                    e.reason(),
                    format!("cannot delete {} {}: {e}", group_kind, object.name),
                )
            })?;
        pruned += 1;
    }
    Ok(pruned)
}
