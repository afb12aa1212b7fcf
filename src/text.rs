//! How text that came from the target is shown to people. Function names, file paths, thread
//! and task names and source lines are whatever the target says: a 1 MB name, a newline, an
//! ANSI escape that would recolour the terminal, `<script>` in a page. Machine outputs (JSON)
//! keep them exact (bounded by the reader); every human output — the summary, report.md, the
//! gate's message, `top`, `dump`, flame-graph titles — goes through [`human`] first.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::sample::Frame;

/// Characters of a function (or thread, or task) name shown to people.
pub const NAME_CHARS: usize = 120;
/// Characters of a file path shown to people.
pub const PATH_CHARS: usize = 160;
/// Characters of a source line shown to people.
pub const SOURCE_CHARS: usize = 200;
/// Characters of a cause's detail (which can name target files and peers) shown to people.
pub const DETAIL_CHARS: usize = 400;

/// `text` made safe to print: control characters (newlines, tabs, escapes, DEL, C1) written
/// as visible escapes (`\n`, `\x1b`), and cut to `max` characters with a closing `…`.
pub fn human(text: &str, max: usize) -> Cow<'_, str> {
    let clean = !text.chars().any(char::is_control);
    let short = text.chars().nth(max).is_none();
    if clean && short {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(max * 4) + 4);
    for (shown, c) in text.chars().enumerate() {
        if shown >= max {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A name (function, thread, task) for people.
pub fn name(text: &str) -> Cow<'_, str> {
    human(text, NAME_CHARS)
}

/// `function (file:line)`, with the file shortened to its interesting tail when `short`.
pub fn frame_label(frame: &Frame, short: bool) -> String {
    let file = if short {
        short_path(&frame.file)
    } else {
        &frame.file
    };
    format!(
        "{} ({}:{})",
        name(&frame.function),
        human(file, PATH_CHARS),
        frame.line
    )
}

/// The tail of a path worth showing: from the package or stdlib root when recognisable,
/// otherwise the file name.
pub fn short_path(path: &str) -> &str {
    for marker in ["/site-packages/", "/dist-packages/"] {
        if let Some(pos) = path.rfind(marker) {
            return &path[pos + marker.len()..];
        }
    }
    if let Some(pos) = path.find("/lib/python3.") {
        let rest = &path[pos + "/lib/python3.".len()..];
        if let Some(slash) = rest.find('/') {
            return &rest[slash + 1..];
        }
    }
    path.rsplit('/').next().unwrap_or(path)
}

/// `text` as a Markdown code span that nothing in it can break out of (a backtick run, a
/// table's `|`), after [`human`]: code spans show `<script>` as text.
pub fn md_code(text: &str, max: usize) -> String {
    let text = human(text, max);
    let longest_run = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest_run + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{}{pad}{fence}", text.replace('|', "\\|"))
}

/// `text` as plain Markdown text after [`human`]: `<`, `>` and `&` written as entities, so a
/// renderer shows `<script>` instead of running it, and `|` escaped for tables.
pub fn md_text(text: &str, max: usize) -> String {
    human(text, max)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(
            human("evil\n<script>\x1b[31m\u{9b}", 100),
            "evil\\n<script>\\x1b[31m\\x9b"
        );
        assert!(matches!(human("plain (a.py:3)", 100), Cow::Borrowed(_)));
    }

    #[test]
    fn long_names_are_cut() {
        let long = "x".repeat(1_000_000);
        let shown = name(&long);
        assert_eq!(shown.chars().count(), NAME_CHARS + 1);
        assert!(shown.ends_with('…'));
        // Escapes count as one character shown, and multi-byte characters are not split.
        assert_eq!(human("üñí\nüñí", 4), "üñí\\n…");
    }

    #[test]
    fn markdown_code_spans_hold_anything() {
        assert_eq!(md_code("a`b", 50), "``a`b``");
        assert_eq!(md_code("`x`", 50), "`` `x` ``");
        assert_eq!(md_code("a|b", 50), "`a\\|b`");
        assert_eq!(md_code("<script>", 50), "`<script>`");
        assert_eq!(md_text("<b>&|", 50), "&lt;b&gt;&amp;\\|");
    }
}
