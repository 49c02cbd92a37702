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

/// Notifications larger than this carry no keys: PostgreSQL refuses a
/// payload of 8,000 bytes or more, and an empty payload means "a full pass".
pub const MAX_KEYS_PAYLOAD: usize = 7900;

/// Idempotent SQL installing notify triggers on `table` for `channel` that
/// carry the changed values of `key_column`: one notification per statement,
/// whose payload is a JSON array of the keys as text (old and new keys of an
/// UPDATE). A TRUNCATE, a NULL key or more keys than fit send the empty
/// payload, which asks for a full pass; a statement that changed no row
/// sends nothing. Transition tables allow one event per trigger, so there are
/// four triggers over one function; the unkeyed trigger of the channel is
/// dropped (it would notify twice).
pub fn notify_keys_trigger_sql(table: &str, channel: &str, key_column: &str) -> String {
    let name = |prefix: &str, suffix: &str| -> String {
        let base: String = format!("{prefix}_{channel}").chars().take(63 - suffix.len()).collect();
        quote_ident(&format!("{base}{suffix}"))
    };
    let function = name("dbqo_keys", "");
    let unkeyed = name("dbqo_notify", "");
    let table = quote_qualified(table);
    let literal = quote_literal(channel);
    let key = quote_ident(key_column);
    let keys_of = |tables: &[&str]| -> String {
        let selects: Vec<String> =
            tables.iter().map(|t| format!("SELECT {key}::text AS k FROM {t}")).collect();
        format!(
            "SELECT CASE WHEN bool_or(k IS NULL) THEN '' ELSE json_agg(DISTINCT k ORDER BY k)::text END \
             INTO keys FROM ({}) changed;",
            selects.join(" UNION ALL ")
        )
    };
    let mut sql = format!(
        "-- db-query-operator: one notification per statement with the changed keys of {key}\n\
         -- (a JSON array of text; empty for TRUNCATE, a NULL key or too many keys: a full pass).\n\
         CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $dbqo$\n\
         DECLARE\n  keys text;\nBEGIN\n  \
         IF TG_OP = 'INSERT' THEN\n    {insert}\n  \
         ELSIF TG_OP = 'UPDATE' THEN\n    {update}\n  \
         ELSIF TG_OP = 'DELETE' THEN\n    {delete}\n  \
         END IF;\n  \
         IF TG_OP <> 'TRUNCATE' AND keys IS NULL THEN\n    RETURN NULL;\n  END IF;\n  \
         IF keys IS NULL OR octet_length(keys) > {MAX_KEYS_PAYLOAD} THEN\n    keys := '';\n  END IF;\n  \
         PERFORM pg_notify({literal}, keys);\n  RETURN NULL;\nEND\n$dbqo$;\n\
         DROP TRIGGER IF EXISTS {unkeyed} ON {table};\n",
        insert = keys_of(&["dbqo_new"]),
        update = keys_of(&["dbqo_new", "dbqo_old"]),
        delete = keys_of(&["dbqo_old"]),
    );
    let triggers = [
        ("_ins", "INSERT", "REFERENCING NEW TABLE AS dbqo_new "),
        ("_upd", "UPDATE", "REFERENCING OLD TABLE AS dbqo_old NEW TABLE AS dbqo_new "),
        ("_del", "DELETE", "REFERENCING OLD TABLE AS dbqo_old "),
        ("_trunc", "TRUNCATE", ""),
    ];
    for (suffix, event, referencing) in triggers {
        let trigger = name("dbqo_keys", suffix);
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {trigger} ON {table};\n\
             CREATE TRIGGER {trigger}\n  AFTER {event} ON {table} {referencing}\n  \
             FOR EACH STATEMENT EXECUTE FUNCTION {function}();\n"
        ));
    }
    sql
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

    #[test]
    fn the_keyed_trigger_has_one_trigger_per_event_and_quotes_every_name() {
        let sql = notify_keys_trigger_sql("app.flags", "it's", "key\"col");
        assert!(sql.contains("pg_notify('it''s', keys)"), "{sql}");
        assert!(sql.contains("SELECT \"key\"\"col\"::text AS k FROM dbqo_new"), "{sql}");
        for event in ["INSERT", "UPDATE", "DELETE", "TRUNCATE"] {
            assert!(sql.contains(&format!("AFTER {event} ON \"app\".\"flags\"")), "{sql}");
        }
        assert!(
            sql.contains("DROP TRIGGER IF EXISTS \"dbqo_notify_it's\""),
            "the unkeyed one goes"
        );
        let long = notify_keys_trigger_sql("t", &"c".repeat(100), "k");
        let longest = long.split('"').skip(1).step_by(2).map(str::len).max().unwrap();
        assert!(longest <= 63, "identifiers fit PostgreSQL's 63 bytes");
    }
}
