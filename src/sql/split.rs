//! Splits `SET ...; SELECT ...` into statements at the semicolons PostgreSQL
//! would see, i.e. not those inside quotes, dollar quotes or comments.

/// The query text cannot be split because a quote or comment never ends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("unterminated {what} starting at byte {offset}")]
    Unterminated { what: &'static str, offset: usize },
    #[error("the query holds no statement")]
    Empty,
}

/// Text that is not SQL code: a comment, a string literal, a quoted
/// identifier or a dollar-quoted string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opaque {
    pub what: &'static str,
    pub range: std::ops::Range<usize>,
}

impl Opaque {
    fn is_comment(&self) -> bool {
        self.what.ends_with("comment")
    }
}

/// The opaque part of `sql` that starts at byte `i`, if one does.
fn opaque_at(sql: &str, i: usize) -> Result<Option<Opaque>, SplitError> {
    let bytes = sql.as_bytes();
    let next = bytes.get(i + 1).copied();
    let (what, end) = match bytes[i] {
        b'-' if next == Some(b'-') => (
            "line comment",
            bytes[i..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |p| i + p + 1),
        ),
        b'/' if next == Some(b'*') => ("block comment", skip_block_comment(bytes, i)?),
        b'\'' => {
            let escapes = is_escape_string_prefix(bytes, i);
            let what = "string literal";
            (what, skip_quoted(bytes, i, b'\'', escapes, what)?)
        }
        b'"' => {
            let what = "quoted identifier";
            (what, skip_quoted(bytes, i, b'"', false, what)?)
        }
        b'$' => match dollar_quote_end(sql, i)? {
            Some(end) => ("dollar-quoted string", end),
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    Ok(Some(Opaque { what, range: i..end }))
}

/// Every comment, literal, quoted identifier and dollar-quoted string of
/// `sql`, in order.
pub fn opaque_parts(sql: &str) -> Result<Vec<Opaque>, SplitError> {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sql.len() {
        match opaque_at(sql, i)? {
            Some(part) => {
                i = part.range.end;
                parts.push(part);
            }
            None => i += 1,
        }
    }
    Ok(parts)
}

/// Returns the statements of `sql` in order, trimmed, without the ones that
/// hold only whitespace and comments.
pub fn split_statements(sql: &str) -> Result<Vec<&str>, SplitError> {
    let bytes = sql.as_bytes();
    let mut statements = Vec::new();
    let mut start = 0;
    let mut has_code = false;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(part) = opaque_at(sql, i)? {
            has_code |= !part.is_comment();
            i = part.range.end;
            continue;
        }
        match bytes[i] {
            b';' => {
                if has_code {
                    statements.push(sql[start..i].trim());
                }
                start = i + 1;
                has_code = false;
            }
            c if !c.is_ascii_whitespace() => has_code = true,
            _ => {}
        }
        i += 1;
    }
    if has_code {
        statements.push(sql[start..].trim());
    }
    if statements.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(statements)
}

fn skip_block_comment(bytes: &[u8], open: usize) -> Result<usize, SplitError> {
    // PostgreSQL block comments nest.
    let mut depth = 0usize;
    let mut i = open;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => i += 1,
        }
    }
    Err(SplitError::Unterminated { what: "block comment", offset: open })
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// `E'...'` strings treat backslash as an escape; a plain `e` ending a longer
/// identifier (`type'...'` is not valid SQL anyway) does not count.
fn is_escape_string_prefix(bytes: &[u8], quote: usize) -> bool {
    quote >= 1
        && matches!(bytes[quote - 1], b'e' | b'E')
        && (quote < 2 || !is_ident_byte(bytes[quote - 2]))
}

fn skip_quoted(
    bytes: &[u8],
    open: usize,
    quote: u8,
    backslash_escapes: bool,
    what: &'static str,
) -> Result<usize, SplitError> {
    let mut i = open + 1;
    while i < bytes.len() {
        let b = bytes[i];
        if backslash_escapes && b == b'\\' {
            i += 2;
            continue;
        }
        if b == quote {
            // A doubled quote is an escaped quote, not the end.
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Ok(i + 1);
        }
        i += 1;
    }
    Err(SplitError::Unterminated { what, offset: open })
}

/// If a dollar quote opens at `open`, returns the index just past its end.
/// `$1` (a parameter) and `a$b` (an identifier) are not dollar quotes.
fn dollar_quote_end(sql: &str, open: usize) -> Result<Option<usize>, SplitError> {
    let bytes = sql.as_bytes();
    if open > 0 && is_ident_byte(bytes[open - 1]) {
        return Ok(None);
    }
    let tag_start = open + 1;
    let mut j = tag_start;
    while j < bytes.len() && bytes[j] != b'$' {
        let b = bytes[j];
        let valid = if j == tag_start {
            b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
        } else {
            b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
        };
        if !valid {
            return Ok(None);
        }
        j += 1;
    }
    if j >= bytes.len() {
        return Ok(None);
    }
    let delimiter = &sql[open..=j];
    let body_start = j + 1;
    match sql[body_start..].find(delimiter) {
        Some(p) => Ok(Some(body_start + p + delimiter.len())),
        None => Err(SplitError::Unterminated { what: "dollar-quoted string", offset: open }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_where_postgres_would() {
        let cases: &[(&str, &[&str])] = &[
            ("SELECT 1", &["SELECT 1"]),
            ("SELECT 1;", &["SELECT 1"]),
            ("SET a = 1; SELECT 2", &["SET a = 1", "SELECT 2"]),
            ("SELECT ';' AS x; SELECT 2", &["SELECT ';' AS x", "SELECT 2"]),
            ("SELECT 'it''s;' ; SELECT 2", &["SELECT 'it''s;'", "SELECT 2"]),
            (r"SELECT E'a\';b'; SELECT 2", &[r"SELECT E'a\';b'", "SELECT 2"]),
            ("SELECT \"a;b\" FROM t; SELECT 2", &["SELECT \"a;b\" FROM t", "SELECT 2"]),
            ("SELECT $$a;b$$; SELECT 2", &["SELECT $$a;b$$", "SELECT 2"]),
            ("SELECT $fn$ $$;$$ $fn$; SELECT 2", &["SELECT $fn$ $$;$$ $fn$", "SELECT 2"]),
            ("SELECT $1, a$b; SELECT 2", &["SELECT $1, a$b", "SELECT 2"]),
            ("SELECT 1 -- no; split\n; SELECT 2", &["SELECT 1 -- no; split", "SELECT 2"]),
            (
                "SELECT /* a; /* nested; */ b; */ 1; SELECT 2",
                &["SELECT /* a; /* nested; */ b; */ 1", "SELECT 2"],
            ),
            ("SELECT 1; -- trailing comment; with semicolon", &["SELECT 1"]),
            ("SELECT 1; /* trailing */ ;;", &["SELECT 1"]),
            (
                "-- it's a comment with a quote\nSELECT 1",
                &["-- it's a comment with a quote\nSELECT 1"],
            ),
        ];
        for (sql, expected) in cases {
            assert_eq!(split_statements(sql).unwrap(), *expected, "splitting {sql:?}");
        }
    }

    #[test]
    fn refuses_unterminated_quotes_and_comments() {
        for sql in
            ["SELECT 'open", "SELECT \"open", "SELECT $$open", "SELECT /* open", "SELECT $a$ x $b$"]
        {
            assert!(
                matches!(split_statements(sql), Err(SplitError::Unterminated { .. })),
                "{sql:?}"
            );
        }
    }

    #[test]
    fn a_query_of_only_comments_is_empty() {
        assert_eq!(split_statements("  -- nothing\n /* here */ ; "), Err(SplitError::Empty));
    }
}
