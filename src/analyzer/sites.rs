//! Per-site totals (a site is the culprit line), updated for every incident as it closes, so
//! rankings stay exact for the whole recording even when only the worst incidents are kept in
//! full. Memory: one entry per site, and per site one counter per distinct whole millisecond
//! of duration.

use std::collections::{BTreeMap, HashMap};

use super::incident::Incident;
use super::intern::FrameId;

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
    /// Culprit source line, when read.
    pub source: Option<String>,
}

impl SiteStats {
    /// Adds an incident.
    pub fn add(&mut self, incident: &Incident) {
        self.count += 1;
        self.total_ms += incident.duration_ms;
        self.max_ms = self.max_ms.max(incident.duration_ms);
        *self
            .durations
            .entry(incident.duration_ms.round() as u32)
            .or_default() += 1;
        *self.categories.entry(incident.cause.category).or_default() += 1;
        if self.source.is_none() {
            self.source = incident.culprit_source.clone();
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
}

/// All sites of a recording.
pub type Sites = HashMap<FrameId, SiteStats>;

/// Sites ranked by total blocked time, largest first.
pub fn ranked(sites: &Sites) -> Vec<(FrameId, &SiteStats)> {
    let mut list: Vec<(FrameId, &SiteStats)> = sites.iter().map(|(id, s)| (*id, s)).collect();
    list.sort_by(|a, b| b.1.total_ms.total_cmp(&a.1.total_ms).then(a.0.cmp(&b.0)));
    list
}
