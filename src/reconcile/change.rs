//! Timestamp-mode change detection: one cheap probe on the database's clock.
//!
//! The probe reads `max(timestampColumn)` as text, so any orderable column
//! type works and the comparison is exact. An index on the column makes it
//! an index-only lookup of one row.

use std::time::Duration;

use crate::db::Pool;

use super::error::PassError;
use crate::api::{ChangeDetectionMode, ChangeDetectionSpec};
use crate::sql::{quote_ident, quote_qualified};

/// The probe for a timestamp-mode spec, identifiers quoted.
pub fn probe_sql(spec: &ChangeDetectionSpec) -> Option<String> {
    if !spec.enabled || spec.mode != ChangeDetectionMode::Timestamp {
        return None;
    }
    let table = spec.table_name.as_deref()?;
    let column = spec.timestamp_column.as_deref()?;
    Some(format!("SELECT max({})::text FROM {}", quote_ident(column), quote_qualified(table)))
}

/// Runs the probe; `None` is an empty table.
pub async fn probe(pool: &Pool, sql: &str, timeout: Duration) -> Result<Option<String>, PassError> {
    let work = async {
        let client = crate::db::checkout(pool).await.map_err(PassError::from_pool)?;
        let statement = client.prepare_cached(sql).await.map_err(PassError::Probe)?;
        let row = client.query_one(&statement, &[]).await.map_err(PassError::Probe)?;
        row.try_get::<_, Option<String>>(0).map_err(PassError::Probe)
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| PassError::ProbeTimeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_quotes_identifiers() {
        let spec: ChangeDetectionSpec = serde_json::from_value(serde_json::json!({
            "tableName": "app.users", "timestampColumn": "updated\"at"
        }))
        .unwrap();
        assert_eq!(
            probe_sql(&spec).unwrap(),
            "SELECT max(\"updated\"\"at\")::text FROM \"app\".\"users\""
        );
        let notify: ChangeDetectionSpec =
            serde_json::from_value(serde_json::json!({"mode": "notify", "channel": "c"})).unwrap();
        assert_eq!(probe_sql(&notify), None);
    }
}
