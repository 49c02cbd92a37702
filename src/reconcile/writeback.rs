//! Status write-back decisions: which objects' status SQL is due (their
//! status changed since their last write-back), running it, and what the
//! `StatusWriteBack` condition says about a batch. The actor only debounces
//! and holds the fingerprints between batches.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use crate::db::Pool;
use serde_json::Value as Json;

use super::error::PassError;
use super::pass::{PassConfig, Row};
use super::readiness;
use super::state::PassState;
use super::status::WriteBackResult;
use crate::kube_api::cluster::Cluster;
use crate::kube_api::ObjectKey;
use crate::status_template::{self, Readiness, WritebackError};

/// Fingerprint of an object's status, and its readiness, at its last
/// successful write-back.
pub type Fingerprints = HashMap<ObjectKey, Fingerprint>;
pub type Fingerprint = ([u8; 32], Readiness);

/// One object whose status SQL is due.
#[derive(Debug, Clone)]
pub struct Due {
    pub key: ObjectKey,
    resource: Json,
    row: Row,
    fingerprint: Fingerprint,
}

/// The objects among `keys` that this DBQR produced in its last pass, that
/// the watch cache holds, and whose status (or readiness) differs from the
/// last one written. `row_ready`: work out `RowReady` too (the template
/// uses it).
pub fn due<W: Cluster>(
    writer: &W,
    state: &PassState,
    seen: &Fingerprints,
    keys: impl IntoIterator<Item = ObjectKey>,
    row_ready: bool,
) -> Vec<Due> {
    // With `RowReady`, a change of any object of a row (one without a status
    // of its own, say) may change what every object of the row writes.
    let keys: Vec<ObjectKey> = if row_ready {
        let rows: BTreeSet<usize> = keys.into_iter().filter_map(|k| state.row_index(&k)).collect();
        rows.into_iter()
            .flat_map(|row| state.row_objects(row).map(|(key, _)| key.clone()).collect::<Vec<_>>())
            .collect()
    } else {
        keys.into_iter().collect()
    };
    keys.into_iter()
        .filter_map(|key| {
            let target = state.produced_target(&key)?;
            let row = state.row(&key)?.clone();
            let resource = writer.cached(&target)?.manifest;
            let status = status_template::status_fingerprint(&resource)?;
            let ready = readiness::ready(&target.resource.group, &target.resource.kind, &resource);
            let row_ready = row_ready && ready && row_is_ready(writer, state, &key);
            let fingerprint = (status, Readiness { ready, row_ready });
            (seen.get(&key) != Some(&fingerprint)).then_some(Due {
                key,
                resource,
                row,
                fingerprint,
            })
        })
        .collect()
}

/// No wave of `key`'s row waits, and every object of the row is Ready.
fn row_is_ready<W: Cluster>(writer: &W, state: &PassState, key: &ObjectKey) -> bool {
    let Some(row) = state.row_index(key) else {
        return false;
    };
    !state.row_waits(row)
        && state.row_objects(row).all(|(_, target)| {
            let (group, kind) = (&target.resource.group, &target.resource.kind);
            writer.cached(&target).is_some_and(|o| readiness::ready(group, kind, &o.manifest))
        })
}

/// The result of one object's status SQL.
pub struct Written {
    key: ObjectKey,
    fingerprint: Fingerprint,
    result: Result<(), WritebackError>,
}

/// Runs the status SQL of every due object, one after another on the pool.
pub async fn run(config: &PassConfig, pool: &Pool, due: Vec<Due>) -> Vec<Written> {
    let Some(template) = config.status_template.as_ref() else {
        return Vec::new();
    };
    let timeout = config.spec.database.statement_timeout.get();
    let mut written = Vec::with_capacity(due.len());
    for Due { key, resource, row, fingerprint } in due {
        let result = match template.render(&resource, &row, &config.metadata, fingerprint.1) {
            Ok(bound) => status_template::execute(pool, &bound, timeout).await.map(|_| ()),
            Err(e) => Err(e),
        };
        written.push(Written { key, fingerprint, result });
    }
    written
}

/// Records what was written in `seen`; returns the batch's verdict for the
/// `StatusWriteBack` condition (`None` when nothing ran) and the objects
/// whose write-back failed, to be tried again.
pub fn record(
    seen: &mut Fingerprints,
    written: Vec<Written>,
) -> (Option<WriteBackResult>, Vec<ObjectKey>) {
    let mut verdict = None;
    let mut failed = Vec::new();
    for Written { key, fingerprint, result } in written {
        match result {
            Ok(()) => {
                seen.insert(key, fingerprint);
                verdict.get_or_insert(Ok(()));
            }
            Err(source) => {
                tracing::debug!(object = %key.name, reason = source.reason(), "status write-back failed");
                failed.push(key.clone());
                verdict = Some(Err(Arc::new(PassError::WriteBack {
                    kind: key.group_kind,
                    name: key.name,
                    source,
                })));
            }
        }
    }
    (verdict, failed)
}
