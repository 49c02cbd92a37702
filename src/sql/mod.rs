//! SQL text handling that needs no database: splitting a multi-statement
//! query and quoting identifiers.

mod setup;
mod split;
mod trigger;

pub use setup::{check_setup, SetupRefusal};
pub use split::{opaque_parts, split_statements, Opaque, SplitError};
pub use trigger::{notify_keys_trigger_sql, notify_trigger_sql, quote_literal};

/// Quotes one identifier the way PostgreSQL's `quote_ident` does, always.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quotes a possibly schema-qualified name (`schema.table`), one part at a time.
/// Parts already in double quotes are kept as written.
pub fn quote_qualified(name: &str) -> String {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if in_quotes && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => in_quotes = !in_quotes,
            '.' if !in_quotes => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts.iter().map(|p| quote_ident(p)).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_and_qualified_names() {
        assert_eq!(quote_ident("users"), "\"users\"");
        assert_eq!(quote_ident("a\"; DROP TABLE x; --"), "\"a\"\"; DROP TABLE x; --\"");
        assert_eq!(quote_qualified("app.users"), "\"app\".\"users\"");
        assert_eq!(quote_qualified("\"my.schema\".t"), "\"my.schema\".\"t\"");
        assert_eq!(quote_qualified("\"a\"\"b\""), "\"a\"\"b\"");
    }
}
