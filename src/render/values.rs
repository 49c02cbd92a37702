//! Every plain `{{expr}}` of a template, routed through one helper.
//!
//! Handlebars renders a JSON object as the text `[object]` and an array as
//! `[a, b]`, and its escape function only sees that text: a `jsonb` column
//! rendered directly would land in a manifest (or a status SQL parameter) as
//! `[object]`. The compiled template is rewritten so that `{{expr}}` becomes
//! a call of [`VALUE_HELPER`] with `expr` as its parameter; the helper sees
//! the value itself, refuses objects and arrays (naming the expression and
//! suggesting `toJson`), and hands scalars to the template's own output
//! rule (escape, or bind). Raw `{{{expr}}}` and helper calls are left alone.

use handlebars::{
    template::{Parameter, Template, TemplateElement},
    Context, Handlebars, Helper, HelperDef, Output, Path, RenderContext, RenderError,
    RenderErrorReason,
};
use serde_json::Value as Json;

/// The helper every plain `{{expr}}` calls; not a name a template can write.
pub(crate) const VALUE_HELPER: &str = "dbqo value";

/// Rewrites `template` in place; `helpers` are the names that are helpers.
pub(crate) fn route_values(template: &mut Template, helpers: &[&str]) {
    for element in &mut template.elements {
        match element {
            TemplateElement::Expression(expression)
                if expression.params.is_empty() && expression.hash.is_empty() =>
            {
                let path = match &expression.name {
                    // `{{now}}` parses as a path too; the name decides.
                    Parameter::Path(Path::Relative((_, raw)) | Path::Local((_, _, raw)))
                        if helpers.contains(&raw.as_str()) =>
                    {
                        None
                    }
                    Parameter::Path(path) => Some(path.clone()),
                    Parameter::Name(name) if !helpers.contains(&name.as_str()) => {
                        Path::parse(name).ok()
                    }
                    _ => None,
                };
                if let Some(path) = path {
                    expression.params = vec![Parameter::Path(path)];
                    expression.name = Parameter::Name(VALUE_HELPER.to_owned());
                }
            }
            TemplateElement::HelperBlock(block) => {
                for inner in [&mut block.template, &mut block.inverse].into_iter().flatten() {
                    route_values(inner, helpers);
                }
            }
            _ => {}
        }
    }
}

/// Compiles `source` as `name` (with the registry's options), within the
/// bounds of [`super::limits`], and routes its values through `helper`.
pub(crate) fn register(
    registry: &mut Handlebars<'static>,
    name: &str,
    source: &str,
    helpers: &[&str],
    helper: ValueHelper,
) -> Result<(), super::TemplateError> {
    super::limits::check_source(source)?;
    registry
        .register_template_string(name, source)
        .map_err(|e| super::TemplateError(e.to_string()))?;
    if let Some(mut template) = registry.get_template(name).cloned() {
        super::limits::bound_template(&mut template)?;
        route_values(&mut template, helpers);
        registry.register_template(name, template);
    }
    registry.register_helper(VALUE_HELPER, Box::new(helper));
    super::limits::register(registry);
    Ok(())
}

/// A scalar about to be written, or the reason it cannot be.
pub(crate) enum Scalar {
    Missing(String),
    Null,
    Text(String),
}

/// What `{{expr}}` stands for: its text, or an error for a structured value.
pub(crate) fn scalar(h: &Helper<'_>) -> Result<Scalar, RenderError> {
    let param = h.param(0).ok_or(RenderErrorReason::ParamNotFoundForIndex(VALUE_HELPER, 0))?;
    let expression = param.relative_path().cloned().unwrap_or_else(|| "the value".to_owned());
    if param.is_value_missing() {
        return Ok(Scalar::Missing(expression));
    }
    let kind = match param.value() {
        Json::Null => return Ok(Scalar::Null),
        Json::Object(_) => "a JSON object",
        Json::Array(_) => "a JSON array",
        other => return Ok(Scalar::Text(handlebars::JsonRender::render(other))),
    };
    Err(RenderErrorReason::Other(format!(
        "{{{{{expression}}}}} is {kind}, which has no text form; render it with \
         {{{{toJson {expression}}}}} or pick one of its fields"
    ))
    .into())
}

/// The helper: writes what `write` makes of the scalar.
pub(crate) struct ValueHelper(pub fn(Scalar) -> Result<String, RenderError>);

impl HelperDef for ValueHelper {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> Result<(), RenderError> {
        let text = (self.0)(scalar(h)?)?;
        out.write(&text)?;
        Ok(())
    }
}
