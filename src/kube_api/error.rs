//! What a Kubernetes call can fail with, by kind, with a stable reason.

use std::sync::Arc;

/// A failed API call, by kind. Messages carry the API server's reason, never manifests.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeError {
    #[error("{kind} is not served by the API server")]
    UnknownKind { kind: String },
    #[error("{kind}: the API server does not serve this version of the kind (it serves {served})")]
    VersionNotServed { kind: String, served: String },
    #[error("API server refused ({code}): {message}")]
    Api { code: u16, reason: String, message: String },
    #[error("API request failed: {0}")]
    Transport(#[source] Arc<kube::Error>),
    #[error("a manifest is not a Kubernetes object: {0}")]
    Manifest(#[source] Arc<serde_json::Error>),
    #[error("API request timed out")]
    Timeout,
    #[error("writer is shutting down")]
    Closed,
}

impl KubeError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownKind { .. } => crate::reason::UNKNOWN_KIND,
            Self::VersionNotServed { .. } => crate::reason::VERSION_NOT_SERVED,
            Self::Api { code: 403, .. } => crate::reason::FORBIDDEN,
            Self::Api { code: 409, .. } => crate::reason::CONFLICT,
            Self::Api { code: 422, .. } => crate::reason::INVALID,
            Self::Api { .. } => crate::reason::API_ERROR,
            Self::Transport(_) => crate::reason::API_UNAVAILABLE,
            Self::Manifest(_) => crate::reason::INVALID_OBJECT,
            Self::Timeout => crate::reason::API_TIMEOUT,
            Self::Closed => crate::reason::SHUTTING_DOWN,
        }
    }

    /// The object changed since the resourceVersion the request named.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Api { code: 409, .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Api { code: 404, .. })
    }
}

impl From<kube::Error> for KubeError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(status) => Self::Api {
                code: status.code,
                reason: status.reason.clone(),
                message: redact_quoted(&status.message),
            },
            other => Self::Transport(Arc::new(other)),
        }
    }
}

/// An API server message with every double-quoted part blanked out. A 422
/// answer echoes the rejected value (`Invalid value: "<label value>"`), and
/// that value came from a row; the object's kind and name are known to the
/// caller, so nothing useful is lost.
pub fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        // Skip to the closing quote, honouring Go's backslash escapes.
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
        out.push_str("…\"");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_quoted;

    #[test]
    fn quoted_values_leave_api_messages() {
        let message = r#"ConfigMap "c" is invalid: metadata.labels: Invalid value: "m4rker \"x\" ok": a valid label must be 63 characters"#;
        let redacted = redact_quoted(message);
        assert!(!redacted.contains("m4rker"), "{redacted}");
        assert_eq!(
            redacted,
            r#"ConfigMap "…" is invalid: metadata.labels: Invalid value: "…": a valid label must be 63 characters"#
        );
        assert_eq!(redact_quoted("unterminated \"m4rker"), "unterminated \"…\"");
    }
}
