//! Rendering: one row in, validated objects out.
//!
//! `RowTemplate::render` turns a row into YAML documents (zero, one or many)
//! with the structural guarantee of [`tracking`]; [`render_rows`] validates
//! the documents of every row and refuses objects produced twice.

mod error;
mod escape;
pub(crate) mod helpers;
pub mod limits;
mod object;
mod tracking;
pub(crate) mod values;

use std::collections::{BTreeMap, HashMap};

use handlebars::{Handlebars, RenderErrorReason};
use serde::Serialize;
use serde_json::{Map, Value as Json};
use serde_yaml::Value as Yaml;

pub use error::{ObjectProblem, RowError, TemplateError};
pub use escape::yaml_double_quoted;
pub use helpers::dns_label;
pub use object::{
    validate_object, BuiltinScopes, ObjectPolicy, RenderedObject, ScopeLookup, DEFAULT_KINDS,
};
pub use tracking::Divergence;

use crate::kube_api::ObjectKey;

use crate::api::DatabaseQueryResource;

const TEMPLATE_NAME: &str = "template";

/// What a template sees of its DBQR as `Metadata`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Metadata {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub uid: String,
}

impl Metadata {
    pub fn of(dbqr: &DatabaseQueryResource) -> Self {
        let meta = &dbqr.metadata;
        Self {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
        }
    }
}

/// A compiled row template.
pub struct RowTemplate {
    registry: Handlebars<'static>,
}

impl std::fmt::Debug for RowTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowTemplate").finish_non_exhaustive()
    }
}

impl RowTemplate {
    /// Compiles `source`; fails on syntax errors before any row is read.
    pub fn compile(source: &str) -> Result<Self, TemplateError> {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.set_prevent_indent(true);
        registry.register_escape_fn(tracking::escape_value);
        let helpers = helpers::register(&mut registry, helpers::HelperMode::Yaml);
        let value = values::ValueHelper(|scalar| match scalar {
            values::Scalar::Missing(path) => {
                Err(RenderErrorReason::MissingVariable(Some(path)).into())
            }
            values::Scalar::Null => Ok(tracking::escape_value("")),
            values::Scalar::Text(text) => Ok(tracking::escape_value(&text)),
        });
        values::register(&mut registry, TEMPLATE_NAME, source, &helpers, value)?;
        Ok(Self { registry })
    }

    /// Renders one row into its YAML documents (empty ones dropped), each
    /// proven to have the template's structure.
    pub fn render(
        &self,
        row: &Map<String, Json>,
        metadata: &Metadata,
        now: &str,
    ) -> Result<Vec<Json>, RowError> {
        let context = serde_json::json!({ "Row": row, "Metadata": metadata });
        let ((marked, inserts), exceeded) = limits::within(|| {
            tracking::record(now, || {
                let mut text = limits::BoundedText::default();
                self.registry.render_to_write(TEMPLATE_NAME, &context, &mut text).map(|()| text.0)
            })
        });
        if let Some(bound) = exceeded {
            return Err(RowError::OverLimit(bound.to_string()));
        }
        let marked = marked.map_err(|e| RowError::Render(describe_render_error(&e)))?;
        // Handlebars writes whole &str segments, and the bound refuses whole ones.
        let marked = String::from_utf8(marked)
            .map_err(|_| RowError::Render("the output is not UTF-8".into()))?;
        let real = tracking::materialize(&marked, &inserts);

        let marked_docs = parse_documents(&marked).map_err(|e| not_yaml(&e))?;
        let real_docs = match parse_documents(&real) {
            Ok(docs) => docs,
            // The template's own text parsed, so an inserted value broke it.
            Err(e) => {
                let (line, column) = location(&e);
                return Err(RowError::ValueBreaksYaml { line, column });
            }
        };
        if marked_docs.len() != real_docs.len() {
            return Err(RowError::ValueChangesStructure {
                document: marked_docs.len().min(real_docs.len()) + 1,
                path: "(document)".into(),
                problem: "a value added or removed a document",
            });
        }
        let mut out = Vec::new();
        for (i, (m, r)) in marked_docs.iter().zip(real_docs).enumerate() {
            tracking::check(m, &r, &inserts).map_err(|d| RowError::ValueChangesStructure {
                document: i + 1,
                path: d.path,
                problem: d.problem,
            })?;
            if r.is_null() {
                continue;
            }
            out.push(serde_json::to_value(&r).map_err(|e| RowError::NotYaml {
                line: 0,
                column: 0,
                problem: format!("document {} cannot be JSON: {e}", i + 1),
            })?);
        }
        Ok(out)
    }
}

fn describe_render_error(e: &handlebars::RenderError) -> String {
    let at = match (e.line_no, e.column_no) {
        (Some(l), Some(c)) => format!(" (template line {l}, column {c})"),
        _ => String::new(),
    };
    match e.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => format!("variable {path} is missing{at}"),
        RenderErrorReason::MissingVariable(None) => format!("a helper returned nothing{at}"),
        other => format!("{other}{at}"),
    }
}

fn parse_documents(text: &str) -> Result<Vec<Yaml>, serde_yaml::Error> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text).map(Yaml::deserialize).collect()
}

fn location(e: &serde_yaml::Error) -> (usize, usize) {
    e.location().map_or((0, 0), |l| (l.line(), l.column()))
}

/// libyaml's messages quote no input, only positions and expectations.
fn not_yaml(e: &serde_yaml::Error) -> RowError {
    let (line, column) = location(e);
    let problem = e.to_string();
    let problem = problem.split(" at line ").next().unwrap_or(&problem).to_owned();
    RowError::NotYaml { line, column, problem }
}

/// A row as error messages name it: its index, and for offline use its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRef {
    pub index: usize,
    /// `column=value` of the `id` column, or else the first column.
    pub key: Option<String>,
}

impl RowRef {
    pub fn of(index: usize, row: &Map<String, Json>) -> Self {
        let key = row
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("id"))
            .or_else(|| row.iter().next())
            .map(|(name, value)| {
                let mut value = helpers::to_text(value);
                if value.chars().count() > 64 {
                    value = value.chars().take(61).collect::<String>() + "...";
                }
                format!("{name}={value}")
            });
        Self { index, key }
    }
}

impl std::fmt::Display for RowRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(key) => write!(f, "row {} ({key})", self.index),
            None => write!(f, "row {}", self.index),
        }
    }
}

/// A row that produced no objects, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderFailure {
    pub row: RowRef,
    pub error: RowError,
}

impl RenderFailure {
    /// The row names a kind discovery did not know: a CRD may have been
    /// installed since, so discovery is worth refreshing.
    pub fn is_unknown_kind(&self) -> bool {
        matches!(&self.error, RowError::Object { problem: ObjectProblem::UnknownKind(_), .. })
    }
}

/// Everything one pass rendered.
#[derive(Debug, Clone, Default)]
pub struct RenderOutcome {
    pub objects: Vec<RenderedObject>,
    pub failures: Vec<RenderFailure>,
}

impl RenderOutcome {
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Renders and validates every row. A row fails as a whole: either all its
/// objects are in the outcome or none are.
pub fn render_rows(
    template: &RowTemplate,
    rows: &[Map<String, Json>],
    metadata: &Metadata,
    now: &str,
    policy: &ObjectPolicy,
    scopes: &dyn ScopeLookup,
) -> RenderOutcome {
    let budget = limits::MAX_PASS_RENDER_TIME;
    render_rows_within(template, rows, metadata, now, policy, scopes, budget)
}

/// [`render_rows`] with `budget` for the whole pass.
fn render_rows_within(
    template: &RowTemplate,
    rows: &[Map<String, Json>],
    metadata: &Metadata,
    now: &str,
    policy: &ObjectPolicy,
    scopes: &dyn ScopeLookup,
    budget: std::time::Duration,
) -> RenderOutcome {
    let mut outcome = RenderOutcome::default();
    let started = std::time::Instant::now();
    let mut per_row: Vec<Result<Vec<RenderedObject>, RowError>> = rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            // A pass of many slow rows must end too: the rows left fail
            // (nothing is pruned after a failure) and the next pass tries.
            if started.elapsed() >= budget {
                return Err(RowError::OverLimit(format!(
                    "the pass's rendering took longer than {} s",
                    budget.as_secs()
                )));
            }
            if let Some(limit) = row.get(crate::db::OVERSIZED_ROW) {
                return Err(RowError::RowTooLarge(limit.as_u64().unwrap_or_default()));
            }
            let docs = template.render(row, metadata, now)?;
            docs.into_iter()
                .enumerate()
                .map(|(d, doc)| {
                    validate_object(doc, index, &metadata.namespace, policy, scopes)
                        .map_err(|problem| RowError::Object { document: d + 1, problem })
                })
                .collect()
        })
        .collect();

    fail_duplicates(&mut per_row);

    for (index, result) in per_row.into_iter().enumerate() {
        match result {
            Ok(objects) => outcome.objects.extend(objects),
            Err(error) => {
                outcome.failures.push(RenderFailure { row: RowRef::of(index, &rows[index]), error })
            }
        }
    }
    outcome
}

/// An object produced twice is an error for every row that produced it.
fn fail_duplicates(per_row: &mut [Result<Vec<RenderedObject>, RowError>]) {
    let mut first_row: HashMap<ObjectKey, usize> = HashMap::new();
    let mut duplicates: Vec<(usize, usize)> = Vec::new();
    for (index, result) in per_row.iter().enumerate() {
        let Ok(objects) = result else { continue };
        for object in objects {
            match first_row.get(&object.key()) {
                Some(&other) => {
                    duplicates.push((index, other));
                    if other != index {
                        duplicates.push((other, index));
                    }
                }
                None => {
                    first_row.insert(object.key(), index);
                }
            }
        }
    }
    for (index, other_row) in duplicates {
        if per_row[index].is_ok() {
            per_row[index] = Err(RowError::Duplicate { other_row });
        }
    }
}

#[cfg(test)]
mod tests;
