//! What a query's setup statements (all but the last) may be: session
//! settings. Anything else could end the READ ONLY transaction (`COMMIT;
//! INSERT ...`) or run work outside the row-returning statement.
//!
//! Allowed: `SET [SESSION | LOCAL] name ...` and `SELECT set_config(...)`.
//! Refused: `SET TRANSACTION` and `SET SESSION CHARACTERISTICS` (`READ
//! WRITE` before the first query turns the transaction writable), and
//! `SET transaction_read_only` / `default_transaction_read_only` (a `SET`
//! takes no snapshot, so PostgreSQL still lets it flip the mode). A
//! `SELECT set_config('transaction_read_only', 'off', ...)` is a query and
//! PostgreSQL refuses it. The statement timeout is clamped again after the
//! setup statements ran (see `db::query`), so no setting lifts it.

/// Why a setup statement is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SetupRefusal {
    #[error("only SET and SELECT set_config(...) may come before the last statement")]
    NotASetting,
    #[error("SET TRANSACTION and SET SESSION CHARACTERISTICS cannot change the transaction the query runs in")]
    Transaction,
    #[error("the transaction's read-only mode cannot be changed by the query (set readOnly: false in the spec)")]
    ReadOnlyMode,
}

const READ_ONLY_SETTINGS: [&str; 2] = ["transaction_read_only", "default_transaction_read_only"];

/// Checks one setup statement.
pub fn check_setup(statement: &str) -> Result<(), SetupRefusal> {
    let words = words(statement, 4);
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match word(0) {
        "set" => {
            let name = match word(1) {
                "session" | "local" => word(2),
                other => other,
            };
            if name == "transaction" || (name == "characteristics" && word(1) == "session") {
                return Err(SetupRefusal::Transaction);
            }
            if READ_ONLY_SETTINGS.contains(&name) {
                return Err(SetupRefusal::ReadOnlyMode);
            }
            Ok(())
        }
        "select" if word(1) == "set_config" => Ok(()),
        _ => Err(SetupRefusal::NotASetting),
    }
}

/// The first `count` words of `statement`, lower-cased, after comments;
/// a double-quoted identifier counts as one word (unquoted, as PostgreSQL
/// compares setting names case-insensitively).
fn words(statement: &str, count: usize) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = statement.chars().peekable();
    while words.len() < count {
        let Some(&c) = chars.peek() else { break };
        if c.is_whitespace() {
            chars.next();
        } else if c == '-' && statement_rest_starts(&chars, "--") {
            while chars.next_if(|c| *c != '\n').is_some() {}
        } else if c == '/' && statement_rest_starts(&chars, "/*") {
            skip_block_comment(&mut chars);
        } else if c == '"' {
            chars.next();
            let mut word = String::new();
            while let Some(c) = chars.next() {
                if c == '"' && chars.next_if_eq(&'"').is_none() {
                    break;
                }
                word.push(c);
            }
            words.push(word.to_lowercase());
        } else if c.is_alphanumeric() || c == '_' {
            let word: String = std::iter::from_fn(|| {
                chars.next_if(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
            })
            .collect();
            words.push(word.to_lowercase());
        } else {
            // Punctuation (`=`, `(`) ends the words that matter.
            break;
        }
    }
    words
}

fn statement_rest_starts(chars: &std::iter::Peekable<std::str::Chars<'_>>, prefix: &str) -> bool {
    chars.clone().take(prefix.len()).eq(prefix.chars())
}

/// Skips a `/* ... */` comment; PostgreSQL's nest.
fn skip_block_comment(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    let mut depth = 0usize;
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('/', Some('*')) => {
                chars.next();
                depth += 1;
            }
            ('*', Some('/')) => {
                chars.next();
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_settings_are_allowed() {
        for ok in [
            "SET search_path = pg_catalog, public",
            "-- a comment; with a semicolon\n SET statement_timeout = '3s'",
            "set local work_mem to '8MB'",
            "SET SESSION \"TimeZone\" = 'UTC'",
            "SET TIME ZONE 'Europe/Berlin'",
            "/* a /* nested */ comment */ SELECT set_config('app.tenant', 'a', true)",
        ] {
            assert_eq!(check_setup(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn anything_that_could_leave_read_only_is_refused() {
        for (bad, refusal) in [
            ("COMMIT", SetupRefusal::NotASetting),
            ("INSERT INTO t VALUES (1)", SetupRefusal::NotASetting),
            ("END", SetupRefusal::NotASetting),
            ("ROLLBACK", SetupRefusal::NotASetting),
            ("DO $$ BEGIN END $$", SetupRefusal::NotASetting),
            ("CALL p()", SetupRefusal::NotASetting),
            ("SELECT pg_sleep(100)", SetupRefusal::NotASetting),
            ("RESET ALL", SetupRefusal::NotASetting),
            ("SET TRANSACTION READ WRITE", SetupRefusal::Transaction),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", SetupRefusal::Transaction),
            ("SET transaction_read_only = off", SetupRefusal::ReadOnlyMode),
            ("SET LOCAL \"Transaction_Read_Only\" TO off", SetupRefusal::ReadOnlyMode),
            ("set session default_transaction_read_only = off", SetupRefusal::ReadOnlyMode),
        ] {
            assert_eq!(check_setup(bad), Err(refusal), "{bad}");
        }
    }
}
