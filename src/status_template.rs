//! Status write-back: `statusUpdateQueryTemplate` rendered with every
//! `{{expr}}` as a bound parameter.
//!
//! Values never become SQL text. Each `{{expr}}` turns into `$1`, `$2`, ...;
//! the values are sent in text form and PostgreSQL converts them with the
//! input function of the type it infers for each parameter, so an integer
//! column gets an integer and a value that is not one is a clear error.
//! Identifiers and keywords come only from the template's own text.

use std::{cell::RefCell, error::Error as StdError};

use crate::db::Pool;
use bytes::BytesMut;
use handlebars::Handlebars;
use serde_json::{json, Map, Value as Json};
use sha2::{Digest, Sha256};
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

use crate::render::{helpers, values, Metadata};
use crate::sql::{opaque_parts, split_statements};

const NAME: &str = "status";

/// Why a status write-back did not happen. Messages hold no values.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WritebackError {
    #[error("statusUpdateQueryTemplate does not parse: {0}")]
    Template(String),
    #[error("statusUpdateQueryTemplate must not use {{{{{{...}}}}}} or {{{{&...}}}}: values are bound as parameters, never spliced")]
    RawExpression,
    #[error("statusUpdateQueryTemplate must be exactly one statement, found {0}")]
    Statements(usize),
    #[error("statusUpdateQueryTemplate has {{{{...}}}} inside a {0}: every value is bound as a parameter, so write it outside quotes (`name = {{{{Row.name}}}}`, not `name = '{{{{Row.name}}}}'`)")]
    QuotedExpression(&'static str),
    #[error("status SQL render failed: {0}")]
    Render(String),
    /// The server's error, as `db::describe` may quote it (never a value).
    #[error("status SQL failed: {}", crate::db::describe(.0))]
    Database(#[source] std::sync::Arc<tokio_postgres::Error>),
    #[error("status SQL failed: {0}")]
    Connection(#[source] std::sync::Arc<crate::db::PoolGetError>),
    #[error("status SQL failed: {0}")]
    Unanswered(#[from] crate::db::Unanswered),
}

impl WritebackError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Template(_)
            | Self::RawExpression
            | Self::Statements(_)
            | Self::QuotedExpression(_) => crate::reason::STATUS_TEMPLATE_INVALID,
            Self::Render(_) | Self::Database(_) | Self::Connection(_) | Self::Unanswered(_) => {
                crate::reason::STATUS_WRITE_BACK_FAILED
            }
        }
    }
}

thread_local! {
    static PARAMS: RefCell<Option<Vec<Option<String>>>> = const { RefCell::new(None) };
}

/// The escape function of the SQL registry: each value becomes the next placeholder.
fn bind(value: &str) -> String {
    bind_param(Some(value.to_owned()))
}

fn bind_param(value: Option<String>) -> String {
    // Over the render's byte bound nothing more is kept (the render fails).
    let len = value.as_ref().map_or(0, String::len);
    let value = value.filter(|_| crate::render::limits::take_bytes(len));
    PARAMS.with(|p| match p.borrow_mut().as_mut() {
        Some(params) => {
            params.push(value);
            format!("${}", params.len())
        }
        // Never splice: outside a render there is nothing to bind to.
        None => "NULL".to_owned(),
    })
}

/// A plain `{{expr}}`: a missing or null value binds NULL (never nothing,
/// which would be a syntax error), a structured one fails the render.
fn bind_value(scalar: values::Scalar) -> Result<String, handlebars::RenderError> {
    Ok(match scalar {
        values::Scalar::Missing(_) | values::Scalar::Null => bind_param(None),
        values::Scalar::Text(text) => bind_param(Some(text)),
    })
}

/// A compiled status SQL template.
pub struct StatusTemplate {
    registry: Handlebars<'static>,
    uses_row_ready: bool,
}

impl std::fmt::Debug for StatusTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusTemplate").finish_non_exhaustive()
    }
}

/// How ready an object and its row are: `Ready` and `RowReady`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Readiness {
    pub ready: bool,
    pub row_ready: bool,
}

/// A statement ready to run: SQL with placeholders and the values, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundStatement {
    pub sql: String,
    /// `None` binds NULL.
    pub params: Vec<Option<String>>,
}

impl StatusTemplate {
    pub fn compile(source: &str) -> Result<Self, WritebackError> {
        if source.contains("{{{") || source.contains("{{&") || source.contains("{{~{") {
            return Err(WritebackError::RawExpression);
        }
        let mut registry = Handlebars::new();
        registry.set_strict_mode(false);
        registry.register_escape_fn(bind);
        let helpers = helpers::register(&mut registry, helpers::HelperMode::Sql);
        values::register(&mut registry, NAME, source, &helpers, values::ValueHelper(bind_value))
            .map_err(|e| WritebackError::Template(e.0))?;
        // The statement count does not depend on values: check it with placeholders now.
        let probe = Self { registry, uses_row_ready: source.contains("RowReady") };
        let shape = probe.render_with(&json!({}))?;
        check_shape(&shape)?;
        Ok(probe)
    }

    fn render_with(&self, context: &Json) -> Result<BoundStatement, WritebackError> {
        PARAMS.with(|p| *p.borrow_mut() = Some(Vec::new()));
        let (rendered, exceeded) = crate::render::limits::within(|| {
            let mut text = crate::render::limits::BoundedText::default();
            self.registry.render_to_write(NAME, context, &mut text).map(|()| text.0)
        });
        let params = PARAMS.with(|p| p.borrow_mut().take()).unwrap_or_default();
        if let Some(bound) = exceeded {
            return Err(WritebackError::Render(format!("the statement {bound}")));
        }
        let sql = rendered.map_err(|e| WritebackError::Render(e.reason().to_string()))?;
        let sql = String::from_utf8(sql)
            .map_err(|_| WritebackError::Render("the statement is not UTF-8".into()))?;
        Ok(BoundStatement { sql, params })
    }

    /// Whether the template asks for `RowReady`, which costs a look at every
    /// object of the row.
    pub fn uses_row_ready(&self) -> bool {
        self.uses_row_ready
    }

    /// Renders for one object: `Resource` (Secret data removed), `Row`,
    /// `Metadata`, `Ready` (the object is Ready by the rules a row's waves
    /// wait for) and `RowReady` (every object of its row is, no wave waits).
    pub fn render(
        &self,
        resource: &Json,
        row: &Map<String, Json>,
        metadata: &Metadata,
        readiness: Readiness,
    ) -> Result<BoundStatement, WritebackError> {
        let context = json!({
            "Resource": sanitize(resource), "Row": row, "Metadata": metadata,
            "Ready": readiness.ready, "RowReady": readiness.row_ready,
        });
        let bound = self.render_with(&context)?;
        check_shape(&bound)?;
        Ok(bound)
    }
}

/// One statement, and no placeholder where PostgreSQL would read it as text
/// (inside a literal, a quoted identifier, a dollar quote or a comment), so
/// every value is a parameter and nothing else.
fn check_shape(bound: &BoundStatement) -> Result<(), WritebackError> {
    let count = split_statements(&bound.sql).map(|s| s.len()).unwrap_or(0);
    if count != 1 {
        return Err(WritebackError::Statements(count));
    }
    let parts = opaque_parts(&bound.sql).map_err(|e| WritebackError::Template(e.to_string()))?;
    for part in parts {
        let text = &bound.sql[part.range];
        let placeholder = (1..=bound.params.len()).any(|n| holds_placeholder(text, n));
        if placeholder {
            return Err(WritebackError::QuotedExpression(part.what));
        }
    }
    Ok(())
}

/// Whether `text` holds `$n` not followed by another digit.
fn holds_placeholder(text: &str, n: usize) -> bool {
    let needle = format!("${n}");
    text.match_indices(&needle)
        .any(|(at, _)| !text[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// The object as the template sees it: no Secret payload, no managedFields.
pub fn sanitize(resource: &Json) -> Json {
    let mut resource = resource.clone();
    if let Some(object) = resource.as_object_mut() {
        if object.get("kind").and_then(Json::as_str) == Some("Secret") {
            object.remove("data");
            object.remove("stringData");
        }
        if let Some(metadata) = object.get_mut("metadata").and_then(Json::as_object_mut) {
            metadata.remove("managedFields");
        }
    }
    resource
}

/// A fingerprint of an object's status; `None` when it has none.
pub fn status_fingerprint(resource: &Json) -> Option<[u8; 32]> {
    let status = resource.get("status").filter(|s| !s.is_null())?;
    Some(Sha256::digest(status.to_string().as_bytes()).into())
}

/// A parameter in text form. An empty value is NULL for non-text types (an
/// empty string is no integer, boolean, timestamp or JSON anyway) and the
/// empty string for text types; `None` is NULL.
#[derive(Debug)]
struct TextParam<'a>(Option<&'a str>);

impl ToSql for TextParam<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let textual =
            matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN)
                || ty.name() == "citext";
        let Some(text) = self.0.filter(|t| textual || !t.is_empty()) else {
            return Ok(IsNull::Yes);
        };
        out.extend_from_slice(text.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    tokio_postgres::types::to_sql_checked!();
}

/// Runs a bound statement under `timeout` (the DBQR's statement timeout);
/// returns the rows it affected. Each round trip also has a client-side
/// deadline (the timeout plus [`GRACE`](crate::db::GRACE)); a connection
/// that missed one is closed, not pooled.
pub async fn execute(
    pool: &Pool,
    statement: &BoundStatement,
    timeout: std::time::Duration,
) -> Result<u64, WritebackError> {
    let mut client = crate::db::checkout(pool)
        .await
        .map_err(|e| WritebackError::Connection(std::sync::Arc::new(e)))?;
    let result = execute_on(&mut client, statement, timeout).await;
    if matches!(result, Err(WritebackError::Unanswered(_))) {
        client.discard();
    }
    result
}

async fn execute_on(
    client: &mut crate::db::Checkout,
    statement: &BoundStatement,
    timeout: std::time::Duration,
) -> Result<u64, WritebackError> {
    async fn answered<T>(
        timeout: std::time::Duration,
        round_trip: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, WritebackError> {
        crate::db::after_server(timeout, round_trip)
            .await?
            .map_err(|e| WritebackError::Database(std::sync::Arc::new(e)))
    }
    let tx = answered(timeout, client.transaction()).await?;
    // SET LOCAL ends with the transaction, so the pooled connection keeps no state.
    let timeout_ms = timeout.as_millis().max(1);
    let limit = format!("SET LOCAL statement_timeout = {timeout_ms}");
    answered(timeout, tx.batch_execute(&limit)).await?;
    let prepared = answered(timeout, tx.prepare_cached(&statement.sql)).await?;
    let params: Vec<TextParam<'_>> =
        statement.params.iter().map(|p| TextParam(p.as_deref())).collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let rows = answered(timeout, tx.execute(&prepared, &refs)).await?;
    answered(timeout, tx.commit()).await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_expression_becomes_a_parameter() {
        let t = StatusTemplate::compile(
            "UPDATE apps SET ready = {{default Resource.status.readyReplicas 0}}, note = {{Resource.metadata.annotations.note}} WHERE name = {{Row.name}}",
        )
        .unwrap();
        let resource = json!({"status": {"readyReplicas": 2}, "metadata": {"annotations": {"note": "'); DROP TABLE apps; --"}}});
        let row = json!({"name": "web"}).as_object().unwrap().clone();
        let bound = t.render(&resource, &row, &Metadata::default(), Readiness::default()).unwrap();
        assert_eq!(bound.sql, "UPDATE apps SET ready = $1, note = $2 WHERE name = $3");
        let params: Vec<_> = bound.params.iter().map(|p| p.as_deref().unwrap()).collect();
        assert_eq!(params, ["2", "'); DROP TABLE apps; --", "web"]);
    }

    #[test]
    fn raw_forms_and_several_statements_are_refused() {
        assert!(matches!(
            StatusTemplate::compile("UPDATE t SET a = {{{Row.a}}}").unwrap_err(),
            WritebackError::RawExpression
        ));
        assert!(matches!(
            StatusTemplate::compile("UPDATE t SET a = {{Row.a}}; DELETE FROM t").unwrap_err(),
            WritebackError::Statements(2)
        ));
    }

    #[test]
    fn secret_payloads_never_reach_the_template() {
        let secret = json!({"kind": "Secret", "data": {"k": "c2VjcmV0"}, "stringData": {"k": "s"}, "metadata": {"name": "s", "managedFields": []}});
        assert_eq!(sanitize(&secret), json!({"kind": "Secret", "metadata": {"name": "s"}}));
    }

    #[test]
    fn missing_and_null_values_bind_null_and_structured_ones_fail() {
        let t = StatusTemplate::compile(
            "UPDATE apps SET ready = {{Resource.status.readyReplicas}}, note = {{Row.note}} WHERE name = {{Row.name}}",
        )
        .unwrap();
        let row = json!({"name": "web", "note": null}).as_object().unwrap().clone();
        let bound = t.render(&json!({}), &row, &Metadata::default(), Readiness::default()).unwrap();
        assert_eq!(bound.sql, "UPDATE apps SET ready = $1, note = $2 WHERE name = $3");
        assert_eq!(bound.params, [None, None, Some("web".to_owned())]);

        let row = json!({"name": {"m4rker": 1}, "note": "x"}).as_object().unwrap().clone();
        let err =
            t.render(&json!({}), &row, &Metadata::default(), Readiness::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("{{Row.name}} is a JSON object") && message.contains("toJson"),
            "{message}"
        );
        assert!(!message.contains("m4rker"), "{message}");
    }

    #[test]
    fn expressions_inside_quotes_are_refused_when_the_template_is_read() {
        for (template, what) in [
            ("UPDATE t SET a = '{{Row.a}}' WHERE id = {{Row.id}}", "string literal"),
            ("UPDATE t SET a = $$x {{Row.a}}$$ WHERE id = 1", "dollar-quoted string"),
            ("UPDATE t SET a = $q${{Row.a}}$q$", "dollar-quoted string"),
            ("UPDATE t SET \"{{Row.col}}\" = 1", "quoted identifier"),
            ("UPDATE t SET a = 1 -- {{Row.a}}", "line comment"),
        ] {
            let err = StatusTemplate::compile(template).unwrap_err();
            assert!(
                matches!(err, WritebackError::QuotedExpression(w) if w == what),
                "{template}: {err}"
            );
            assert_eq!(err.reason(), "StatusTemplateInvalid");
            assert!(err.to_string().contains("outside quotes"), "{err}");
        }
        // Literals without expressions are fine; one that happens to read
        // like a placeholder in use is refused as well.
        StatusTemplate::compile("UPDATE t SET a = 'x$1y', b = {{Row.b}} WHERE c = $$lit$$")
            .unwrap_err();
        StatusTemplate::compile("UPDATE t SET a = 'fixed', b = {{Row.b}} WHERE c = $$lit$$")
            .unwrap();
    }
}
