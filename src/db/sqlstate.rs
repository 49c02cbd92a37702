//! What of a PostgreSQL error may leave the operator. Messages of some
//! SQLSTATE classes quote the data that failed (`invalid input syntax for
//! type integer: "<value>"`, a constraint's `Key (email)=(<value>)`, a
//! `RAISE` in a user function); for those only the code and its condition
//! name are reported. DETAIL and HINT are never copied.

/// SQLSTATE classes whose messages can carry row values.
const DATA_CLASSES: &[(&str, &str)] = &[
    ("21", "cardinality_violation"),
    ("22", "data_exception"),
    ("23", "integrity_constraint_violation"),
    ("27", "triggered_data_change_violation"),
    ("2F", "sql_routine_exception"),
    ("38", "external_routine_exception"),
    ("39", "external_routine_invocation_exception"),
    ("44", "with_check_option_violation"),
    ("P0", "plpgsql_error"),
];

/// Condition names of the codes of those classes users meet most
/// (PostgreSQL's errcodes.txt); the rest are named by their class.
const CONDITIONS: &[(&str, &str)] = &[
    ("21000", "cardinality_violation"),
    ("22001", "string_data_right_truncation"),
    ("22003", "numeric_value_out_of_range"),
    ("22004", "null_value_not_allowed"),
    ("22007", "invalid_datetime_format"),
    ("22008", "datetime_field_overflow"),
    ("22012", "division_by_zero"),
    ("22021", "character_not_in_repertoire"),
    ("22023", "invalid_parameter_value"),
    ("22025", "invalid_escape_sequence"),
    ("2202E", "array_subscript_error"),
    ("22P02", "invalid_text_representation"),
    ("22P03", "invalid_binary_representation"),
    ("22P05", "untranslatable_character"),
    ("22030", "duplicate_json_object_key_value"),
    ("22032", "invalid_json_text"),
    ("23000", "integrity_constraint_violation"),
    ("23001", "restrict_violation"),
    ("23502", "not_null_violation"),
    ("23503", "foreign_key_violation"),
    ("23505", "unique_violation"),
    ("23514", "check_violation"),
    ("23P01", "exclusion_violation"),
    ("P0001", "raise_exception"),
    ("P0002", "no_data_found"),
    ("P0003", "too_many_rows"),
    ("P0004", "assert_failure"),
];

/// The condition name of a data-dependent SQLSTATE, `None` for codes whose
/// messages name only objects of the query (tables, columns, functions).
pub fn data_condition(code: &str) -> Option<&'static str> {
    if let Some((_, name)) = CONDITIONS.iter().find(|(c, _)| *c == code) {
        return Some(name);
    }
    let class = code.get(..2)?;
    DATA_CLASSES.iter().find(|(c, _)| *c == class).map(|(_, name)| *name)
}

/// A server error as one line that may go into a condition, an Event or a
/// log: the message for errors about the query's objects, the condition
/// name for errors about data.
pub fn server_error_line(code: &str, message: &str) -> String {
    match data_condition(code) {
        Some(name) => {
            format!("{name} (SQLSTATE {code}; the message is not shown, it can quote row values)")
        }
        None => format!("{message} (SQLSTATE {code})"),
    }
}

/// A server's refusal of a connection as one line: the condition only.
/// Its message quotes what the connection asked for (`password
/// authentication failed for user "<user>"`, `database "<name>" does not
/// exist`, a pg_hba line naming host, user and database), and those came
/// from a Secret.
pub fn connect_error_line(code: &str) -> String {
    let condition = match code {
        "28P01" => "invalid_password: password authentication failed",
        "28000" => "invalid_authorization_specification: the server does not let this user in",
        "3D000" => "invalid_catalog_name: the database does not exist",
        "53300" => "too_many_connections",
        "57P03" => "cannot_connect_now: the server is starting up or shutting down",
        "42501" => "insufficient_privilege",
        _ => "the server refused the connection",
    };
    format!("{condition} (SQLSTATE {code}; the message is not shown, it can quote the user or database name)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_are_named_not_quoted() {
        let line = server_error_line("22P02", "invalid input syntax for type integer: \"m4rker\"");
        assert_eq!(
            line,
            "invalid_text_representation (SQLSTATE 22P02; the message is not shown, it can quote row values)"
        );
        assert!(server_error_line("23505", "duplicate key m4rker").starts_with("unique_violation"));
        assert!(server_error_line("22P99", "m4rker").starts_with("data_exception"));
        assert!(server_error_line("P0001", "m4rker").starts_with("raise_exception"));
        for code in ["22P02", "23505", "22P99", "P0001", "2F005", "44000"] {
            assert!(!server_error_line(code, "m4rker").contains("m4rker"), "{code}");
        }
    }

    #[test]
    fn errors_about_the_query_keep_their_message() {
        assert_eq!(
            server_error_line("42P01", "relation \"missing\" does not exist"),
            "relation \"missing\" does not exist (SQLSTATE 42P01)"
        );
    }
}
