//! Runs a DBQR's query: setup statements, then the row-returning one, inside
//! one transaction that is READ ONLY unless the spec says otherwise.

use futures_util::{pin_mut, TryStreamExt};
use serde_json::{Map, Value};
use tokio_postgres::{Client, Statement};

use super::decode::{decode, is_decodable, DecodeError, RawValue};
use crate::sql::{quote_ident, split_statements, SplitError};

/// What a query run needs from the spec.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    pub read_only: bool,
    pub max_rows: u32,
    pub statement_timeout: std::time::Duration,
}

/// Rows of the last statement, each a JSON object in column order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Map<String, Value>>,
}

/// Why a query produced no usable result. Messages carry no row data.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("cannot split the query: {0}")]
    Split(#[from] SplitError),
    #[error("statement {index} failed: {message}")]
    Statement {
        index: usize,
        message: String,
        /// SQLSTATE, when the server answered.
        code: Option<String>,
    },
    #[error("the last statement returns no columns; it must return the rows to render")]
    NoColumns,
    #[error("the last statement takes parameters (${0}); queries cannot have parameters")]
    HasParameters(usize),
    #[error("column name {0:?} appears more than once; give each column its own alias")]
    DuplicateColumn(String),
    #[error("the query returned more than maxRows ({0}) rows")]
    TooManyRows(u32),
    #[error("cannot decode {0}")]
    Decode(#[from] DecodeError),
}

impl QueryError {
    /// Stable reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooManyRows(_) => "TooManyRows",
            // 57014 query_canceled: what statement_timeout raises.
            Self::Statement {
                code: Some(code), ..
            } if code == "57014" => "QueryTimeout",
            Self::Decode(_) => "DecodeFailed",
            _ => "QueryFailed",
        }
    }
}

/// Runs `sql` and decodes its rows.
pub async fn run_query(
    client: &mut Client,
    sql: &str,
    options: &QueryOptions,
) -> Result<QueryResult, QueryError> {
    let statements = split_statements(sql)?;
    let (last, setup) = statements.split_last().ok_or(SplitError::Empty)?;
    let statement_error = |index| {
        move |e: tokio_postgres::Error| QueryError::Statement {
            index,
            message: super::describe(&e),
            code: e.code().map(|c| c.code().to_owned()),
        }
    };

    let tx = client
        .build_transaction()
        .read_only(options.read_only)
        .start()
        .await
        .map_err(statement_error(0))?;
    // SET LOCAL ends with the transaction, so a pooled connection keeps no state.
    let timeout_ms = options.statement_timeout.as_millis().max(1);
    tx.batch_execute(&format!("SET LOCAL statement_timeout = {timeout_ms}"))
        .await
        .map_err(statement_error(0))?;
    for (i, statement) in setup.iter().enumerate() {
        tx.batch_execute(statement)
            .await
            .map_err(statement_error(i + 1))?;
    }
    let last_index = setup.len() + 1;
    let mut prepared = tx
        .prepare(last)
        .await
        .map_err(statement_error(last_index))?;
    if !prepared.params().is_empty() {
        return Err(QueryError::HasParameters(prepared.params().len()));
    }
    let columns: Vec<String> = prepared
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    if columns.is_empty() {
        return Err(QueryError::NoColumns);
    }
    if let Some(dup) = first_duplicate(&columns) {
        return Err(QueryError::DuplicateColumn(dup.to_owned()));
    }
    if prepared.columns().iter().any(|c| !is_decodable(c.type_())) {
        let wrapped = cast_unknown_columns_to_text(last, &prepared);
        prepared = tx
            .prepare(&wrapped)
            .await
            .map_err(statement_error(last_index))?;
    }

    let rows = tx
        .query_raw(&prepared, std::iter::empty::<i32>())
        .await
        .map_err(statement_error(last_index))?;
    pin_mut!(rows);
    let mut result = QueryResult {
        columns,
        rows: Vec::new(),
    };
    while let Some(row) = rows.try_next().await.map_err(statement_error(last_index))? {
        if result.rows.len() >= options.max_rows as usize {
            return Err(QueryError::TooManyRows(options.max_rows));
        }
        let mut object = Map::with_capacity(result.columns.len());
        for (i, (name, column)) in result.columns.iter().zip(row.columns()).enumerate() {
            let raw: RawValue<'_> = row.try_get(i).map_err(statement_error(last_index))?;
            object.insert(name.clone(), decode(name, column.type_(), raw.0)?);
        }
        result.rows.push(object);
    }
    tx.commit().await.map_err(statement_error(last_index))?;
    Ok(result)
}

fn first_duplicate(columns: &[String]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    columns
        .iter()
        .find(|c| !seen.insert(c.as_str()))
        .map(String::as_str)
}

/// Types without a binary decoder are read through their text output
/// function. Renaming the columns positionally in a CTE keeps this working
/// for any row-returning statement, including `INSERT ... RETURNING`.
fn cast_unknown_columns_to_text(sql: &str, prepared: &Statement) -> String {
    let aliases: Vec<String> = (1..=prepared.columns().len())
        .map(|i| quote_ident(&format!("c{i}")))
        .collect();
    let select: Vec<String> = prepared
        .columns()
        .iter()
        .zip(&aliases)
        .map(|(c, alias)| {
            if is_decodable(c.type_()) {
                alias.clone()
            } else {
                format!("{alias}::text")
            }
        })
        .collect();
    format!(
        "WITH dbqo_rows({}) AS ({sql}\n) SELECT {} FROM dbqo_rows",
        aliases.join(", "),
        select.join(", ")
    )
}
