//! One pass over its scope, as the actor asks for it: the connection (a
//! pool per version of the DBQR's Secret), the query, then the rows to
//! [`keyed::reconcile`] for a keyed pass or to [`reconcile_rows`] for a
//! full one (and to a full one whenever a keyed pass cannot decide alone).

use std::{sync::Arc, time::Duration, time::Instant};

use kube::api::ApiResource;

use super::error::PassError;
use super::keyed::{self, Keyed};
use super::pass::{reconcile_rows, Connection, PassConfig, PassReport};
use super::schedule::PassScope;
use super::state::PassState;
use crate::api::REQUESTED_AT_ANNOTATION;
use crate::db::{self, KeySelect, Pool, QueryError, QueryOptions};
use crate::kube_api::cluster::Cluster;
use crate::kube_api::Target;

/// How long a pass waits for a slot of the connection budget before it
/// reports the wait (and backs off).
pub const BUDGET_WAIT: Duration = Duration::from_secs(60);

/// Runs one pass over `scope`. A keyed pass runs only on a complete state
/// (see [`PassState::keyed_ready`]); whenever it cannot tell the whole
/// story (a row fails, an object another row produced, an apply fails) a
/// full pass runs in its place and reports. `connection` is the DBQR's
/// pool, built or rebuilt here when its Secret is new; `now` is what
/// templates see as `now`.
pub async fn run_pass<W: Cluster>(
    config: &PassConfig,
    state: &mut PassState,
    connection: &mut Option<Connection>,
    writer: &W,
    now: &str,
    scope: &PassScope,
) -> PassReport {
    let mut report = PassReport {
        managed_kinds: state.managed_kinds.clone(),
        requested_at: config.metadata.annotations.get(REQUESTED_AT_ANNOTATION).cloned(),
        ..PassReport::default()
    };
    let secret_before = connection.as_ref().map(|c| c.secret_version.clone());
    let pool = match connect(config, connection, writer).await {
        Ok(pool) => pool,
        Err(e) => {
            report.database = Some(Err(Arc::new(e)));
            state.complete = false;
            return report;
        }
    };
    // A new Secret may point elsewhere: only a full pass knows.
    let same_secret = secret_before.as_deref() == connection.as_ref().map(|c| c.secret_version());
    let key_column = config.key_column();
    let mut keys = match (scope, key_column) {
        (PassScope::Keys(keys), Some(_)) if same_secret && state.keyed_ready() => {
            Some(keys.iter().cloned().collect::<Vec<String>>())
        }
        _ => None,
    };
    loop {
        let mut client = match db::checkout(&pool).await {
            Ok(client) => client,
            Err(e) => {
                let e = PassError::from_pool(e);
                // No free slot in the budget is this operator's limit, not the database's.
                if e.is_database() {
                    report.database = Some(Err(Arc::new(e)));
                } else {
                    report.database = Some(Ok(()));
                    report.sync = Some(Err(Arc::new(e)));
                }
                state.complete = false;
                return report;
            }
        };
        report.database = Some(Ok(()));
        let only = keys.as_deref();
        let select = key_column.map(|column| KeySelect { column, only });
        let result = match query(config, &mut client, select, &mut report).await {
            Ok(result) => result,
            Err(e) => {
                state.complete = false;
                query_failed(e, client, &mut report);
                return report;
            }
        };
        drop(client);
        if let Some(keys) = keys.take() {
            match keyed::reconcile(config, state, writer, result, &keys, now, &mut report).await {
                Keyed::Done => return report,
                Keyed::Full(why) => {
                    tracing::debug!(why, "a keyed pass cannot decide alone; a full pass follows");
                    report = PassReport {
                        managed_kinds: state.managed_kinds.clone(),
                        requested_at: report.requested_at,
                        ..PassReport::default()
                    };
                    continue;
                }
            }
        }
        state.by_row = key_column.is_some();
        reconcile_rows(config, state, writer, &result.rows, now, &mut report).await;
        state.index_keys(result.keys);
        state.complete = report.succeeded();
        return report;
    }
}

/// Runs the DBQR's query as `select` says.
async fn query(
    config: &PassConfig,
    client: &mut db::Checkout,
    select: Option<KeySelect<'_>>,
    report: &mut PassReport,
) -> Result<db::QueryResult, QueryError> {
    let options = QueryOptions {
        read_only: config.spec.read_only,
        max_rows: config.spec.max_rows,
        max_row_bytes: config.spec.max_row_bytes,
        max_result_bytes: config.spec.max_result_bytes,
        statement_timeout: config.spec.database.statement_timeout.get(),
    };
    let started = Instant::now();
    let result = db::run_query_keyed(client, &config.spec.query, &options, select).await;
    report.query_duration = Some(started.elapsed());
    result
}

/// Records a failed query in `report`.
fn query_failed(e: QueryError, client: db::Checkout, report: &mut PassReport) {
    match e {
        // The database stopped answering: that is its condition, not the
        // query's, and the connection must not be used again.
        e @ QueryError::Unanswered(_) => {
            client.discard();
            report.database = Some(Err(Arc::new(e.into())));
        }
        e => report.sync = Some(Err(Arc::new(e.into()))),
    }
}

/// The pool for the DBQR's Secret as it is now: the current one while the
/// Secret's resourceVersion is unchanged, a new one (the old one closed) when
/// it changed.
async fn connect<W: Cluster>(
    config: &PassConfig,
    connection: &mut Option<Connection>,
    writer: &W,
) -> Result<Pool, PassError> {
    let reference = &config.spec.database.connection_secret_ref;
    let (namespace, name) = config.secret()?;
    let secret = format!("{namespace}/{name}");
    let unreadable = |source| PassError::SecretUnreadable { secret: secret.clone(), source };
    let missing = || PassError::SecretNotFound(secret.clone());
    let found =
        writer.read_secret(&namespace, &name).await.map_err(unreadable)?.ok_or_else(missing)?;
    if let Some(current) = connection {
        if current.secret_version == found.resource_version {
            return Ok(current.pool.clone());
        }
    }
    // The operator reads the Secret from its watch; a DBQR acting as a
    // ServiceAccount may use it only if that account may read it. Checked
    // once per version of the Secret (a read made as the account), so a
    // steady state costs nothing.
    if config.acting_user.is_some() {
        let target = Target {
            resource: ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
            namespace: Some(namespace.clone()),
            name: name.clone(),
        };
        writer.get(&target).await.map_err(unreadable)?.ok_or_else(missing)?;
    }
    let info = db::conninfo_from_secret(&secret, &found.data, reference)?;
    let pool_spec = &config.spec.database.pool;
    let pool = db::build_pool(
        &info,
        pool_spec.max_connections as usize,
        pool_spec.connect_timeout.get(),
        (&config.connections.budget, &config.connections.pools),
        BUDGET_WAIT,
    )?;
    let fresh = Connection { pool: pool.clone(), info, secret_version: found.resource_version };
    if let Some(old) = connection.replace(fresh) {
        old.close();
    }
    Ok(pool)
}
