//! Status write-back decisions: which objects' status SQL is due (their
//! status changed since their last write-back), running it, and what the
//! `StatusWriteBack` condition says about a batch. The actor only debounces
//! and holds the fingerprints between batches.

use std::{collections::HashMap, sync::Arc};

use crate::db::Pool;
use serde_json::Value as Json;

use super::error::PassError;
use super::pass::{PassConfig, PassState, Row};
use super::readiness;
use super::status::WriteBackResult;
use crate::kube_api::cluster::Cluster;
use crate::kube_api::ObjectKey;
use crate::status_template::{self, WritebackError};

/// Fingerprint of an object's status, and its readiness, at its last
/// successful write-back.
pub type Fingerprints = HashMap<ObjectKey, Fingerprint>;
pub type Fingerprint = ([u8; 32], bool);

/// One object whose status SQL is due.
#[derive(Debug, Clone)]
pub struct Due {
    pub key: ObjectKey,
    resource: Json,
    row: Row,
    ready: bool,
    fingerprint: Fingerprint,
}

/// The objects among `keys` that this DBQR produced in its last pass, that
/// the watch cache holds, and whose status (or readiness) differs from the
/// last one written.
pub fn due<W: Cluster>(
    writer: &W,
    state: &PassState,
    seen: &Fingerprints,
    keys: impl IntoIterator<Item = ObjectKey>,
) -> Vec<Due> {
    keys.into_iter()
        .filter_map(|key| {
            let target = state.produced_target(&key)?;
            let row = state.row(&key)?.clone();
            let resource = writer.cached(&target)?.manifest;
            let ready = readiness::ready(&target.resource.group, &target.resource.kind, &resource);
            let fingerprint = (status_template::status_fingerprint(&resource)?, ready);
            (seen.get(&key) != Some(&fingerprint)).then_some(Due {
                key,
                resource,
                row,
                ready,
                fingerprint,
            })
        })
        .collect()
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
    for Due { key, resource, row, ready, fingerprint } in due {
        let result = match template.render(&resource, &row, &config.metadata, ready) {
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
