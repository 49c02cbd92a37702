//! Runs a DBQR's query: setup statements, then the row-returning one, inside
//! one transaction that is READ ONLY unless the spec says otherwise.

use std::future::Future;

use futures_util::{pin_mut, TryStreamExt};
use serde_json::{Map, Value};
use tokio_postgres::{Client, Statement};

use super::deadline::{after_server, Unanswered};
use super::decode::{decode, is_decodable, DecodeError, RawValue};
use crate::sql::{check_setup, quote_ident, split_statements, SetupRefusal, SplitError};

/// What a query run needs from the spec.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    pub read_only: bool,
    pub max_rows: u32,
    /// A row over this many bytes fails alone (see [`OVERSIZED_ROW`]).
    pub max_row_bytes: u64,
    /// A result over this many bytes fails as a whole.
    pub max_result_bytes: u64,
    pub statement_timeout: std::time::Duration,
}

/// The only key of a row that was larger than `maxRowBytes`: it is not
/// decoded, and rendering fails that row alone. (PostgreSQL identifiers
/// cannot hold NUL, so no column has this name.)
pub const OVERSIZED_ROW: &str = "\u{0}oversized";

/// A row as the query returned it: a JSON object in column order.
pub type Row = Map<String, Value>;

/// Rows of the last statement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    /// With a [`KeySelect`]: each row's key as the server's text form
    /// (`NULL` for a NULL key and for an oversized row), by row.
    pub keys: Vec<Option<String>>,
}

/// The key column of a key-scoped DBQR (`changeDetection.keyColumn`): each
/// row's key is read as `<column>::text`, the form a keyed trigger sends;
/// with `only`, the query returns just the rows of those keys.
#[derive(Debug, Clone, Copy)]
pub struct KeySelect<'a> {
    pub column: &'a str,
    pub only: Option<&'a [String]>,
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
    #[error("statement {index} is refused: {refusal}")]
    Setup {
        index: usize,
        #[source]
        refusal: SetupRefusal,
    },
    #[error("the last statement returns no columns; it must return the rows to render")]
    NoColumns,
    #[error("the last statement takes parameters (${0}); queries cannot have parameters")]
    HasParameters(usize),
    #[error("column name {0:?} appears more than once; give each column its own alias")]
    DuplicateColumn(String),
    #[error("changeDetection.keyColumn {0:?} is not a column of the query's result")]
    NoKeyColumn(String),
    #[error("the query returned more than maxRows ({0}) rows")]
    TooManyRows(u32),
    #[error("the query returned more than maxResultBytes ({0}) bytes")]
    ResultTooLarge(u64),
    #[error("cannot decode {0}")]
    Decode(#[from] DecodeError),
    /// A round trip got no answer by its client-side deadline: the
    /// connection is in an unknown state and must not be used again.
    #[error(transparent)]
    Unanswered(#[from] Unanswered),
}

impl QueryError {
    /// Stable reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooManyRows(_) => crate::reason::TOO_MANY_ROWS,
            Self::ResultTooLarge(_) => crate::reason::RESULT_TOO_LARGE,
            // 57014 query_canceled: what statement_timeout raises.
            Self::Statement { code: Some(code), .. } if code == "57014" => {
                crate::reason::QUERY_TIMEOUT
            }
            Self::Decode(_) => crate::reason::DECODE_FAILED,
            Self::Setup { .. } => crate::reason::SETUP_STATEMENT_REFUSED,
            Self::Unanswered(e) => e.reason(),
            _ => crate::reason::QUERY_FAILED,
        }
    }
}

/// Runs `sql` and decodes its rows. Every round trip has a client-side
/// deadline of the statement timeout plus [`GRACE`](super::GRACE): past it
/// the result is [`QueryError::Unanswered`] and the caller closes the
/// connection.
pub async fn run_query(
    client: &mut Client,
    sql: &str,
    options: &QueryOptions,
) -> Result<QueryResult, QueryError> {
    run_query_keyed(client, sql, options, None).await
}

/// [`run_query`] reading each row's key, and with `only`, restricted to
/// the rows of those keys: the query is wrapped, never rewritten, so it
/// means what it means in a full pass.
pub async fn run_query_keyed(
    client: &mut Client,
    sql: &str,
    options: &QueryOptions,
    key: Option<KeySelect<'_>>,
) -> Result<QueryResult, QueryError> {
    let statements = split_statements(sql)?;
    let (last, setup) = statements.split_last().ok_or(SplitError::Empty)?;
    for (i, statement) in setup.iter().enumerate() {
        check_setup(statement).map_err(|refusal| QueryError::Setup { index: i + 1, refusal })?;
    }
    let start = client.build_transaction().read_only(options.read_only).start();
    let tx = answered(options, 0, start).await?;
    run_setup(&tx, setup, options).await?;
    let last_index = setup.len() + 1;
    let (columns, prepared, keyed) = prepare_measured(&tx, last, last_index, options, key).await?;
    // An integer key column is compared as integers (so its index serves
    // the filter); a key that is no integer matches no row of it.
    let integer = keyed.is_some_and(|k| k.integer);
    let only: Option<Vec<&String>> = key
        .and_then(|k| k.only)
        .map(|keys| keys.iter().filter(|key| !integer || key.parse::<i64>().is_ok()).collect());
    let params = only.as_ref().map(|keys| keys as &(dyn tokio_postgres::types::ToSql + Sync));
    let rows = answered(options, last_index, tx.query_raw(&prepared, params)).await?;
    let result = read_rows(rows, columns, key.is_some(), last_index, options).await?;
    answered(options, last_index, tx.commit()).await?;
    Ok(result)
}

/// One round trip of statement `index`, within its client-side deadline.
async fn answered<T>(
    options: &QueryOptions,
    index: usize,
    round_trip: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, QueryError> {
    after_server(options.statement_timeout, round_trip).await?.map_err(statement_error(index))
}

/// The error of statement `index` (1-based; 0 for the operator's own).
fn statement_error(index: usize) -> impl Fn(tokio_postgres::Error) -> QueryError {
    move |e: tokio_postgres::Error| QueryError::Statement {
        index,
        message: super::describe(&e),
        code: e.code().map(|c| c.code().to_owned()),
    }
}

/// The statement timeout, then the setup statements; a setup statement may
/// lower the timeout, never lift it (0 is none). `SET LOCAL` ends with the
/// transaction, so a pooled connection keeps no state.
async fn run_setup(
    tx: &tokio_postgres::Transaction<'_>,
    setup: &[&str],
    options: &QueryOptions,
) -> Result<(), QueryError> {
    let timeout_ms = options.statement_timeout.as_millis().max(1);
    let limit = format!("SET LOCAL statement_timeout = {timeout_ms}");
    answered(options, 0, tx.batch_execute(&limit)).await?;
    for (i, statement) in setup.iter().enumerate() {
        answered(options, i + 1, tx.batch_execute(statement)).await?;
    }
    if !setup.is_empty() {
        let no_higher = format!(
            "SELECT set_config('statement_timeout', \
             LEAST(NULLIF(setting::bigint, 0), {timeout_ms})::text, true) \
             FROM pg_settings WHERE name = 'statement_timeout'"
        );
        answered(options, 0, tx.batch_execute(&no_higher)).await?;
    }
    Ok(())
}

/// Prepares the query (no parameters, named and unique columns) and the
/// wrapper its rows come through: each row is measured on the server, and a
/// row over maxRowBytes arrives as a flag and NULLs, never as its bytes (the
/// driver buffers a whole row before anyone can look at it).
async fn prepare_measured(
    tx: &tokio_postgres::Transaction<'_>,
    last: &str,
    index: usize,
    options: &QueryOptions,
    key: Option<KeySelect<'_>>,
) -> Result<(Vec<String>, Statement, Option<Keyed>), QueryError> {
    let prepared = answered(options, index, tx.prepare(last)).await?;
    if !prepared.params().is_empty() {
        return Err(QueryError::HasParameters(prepared.params().len()));
    }
    let columns: Vec<String> = prepared.columns().iter().map(|c| c.name().to_owned()).collect();
    if columns.is_empty() {
        return Err(QueryError::NoColumns);
    }
    if let Some(dup) = first_duplicate(&columns) {
        return Err(QueryError::DuplicateColumn(dup.to_owned()));
    }
    let key = match key {
        Some(k) => match columns.iter().position(|c| c == k.column) {
            Some(position) => Some(Keyed {
                position,
                filtered: k.only.is_some(),
                integer: is_integer(prepared.columns()[position].type_()),
            }),
            None => return Err(QueryError::NoKeyColumn(k.column.to_owned())),
        },
        None => None,
    };
    let wrapped = wrap(last, &prepared, options.max_row_bytes, key);
    let measured = answered(options, index, tx.prepare(&wrapped)).await?;
    Ok((columns, measured, key))
}

/// Decodes the rows of the measured statement within maxRows and
/// maxResultBytes; an oversized row becomes a marker the render refuses.
async fn read_rows(
    rows: tokio_postgres::RowStream,
    columns: Vec<String>,
    keyed: bool,
    index: usize,
    options: &QueryOptions,
) -> Result<QueryResult, QueryError> {
    pin_mut!(rows);
    let mut result = QueryResult { columns, ..QueryResult::default() };
    // The flag, then the key if read, then the query's columns.
    let first = 1 + usize::from(keyed);
    let mut total: u64 = 0;
    while let Some(row) = answered(options, index, rows.try_next()).await? {
        if result.rows.len() >= options.max_rows as usize {
            return Err(QueryError::TooManyRows(options.max_rows));
        }
        let over: bool = row.try_get(0).map_err(statement_error(index))?;
        if keyed {
            result.keys.push(row.try_get(1).map_err(statement_error(index))?);
        }
        let mut raws = Vec::with_capacity(result.columns.len());
        for i in first..first + result.columns.len() {
            let raw: RawValue<'_> = row.try_get(i).map_err(statement_error(index))?;
            raws.push(raw.0);
        }
        // The binary form can be larger than the text the server measured.
        let size: u64 = raws.iter().map(|r| r.map_or(0, |b| b.len() as u64)).sum();
        let mut object = Map::with_capacity(result.columns.len());
        if over || size > options.max_row_bytes {
            object.insert(OVERSIZED_ROW.to_owned(), Value::from(options.max_row_bytes));
        } else {
            total += size;
            if total > options.max_result_bytes {
                return Err(QueryError::ResultTooLarge(options.max_result_bytes));
            }
            let types = row.columns().iter().skip(first).map(|c| c.type_());
            for ((name, ty), raw) in result.columns.iter().zip(types).zip(raws) {
                object.insert(name.clone(), decode(name, ty, raw)?);
            }
        }
        result.rows.push(object);
    }
    Ok(result)
}

fn first_duplicate(columns: &[String]) -> Option<&str> {
    let mut seen = std::collections::HashSet::new();
    columns.iter().find(|c| !seen.insert(c.as_str())).map(String::as_str)
}

/// The statement the rows are read through: the query's columns renamed
/// positionally in a CTE (which works for any row-returning statement,
/// `INSERT ... RETURNING` included), each row's size measured on the server
/// (the sum of its columns' text forms) into a leading flag, and a row over `max_row_bytes`
/// sent as that flag and NULLs. Types without a binary decoder are read
/// through their text output function. A keyed DBQR's rows carry their key
/// as text after the flag, and a keyed pass keeps the rows whose key is in
/// `$1` (a filter on the CTE, which PostgreSQL pushes into a plain query).
fn wrap(sql: &str, prepared: &Statement, max_row_bytes: u64, key: Option<Keyed>) -> String {
    let aliases: Vec<String> =
        (1..=prepared.columns().len()).map(|i| quote_ident(&format!("c{i}"))).collect();
    let select: Vec<String> = prepared
        .columns()
        .iter()
        .zip(&aliases)
        .map(|(c, alias)| {
            let column =
                if is_decodable(c.type_()) { alias.clone() } else { format!("{alias}::text") };
            format!("CASE WHEN dbqo_size.over THEN NULL ELSE {column} END")
        })
        .collect();
    // The sum of the columns' text lengths: a text column's length is read
    // from its header, where the row's text form (`dbqo_rows::text`) would
    // copy and escape every byte (2.4 times slower for a 300 MB row).
    let size: Vec<String> =
        aliases.iter().map(|alias| format!("coalesce(octet_length({alias}::text), 0)")).collect();
    let size = if size.is_empty() { "0".to_owned() } else { size.join(" + ") };
    let (key_column, filter) = match key {
        Some(Keyed { position, filtered, integer }) => {
            let alias = &aliases[position];
            let filter = match (filtered, integer) {
                (false, _) => String::new(),
                (true, true) => format!(" WHERE {alias} = ANY($1::text[]::int8[])"),
                (true, false) => format!(" WHERE {alias}::text = ANY($1::text[])"),
            };
            (format!("CASE WHEN dbqo_size.over THEN NULL ELSE {alias}::text END, "), filter)
        }
        None => (String::new(), String::new()),
    };
    format!(
        "WITH dbqo_rows({}) AS ({sql}\n) SELECT dbqo_size.over, {key_column}{} FROM dbqo_rows \
         CROSS JOIN LATERAL (SELECT {size} > {max_row_bytes} AS over) dbqo_size{filter}",
        aliases.join(", "),
        select.join(", ")
    )
}

/// Where the key column is among the query's columns, whether the rows
/// are restricted to given keys, and whether the column is an integer.
#[derive(Debug, Clone, Copy)]
struct Keyed {
    position: usize,
    filtered: bool,
    integer: bool,
}

fn is_integer(ty: &tokio_postgres::types::Type) -> bool {
    use tokio_postgres::types::Type;
    [Type::INT2, Type::INT4, Type::INT8].contains(ty)
}
