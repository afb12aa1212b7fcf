//! Incidents grouped by site (the culprit line), ranked by total blocked time: the table both
//! the terminal summary and `report.md` lead with.

use std::collections::HashMap;

use crate::analyzer::incident::Incident;
use crate::analyzer::intern::FrameId;

/// All incidents at one culprit line.
#[derive(Debug, Clone)]
pub struct Site {
    /// The culprit frame.
    pub culprit: FrameId,
    /// Indexes into `Analysis::incidents`.
    pub incidents: Vec<usize>,
    /// Sum of durations, ms.
    pub total_ms: f64,
    /// Longest, ms.
    pub max_ms: f64,
    /// 95th percentile (nearest rank), ms.
    pub p95_ms: f64,
    /// Most common cause category.
    pub category: &'static str,
}

/// Groups and ranks.
pub fn group(incidents: &[Incident]) -> Vec<Site> {
    let mut by_site: HashMap<FrameId, Vec<usize>> = HashMap::new();
    for (i, incident) in incidents.iter().enumerate() {
        by_site.entry(incident.culprit).or_default().push(i);
    }
    let mut sites: Vec<Site> = by_site
        .into_iter()
        .map(|(culprit, idx)| {
            let mut durations: Vec<f64> = idx.iter().map(|&i| incidents[i].duration_ms).collect();
            durations.sort_by(f64::total_cmp);
            let rank = ((durations.len() as f64) * 0.95).ceil().max(1.0) as usize - 1;
            let mut categories: HashMap<&'static str, usize> = HashMap::new();
            for &i in &idx {
                *categories.entry(incidents[i].cause.category).or_default() += 1;
            }
            let category = categories
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
                .map(|(c, _)| c)
                .unwrap_or("unknown");
            Site {
                culprit,
                total_ms: durations.iter().sum(),
                max_ms: *durations.last().unwrap_or(&0.0),
                p95_ms: durations[rank.min(durations.len() - 1)],
                incidents: idx,
                category,
            }
        })
        .collect();
    sites.sort_by(|a, b| {
        b.total_ms
            .total_cmp(&a.total_ms)
            .then(a.culprit.cmp(&b.culprit))
    });
    sites
}
