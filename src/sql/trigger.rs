//! SQL for a statement-level trigger that notifies a channel on every change
//! of a table, for `changeDetection.mode: notify`.

use super::{quote_ident, quote_qualified};

/// A string literal, quoted as PostgreSQL's `quote_literal` does.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Idempotent SQL installing the notify trigger on `table` for `channel`.
pub fn notify_trigger_sql(table: &str, channel: &str) -> String {
    // Identifiers are limited to 63 bytes; keep the name readable and unique per channel.
    let base: String = format!("dbqo_notify_{channel}").chars().take(63).collect();
    let function = quote_ident(&base);
    let trigger = quote_ident(&base);
    let table = quote_qualified(table);
    let channel = quote_literal(channel);
    format!(
        "-- db-query-operator: one notification per INSERT, UPDATE, DELETE or TRUNCATE statement\n\
         -- (statement-level, so a bulk change of many rows sends one).\n\
         CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $dbqo$\n\
         BEGIN\n  PERFORM pg_notify({channel}, TG_OP);\n  RETURN NULL;\nEND\n$dbqo$;\n\
         DROP TRIGGER IF EXISTS {trigger} ON {table};\n\
         CREATE TRIGGER {trigger}\n  AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table}\n  \
         FOR EACH STATEMENT EXECUTE FUNCTION {function}();\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_every_name() {
        let sql = notify_trigger_sql("app.flags", "it's");
        assert!(sql.contains("pg_notify('it''s', TG_OP)"), "{sql}");
        assert!(sql.contains("ON \"app\".\"flags\""), "{sql}");
        assert!(sql.contains("\"dbqo_notify_it's\""), "{sql}");
    }
}
