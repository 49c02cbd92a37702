//! A full pass, in a straight line from the rows ([`super::run`] connects
//! and queries): render, gather what the cluster holds,
//! [`plan`](super::plan::plan), carry the plan out; and what a DBQR keeps
//! from pass to pass.
//!
//! Pruning happens only after a fully successful pass; any failure before it
//! (database, query, a row, an apply) means nothing is deleted.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{future::join_all, StreamExt as _};
use kube::api::ApiResource;

use super::compare::{in_place, stamp};
use super::error::{ObjectError, PassError, PruneFailure, RowFailure};
use super::guard::{PruneGuard, Ruling, RELEASE_ANNOTATION};
use super::labels::Owner;
use super::plan::{self, Desired, Inputs, Live, Owned, Plan};
use super::state::PassState;
use crate::api::{DatabaseQueryResource, DatabaseQueryResourceSpec};
use crate::db::{ConnInfo, Connections, Pool};
use crate::kube_api::cluster::{Cluster, Kinds};
use crate::kube_api::{create_only, resolve, Discovered, KubeError, Target};
use crate::kube_api::{GroupKind, Gvk, ObjectKey, Scope};
use crate::render::{
    render_rows, Metadata, ObjectPolicy, RenderOutcome, RenderedObject, RowTemplate, ScopeLookup,
};
use crate::settings::Settings;
use crate::status_template::StatusTemplate;

pub use crate::db::Row;

/// Everything fixed for the life of one spec.
pub struct PassConfig {
    pub owner: Owner,
    pub metadata: Metadata,
    pub spec: DatabaseQueryResourceSpec,
    pub template: RowTemplate,
    pub policy: Arc<ObjectPolicy>,
    pub allow_cross_namespace_secrets: bool,
    /// The user the DBQR's requests are made as (see [`Owner::acting_user`]);
    /// the writer the pass is given acts as it already.
    pub acting_user: Option<String>,
    /// The operator's connections to databases (budget, shared pools,
    /// LISTEN connections), shared by every DBQR.
    pub connections: Connections,
    /// `statusUpdateQueryTemplate`, compiled.
    pub status_template: Option<StatusTemplate>,
    /// `spec.pruneGuard`.
    pub guard: PruneGuard,
    /// Applies of one pass that exist at once (each holds a copy of its
    /// manifest until sent): twice the writer's concurrency keeps it busy.
    pub in_flight: usize,
}

/// The user a DBQR's object requests are made as: its
/// `serviceAccountName`, else `--default-service-account`, in its own
/// namespace; `None` for the operator's own rights.
pub fn acting_user(dbqr: &DatabaseQueryResource, settings: &Settings) -> Option<String> {
    Owner::of(dbqr).acting_user(
        dbqr.spec.service_account_name.as_deref(),
        settings.default_service_account.as_deref(),
    )
}

impl PassConfig {
    /// Validates and compiles a DBQR's spec; an invalid spec never runs a pass.
    pub fn new(
        dbqr: &DatabaseQueryResource,
        settings: &Settings,
        connections: &Connections,
    ) -> Result<Self, PassError> {
        let problems = dbqr.spec.validate();
        if !problems.is_empty() {
            return Err(PassError::InvalidSpec(problems));
        }
        let template = RowTemplate::compile(&dbqr.spec.template)?;
        let status_template = dbqr
            .spec
            .status_update_query_template
            .as_deref()
            .map(StatusTemplate::compile)
            .transpose()
            .map_err(PassError::StatusTemplate)?;
        Ok(Self {
            owner: Owner::of(dbqr),
            metadata: Metadata::of(dbqr),
            spec: dbqr.spec.clone(),
            template,
            policy: settings.policy.clone(),
            allow_cross_namespace_secrets: settings.allow_cross_namespace_secrets,
            acting_user: acting_user(dbqr, settings),
            connections: connections.clone(),
            status_template,
            guard: PruneGuard::from(&dbqr.spec.prune_guard),
            in_flight: settings.concurrency.max(1) * 2,
        })
    }

    /// `changeDetection.keyColumn`, when notifications carry keys.
    pub fn key_column(&self) -> Option<&str> {
        self.spec
            .change_detection
            .as_ref()
            .filter(|cd| cd.enabled && cd.mode == crate::api::ChangeDetectionMode::Notify)
            .and_then(|cd| cd.key_column.as_deref())
    }

    /// The DBQR carries the annotation that releases a held prune.
    pub fn release_requested(&self) -> bool {
        self.metadata.annotations.contains_key(RELEASE_ANNOTATION)
    }
}

impl PassConfig {
    /// The connection Secret (namespace, name), or the namespace it is in
    /// when the operator does not allow Secrets from other namespaces.
    pub fn secret(&self) -> Result<(String, String), PassError> {
        let reference = &self.spec.database.connection_secret_ref;
        let namespace = reference.namespace.clone().unwrap_or_else(|| self.owner.namespace.clone());
        if namespace != self.owner.namespace && !self.allow_cross_namespace_secrets {
            return Err(PassError::SecretNotAllowed(namespace));
        }
        Ok((namespace, reference.name.clone()))
    }
}

/// A DBQR's connection pool and the connection settings it was built from
/// (the LISTEN connection uses them too), for one version of its Secret.
#[derive(Clone)]
pub struct Connection {
    pub pool: Pool,
    pub info: ConnInfo,
    pub(super) secret_version: String,
}

impl Connection {
    /// The resourceVersion of the Secret the connection was built from.
    pub fn secret_version(&self) -> &str {
        &self.secret_version
    }

    /// Closes the pool: idle connections go at once, busy ones when returned.
    pub fn close(&self) {
        self.pool.close();
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// `None` when the pass never got as far as the database.
    pub database: Option<Result<(), Arc<PassError>>>,
    /// `None` when the pass never got past the database.
    pub sync: Option<Result<(), Arc<PassError>>>,
    pub rows: usize,
    pub objects: usize,
    pub applied: usize,
    pub skipped: usize,
    pub pruned: usize,
    /// Objects whose policy disables prune, detached instead of deleted.
    pub detached: usize,
    pub managed_kinds: BTreeSet<Gvk>,
    /// What the prune guard decided, when the pass got as far as pruning.
    pub guard: Option<GuardReport>,
    /// How long the query took, when it ran.
    pub query_duration: Option<Duration>,
    /// Rows whose later waves wait for an earlier wave to be Ready.
    pub waiting_rows: usize,
    /// The DBQR's `dbqo.dev/requested-at` value when the pass started: the
    /// request this pass answers (echoed in `status.lastHandledRequestedAt`).
    pub requested_at: Option<String>,
    /// A key-scoped pass: what it read. `rows` and `objects` above are the
    /// DBQR's totals either way.
    pub keyed: Option<KeyedPass>,
}

/// What a key-scoped pass read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedPass {
    /// Keys it was asked for.
    pub keys: usize,
    /// Rows the query returned for them.
    pub rows: usize,
}

/// The prune guard's ruling on a pass, for status and scheduling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardReport {
    pub ruling: Ruling,
    /// Deletions held back.
    pub held: usize,
    /// Objects this DBQR owns.
    pub owned: usize,
    /// When the earliest held deletion can be confirmed, from the end of the pass.
    pub confirm_in: Option<Duration>,
    /// The confirmation interval.
    pub confirmation: Duration,
    /// The pass saw the release annotation.
    pub released: bool,
}

impl PassReport {
    pub fn succeeded(&self) -> bool {
        matches!(self.sync, Some(Ok(())))
    }

    /// The failure of the pass, if any.
    pub fn failure(&self) -> Option<&PassError> {
        match (&self.database, &self.sync) {
            (Some(Err(e)), _) | (_, Some(Err(e))) => Some(e),
            _ => None,
        }
    }
}

/// What templates see as `now`: the start of the pass, to the second.
pub fn template_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Scopes as the API server's discovery says (the pass and `diff`).
pub struct DiscoveredScopes<'a>(pub &'a Discovered);

impl ScopeLookup for DiscoveredScopes<'_> {
    fn scope(&self, gk: &GroupKind) -> Option<Scope> {
        self.0.get(gk).map(|k| k.scope)
    }
}

/// From the rows to the cluster: render, gather, plan, carry out. Fills the
/// sync part of `report`.
pub async fn reconcile_rows<W: Cluster>(
    config: &PassConfig,
    state: &mut PassState,
    writer: &W,
    rows: &[Row],
    now: &str,
    report: &mut PassReport,
) {
    report.rows = rows.len();
    // The last pass met a resource the API server no longer serves.
    let rediscover = std::mem::take(&mut state.rediscover);
    let mut kinds = match writer.kinds(rediscover).await {
        Ok(kinds) => kinds,
        Err(e) => {
            report.sync = Some(Err(Arc::new(PassError::Discovery(e))));
            return;
        }
    };
    let mut rendered = render(config, rows, &kinds, now);
    if rendered.failures.iter().any(|f| f.is_unknown_kind()) {
        // A CRD may have been installed since the last discovery.
        if let Ok(fresh) = writer.kinds(true).await {
            kinds = fresh;
            rendered = render(config, rows, &kinds, now);
        }
    }
    let failed = rendered.failures.into_iter().map(RowFailure::from).collect();
    let inputs =
        gather(config, writer, &kinds, rendered.objects, failed, &state.managed_kinds).await;
    let plan = plan::plan(inputs);
    // Rows are kept only for status write-back.
    state.clear_rows();
    if config.status_template.is_some() {
        for d in plan.apply.iter().chain(&plan.skip) {
            state.keep_row(&d.key(), rows[d.row].clone());
        }
    }
    execute(config, state, writer, plan, report).await;
}

pub(super) fn render(config: &PassConfig, rows: &[Row], kinds: &Kinds, now: &str) -> RenderOutcome {
    render_rows(
        &config.template,
        rows,
        &config.metadata,
        now,
        &config.policy,
        &DiscoveredScopes(kinds),
    )
}

/// Everything the plan is decided from: each rendered object decorated and
/// resolved, every involved kind watched, the live state of each object (the
/// watch cache; a GET only for objects it does not hold, so an object of
/// someone else is never taken over), and this DBQR's objects per kind.
pub(super) async fn gather<'a, W: Cluster>(
    config: &'a PassConfig,
    writer: &W,
    kinds: &Kinds,
    objects: Vec<RenderedObject>,
    mut failed: Vec<RowFailure>,
    inventory: &'a BTreeSet<Gvk>,
) -> Inputs<'a> {
    let owner = &config.owner;
    let mut desired = resolve_objects(owner, kinds, objects, &mut failed);
    let involved = watch_kinds(writer, kinds, &mut desired, inventory, &mut failed).await;
    let live = read_live(writer, &mut desired, &mut failed).await;
    let labels = owner.labels();
    let owned = involved
        .into_iter()
        .map(|(group_kind, kind)| {
            let listing = kind.resource.map(|resource| {
                let objects = writer.cached_list(&resource, &labels);
                (resource, objects)
            });
            (group_kind, Owned { gvk: kind.gvk, listing })
        })
        .collect();
    Inputs { owner, desired, failed, live, owned, inventory, prune: config.spec.prune }
}

/// Decorates each rendered object with the owner's labels and resolves its kind.
pub(super) fn resolve_objects(
    owner: &Owner,
    kinds: &Kinds,
    objects: Vec<RenderedObject>,
    failed: &mut Vec<RowFailure>,
) -> Vec<Desired> {
    let mut desired = Vec::with_capacity(objects.len());
    for mut object in objects {
        owner.decorate(&mut object.manifest, object.namespace.as_deref());
        stamp(&mut object.manifest);
        match resolve(kinds, &object.gvk) {
            Ok(resource) => desired.push(Desired {
                row: object.row,
                target: Target { resource, namespace: object.namespace, name: object.name },
                gvk: object.gvk,
                manifest: object.manifest,
            }),
            Err(e) => {
                failed.push(RowFailure { row: object.row, error: ObjectError::UnknownKind(e) })
            }
        }
    }
    desired
}

/// A kind a pass touches, and whether its watch cache can be read.
pub(super) struct Involved {
    gvk: Gvk,
    pub(super) resource: Result<ApiResource, PruneFailure>,
}

/// The resource of `gvk`'s kind at the version discovery prefers.
fn preferred_resource(kinds: &Discovered, gvk: &Gvk) -> Option<ApiResource> {
    kinds.get(&gvk.group_kind()).map(|info| info.resource.clone())
}

fn not_served(gvk: &Gvk) -> PruneFailure {
    PruneFailure::UnknownKind(KubeError::UnknownKind { kind: gvk.to_string() })
}

/// Makes sure every kind involved (what the rows render and what was written
/// before) is watched and cached. Objects of a kind that cannot be watched
/// fail their rows.
pub(super) async fn watch_kinds<W: Cluster>(
    writer: &W,
    kinds: &Kinds,
    desired: &mut Vec<Desired>,
    inventory: &BTreeSet<Gvk>,
    failed: &mut Vec<RowFailure>,
) -> BTreeMap<GroupKind, Involved> {
    // Watches and lookups use the version discovery prefers: one watch per
    // kind, whatever version each DBQR renders.
    let mut involved: BTreeMap<GroupKind, Involved> = BTreeMap::new();
    for object in desired.iter() {
        involved.entry(object.gvk.group_kind()).or_insert_with(|| Involved {
            gvk: object.gvk.clone(),
            resource: preferred_resource(kinds, &object.gvk).ok_or_else(|| not_served(&object.gvk)),
        });
    }
    for gvk in inventory {
        // A kind discovery confirms is gone holds no objects any more; one
        // of a group that did not answer may still hold some.
        if kinds.confirms_absent(&gvk.group_kind()) {
            continue;
        }
        involved.entry(gvk.group_kind()).or_insert_with(|| Involved {
            gvk: gvk.clone(),
            resource: preferred_resource(kinds, gvk).ok_or_else(|| not_served(gvk)),
        });
    }
    for kind in involved.values_mut() {
        if let Ok(resource) = &kind.resource {
            if let Err(source) = writer.watch(resource).await {
                let gvk = kind.gvk.clone();
                kind.resource = Err(PruneFailure::Watch { gvk, source });
            }
        }
    }
    desired.retain(|object| {
        let group_kind = object.gvk.group_kind();
        match involved.get(&group_kind).map(|k| &k.resource) {
            Some(Err(PruneFailure::Watch { source, .. })) => {
                failed.push(RowFailure {
                    row: object.row,
                    error: ObjectError::Watch { kind: group_kind, source: source.clone() },
                });
                false
            }
            _ => true,
        }
    });
    involved
}

/// From this many objects of one kind and namespace missing from the watch
/// cache, one list of names replaces a GET per object.
const LIST_INSTEAD_OF_GETS: usize = 16;

/// The live state of each desired object: the watch cache, or, for an object
/// it does not hold, a GET (after a list of names where many are missing, only
/// for names that exist). Objects that cannot be read fail their rows.
pub(super) async fn read_live<W: Cluster>(
    writer: &W,
    desired: &mut Vec<Desired>,
    failed: &mut Vec<RowFailure>,
) -> HashMap<ObjectKey, Live> {
    let mut live = HashMap::with_capacity(desired.len());
    let uncached = uncached_by_kind(writer, desired, &mut live);
    let to_read = absent_by_list(writer, uncached, &mut live).await;
    let reads = join_all(to_read.iter().map(|o| writer.get(&o.target))).await;
    let mut unreadable = BTreeSet::new();
    for (object, read) in to_read.into_iter().zip(reads) {
        let state = match read {
            Ok(Some(found)) => Live::Unmanaged(found),
            Ok(None) => Live::Absent,
            Err(source) => {
                unreadable.insert(object.key());
                failed.push(RowFailure {
                    row: object.row,
                    error: ObjectError::Read {
                        kind: object.gvk.group_kind(),
                        name: object.target.name.clone(),
                        source,
                    },
                });
                continue;
            }
        };
        live.insert(object.key(), state);
    }
    desired.retain(|o| !unreadable.contains(&o.key()));
    live
}

/// Objects the watch cache does not hold, by kind and namespace (the
/// cached ones go into `live`).
type Uncached<'a> = BTreeMap<(String, String, String, Option<String>), Vec<&'a Desired>>;

fn uncached_by_kind<'a, W: Cluster>(
    writer: &W,
    desired: &'a [Desired],
    live: &mut HashMap<ObjectKey, Live>,
) -> Uncached<'a> {
    let mut uncached = Uncached::new();
    for object in desired {
        match writer.cached(&object.target) {
            Some(cached) => {
                live.insert(object.key(), Live::cached(cached, object));
            }
            None => {
                let r = &object.target.resource;
                let group = (
                    r.group.clone(),
                    r.version.clone(),
                    r.plural.clone(),
                    object.target.namespace.clone(),
                );
                uncached.entry(group).or_default().push(object);
            }
        }
    }
    uncached
}

/// Many new objects of one kind and namespace (a new DBQR, a bulk insert):
/// one list of names tells which exist (those absent go into `live`); only
/// the others are read one by one. Below the threshold, or if the list
/// fails, each is read. The objects still to read.
async fn absent_by_list<'a, W: Cluster>(
    writer: &W,
    uncached: Uncached<'a>,
    live: &mut HashMap<ObjectKey, Live>,
) -> Vec<&'a Desired> {
    let lists = join_all(uncached.values().map(|objects| async move {
        if objects.len() < LIST_INSTEAD_OF_GETS {
            return None;
        }
        let target = &objects[0].target;
        writer.names(&target.resource, target.namespace.as_deref()).await.ok()
    }))
    .await;
    let mut to_read = Vec::new();
    for (objects, names) in uncached.into_values().zip(lists) {
        for object in objects {
            match &names {
                Some(names) if !names.contains(&object.target.name) => {
                    live.insert(object.key(), Live::Absent);
                }
                _ => to_read.push(object),
            }
        }
    }
    to_read
}

/// Carries out `plan`: applies concurrently, then, only if every row and
/// every apply succeeded, deletes what the plan prunes and the prune guard
/// lets through.
async fn execute<W: Cluster>(
    config: &PassConfig,
    state: &mut PassState,
    writer: &W,
    mut plan: Plan,
    report: &mut PassReport,
) {
    report.objects = plan.produced.len();
    report.skipped = plan.skip.len();
    report.waiting_rows = plan.waiting_rows.len();
    state.done_waiting = state.waiting_rows.difference(&plan.waiting_rows).copied().collect();
    state.waiting_rows = std::mem::take(&mut plan.waiting_rows);
    let results = apply_all(config, writer, &plan.apply).await;
    let mut failures = keep_applied(state, &mut plan, results, report);
    state.rediscover = failures.iter().chain(&plan.refuse).any(|f| f.error.is_not_found());
    if !failures.is_empty() || !plan.refuse.is_empty() {
        let inventory = plan.next_inventory(true, []);
        state.managed_kinds = inventory.clone();
        report.managed_kinds = inventory;
        failures.extend(plan.refuse);
        failures.sort_by_key(|f| f.row);
        report.sync = Some(Err(Arc::new(PassError::Rows(failures))));
        return;
    }
    prune(config, state, writer, plan, report).await;
}

/// Applies `objects` in a bounded window, not all at once: memory follows
/// the writer's concurrency, not the number of rows. Results in order.
pub(super) async fn apply_all<W: Cluster>(
    config: &PassConfig,
    writer: &W,
    objects: &[Desired],
) -> Vec<Result<(), KubeError>> {
    let mut results: Vec<(usize, Result<(), KubeError>)> = futures_util::stream::iter(
        objects
            .iter()
            .enumerate()
            .map(|(i, o)| async move { (i, writer.apply(&o.target, &o.manifest).await) }),
    )
    .buffer_unordered(config.in_flight)
    .collect()
    .await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, result)| result).collect()
}

/// Keeps in `state` what this pass put (or found) in place: only that is
/// worth repairing, not objects of failed rows, and never an object another
/// owner holds. Moved, not copied: the state keeps the one copy of each
/// object. The rows whose apply failed.
fn keep_applied(
    state: &mut PassState,
    plan: &mut Plan,
    results: Vec<Result<(), KubeError>>,
    report: &mut PassReport,
) -> Vec<RowFailure> {
    state.forget_objects();
    for object in std::mem::take(&mut plan.skip) {
        state.keep(object);
    }
    let mut failures = Vec::new();
    for (object, result) in std::mem::take(&mut plan.apply).into_iter().zip(results) {
        match result {
            Ok(()) => {
                report.applied += 1;
                state.keep(object);
            }
            Err(source) => failures.push(RowFailure {
                row: object.row,
                error: ObjectError::Apply {
                    kind: object.gvk.group_kind(),
                    name: object.target.name.clone(),
                    source,
                },
            }),
        }
    }
    failures
}

/// Deletes what the plan prunes and the prune guard lets through; records
/// the guard's ruling, the inventory and how the sync ended.
pub(super) async fn prune<W: Cluster>(
    config: &PassConfig,
    state: &mut PassState,
    writer: &W,
    mut plan: Plan,
    report: &mut PassReport,
) {
    let released = config.release_requested();
    let decision = config.guard.rule(
        std::mem::take(&mut plan.prune),
        plan.owned,
        &mut state.held,
        Instant::now(),
        released,
    );
    report.guard = Some(GuardReport {
        ruling: decision.ruling,
        held: decision.held,
        owned: decision.owned,
        confirm_in: decision.confirm_in,
        confirmation: config.guard.confirmation,
        released,
    });
    // An object whose policy disables prune is detached, and handed back
    // to this DBQR should a row produce it again.
    let deletions = join_all(decision.delete.iter().map(|c| async {
        match &c.detach {
            Some(references) => {
                let patch = config.owner.detach_patch(references, true);
                writer.merge_patch(&c.target, &patch).await
            }
            None => writer.delete(&c.target, c.uid.as_deref()).await,
        }
    }))
    .await;
    let mut delete_failures = Vec::new();
    let mut unpruned = Vec::new();
    for (candidate, result) in decision.delete.iter().zip(deletions) {
        match result {
            Ok(()) if candidate.detach.is_some() => report.detached += 1,
            Ok(()) => report.pruned += 1,
            Err(source) => {
                unpruned.push(&candidate.gvk);
                delete_failures.push(PruneFailure::Delete {
                    kind: candidate.gvk.group_kind(),
                    name: candidate.target.name.clone(),
                    source,
                });
            }
        }
    }
    // Held deletions keep their kinds in the inventory.
    let held_kinds: Vec<&Gvk> =
        if decision.held > 0 { plan.inventory.iter().collect() } else { Vec::new() };
    let inventory = plan.next_inventory(false, unpruned.into_iter().chain(held_kinds));
    state.managed_kinds = inventory.clone();
    report.managed_kinds = inventory;
    let mut prune_failures: Vec<PruneFailure> =
        plan.prune_failures.into_iter().map(|(_, f)| f).collect();
    prune_failures.extend(delete_failures);
    report.sync = Some(if prune_failures.is_empty() {
        Ok(())
    } else {
        Err(Arc::new(PassError::Prune(prune_failures)))
    });
}

/// What a drift repair did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// The object is as wanted (or is another owner's now): nothing sent.
    Nothing,
    /// Changed fields put back with an apply.
    Reapplied,
    /// The deleted object created again.
    Recreated,
    /// Someone else created an object of that name meanwhile; not taken over.
    TakenElsewhere,
}

/// Puts one object back the way this DBQR wants it if the cache shows it
/// deleted or changed. A changed object of this DBQR is applied again; a
/// missing one is created, never applied: an apply would take over an
/// object of the same name that someone else created since.
/// Whether `wanted` needs no repair: the cached object matches it, or
/// another owner holds it (the next pass reports that). Answered from the
/// cache alone, so the many change notices of a pass's own writes cost no
/// task and keep nothing alive while they wait.
pub fn needs_no_repair<W: Cluster>(writer: &W, owner: &Owner, wanted: &Desired) -> bool {
    match writer.cached(&wanted.target) {
        Some(live) => {
            create_only(&wanted.manifest)
                || in_place(&live, &wanted.manifest)
                || plan::owned_elsewhere(owner, &live.live)
        }
        None => false,
    }
}

pub async fn repair<W: Cluster>(
    writer: &W,
    owner: &Owner,
    wanted: &Desired,
) -> Result<Repair, ObjectError> {
    let failed = |source| ObjectError::Apply {
        kind: wanted.gvk.group_kind(),
        name: wanted.target.name.clone(),
        source,
    };
    match writer.cached(&wanted.target) {
        // Created when missing, never updated.
        Some(_) if create_only(&wanted.manifest) => Ok(Repair::Nothing),
        Some(live) if in_place(&live, &wanted.manifest) => Ok(Repair::Nothing),
        // Another DBQR's or controller's now: the next pass reports it.
        Some(live) if plan::owned_elsewhere(owner, &live.live) => Ok(Repair::Nothing),
        Some(_) => {
            writer.apply(&wanted.target, &wanted.manifest).await.map_err(failed)?;
            Ok(Repair::Reapplied)
        }
        None => match writer.create(&wanted.target, &wanted.manifest).await {
            Ok(()) => Ok(Repair::Recreated),
            Err(e) if e.is_conflict() => Ok(Repair::TakenElsewhere),
            Err(e) => Err(failed(e)),
        },
    }
}
