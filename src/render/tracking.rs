//! Proof that row values cannot change a manifest's structure.
//!
//! While a row renders, every dynamic insert (`{{expr}}` output and the output
//! of YAML-producing helpers) is recorded and a marker is written in its
//! place. The marked text is parsed as YAML: that is the structure the
//! template author wrote. Then the markers are replaced by the real inserts
//! and the text is parsed again. The two trees must have the same shape, the
//! static parts must be equal, and at each marker the real document must hold
//! exactly the value that was inserted. Anything else is an error, so a
//! hostile value either lands as plain data or fails the row.

use std::cell::RefCell;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use super::escape::{yaml_double_quoted, MARKER_CLOSE, MARKER_OPEN};

/// One dynamic piece of a rendered row.
#[derive(Debug, Clone)]
pub(super) enum Insert {
    /// `{{expr}}` output; written escaped, intended to read back as this string.
    Value(String),
    /// YAML produced by a helper (`toYaml`, `toJson`, `quote`, `nindent`, ...).
    Fragment(Fragment),
}

#[derive(Debug, Clone)]
pub(super) struct Fragment {
    /// The YAML text the helper produced.
    pub text: String,
    /// The value the text stands for when it forms a whole node.
    pub intended: Json,
    /// The text as it reads inside a larger scalar (indentation removed).
    pub inline: String,
    /// Leading and trailing line structure kept around the marker (see [`emit_fragment`]).
    pub kept: (usize, usize),
}

impl Fragment {
    pub fn new(text: String, intended: Json, inline: String) -> Self {
        Self { text, intended, inline, kept: (0, 0) }
    }

    /// What replaces the marker: the text minus what the marked text kept around it.
    fn core(&self) -> &str {
        &self.text[self.kept.0..self.text.len() - self.kept.1]
    }
}

#[derive(Default)]
struct Recording {
    now: String,
    inserts: Vec<Insert>,
    /// Outputs of `toYaml`/`toJson` in this render, so `nindent` knows the
    /// value behind a YAML string it is given.
    structured: Vec<(String, Json)>,
}

thread_local! {
    static RECORDING: RefCell<Option<Recording>> = const { RefCell::new(None) };
}

/// Runs `render` with recording on; returns its output and the inserts.
/// `now` is what the `now` helper prints during this render.
pub(super) fn record<T, E>(
    now: &str,
    render: impl FnOnce() -> Result<T, E>,
) -> (Result<T, E>, Vec<Insert>) {
    RECORDING.with(|r| {
        *r.borrow_mut() = Some(Recording { now: now.to_owned(), ..Recording::default() })
    });
    let result = render();
    let recording = RECORDING.with(|r| r.borrow_mut().take()).unwrap_or_default();
    (result, recording.inserts)
}

fn marker(index: usize) -> String {
    format!("{MARKER_OPEN}{index}{MARKER_CLOSE}")
}

/// Escape function of the registry: records the value when recording,
/// escapes it otherwise.
pub(super) fn escape_value(value: &str) -> String {
    RECORDING.with(|r| match r.borrow_mut().as_mut() {
        Some(rec) => {
            // Over the render's bound, nothing more is kept (the render fails).
            let kept = if super::limits::take_bytes(value.len()) {
                value.to_owned()
            } else {
                String::new()
            };
            rec.inserts.push(Insert::Value(kept));
            marker(rec.inserts.len() - 1)
        }
        None => yaml_double_quoted(value),
    })
}

/// Output of a YAML-producing helper. The marker keeps the fragment's leading
/// line break and indentation and its trailing line break, so the marked text
/// has the line structure the template author intended.
pub(super) fn emit_fragment(mut fragment: Fragment) -> String {
    RECORDING.with(|r| match r.borrow_mut().as_mut() {
        Some(rec) => {
            if !super::limits::take_bytes(fragment.text.len() + fragment.inline.len()) {
                fragment = Fragment::new(String::new(), Json::Null, String::new());
            }
            let text = &fragment.text;
            let lead_len = text.len() - text.trim_start_matches([' ', '\n']).len();
            let lead = text[..lead_len].to_owned();
            let trail = if text.len() > lead_len && text.ends_with('\n') { "\n" } else { "" };
            fragment.kept = (lead_len, trail.len());
            rec.inserts.push(Insert::Fragment(fragment));
            format!("{lead}{}{trail}", marker(rec.inserts.len() - 1))
        }
        None => fragment.text,
    })
}

/// The pass time the `now` helper prints.
pub(super) fn now() -> String {
    RECORDING.with(|r| r.borrow().as_ref().map(|rec| rec.now.clone()).unwrap_or_default())
}

/// Remembers that `yaml` is the serialisation of `value` (see [`Recording::structured`]).
pub(super) fn note_structured(yaml: &str, value: &Json) {
    RECORDING.with(|r| {
        if let Some(rec) = r.borrow_mut().as_mut() {
            rec.structured.push((yaml.to_owned(), value.clone()));
        }
    });
}

/// The value behind `yaml` if a structured helper produced it in this render.
pub(super) fn structured_value(yaml: &str) -> Option<Json> {
    RECORDING.with(|r| {
        r.borrow().as_ref().and_then(|rec| {
            rec.structured.iter().rev().find(|(text, _)| text == yaml).map(|(_, v)| v.clone())
        })
    })
}

/// Replaces every marker in `text`, using `piece` for each insert.
fn substitute(text: &str, inserts: &[Insert], piece: impl Fn(&Insert) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(MARKER_OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + MARKER_OPEN.len_utf8()..];
        let parsed = after.find(MARKER_CLOSE).and_then(|end| {
            let index: usize = after[..end].parse().ok()?;
            Some((inserts.get(index)?, end))
        });
        match parsed {
            Some((insert, end)) => {
                out.push_str(&piece(insert));
                rest = &after[end + MARKER_CLOSE.len_utf8()..];
            }
            None => {
                out.push(MARKER_OPEN);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The text that is actually parsed: markers replaced by escaped values and fragments.
pub(super) fn materialize(marked: &str, inserts: &[Insert]) -> String {
    substitute(marked, inserts, |insert| match insert {
        Insert::Value(v) => yaml_double_quoted(v),
        Insert::Fragment(f) => f.core().to_owned(),
    })
}

/// Where the real document departs from the template's structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// Dotted path in the document (`metadata.labels.team`, `spec.ports[0]`).
    pub path: String,
    pub problem: &'static str,
}

/// Checks one real document against its marked twin.
pub(super) fn check(marked: &Yaml, real: &Yaml, inserts: &[Insert]) -> Result<(), Divergence> {
    let mut path = Vec::new();
    check_node(marked, real, inserts, &mut path)
}

fn has_marker(s: &str) -> bool {
    s.contains(MARKER_OPEN)
}

fn whole_marker<'a>(s: &str, inserts: &'a [Insert]) -> Option<&'a Insert> {
    let inner = s.strip_prefix(MARKER_OPEN)?.strip_suffix(MARKER_CLOSE)?;
    inserts.get(inner.parse::<usize>().ok()?)
}

fn diverge(path: &[String], problem: &'static str) -> Divergence {
    Divergence { path: if path.is_empty() { "(document)".into() } else { path.join("") }, problem }
}

fn check_node(
    marked: &Yaml,
    real: &Yaml,
    inserts: &[Insert],
    path: &mut Vec<String>,
) -> Result<(), Divergence> {
    match marked {
        Yaml::String(s) if has_marker(s) => check_inserted_scalar(s, real, inserts, path),
        Yaml::Mapping(expected) => {
            let Yaml::Mapping(actual) = real else {
                return Err(diverge(path, "a value replaced a mapping"));
            };
            if expected.len() != actual.len() {
                return Err(diverge(path, "a value added or removed a key"));
            }
            for ((ek, ev), (ak, av)) in expected.iter().zip(actual.iter()) {
                check_node(ek, ak, inserts, path)
                    .map_err(|_| diverge(path, "a value changed a key"))?;
                let segment = match ak {
                    Yaml::String(k) if path.is_empty() => k.clone(),
                    Yaml::String(k) => format!(".{k}"),
                    _ => ".?".into(),
                };
                path.push(segment);
                check_node(ev, av, inserts, path)?;
                path.pop();
            }
            Ok(())
        }
        Yaml::Sequence(expected) => {
            let Yaml::Sequence(actual) = real else {
                return Err(diverge(path, "a value replaced a list"));
            };
            if expected.len() != actual.len() {
                return Err(diverge(path, "a value added or removed a list item"));
            }
            for (i, (e, a)) in expected.iter().zip(actual).enumerate() {
                path.push(format!("[{i}]"));
                check_node(e, a, inserts, path)?;
                path.pop();
            }
            Ok(())
        }
        Yaml::Tagged(expected) => match real {
            Yaml::Tagged(actual) if actual.tag == expected.tag => {
                check_node(&expected.value, &actual.value, inserts, path)
            }
            _ => Err(diverge(path, "a value changed a YAML tag")),
        },
        _ if marked == real => Ok(()),
        _ => Err(diverge(path, "a value changed the template's text")),
    }
}

fn check_inserted_scalar(
    marked: &str,
    real: &Yaml,
    inserts: &[Insert],
    path: &[String],
) -> Result<(), Divergence> {
    if let Some(Insert::Fragment(fragment)) = whole_marker(marked, inserts) {
        let actual = serde_json::to_value(real)
            .map_err(|_| diverge(path, "a helper produced YAML with non-string keys"))?;
        return if same_json(&actual, &fragment.intended) {
            Ok(())
        } else {
            Err(diverge(path, "a helper's output does not read back as the value it was given"))
        };
    }
    let expected = substitute(marked, inserts, |insert| match insert {
        Insert::Value(v) => v.clone(),
        Insert::Fragment(f) => f.inline.clone(),
    });
    let matches = match real {
        Yaml::String(actual) => *actual == expected,
        Yaml::Null => matches!(expected.as_str(), "" | "~" | "null" | "Null" | "NULL"),
        Yaml::Bool(b) => expected.eq_ignore_ascii_case(if *b { "true" } else { "false" }),
        Yaml::Number(_) => plain_number_reads_as(&expected, real),
        _ => false,
    };
    if matches {
        Ok(())
    } else {
        Err(diverge(
            path,
            "an inserted value does not read back as itself (quote the expression: \"{{...}}\")",
        ))
    }
}

/// A plain scalar that YAML read as a number must be nothing but that number:
/// no comment, no second line, no trailing text.
fn plain_number_reads_as(text: &str, real: &Yaml) -> bool {
    let simple = !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-' | '_'));
    // .inf and .nan have no JSON form and would silently become null.
    let finite = real.as_f64().is_some_and(f64::is_finite);
    simple && finite && serde_yaml::from_str::<Yaml>(text).ok().as_ref() == Some(real)
}

/// JSON equality where 3 and 3.0 are the same number.
fn same_json(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}
