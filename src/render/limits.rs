//! Bounds on what one render may cost. A template is written by a DBQR's
//! author and fed rows of a database: neither may make the operator
//! allocate without limit, loop for ever or recurse off its stack, because
//! one process renders for every tenant.
//!
//! - the template: no partials or decorators (the only way Handlebars
//!   recurses), blocks nested at most [`MAX_NESTING`] deep;
//! - helper arguments: `indent`/`nindent` at most [`MAX_INDENT`] columns,
//!   `replace` and every other helper at most [`MAX_RENDERED_BYTES`] out;
//! - one row's render: at most [`MAX_RENDERED_BYTES`] of text (the template's
//!   own text and every inserted value together) and [`MAX_ITERATIONS`]
//!   iterations of `each` blocks, within [`MAX_RENDER_TIME`].
//!
//! A row over a bound fails alone, with a message naming the bound.

use std::cell::Cell;
use std::time::{Duration, Instant};

use handlebars::{
    template::{Parameter, Template, TemplateElement},
    Context, Handlebars, Helper, HelperDef, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason,
};

use super::error::TemplateError;

/// Text one row may render to, values included.
pub const MAX_RENDERED_BYTES: usize = 1 << 20;
/// Iterations of `each` blocks in one row's render, nested ones counted each time.
pub const MAX_ITERATIONS: usize = 100_000;
/// How long one row's render may take.
pub const MAX_RENDER_TIME: Duration = Duration::from_secs(2);
/// How long the rendering of one pass may take; the rows left fail.
pub const MAX_PASS_RENDER_TIME: Duration = Duration::from_secs(30);
/// The widest `indent`/`nindent`.
pub const MAX_INDENT: usize = 1024;
/// How deep blocks (`{{#if}}`, `{{#each}}`, ...) may nest in a template.
pub const MAX_NESTING: usize = 64;

/// Which bound a render ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Bytes,
    Iterations,
    Time,
    /// A helper's argument over its bound (the helper's name).
    Argument(&'static str),
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes => write!(f, "renders more than {} KiB", MAX_RENDERED_BYTES >> 10),
            Self::Iterations => write!(f, "runs more than {MAX_ITERATIONS} iterations of each"),
            Self::Time => write!(f, "takes longer than {} s to render", MAX_RENDER_TIME.as_secs()),
            Self::Argument(helper) => write!(
                f,
                "asks {helper} for more than its bound (indent at most {MAX_INDENT} columns, \
                 a helper's result at most {} KiB)",
                MAX_RENDERED_BYTES >> 10
            ),
        }
    }
}

struct Budget {
    bytes: usize,
    iterations: usize,
    deadline: Instant,
    exceeded: Option<Exceeded>,
}

thread_local! {
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
}

fn with_budget<T>(f: impl FnOnce(&mut Budget) -> T) -> Option<T> {
    BUDGET.with(|cell| {
        let mut budget = cell.take()?;
        let out = f(&mut budget);
        cell.set(Some(budget));
        Some(out)
    })
}

/// Runs `render` with a fresh budget; returns its result and the bound it
/// ran into, if any. Outside of `within` nothing is counted.
pub fn within<T>(render: impl FnOnce() -> T) -> (T, Option<Exceeded>) {
    BUDGET.with(|cell| {
        cell.set(Some(Budget {
            bytes: MAX_RENDERED_BYTES,
            iterations: MAX_ITERATIONS,
            deadline: Instant::now() + MAX_RENDER_TIME,
            exceeded: None,
        }))
    });
    let out = render();
    let exceeded = BUDGET.with(|cell| cell.take()).and_then(|b| b.exceeded);
    (out, exceeded)
}

fn exceeded_error(bound: Exceeded) -> RenderError {
    RenderErrorReason::Other(format!("the row {bound}")).into()
}

/// Counts `len` bytes of output; `false` once the render is over its bound
/// (the caller keeps nothing more).
pub fn take_bytes(len: usize) -> bool {
    with_budget(|b| {
        if b.exceeded.is_some() {
            return false;
        }
        match b.bytes.checked_sub(len) {
            Some(left) => {
                b.bytes = left;
                true
            }
            None => {
                b.exceeded = Some(Exceeded::Bytes);
                false
            }
        }
    })
    .unwrap_or(true)
}

/// A helper refusing an argument over its bound: the render fails with
/// [`Exceeded::Argument`].
pub fn refuse_argument(helper: &'static str) -> RenderError {
    let bound = Exceeded::Argument(helper);
    with_budget(|b| b.exceeded = b.exceeded.or(Some(bound)));
    exceeded_error(bound)
}

/// [`take_bytes`] as a render error.
pub fn charge_bytes(len: usize) -> Result<(), RenderError> {
    if take_bytes(len) {
        Ok(())
    } else {
        Err(exceeded_error(Exceeded::Bytes))
    }
}

fn charge_iteration() -> Result<(), RenderError> {
    let verdict = with_budget(|b| {
        if let Some(bound) = b.exceeded {
            return Err(bound);
        }
        b.iterations = b.iterations.saturating_sub(1);
        let bound = if b.iterations == 0 {
            Some(Exceeded::Iterations)
        } else if b.iterations % 256 == 0 && Instant::now() > b.deadline {
            Some(Exceeded::Time)
        } else {
            None
        };
        if let Some(bound) = bound {
            b.exceeded = Some(bound);
            return Err(bound);
        }
        Ok(())
    });
    match verdict {
        Some(Err(bound)) => Err(exceeded_error(bound)),
        _ => Ok(()),
    }
}

/// The helper every `each` body starts with; not a name a template can write.
const TICK_HELPER: &str = "dbqo tick";

/// Counts one iteration of an `each` body and writes nothing.
struct Tick;

impl HelperDef for Tick {
    fn call<'reg: 'rc, 'rc>(
        &self,
        _: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        _: &mut dyn Output,
    ) -> HelperResult {
        charge_iteration()
    }
}

/// Refuses what the template may not use, before Handlebars parses it (its
/// parser recurses once per nesting level).
pub fn check_source(source: &str) -> Result<(), TemplateError> {
    let mut depth = 0usize;
    let mut rest = source;
    while let Some(at) = rest.find("{{") {
        rest = &rest[at + 2..];
        let tag = rest.trim_start_matches(['{', '~', ' ']);
        if tag.starts_with('#') {
            depth += 1;
            if depth > MAX_NESTING {
                return Err(TemplateError(format!("blocks nest more than {MAX_NESTING} deep")));
            }
        } else if tag.starts_with('/') {
            depth = depth.saturating_sub(1);
        }
    }
    Ok(())
}

/// Refuses partials and decorators (inline partials included) and makes
/// every `each` body count its iterations.
pub fn bound_template(template: &mut Template) -> Result<(), TemplateError> {
    for element in &mut template.elements {
        match element {
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                return Err(TemplateError("partials ({{> name}}) are not supported".into()))
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                return Err(TemplateError(
                    "decorators and inline partials ({{#*inline}}) are not supported".into(),
                ))
            }
            TemplateElement::HelperBlock(block) => {
                let is_each = matches!(&block.name, Parameter::Name(n) if n == "each");
                if let (true, Some(body)) = (is_each, block.template.as_mut()) {
                    body.elements.insert(0, tick_element());
                }
                for inner in [&mut block.template, &mut block.inverse].into_iter().flatten() {
                    bound_template(inner)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// `{{dbqo tick}}` as a template element. Parsed from a name a template can
/// write, then renamed to one it cannot.
fn tick_element() -> TemplateElement {
    let mut parsed = Template::compile("{{dbqo_tick}}").expect("a constant template parses");
    let mut element = parsed.elements.remove(0);
    if let TemplateElement::Expression(expression) = &mut element {
        expression.name = Parameter::Name(TICK_HELPER.to_owned());
    }
    element
}

/// Registers the helpers the bounds need.
pub fn register(registry: &mut Handlebars<'_>) {
    registry.register_helper(TICK_HELPER, Box::new(Tick));
}

/// A writer that takes at most the render's byte budget.
#[derive(Default)]
pub struct BoundedText(pub Vec<u8>);

impl std::io::Write for BoundedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !take_bytes(buf.len()) {
            return Err(std::io::Error::other("over the render's byte bound"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `s.replace(from, to)`, without making it.
pub fn replaced_len(s: &str, from: &str, to: &str) -> Option<usize> {
    let count = if from.is_empty() { s.chars().count() + 1 } else { s.matches(from).count() };
    s.len().checked_sub(count.checked_mul(from.len())?)?.checked_add(count.checked_mul(to.len())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_len_is_the_length_of_the_replacement() {
        for (s, from, to) in [("a-b-c", "-", "::"), ("aaa", "", "xy"), ("abc", "z", "q")] {
            assert_eq!(replaced_len(s, from, to), Some(s.replace(from, to).len()));
        }
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = "{{#if x}}".repeat(MAX_NESTING + 1) + &"{{/if}}".repeat(MAX_NESTING + 1);
        assert!(check_source(&deep).is_err());
        let fine = "{{#if x}}".repeat(MAX_NESTING) + &"{{/if}}".repeat(MAX_NESTING);
        assert!(check_source(&fine).is_ok());
    }

    #[test]
    fn bytes_are_counted_only_within_a_budget() {
        assert!(take_bytes(usize::MAX), "outside a render nothing is counted");
        let (kept, exceeded) = within(|| (take_bytes(MAX_RENDERED_BYTES), take_bytes(1)));
        assert_eq!(kept, (true, false));
        assert_eq!(exceeded, Some(Exceeded::Bytes));
    }
}
