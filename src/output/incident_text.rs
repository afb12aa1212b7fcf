//! The lines every human rendering of an incident shares — the culprit's source line, the
//! task, the cause and its detail, the fix — said once, in one order. The CI gate prints them as
//! plain text, report.md as Markdown; target text goes through `text` either way.

use std::fmt::Write as _;

use crate::analyzer::cause::suggestion;
use crate::analyzer::incident::Incident;
use crate::text;

/// How a sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A terminal or CI log: escaped, shortened text; lower-case labels.
    Plain,
    /// Markdown: target text in code spans nothing can close, emphasis on the cause.
    Markdown,
}

impl Style {
    fn label(self, plain: &'static str, markdown: &'static str) -> &'static str {
        match self {
            Style::Plain => plain,
            Style::Markdown => markdown,
        }
    }

    /// A name or a source line from the target.
    fn code(self, value: &str, max: usize) -> String {
        match self {
            Style::Plain => text::human(value, max).into_owned(),
            Style::Markdown => text::md_code(value, max),
        }
    }

    /// Prose that may hold target text (a cause's detail names files and peers).
    fn prose(self, value: &str) -> String {
        match self {
            Style::Plain => text::human(value, text::DETAIL_CHARS).into_owned(),
            Style::Markdown => text::md_text(value, text::DETAIL_CHARS),
        }
    }

    fn strong(self, value: &str) -> String {
        match self {
            Style::Plain => value.to_string(),
            Style::Markdown => format!("**{value}**"),
        }
    }
}

/// Writes the shared lines of `incident`, each starting with `prefix`.
pub fn write_details(out: &mut String, style: Style, prefix: &str, incident: &Incident) {
    if let Some(source) = &incident.culprit_source {
        let _ = writeln!(
            out,
            "{prefix}{}{}",
            style.label("> ", "Source: "),
            style.code(source, text::SOURCE_CHARS)
        );
    }
    if let Some(task) = &incident.task {
        let awaited_by: Vec<String> = task
            .awaited_by_chain
            .iter()
            .map(|a| style.code(&a.name, text::NAME_CHARS))
            .collect();
        let _ = writeln!(
            out,
            "{prefix}{}{} (coroutine {}){}",
            style.label("task: ", "Task: "),
            style.code(&task.name, text::NAME_CHARS),
            style.code(&task.coroutine, text::NAME_CHARS),
            if awaited_by.is_empty() {
                String::new()
            } else {
                format!(", awaited by {}", awaited_by.join(" <- "))
            }
        );
    }
    let category = incident.cause.category;
    let _ = writeln!(
        out,
        "{prefix}{}{} — {}",
        style.label("cause: ", "Cause: "),
        style.strong(category),
        style.prose(&incident.cause.detail)
    );
    let _ = writeln!(
        out,
        "{prefix}{}{}",
        style.label("fix: ", "Fix: "),
        suggestion(category)
    );
}
