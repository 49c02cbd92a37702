//! `credentialsSecretTemplate`: keys of the credentials Secret shaped for
//! the application (`DATABASE_URL`, `DB_HOST`, seed 003's `POSTGRES_URL`),
//! each a Handlebars template over the credential fields. Written by the
//! `Database`'s author and rendered by the process every tenant shares, so
//! the count of keys, each template's size and each render are bounded (the
//! render bounds of DBQR templates), and a failing render says which key and
//! where, never a value (the password is one of them).

use std::collections::BTreeMap;

use handlebars::{Handlebars, RenderErrorReason};
use serde_json::Value as Json;

use crate::render::{helpers, limits, values};

/// Every key the operator writes itself into a credentials Secret (a
/// template may not replace them).
pub const OPERATOR_KEYS: &[&str] =
    &["host", "hostname", "port", "dbname", "username", "password", "sslmode", "uri", "ca.crt"];
/// Keys a template may add.
pub const MAX_KEYS: usize = 32;
/// Bytes of one key's template.
pub const MAX_TEMPLATE_BYTES: usize = 4096;

/// Why the templates cannot be used. Messages name keys and positions only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretTemplateError {
    #[error("spec.credentialsSecretTemplate has {0} keys; at most {MAX_KEYS} are allowed")]
    TooManyKeys(usize),
    #[error("spec.credentialsSecretTemplate key {0:?} is not a Secret key (letters, digits, - _ . only, at most 253)")]
    BadKey(String),
    #[error("spec.credentialsSecretTemplate key {0:?} is written by the operator and cannot be replaced")]
    Reserved(String),
    #[error("spec.credentialsSecretTemplate key {0:?} is over {MAX_TEMPLATE_BYTES} bytes")]
    TooLarge(String),
    #[error("spec.credentialsSecretTemplate key {key:?}: {problem}")]
    Invalid { key: String, problem: String },
    #[error("spec.credentialsSecretTemplate key {key:?} does not render: {problem}")]
    Render { key: String, problem: String },
}

impl SecretTemplateError {
    pub fn reason(&self) -> &'static str {
        crate::reason::INVALID_SPEC
    }
}

/// Compiled templates, one per key.
pub struct SecretTemplate {
    registry: Handlebars<'static>,
    keys: Vec<String>,
}

impl SecretTemplate {
    /// Checks and compiles `templates`; `reserved` are the keys the operator writes.
    pub fn compile(
        templates: &BTreeMap<String, String>,
        reserved: &[&str],
    ) -> Result<Self, SecretTemplateError> {
        if templates.len() > MAX_KEYS {
            return Err(SecretTemplateError::TooManyKeys(templates.len()));
        }
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        let names = helpers::register(&mut registry, helpers::HelperMode::Sql);
        for (key, source) in templates {
            if !is_secret_key(key) {
                return Err(SecretTemplateError::BadKey(key.clone()));
            }
            if reserved.contains(&key.as_str()) {
                return Err(SecretTemplateError::Reserved(key.clone()));
            }
            if source.len() > MAX_TEMPLATE_BYTES {
                return Err(SecretTemplateError::TooLarge(key.clone()));
            }
            let value = values::ValueHelper(|scalar| match scalar {
                values::Scalar::Missing(path) => {
                    Err(RenderErrorReason::MissingVariable(Some(path)).into())
                }
                values::Scalar::Null => Ok(String::new()),
                values::Scalar::Text(text) => Ok(text),
            });
            values::register(&mut registry, key, source, &names, value)
                .map_err(|e| SecretTemplateError::Invalid { key: key.clone(), problem: e.0 })?;
        }
        Ok(Self { registry, keys: templates.keys().cloned().collect() })
    }

    /// Each key's text, rendered over `fields`.
    pub fn render(
        &self,
        fields: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SecretTemplateError> {
        let context = Json::Object(
            fields.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect(),
        );
        let mut out = BTreeMap::new();
        for key in &self.keys {
            let (rendered, exceeded) = limits::within(|| {
                let mut text = limits::BoundedText::default();
                self.registry.render_to_write(key, &context, &mut text).map(|()| text.0)
            });
            let fail = |problem: String| SecretTemplateError::Render { key: key.clone(), problem };
            if let Some(bound) = exceeded {
                return Err(fail(format!("the template {bound}")));
            }
            let text = rendered.map_err(|e| fail(describe(&e)))?;
            let text =
                String::from_utf8(text).map_err(|_| fail("the output is not UTF-8".into()))?;
            out.insert(key.clone(), text);
        }
        Ok(out)
    }
}

/// A render error by its kind and place only: a helper's own message can
/// quote the value it was given, and every value here is a credential.
fn describe(e: &handlebars::RenderError) -> String {
    let at = match (e.line_no, e.column_no) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        _ => String::new(),
    };
    match e.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => {
            format!("{path} is not a credential field (host, hostname, port, dbname, username, password, sslmode, uri){at}")
        }
        _ => format!("a helper failed{at}"),
    }
}

/// A Secret data key: `[-._a-zA-Z0-9]+`, at most 253 characters.
fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> BTreeMap<String, String> {
        [("host", "db.local"), ("port", "5432"), ("password", "p'w\"{{x}}"), ("dbname", "orders")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn templates(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keys_render_values_as_they_are() {
        let t = SecretTemplate::compile(
            &templates(&[
                ("DB_HOST", "{{host}}"),
                ("DATABASE_URL", "jdbc:postgresql://{{host}}:{{port}}/{{dbname}}"),
                ("DB_PASSWORD", "{{password}}"),
                ("LOUD", "{{upper dbname}}"),
            ]),
            &["password"],
        )
        .unwrap();
        let out = t.render(&fields()).unwrap();
        assert_eq!(out["DB_HOST"], "db.local");
        assert_eq!(out["DATABASE_URL"], "jdbc:postgresql://db.local:5432/orders");
        assert_eq!(out["DB_PASSWORD"], "p'w\"{{x}}", "no escaping, no second expansion");
        assert_eq!(out["LOUD"], "ORDERS");
    }

    #[test]
    fn bad_templates_are_refused_by_key() {
        let reserved = &["password"];
        let err = |pairs: &[(&str, &str)]| {
            SecretTemplate::compile(&templates(pairs), reserved).err().unwrap().to_string()
        };
        assert!(err(&[("password", "x")]).contains("cannot be replaced"));
        assert!(err(&[("a/b", "x")]).contains("not a Secret key"));
        assert!(err(&[("K", "{{#if}")]).contains("\"K\""));
        assert!(err(&[("K", "{{> partial}}")]).contains("partials"));
        let big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
        assert!(err(&[("K", &big)]).contains("4096"));
        let many: BTreeMap<String, String> =
            (0..=MAX_KEYS).map(|i| (format!("K{i}"), "x".to_owned())).collect();
        assert!(SecretTemplate::compile(&many, reserved).is_err());
    }

    #[test]
    fn failures_never_quote_a_value() {
        let t = SecretTemplate::compile(
            &templates(&[("A", "{{nope}}"), ("B", "{{int password}}")]),
            &[],
        )
        .unwrap();
        let e = t.render(&fields()).unwrap_err().to_string();
        assert!(e.contains("nope is not a credential field"), "{e}");
        let only_b =
            SecretTemplate::compile(&templates(&[("B", "{{int password}}")]), &[]).unwrap();
        let e = only_b.render(&fields()).unwrap_err().to_string();
        assert!(!e.contains("p'w"), "{e}");
        let wide = SecretTemplate::compile(&templates(&[("W", "{{indent 100000 host}}")]), &[])
            .unwrap()
            .render(&fields())
            .unwrap_err();
        assert!(matches!(wide, SecretTemplateError::Render { .. }), "{wide}");
    }
}
