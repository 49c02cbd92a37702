//! Template helpers with Sprig-like names. Arguments read subject first
//! (`{{default Row.tier "free"}}`, `{{replace Row.name "_" "-"}}`), because
//! Handlebars has no pipes. None reads the environment, the network or
//! randomness; `now` is the start of the pass, fixed for all rows.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::escape::yaml_double_quoted;
use super::limits;
use super::tracking::{
    emit_fragment, note_structured, now as tracking_now, structured_value, Fragment,
};

type HelperFn = fn(&Helper<'_>) -> Result<Json, RenderError>;
type FragmentFn = fn(&Helper<'_>) -> Result<Fragment, RenderError>;

/// A helper computing a value from its parameters; its top-level output is
/// escaped like any `{{expr}}`.
struct ValueHelper(HelperFn);

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        (self.0)(h).map(ScopedJson::Derived)
    }
}

/// A helper producing YAML text. As a subexpression it yields the text; at top
/// level the text is written unescaped but tracked as a fragment whose
/// meaning is checked after parsing.
struct YamlHelper(FragmentFn);

impl HelperDef for YamlHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        (self.0)(h).map(|f| ScopedJson::Derived(Json::String(f.text)))
    }

    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let fragment = (self.0)(h)?;
        if rc.is_disable_escape() {
            out.write(&fragment.text)?;
        } else {
            out.write(&emit_fragment(fragment))?;
        }
        Ok(())
    }
}

/// Swallows `{{log ...}}`: row values must not reach the operator's logs.
struct SilentLog;

impl HelperDef for SilentLog {
    fn call<'reg: 'rc, 'rc>(
        &self,
        _: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        _: &mut dyn Output,
    ) -> HelperResult {
        Ok(())
    }
}

/// Registers every helper on `registry`.
/// Where helper output goes: into a YAML manifest (YAML-producing helpers
/// are tracked fragments) or into SQL (every output is a bound parameter).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum HelperMode {
    Yaml,
    Sql,
}

/// A YAML-producing helper used in SQL: its text is just a value, bound like any other.
struct TextHelper(FragmentFn);

impl HelperDef for TextHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        (self.0)(h).map(|f| ScopedJson::Derived(Json::String(f.text)))
    }
}

/// Registers every helper; returns their names (handlebars does not tell
/// which names are helpers, and a plain `{{name}}` may be either).
pub(crate) fn register(registry: &mut Handlebars<'_>, mode: HelperMode) -> Vec<&'static str> {
    let mut names = vec!["now", "log"];
    let value_helpers: &[(&str, HelperFn)] = &[
        ("lower", |h| Ok(Json::String(text(h, 0)?.to_lowercase()))),
        ("upper", |h| Ok(Json::String(text(h, 0)?.to_uppercase()))),
        ("title", |h| Ok(Json::String(title_case(&text(h, 0)?)))),
        ("trim", |h| Ok(Json::String(text(h, 0)?.trim().to_owned()))),
        ("trimPrefix", |h| {
            let s = text(h, 0)?;
            Ok(Json::String(s.strip_prefix(text(h, 1)?.as_str()).unwrap_or(&s).to_owned()))
        }),
        ("trimSuffix", |h| {
            let s = text(h, 0)?;
            Ok(Json::String(s.strip_suffix(text(h, 1)?.as_str()).unwrap_or(&s).to_owned()))
        }),
        ("replace", |h| {
            let (s, from, to) = (text(h, 0)?, text(h, 1)?, text(h, 2)?);
            // Every occurrence of `from` can become a long `to`: the size is
            // known before anything is made.
            match limits::replaced_len(&s, &from, &to) {
                Some(len) if len <= limits::MAX_RENDERED_BYTES => {
                    Ok(Json::String(s.replace(&from, &to)))
                }
                _ => Err(limits::refuse_argument("replace")),
            }
        }),
        ("trunc", |h| {
            let (s, n) = text_and_count(h)?;
            Ok(Json::String(truncate(&s, n)))
        }),
        ("default", |h| {
            let value = param(h, 0);
            Ok(if is_empty(value) { param(h, 1).clone() } else { value.clone() })
        }),
        ("coalesce", |h| {
            Ok(h.params()
                .iter()
                .map(|p| p.value())
                .find(|v| !is_empty(v))
                .cloned()
                .unwrap_or(Json::Null))
        }),
        ("fromJson", |h| {
            serde_json::from_str(&text(h, 0)?)
                .map_err(|e| failure(h, format!("input is not JSON: {e}")))
        }),
        ("b64enc", |h| {
            Ok(Json::String(base64::engine::general_purpose::STANDARD.encode(text(h, 0)?)))
        }),
        ("b64dec", |h| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text(h, 0)?.trim())
                .map_err(|e| failure(h, format!("input is not base64: {e}")))?;
            String::from_utf8(bytes)
                .map(Json::String)
                .map_err(|_| failure(h, "decoded bytes are not UTF-8".into()))
        }),
        ("sha256sum", |h| {
            let digest = Sha256::digest(text(h, 0)?.as_bytes());
            Ok(Json::String(digest.iter().map(|b| format!("{b:02x}")).collect()))
        }),
        ("join", |h| {
            let sep = text(h, 1)?;
            match param(h, 0) {
                Json::Array(items) => {
                    Ok(Json::String(items.iter().map(to_text).collect::<Vec<_>>().join(&sep)))
                }
                Json::Null => Ok(Json::String(String::new())),
                other => Ok(Json::String(to_text(other))),
            }
        }),
        ("split", |h| {
            let sep = text(h, 1)?;
            if sep.is_empty() {
                return Err(failure(h, "separator is empty".into()));
            }
            Ok(Json::Array(
                text(h, 0)?.split(sep.as_str()).map(|p| Json::String(p.to_owned())).collect(),
            ))
        }),
        ("contains", |h| Ok(Json::Bool(text(h, 0)?.contains(text(h, 1)?.as_str())))),
        ("hasPrefix", |h| Ok(Json::Bool(text(h, 0)?.starts_with(text(h, 1)?.as_str())))),
        ("hasSuffix", |h| Ok(Json::Bool(text(h, 0)?.ends_with(text(h, 1)?.as_str())))),
        ("date", |h| {
            let input = text(h, 0)?;
            let format = text(h, 1)?;
            let t = DateTime::parse_from_rfc3339(&input)
                .map_err(|_| failure(h, "first argument is not an RFC 3339 timestamp".into()))?;
            let mut out = String::new();
            use std::fmt::Write as _;
            write!(out, "{}", t.with_timezone(&Utc).format(&format))
                .map_err(|_| failure(h, "invalid date format".into()))?;
            Ok(Json::String(out))
        }),
        ("add", |h| arithmetic(h, i64::checked_add, |a, b| a + b)),
        ("sub", |h| arithmetic(h, i64::checked_sub, |a, b| a - b)),
        ("int", |h| {
            let v = param(h, 0);
            let n = match v {
                Json::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f.trunc() as i64)),
                Json::String(s) => s
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .or_else(|| s.trim().parse::<f64>().ok().map(|f| f.trunc() as i64)),
                Json::Bool(b) => Some(i64::from(*b)),
                Json::Null => Some(0),
                _ => None,
            };
            n.map(Json::from).ok_or_else(|| failure(h, "argument is not a number".into()))
        }),
        ("float", |h| {
            let v = param(h, 0);
            let f = match v {
                Json::Number(n) => n.as_f64(),
                Json::String(s) => s.trim().parse::<f64>().ok(),
                Json::Null => Some(0.0),
                _ => None,
            };
            f.and_then(serde_json::Number::from_f64)
                .map(Json::Number)
                .ok_or_else(|| failure(h, "argument is not a finite number".into()))
        }),
        ("dnsLabel", |h| {
            let label = dns_label(&text(h, 0)?);
            if label.is_empty() {
                return Err(failure(h, "nothing of the input is usable in a DNS label".into()));
            }
            Ok(Json::String(label))
        }),
    ];
    for (name, f) in value_helpers {
        names.push(name);
        registry.register_helper(name, Box::new(ValueHelper(*f)));
    }

    let yaml_helpers: &[(&str, FragmentFn)] = &[
        ("quote", |h| {
            let s = text(h, 0)?;
            let text = format!("\"{}\"", yaml_double_quoted(&s));
            Ok(Fragment::new(text.clone(), Json::String(s), text))
        }),
        ("squote", |h| {
            let s = text(h, 0)?;
            // Single-quoted YAML cannot hold line breaks faithfully; fail rather than fold them.
            if s.contains(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}']) {
                return Err(failure(h, "value holds a line break; use quote instead".into()));
            }
            let text = format!("'{}'", s.replace('\'', "''"));
            Ok(Fragment::new(text.clone(), Json::String(s), text))
        }),
        ("toJson", |h| {
            let value = param(h, 0).clone();
            let text = yaml_safe_json(
                &serde_json::to_string(&value).map_err(|e| failure(h, e.to_string()))?,
            );
            note_structured(&text, &value);
            Ok(Fragment::new(text.clone(), value, text))
        }),
        ("toYaml", |h| {
            let value = param(h, 0).clone();
            let text = serde_yaml::to_string(&value).map_err(|e| failure(h, e.to_string()))?;
            let text = text.trim_end_matches('\n').to_owned();
            note_structured(&text, &value);
            Ok(Fragment::new(text.clone(), value, text))
        }),
        ("indent", |h| indent_helper(h, false)),
        ("nindent", |h| indent_helper(h, true)),
    ];
    for (name, f) in yaml_helpers {
        names.push(name);
        match mode {
            HelperMode::Yaml => registry.register_helper(name, Box::new(YamlHelper(*f))),
            HelperMode::Sql => registry.register_helper(name, Box::new(TextHelper(*f))),
        }
    }

    // The pass's time while a manifest renders; the current time in SQL.
    registry.register_helper(
        "now",
        Box::new(ValueHelper(|_| {
            let pass = tracking_now();
            Ok(Json::String(if pass.is_empty() {
                Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            } else {
                pass
            }))
        })),
    );
    registry.register_helper("log", Box::new(SilentLog));
    names
}

fn indent_helper(h: &Helper<'_>, leading_newline: bool) -> Result<Fragment, RenderError> {
    let (s, n) = text_and_count(h)?;
    let width = usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX);
    let lines = s.split('\n').count();
    if width > limits::MAX_INDENT || s.len() + lines * width > limits::MAX_RENDERED_BYTES {
        return Err(limits::refuse_argument(if leading_newline { "nindent" } else { "indent" }));
    }
    let pad = " ".repeat(width);
    let indented = s
        .split('\n')
        .map(|line| if line.is_empty() { String::new() } else { format!("{pad}{line}") })
        .collect::<Vec<_>>()
        .join("\n");
    let text = if leading_newline { format!("\n{indented}") } else { indented };
    let intended = structured_value(&s).unwrap_or(Json::String(s.clone()));
    Ok(Fragment::new(text, intended, s))
}

/// JSON is YAML except for characters YAML does not allow raw or reads as
/// line breaks (DEL, C1 controls, NEL, LS, PS, BOM). serde_json leaves them
/// raw; they can only occur inside strings, where `\uXXXX` means the same.
fn yaml_safe_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}') {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn failure(h: &Helper<'_>, message: String) -> RenderError {
    RenderErrorReason::Other(format!("helper {}: {message}", h.name())).into()
}

/// A parameter's value; a missing parameter reads as null, so helpers can
/// supply defaults even in strict mode.
fn param<'a>(h: &'a Helper<'_>, index: usize) -> &'a Json {
    static NULL: Json = Json::Null;
    h.param(index).map_or(&NULL, |p| p.value())
}

fn text(h: &Helper<'_>, index: usize) -> Result<String, RenderError> {
    Ok(to_text(param(h, index)))
}

/// How a value reads as text: strings as they are, null as nothing, the rest as JSON.
pub(super) fn to_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

/// `trunc`, `indent` and `nindent` take a string and a count in either order.
fn text_and_count(h: &Helper<'_>) -> Result<(String, i64), RenderError> {
    match (param(h, 0), param(h, 1)) {
        (Json::Number(n), other) | (other, Json::Number(n)) => {
            let n = n.as_i64().ok_or_else(|| failure(h, "count is not an integer".into()))?;
            Ok((to_text(other), n))
        }
        _ => Err(failure(h, "expects a string and a number".into())),
    }
}

fn truncate(s: &str, n: i64) -> String {
    let count = s.chars().count();
    let keep = n.unsigned_abs() as usize;
    if keep >= count {
        s.to_owned()
    } else if n >= 0 {
        s.chars().take(keep).collect()
    } else {
        s.chars().skip(count - keep).collect()
    }
}

/// Empty for `default`/`coalesce`: missing, null or "". Zero and false are
/// real values (`replicas: 0` must stay 0).
fn is_empty(v: &Json) -> bool {
    matches!(v, Json::Null) || matches!(v, Json::String(s) if s.is_empty())
}

fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at_word_start = true;
    for c in s.chars() {
        if at_word_start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        at_word_start = c.is_whitespace();
    }
    out
}

fn arithmetic(
    h: &Helper<'_>,
    int_op: fn(i64, i64) -> Option<i64>,
    float_op: fn(f64, f64) -> f64,
) -> Result<Json, RenderError> {
    let number = |i: usize| -> Result<serde_json::Number, RenderError> {
        match param(h, i) {
            Json::Number(n) => Ok(n.clone()),
            Json::String(s) => s
                .trim()
                .parse::<serde_json::Number>()
                .map_err(|_| failure(h, format!("argument {} is not a number", i + 1))),
            _ => Err(failure(h, format!("argument {} is not a number", i + 1))),
        }
    };
    let (a, b) = (number(0)?, number(1)?);
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => {
            int_op(x, y).map(Json::from).ok_or_else(|| failure(h, "integer overflow".into()))
        }
        _ => {
            let result = float_op(a.as_f64().unwrap_or(f64::NAN), b.as_f64().unwrap_or(f64::NAN));
            serde_json::Number::from_f64(result)
                .map(Json::Number)
                .ok_or_else(|| failure(h, "result is not a finite number".into()))
        }
    }
}

/// Lower-case RFC 1123 label: runs of other characters become one `-`,
/// no leading or trailing `-`, at most 63 characters.
pub fn dns_label(s: &str) -> String {
    let mut out = String::new();
    let mut pending_dash = false;
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(c);
        } else {
            pending_dash = true;
        }
    }
    out.truncate(63);
    out.trim_end_matches('-').to_owned()
}
