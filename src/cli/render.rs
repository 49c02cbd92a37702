//! `render`: offline preview of what a DBQR produces.

use std::{io::Write as _, path::PathBuf};

use clap::Args;
use serde_json::{Map, Value as Json};

use super::policy::PolicyArgs;
use crate::api::{DatabaseQueryResource, SpecError};
use crate::db::{self, ConnInfo, QueryOptions};
use crate::render::{render_rows, BuiltinScopes, Metadata, RowTemplate, TemplateError};

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// DBQR manifest (YAML) to render.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: PathBuf,
    /// JSON file holding the rows: an array of objects, one per row.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "database_url",
        required_unless_present = "database_url"
    )]
    pub rows: Option<PathBuf>,
    /// Connection string (libpq URI or key=value); the DBQR's query runs read-only against it.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Namespace assumed when the manifest has none.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// A DBQR manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DbqrFileError {
    #[error("not a valid DBQR manifest: {0}")]
    Yaml(String),
    #[error("expected apiVersion dbqo.dev/v1alpha1 and kind DatabaseQueryResource, found {api_version} {kind}")]
    WrongKind { api_version: String, kind: String },
    #[error("unknown field {0}")]
    UnknownField(String),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Spec(Vec<SpecError>),
    #[error("{0}")]
    Template(#[from] TemplateError),
}

/// Parses a DBQR manifest strictly: unknown fields, bad durations and a
/// template that does not compile are errors here, not surprises later.
pub fn load_dbqr(text: &str) -> Result<(DatabaseQueryResource, RowTemplate), DbqrFileError> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| DbqrFileError::Yaml(e.to_string()))?;
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let (api_version, kind) = (field("apiVersion"), field("kind"));
    if api_version != "dbqo.dev/v1alpha1" || kind != "DatabaseQueryResource" {
        return Err(DbqrFileError::WrongKind { api_version, kind });
    }
    let mut unknown = Vec::new();
    let mut note_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let tracked = serde_ignored::Deserializer::new(value, &mut note_unknown);
    let dbqr: DatabaseQueryResource = serde_path_to_error::deserialize(tracked)
        .map_err(|e| DbqrFileError::Yaml(format!("{}: {}", e.path(), e.inner())))?;
    // apiVersion and kind were checked above; status is the operator's to write.
    let known = |p: &str| p == "apiVersion" || p == "kind" || p.starts_with("status");
    if let Some(path) = unknown.into_iter().find(|p| !known(p)) {
        return Err(DbqrFileError::UnknownField(path));
    }
    let problems = dbqr.spec.validate();
    if !problems.is_empty() {
        return Err(DbqrFileError::Spec(problems));
    }
    let template = RowTemplate::compile(&dbqr.spec.template)?;
    Ok((dbqr, template))
}

async fn rows_from(
    args: &RenderArgs,
    dbqr: &DatabaseQueryResource,
) -> Result<Vec<Map<String, Json>>, String> {
    if let Some(path) = &args.rows {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let rows: Vec<Json> = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a JSON array: {e}", path.display()))?;
        return rows
            .into_iter()
            .enumerate()
            .map(|(i, row)| match row {
                Json::Object(map) => Ok(map),
                _ => Err(format!("{}: row {i} is not a JSON object", path.display())),
            })
            .collect();
    }
    query_rows(args.database_url.as_deref().unwrap_or_default(), dbqr).await
}

/// The DBQR's rows from the database at `url` (`--database-url`).
pub(super) async fn query_rows(
    url: &str,
    dbqr: &DatabaseQueryResource,
) -> Result<Vec<Map<String, Json>>, String> {
    let info: ConnInfo = url.parse().map_err(|e| format!("--database-url: {e}"))?;
    rows_over(&info, dbqr).await
}

/// The DBQR's rows, its query run read-only over `info`.
pub(super) async fn rows_over(
    info: &ConnInfo,
    dbqr: &DatabaseQueryResource,
) -> Result<Vec<Map<String, Json>>, String> {
    let mut client = db::connect(info).await.map_err(|e| e.to_string())?;
    let options = QueryOptions {
        // A preview never writes, whatever the spec says.
        read_only: true,
        max_rows: dbqr.spec.max_rows,
        max_row_bytes: dbqr.spec.max_row_bytes,
        max_result_bytes: dbqr.spec.max_result_bytes,
        statement_timeout: dbqr.spec.database.statement_timeout.get(),
    };
    let result =
        db::run_query(&mut client, &dbqr.spec.query, &options).await.map_err(|e| e.to_string())?;
    Ok(result.rows)
}

pub(super) async fn run(args: RenderArgs) -> i32 {
    let label = args.file.display().to_string();
    let fail = |who: &str, message: &dyn std::fmt::Display| {
        eprintln!("error: {who}: {message}");
        1
    };
    let text = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => return fail(&label, &e),
    };
    let (mut dbqr, template) = match load_dbqr(&text) {
        Ok(loaded) => loaded,
        Err(e) => return fail(&format!("dbqr {label}"), &e),
    };
    if dbqr.metadata.namespace.is_none() {
        dbqr.metadata.namespace = Some(args.namespace.clone());
    }
    let metadata = Metadata::of(&dbqr);
    let who = format!("dbqr {}/{}", metadata.namespace, metadata.name);
    let policy = match args.policy.policy() {
        Ok(p) => p,
        Err(e) => return fail("--allowed-kinds", &e),
    };
    let rows = match rows_from(&args, &dbqr).await {
        Ok(rows) => rows,
        Err(e) => return fail(&who, &e),
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let outcome = render_rows(&template, &rows, &metadata, &now, &policy, &BuiltinScopes);
    let mut stdout = std::io::stdout().lock();
    for object in &outcome.objects {
        let yaml = serde_yaml::to_string(&object.manifest).unwrap_or_default();
        let row = crate::render::RowRef::of(object.row, &rows[object.row]);
        // A closed pipe (`| head`) ends the preview quietly.
        if writeln!(stdout, "---\n# {row}\n{}", yaml.trim_end()).is_err() {
            return 1;
        }
    }
    for failure in &outcome.failures {
        eprintln!("error: {who}: {}: {}", failure.row, failure.error);
    }
    if outcome.is_complete() {
        eprintln!("{who}: {} rows, {} objects", rows.len(), outcome.objects.len());
        0
    } else {
        eprintln!(
            "{who}: {} rows, {} objects, {} rows failed",
            rows.len(),
            outcome.objects.len(),
            outcome.failures.len()
        );
        1
    }
}
