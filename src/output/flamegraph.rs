//! Flame graphs (inferno). Samples are weighted by the real time they stand for, so widths are
//! durations; counts are microseconds, shown as milliseconds.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::analyzer::{frame_label, Analysis, Profile};

/// Collapsed-stack lines (`root;...;leaf weight`), sorted, with a thread frame at the root when
/// the profile spans several threads.
pub fn collapsed_lines(analysis: &Analysis, profile: &Profile) -> Vec<String> {
    let threads: BTreeSet<u64> = profile.keys().map(|(tid, _)| *tid).collect();
    let label_thread = threads.len() > 1;
    let mut merged: HashMap<String, u64> = HashMap::new();
    for (&(tid, stack), &us) in profile {
        let mut parts: Vec<String> = Vec::new();
        if label_thread {
            let name = analysis
                .thread_names
                .get(&tid)
                .map(String::as_str)
                .unwrap_or("thread");
            parts.push(format!(
                "{} ({tid})",
                crate::text::name(name).replace(';', ":")
            ));
        }
        let frames: Vec<_> = analysis.symbols.stack_frames(stack).collect();
        parts.extend(
            frames
                .iter()
                .rev()
                .map(|f| frame_label(f, true).replace(';', ":")),
        );
        *merged.entry(parts.join(";")).or_default() += us;
    }
    let mut lines: Vec<String> = merged
        .into_iter()
        .filter(|(_, us)| *us > 0)
        .map(|(stack, us)| format!("{stack} {us}"))
        .collect();
    lines.sort();
    lines
}

/// Writes an SVG flame graph of `profile` to `path`. An empty profile gets a small SVG that
/// says so (inferno refuses to render nothing).
pub fn write(
    path: &Path,
    analysis: &Analysis,
    profile: &Profile,
    title: &str,
) -> anyhow::Result<()> {
    write_lines(path, &collapsed_lines(analysis, profile), title)
}

/// Writes an SVG flame graph of collapsed-stack `lines`.
pub fn write_lines(path: &Path, lines: &[String], title: &str) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    if lines.is_empty() {
        write!(
            file,
            concat!(
                "<?xml version=\"1.0\" standalone=\"no\"?>\n",
                "<svg version=\"1.1\" width=\"800\" height=\"60\" xmlns=\"http://www.w3.org/2000/svg\">",
                "<text x=\"10\" y=\"25\" font-family=\"Verdana\" font-size=\"14\">{}</text>",
                "<text x=\"10\" y=\"45\" font-family=\"Verdana\" font-size=\"12\">No samples: nothing to show.</text></svg>\n"
            ),
            xml_escape(title)
        )?;
    } else {
        let mut options = inferno::flamegraph::Options::default();
        options.title = title.to_string();
        options.count_name = "ms".to_string();
        options.factor = 0.001;
        options.name_type = "Function:".to_string();
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut file)
            .with_context(|| format!("rendering {}", path.display()))?;
    }
    file.flush()?;
    Ok(())
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
