//! Per-site totals, updated for every incident as it closes, so rankings stay exact for the
//! whole recording even when only the worst incidents are kept in full. A site is the culprit
//! *function* (in its file): the lines of one handler (`with open(...)` and `f.write(...)`)
//! are one thing to fix, so they are one site, with a per-line breakdown inside. Memory: one
//! entry per site; per site one counter per distinct whole millisecond of duration and at most
//! [`MAX_LINES`] lines.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::incident::Incident;
use crate::sample::Frame;

/// Lines broken down per site; a site's incidents at further lines still count in its totals.
pub const MAX_LINES: usize = 64;

/// Lines a label lists before it says `…`.
const LABEL_LINES: usize = 8;

/// A site: the culprit function and its file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteKey {
    /// Function name (qualified on CPython 3.11+).
    pub function: Arc<str>,
    /// Source file, as the target sees it.
    pub file: Arc<str>,
}

impl SiteKey {
    /// The site of a culprit frame (shares its strings).
    pub fn of(frame: &Frame) -> Self {
        SiteKey {
            function: frame.function.clone(),
            file: frame.file.clone(),
        }
    }
}

/// One culprit line of a site.
#[derive(Debug, Clone, Default)]
pub struct LineStats {
    /// Incidents whose culprit was this line.
    pub count: u64,
    /// Sum of their durations, ms.
    pub total_ms: f64,
    /// The line's text, when read.
    pub source: Option<String>,
}

/// Everything known about one site.
#[derive(Debug, Clone, Default)]
pub struct SiteStats {
    /// Incidents here.
    pub count: u64,
    /// Sum of their durations, ms.
    pub total_ms: f64,
    /// Longest, ms.
    pub max_ms: f64,
    /// Durations, whole ms -> count (for percentiles).
    durations: BTreeMap<u32, u32>,
    /// Cause categories -> count.
    categories: HashMap<&'static str, u32>,
    /// The culprit lines, by line number.
    lines: BTreeMap<u32, LineStats>,
}

impl SiteStats {
    /// Adds an incident whose culprit is at `line` of this site's function.
    pub fn add(&mut self, incident: &Incident, line: u32) {
        self.count += 1;
        self.total_ms += incident.duration_ms;
        self.max_ms = self.max_ms.max(incident.duration_ms);
        *self
            .durations
            .entry(incident.duration_ms.round() as u32)
            .or_default() += 1;
        *self.categories.entry(incident.cause.category).or_default() += 1;
        if self.lines.len() < MAX_LINES || self.lines.contains_key(&line) {
            let stats = self.lines.entry(line).or_default();
            stats.count += 1;
            stats.total_ms += incident.duration_ms;
            if stats.source.is_none() {
                stats.source = incident.culprit_source.clone();
            }
        }
    }

    /// Nearest-rank percentile, whole ms.
    pub fn percentile(&self, q: f64) -> f64 {
        let counts = self.durations.iter().map(|(&ms, &n)| (ms, n as u64));
        crate::histogram::nearest_rank(counts, self.count, q)
            .map(f64::from)
            .unwrap_or(self.max_ms)
    }

    /// Most common cause category.
    pub fn category(&self) -> &'static str {
        self.categories
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(c, _)| *c)
            .unwrap_or("unknown")
    }

    /// The culprit lines in line order.
    pub fn lines(&self) -> impl Iterator<Item = (u32, &LineStats)> {
        self.lines.iter().map(|(&line, stats)| (line, stats))
    }

    /// The line that blocked longest in total (the lowest on a tie).
    pub fn main_line(&self) -> Option<(u32, &LineStats)> {
        self.lines()
            .max_by(|a, b| a.1.total_ms.total_cmp(&b.1.total_ms).then(b.0.cmp(&a.0)))
    }

    /// The main line's text, when read.
    pub fn source(&self) -> Option<&str> {
        self.main_line()?.1.source.as_deref()
    }

    /// The line numbers, comma-separated (`40,41`; past [`LABEL_LINES`] ending in `…`).
    pub fn line_list(&self) -> String {
        let mut list: Vec<String> = self
            .lines
            .keys()
            .take(LABEL_LINES)
            .map(u32::to_string)
            .collect();
        if self.lines.len() > LABEL_LINES {
            list.push("…".into());
        }
        list.join(",")
    }

    /// How people see the site: `handle_write (app.py:40,41)`.
    pub fn label(&self, key: &SiteKey) -> String {
        format!(
            "{} ({}:{})",
            crate::text::name(&key.function),
            crate::text::human(crate::text::short_path(&key.file), crate::text::PATH_CHARS),
            self.line_list()
        )
    }
}

/// All sites of a recording.
pub type Sites = HashMap<SiteKey, SiteStats>;

/// Sites ranked by total blocked time, largest first.
pub fn ranked(sites: &Sites) -> Vec<(&SiteKey, &SiteStats)> {
    let mut list: Vec<(&SiteKey, &SiteStats)> = sites.iter().collect();
    list.sort_by(|a, b| b.1.total_ms.total_cmp(&a.1.total_ms).then(a.0.cmp(b.0)));
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::cause::CauseEvidence;
    use crate::analyzer::incident::{IncidentKind, KindEvidence};
    use crate::analyzer::intern::Symbols;
    use crate::analyzer::loop_detect::LoopKind;

    fn incident(symbols: &mut Symbols, ms: f64, source: &str, category: &'static str) -> Incident {
        let frame = symbols.intern_frame(&Frame {
            function: "handle_write".into(),
            file: "/srv/app.py".into(),
            line: 1,
        });
        let mut cause = CauseEvidence::default().decide(None);
        cause.category = category;
        Incident {
            start_unix: 0.0,
            start_offset_s: 0.0,
            duration_ms: ms,
            samples: 1,
            pid: 1,
            thread_id: 1,
            thread_name: None,
            loop_kind: LoopKind::Selector,
            kind: IncidentKind::Blocking,
            kind_evidence: KindEvidence::default(),
            culprit: frame,
            callback: frame,
            stack: symbols.intern_stack(&[]),
            stack_weights_us: Vec::new(),
            task: None,
            culprit_context: None,
            cause,
            culprit_source: Some(source.into()),
            truncated: false,
            stack_truncated: false,
        }
    }

    #[test]
    fn the_lines_of_one_function_are_one_site() {
        let mut symbols = Symbols::default();
        let frame = |line| Frame {
            function: "handle_write".into(),
            file: "/srv/app.py".into(),
            line,
        };
        let mut sites = Sites::new();
        let open = incident(&mut symbols, 40.0, "with open(path, \"wb\") as f:", "file");
        let write = incident(&mut symbols, 100.0, "f.write(payload)", "file");
        for (line, inc) in [(40, &open), (41, &write), (41, &write)] {
            sites
                .entry(SiteKey::of(&frame(line)))
                .or_default()
                .add(inc, line);
        }
        let other = Frame {
            function: "other".into(),
            ..frame(41)
        };
        sites.entry(SiteKey::of(&other)).or_default().add(&open, 41);
        assert_eq!(sites.len(), 2, "one site per function");
        let ranked = ranked(&sites);
        let (key, site) = ranked[0];
        assert_eq!(&*key.function, "handle_write");
        assert_eq!((site.count, site.total_ms), (3, 240.0));
        assert_eq!(site.label(key), "handle_write (app.py:40,41)");
        let lines: Vec<(u32, u64, f64)> = site
            .lines()
            .map(|(line, s)| (line, s.count, s.total_ms))
            .collect();
        assert_eq!(lines, vec![(40, 1, 40.0), (41, 2, 200.0)]);
        assert_eq!(site.source(), Some("f.write(payload)"), "the main line's");
        assert_eq!(site.category(), "file");
    }

    #[test]
    fn lines_are_bounded_and_the_label_is_short() {
        let mut symbols = Symbols::default();
        let inc = incident(&mut symbols, 60.0, "x", "cpu");
        let mut site = SiteStats::default();
        for line in 0..(MAX_LINES as u32 + 10) {
            site.add(&inc, line);
        }
        assert_eq!(site.count, MAX_LINES as u64 + 10, "every incident counts");
        assert_eq!(site.lines().count(), MAX_LINES);
        assert_eq!(site.line_list(), "0,1,2,3,4,5,6,7,…");
    }
}
