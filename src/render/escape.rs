//! Escaping for `{{expr}}` output: the text of a YAML double-quoted scalar.
//!
//! Inside `"..."` the escaped value reads back exactly as it was. Anywhere
//! else it cannot open a new line, so it cannot add a key, an item or a
//! document; the structural check in [`super::tracking`] catches the rest.

use std::fmt::Write as _;

/// Private-use characters that delimit insert markers; escaped in values so a
/// value can never forge a marker.
pub(super) const MARKER_OPEN: char = '\u{E000}';
pub(super) const MARKER_CLOSE: char = '\u{E001}';

/// Escapes `value` for use between double quotes in YAML.
pub fn yaml_double_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            '\u{FEFF}' | MARKER_OPEN | MARKER_CLOSE => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_values_read_back_unchanged_inside_quotes() {
        let corpus = [
            "plain",
            "a\"b",
            "back\\slash",
            "line\nbreak\r\n",
            "tab\there",
            "nel\u{85}ls\u{2028}ps\u{2029}",
            "bell\u{7}nul\u{0}del\u{7f}",
            "bom\u{feff}",
            "\u{E000}0\u{E001}",
            "emoji 🚀 and ünïcödé",
        ];
        for value in corpus {
            let yaml = format!("k: \"{}\"", yaml_double_quoted(value));
            let parsed: serde_yaml::Mapping = serde_yaml::from_str(&yaml).unwrap();
            assert_eq!(parsed["k"].as_str(), Some(value), "{yaml}");
        }
    }
}
