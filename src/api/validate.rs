//! Checks the API server cannot do with a 1.20-era structural schema: duration
//! bounds and fields that are required only in some modes.

use std::time::Duration as StdDuration;

use super::{ChangeDetectionMode, DatabaseQueryResourceSpec, Duration};

/// A spec the operator refuses to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("spec.{field} is {value}; it must be between {min} and {max}")]
    DurationOutOfRange { field: &'static str, value: Duration, min: Duration, max: Duration },
    #[error("spec.changeDetection.{field} is required in {mode} mode")]
    MissingChangeDetectionField { field: &'static str, mode: &'static str },
    #[error(
        "spec.changeDetection.channel {0:?} is not a valid PostgreSQL channel name (1-63 bytes)"
    )]
    InvalidChannel(String),
    #[error("spec.changeDetection.keyColumn {0:?} is not a valid column name (1-63 bytes)")]
    InvalidKeyColumn(String),
    #[error(
        "spec.changeDetection.keyColumn needs notify mode (key-scoped passes follow notifications)"
    )]
    KeyColumnWithoutNotify,
    #[error("spec.{field} is {value}; it must be between 0 and 100")]
    PercentOutOfRange { field: &'static str, value: u32 },
    #[error("spec.query is empty")]
    EmptyQuery,
    #[error("spec.template is empty")]
    EmptyTemplate,
    #[error("spec.serviceAccountName is not a valid ServiceAccount name: {0}")]
    InvalidServiceAccount(&'static str),
}

impl SpecError {
    /// Stable reason, used as condition reason and Event reason.
    pub fn reason(&self) -> &'static str {
        crate::reason::INVALID_SPEC
    }
}

struct Bounds {
    field: &'static str,
    min: Duration,
    max: Duration,
}

const POLL_INTERVAL: Bounds = Bounds {
    field: "pollInterval",
    min: Duration::from_secs(1),
    max: Duration::from_secs(7 * 24 * 3600),
};
const CHANGE_POLL_INTERVAL: Bounds = Bounds {
    field: "changeDetection.changePollInterval",
    min: Duration::from_millis(100),
    max: Duration::from_secs(24 * 3600),
};
const CONNECT_TIMEOUT: Bounds = Bounds {
    field: "database.pool.connectTimeout",
    min: Duration::from_millis(100),
    max: Duration::from_secs(300),
};
const CONFIRMATION_INTERVAL: Bounds = Bounds {
    field: "pruneGuard.confirmationInterval",
    min: Duration::from_secs(0),
    max: Duration::from_secs(7 * 24 * 3600),
};
const STATEMENT_TIMEOUT: Bounds = Bounds {
    field: "database.statementTimeout",
    min: Duration::from_millis(1),
    max: Duration::from_secs(3600),
};

impl Bounds {
    fn check(&self, value: Duration) -> Result<(), SpecError> {
        if value < self.min || value > self.max {
            return Err(SpecError::DurationOutOfRange {
                field: self.field,
                value,
                min: self.min,
                max: self.max,
            });
        }
        Ok(())
    }
}

impl DatabaseQueryResourceSpec {
    /// Everything that makes a spec unusable, in field order. An empty list means the spec can run.
    pub fn validate(&self) -> Vec<SpecError> {
        let mut errors = Vec::new();
        let mut push = |r: Result<(), SpecError>| {
            if let Err(e) = r {
                errors.push(e);
            }
        };
        push(POLL_INTERVAL.check(self.poll_interval));
        push(CONNECT_TIMEOUT.check(self.database.pool.connect_timeout));
        push(STATEMENT_TIMEOUT.check(self.database.statement_timeout));
        push(CONFIRMATION_INTERVAL.check(self.prune_guard.confirmation_interval));
        if self.prune_guard.max_prune_percent > 100 {
            push(Err(SpecError::PercentOutOfRange {
                field: "pruneGuard.maxPrunePercent",
                value: self.prune_guard.max_prune_percent,
            }));
        }
        if self.query.trim().is_empty() {
            push(Err(SpecError::EmptyQuery));
        }
        if self.template.trim().is_empty() {
            push(Err(SpecError::EmptyTemplate));
        }
        if let Some(problem) =
            self.service_account_name.as_deref().and_then(super::names::dns_subdomain_problem)
        {
            push(Err(SpecError::InvalidServiceAccount(problem)));
        }
        if let Some(cd) = self.change_detection.as_ref().filter(|cd| cd.enabled) {
            match cd.mode {
                ChangeDetectionMode::Timestamp => {
                    push(CHANGE_POLL_INTERVAL.check(cd.change_poll_interval));
                    for (field, value) in
                        [("tableName", &cd.table_name), ("timestampColumn", &cd.timestamp_column)]
                    {
                        if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                            push(Err(SpecError::MissingChangeDetectionField {
                                field,
                                mode: "timestamp",
                            }));
                        }
                    }
                }
                ChangeDetectionMode::Notify => match cd.channel.as_deref() {
                    None => push(Err(SpecError::MissingChangeDetectionField {
                        field: "channel",
                        mode: "notify",
                    })),
                    Some(c) if c.is_empty() || c.len() > 63 || c.contains('\0') => {
                        push(Err(SpecError::InvalidChannel(c.to_owned())))
                    }
                    Some(_) => {}
                },
            }
            match (cd.key_column.as_deref(), cd.mode) {
                (None, _) => {}
                (Some(_), ChangeDetectionMode::Timestamp) => {
                    push(Err(SpecError::KeyColumnWithoutNotify))
                }
                (Some(k), ChangeDetectionMode::Notify)
                    if k.is_empty() || k.len() > 63 || k.contains('\0') =>
                {
                    push(Err(SpecError::InvalidKeyColumn(k.to_owned())))
                }
                (Some(_), ChangeDetectionMode::Notify) => {}
            }
        }
        errors
    }

    /// Full-poll interval as a std duration.
    pub fn poll_interval(&self) -> StdDuration {
        self.poll_interval.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DatabaseQueryResourceSpec;

    fn spec(change_detection: serde_json::Value) -> DatabaseQueryResourceSpec {
        serde_json::from_value(serde_json::json!({
            "pollInterval": "1m",
            "database": {"connectionSecretRef": {"name": "db"}},
            "query": "SELECT 1 AS id",
            "template": "kind: ConfigMap",
            "changeDetection": change_detection,
        }))
        .expect("a spec")
    }

    #[test]
    fn a_key_column_needs_notify_mode_and_a_valid_name() {
        let ok = spec(serde_json::json!({"mode": "notify", "channel": "c", "keyColumn": "id"}));
        assert_eq!(ok.validate(), []);
        let timestamp = spec(serde_json::json!({
            "mode": "timestamp", "tableName": "t", "timestampColumn": "u", "keyColumn": "id"
        }));
        assert_eq!(timestamp.validate(), [SpecError::KeyColumnWithoutNotify]);
        let long = "k".repeat(64);
        let bad = spec(serde_json::json!({"mode": "notify", "channel": "c", "keyColumn": long}));
        assert_eq!(bad.validate(), [SpecError::InvalidKeyColumn(long)]);
    }
}
