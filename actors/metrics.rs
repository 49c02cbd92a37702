//! The operator's Prometheus metrics, one registry per process. Names follow
//! Prometheus conventions: `dbqo_` prefix, base units, `_total` on counters
//! (prometheus-client appends it). Labels carry results, reasons and
//! operations, never DBQR or object names (their count is unbounded).

use std::sync::OnceLock;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::{Registry, Unit},
};

use dbqo::db::ConnectionBudget;
use dbqo::reconcile::PassReport;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    /// `host:port/database` (no user name, no password).
    pub server: String,
}

fn result(ok: bool) -> ResultLabel {
    ResultLabel { result: if ok { "success" } else { "failure" }.to_owned() }
}

fn seconds() -> Histogram {
    // 1 ms .. ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    passes: Family<ResultLabel, Counter>,
    pass_duration: Family<ResultLabel, Histogram, fn() -> Histogram>,
    query_duration: Histogram,
    rows: Counter,
    objects: Family<OperationLabel, Counter>,
    errors: Family<ReasonLabel, Counter>,
    probes: Family<ResultLabel, Counter>,
    notifications: Counter,
    keyed_passes: Counter,
    writebacks: Family<ResultLabel, Counter>,
    status_writes: Family<ResultLabel, Counter>,
    actors: Gauge,
    writer_in_flight: Gauge,
    writer_waiting: Gauge,
    leader: Gauge,
    heap_allocated: Gauge,
    heap_resident: Gauge,
    connections: Family<ServerLabel, Gauge>,
    database_passes: Family<ResultLabel, Counter>,
    database_pass_duration: Histogram,
    database_errors: Family<ReasonLabel, Counter>,
    budget: OnceLock<ConnectionBudget>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("dbqo");
        let m = Self {
            passes: Family::default(),
            pass_duration: Family::new_with_constructor(seconds),
            query_duration: seconds(),
            rows: Counter::default(),
            objects: Family::default(),
            errors: Family::default(),
            probes: Family::default(),
            notifications: Counter::default(),
            keyed_passes: Counter::default(),
            writebacks: Family::default(),
            status_writes: Family::default(),
            actors: Gauge::default(),
            writer_in_flight: Gauge::default(),
            writer_waiting: Gauge::default(),
            leader: Gauge::default(),
            heap_allocated: Gauge::default(),
            heap_resident: Gauge::default(),
            connections: Family::default(),
            database_passes: Family::default(),
            database_pass_duration: seconds(),
            database_errors: Family::default(),
            budget: OnceLock::new(),
            registry: Registry::default(),
        };
        registry.register("passes", "Reconcile passes, by result", m.passes.clone());
        registry.register(
            "database_passes",
            "Provisioning passes of Databases, by result",
            m.database_passes.clone(),
        );
        registry.register_with_unit(
            "database_pass_duration",
            "Duration of provisioning passes of Databases",
            Unit::Seconds,
            m.database_pass_duration.clone(),
        );
        registry.register(
            "database_errors",
            "Failed provisioning passes of Databases, by reason",
            m.database_errors.clone(),
        );
        registry.register_with_unit(
            "pass_duration",
            "Duration of reconcile passes, by result",
            Unit::Seconds,
            m.pass_duration.clone(),
        );
        registry.register_with_unit(
            "query_duration",
            "Duration of DBQR queries",
            Unit::Seconds,
            m.query_duration.clone(),
        );
        registry.register("rows", "Rows returned by DBQR queries", m.rows.clone());
        registry.register(
            "objects",
            "Objects by what a pass did with them (applied, skipped, pruned, held)",
            m.objects.clone(),
        );
        registry.register(
            "errors",
            "Failed passes, by the reason in their condition",
            m.errors.clone(),
        );
        registry.register("change_probes", "Timestamp change probes, by result", m.probes.clone());
        registry.register(
            "notifications",
            "Notifications received on LISTEN connections",
            m.notifications.clone(),
        );
        registry.register(
            "keyed_passes",
            "Passes restricted to the keys a notification named (also counted in passes)",
            m.keyed_passes.clone(),
        );
        registry.register(
            "writebacks",
            "Status write-back statements, by result",
            m.writebacks.clone(),
        );
        registry.register(
            "status_writes",
            "Writes of DBQR status, by result (a failed one is retried)",
            m.status_writes.clone(),
        );
        registry.register("query_actors", "DBQRs with a running QueryActor", m.actors.clone());
        registry.register(
            "writer_in_flight_requests",
            "API requests admitted to the writer: running or waiting for a slot",
            m.writer_in_flight.clone(),
        );
        registry.register(
            "writer_waiting_requests",
            "Callers waiting for admission to the writer (its queue is full)",
            m.writer_waiting.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica runs the actors (holds the Lease, or runs without leader election)",
            m.leader.clone(),
        );
        registry.register(
            "heap_allocated_bytes",
            "Bytes the operator has allocated and not freed (jemalloc's count)",
            m.heap_allocated.clone(),
        );
        registry.register(
            "heap_resident_bytes",
            "Bytes of memory the allocator holds resident: live bytes, the free space between them, its own metadata",
            m.heap_resident.clone(),
        );
        registry.register(
            "database_connections",
            "Database connections held, per server",
            m.connections.clone(),
        );
        Self { registry, ..m }
    }

    /// The connection budget whose connections are reported.
    pub fn watch_budget(&self, budget: &ConnectionBudget) {
        let _ = self.budget.set(budget.clone());
    }

    pub fn pass(&self, report: &PassReport, duration: std::time::Duration) {
        let ok = report.succeeded();
        self.passes.get_or_create(&result(ok)).inc();
        self.pass_duration.get_or_create(&result(ok)).observe(duration.as_secs_f64());
        if let Some(query) = report.query_duration {
            self.query_duration.observe(query.as_secs_f64());
        }
        // Rows read: a keyed pass reads its keys' rows, not the DBQR's.
        self.rows.inc_by(report.keyed.map_or(report.rows, |k| k.rows) as u64);
        if report.keyed.is_some() {
            self.keyed_passes.inc();
        }
        let held = report.guard.map_or(0, |g| g.held);
        for (operation, count) in [
            ("applied", report.applied),
            ("skipped", report.skipped),
            ("pruned", report.pruned),
            ("held", held),
        ] {
            self.objects
                .get_or_create(&OperationLabel { operation: operation.to_owned() })
                .inc_by(count as u64);
        }
        if let Some(failure) = report.failure() {
            self.errors.get_or_create(&ReasonLabel { reason: failure.reason().to_owned() }).inc();
        }
    }

    /// A provisioning pass of a `Database` ended; `failure` is its reason if it failed.
    pub fn database_pass(&self, failure: Option<&str>, duration: std::time::Duration) {
        self.database_passes.get_or_create(&result(failure.is_none())).inc();
        self.database_pass_duration.observe(duration.as_secs_f64());
        if let Some(reason) = failure {
            self.database_errors.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc();
        }
    }

    pub fn probe(&self, ok: bool) {
        self.probes.get_or_create(&result(ok)).inc();
    }

    pub fn notification(&self) {
        self.notifications.inc();
    }

    pub fn writeback(&self, ok: bool, count: usize) {
        self.writebacks.get_or_create(&result(ok)).inc_by(count as u64);
    }

    pub fn status_write(&self, ok: bool) {
        self.status_writes.get_or_create(&result(ok)).inc();
    }

    pub fn actor_started(&self) {
        self.actors.inc();
    }

    pub fn actor_stopped(&self) {
        self.actors.dec();
    }

    /// This replica runs the actors from now on.
    pub fn leading(&self) {
        self.leader.set(1);
    }

    /// A caller starts (`true`) or stops waiting for admission to the writer.
    pub fn writer_waiting(&self, waiting: bool) {
        if waiting {
            self.writer_waiting.inc();
        } else {
            self.writer_waiting.dec();
        }
    }

    pub fn writer_request(&self, started: bool) {
        if started {
            self.writer_in_flight.inc();
        } else {
            self.writer_in_flight.dec();
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        if let Some(budget) = self.budget.get() {
            for (server, held) in budget.snapshot() {
                let label = ServerLabel { server: server.fingerprint() };
                self.connections.get_or_create(&label).set(held as i64);
            }
        }
        if let Some((allocated, resident)) = heap() {
            self.heap_allocated.set(allocated);
            self.heap_resident.set(resident);
        }
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// jemalloc's live and resident bytes (its counters are refreshed by
/// advancing its epoch); `None` without jemalloc.
fn heap() -> Option<(i64, i64)> {
    #[cfg(feature = "jemalloc")]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().ok()?;
        let allocated = stats::allocated::read().ok()?;
        let resident = stats::resident::read().ok()?;
        Some((allocated as i64, resident as i64))
    }
    #[cfg(not(feature = "jemalloc"))]
    None
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
