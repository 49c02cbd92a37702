//! Errors of the render layer. Messages name template positions and document
//! paths, never row values or rendered manifests, so they are safe for
//! conditions and Events.

/// The template itself is unusable; no row can render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template does not parse: {0}")]
pub struct TemplateError(pub String);

impl TemplateError {
    pub fn reason(&self) -> &'static str {
        crate::reason::TEMPLATE_INVALID
    }
}

/// One row could not become objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("template error: {0}")]
    Render(String),
    #[error("output is not YAML (line {line}, column {column}): {problem}")]
    NotYaml { line: usize, column: usize, problem: String },
    #[error("an inserted value breaks the YAML at line {line}, column {column}; quote the expression (\"{{{{...}}}}\") or use quote/toJson")]
    ValueBreaksYaml { line: usize, column: usize },
    #[error("document {document}, at {path}: {problem}")]
    ValueChangesStructure { document: usize, path: String, problem: &'static str },
    #[error("document {document}: {problem}")]
    Object { document: usize, problem: ObjectProblem },
    #[error("produces the same object as row {other_row}")]
    Duplicate { other_row: usize },
    #[error("{0}; the operator's bound keeps one row from taking the process down")]
    OverLimit(String),
    #[error("the row is larger than maxRowBytes ({0} bytes); it was not read")]
    RowTooLarge(u64),
}

impl RowError {
    /// Stable reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Render(_) => crate::reason::RENDER_FAILED,
            Self::NotYaml { .. } => crate::reason::INVALID_YAML,
            Self::ValueBreaksYaml { .. } | Self::ValueChangesStructure { .. } => {
                crate::reason::UNSAFE_VALUE
            }
            Self::Object { problem, .. } => problem.reason(),
            Self::Duplicate { .. } => crate::reason::DUPLICATE_OBJECT,
            Self::OverLimit(_) => crate::reason::RENDER_LIMIT_EXCEEDED,
            Self::RowTooLarge(_) => crate::reason::ROW_TOO_LARGE,
        }
    }
}

/// A rendered document that is not an acceptable object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectProblem {
    #[error("is not a mapping")]
    NotAMapping,
    #[error("{0} is missing or not a string")]
    MissingField(&'static str),
    #[error("apiVersion {0:?} is not group/version or version")]
    BadApiVersion(String),
    #[error("name is not valid for a {kind}: {rule}")]
    InvalidName { kind: String, rule: &'static str },
    #[error("kind {0} is not in the operator's allowed kinds")]
    KindNotAllowed(String),
    #[error("kind {0} is not served by the API server")]
    UnknownKind(String),
    #[error("namespace {0:?} is not allowed for this DBQR")]
    NamespaceNotAllowed(String),
    #[error("namespace {0:?} is not a valid namespace name")]
    InvalidNamespace(String),
    #[error("kind {0} is cluster-scoped and must not set metadata.namespace")]
    NamespaceOnClusterScoped(String),
    #[error("annotation {annotation} may only be {allowed}")]
    BadPolicy { annotation: &'static str, allowed: &'static str },
}

impl ObjectProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAMapping
            | Self::MissingField(_)
            | Self::BadApiVersion(_)
            | Self::BadPolicy { .. } => crate::reason::INVALID_OBJECT,
            Self::InvalidName { .. } => crate::reason::INVALID_NAME,
            Self::KindNotAllowed(_) => crate::reason::KIND_NOT_ALLOWED,
            Self::UnknownKind(_) => crate::reason::UNKNOWN_KIND,
            Self::NamespaceNotAllowed(_)
            | Self::InvalidNamespace(_)
            | Self::NamespaceOnClusterScoped(_) => crate::reason::NAMESPACE_NOT_ALLOWED,
        }
    }
}
