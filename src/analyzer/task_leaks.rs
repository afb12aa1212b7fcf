//! Task leaks: coroutines whose pending tasks keep piling up over a recording.
//!
//! A task created and never awaited, cancelled or finished stays pending, and a service that
//! leaks one per request grows until memory runs out. From outside, the only sign is the
//! count: about once a second the sampler counts the target's pending tasks by coroutine (a
//! [`TaskCensus`]), and this module keeps a bounded series per coroutine and decides, at the
//! end, which series *keep growing* — as opposed to what a healthy service does: a fixed pool
//! of workers (flat), a burst of tasks that drains (up, then down), a long-lived server task
//! (one, throughout), a one-off batch still running at the end (one step up, then flat).
//!
//! "Keeps growing" is judged on the steps between censuses, not on a fitted line, so that a
//! single step does not pass for a trend: most steps go up, few go down, the count ends near
//! its highest, and it grew by a meaningful amount ([`MIN_GROWTH`], and by half of where it
//! started). The growth rate reported is the least-squares slope over the whole series.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::sample::TaskCensus;

/// Coroutines followed at once; past this, a new one replaces the one with the fewest pending
/// tasks (a leak is never the smallest series for long).
pub const MAX_COROUTINES: usize = 256;
/// Points kept per coroutine. When full, every other point is dropped (the series keeps its
/// shape at half the resolution), so hours of recording stay within a few kilobytes each.
pub const MAX_POINTS: usize = 512;
/// The least growth, in tasks, that is called a leak.
pub const MIN_GROWTH: u64 = 20;
/// Censuses a series needs before it is judged.
const MIN_CENSUSES: usize = 5;
/// The least span of a judged series, seconds.
const MIN_SPAN_S: f64 = 4.0;

/// A coroutine, by name and file: what tasks are counted by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoroutineSite {
    /// The coroutine's (qualified) name.
    pub coroutine: String,
    /// Its source file.
    pub file: String,
}

/// A coroutine whose pending tasks kept growing: a leak finding.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskLeak {
    /// The leaking coroutine.
    pub site: CoroutineSite,
    /// The line its tasks were last seen suspended at (one of them; 0 when unknown).
    pub line: u32,
    /// Pending tasks at its first and last census.
    pub pending_start: u64,
    /// See `pending_start`.
    pub pending_end: u64,
    /// Growth, tasks per second (least squares over the series).
    pub growth_per_s: f64,
    /// The name of one of its pending tasks, as the target names it.
    pub example_task: Option<String>,
    /// Censuses the finding rests on.
    pub censuses: usize,
}

/// One coroutine's counts over time.
#[derive(Debug, Default)]
struct Series {
    /// (seconds since the first census, pending tasks).
    points: Vec<(f64, u64)>,
    example_task: Option<String>,
    line: u32,
}

impl Series {
    fn push(&mut self, at_s: f64, pending: u64) {
        if self.points.len() >= MAX_POINTS {
            // Keep the first point and every other one after it: the start stays the start.
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        self.points.push((at_s, pending));
    }

    fn last_pending(&self) -> u64 {
        self.points.last().map_or(0, |p| p.1)
    }

    /// This series as a finding, if it kept growing.
    fn leak(&self, site: &CoroutineSite) -> Option<TaskLeak> {
        let points = &self.points;
        if points.len() < MIN_CENSUSES {
            return None;
        }
        let (first, last) = (points[0], points[points.len() - 1]);
        if last.0 - first.0 < MIN_SPAN_S {
            return None;
        }
        let growth = last.1.saturating_sub(first.1);
        if growth < MIN_GROWTH || growth * 2 < first.1 {
            return None;
        }
        let max = points.iter().map(|p| p.1).max().unwrap_or(0);
        // Ends near its highest: a burst that drains does not.
        if last.1 * 10 < max * 9 {
            return None;
        }
        let steps = points.len() - 1;
        let ups = points.windows(2).filter(|w| w[1].1 > w[0].1).count();
        let downs = points.windows(2).filter(|w| w[1].1 < w[0].1).count();
        // Most steps up (not one step up then flat), few down (not a count that swings).
        if ups * 2 < steps || downs * 4 > steps {
            return None;
        }
        Some(TaskLeak {
            site: site.clone(),
            line: self.line,
            pending_start: first.1,
            pending_end: last.1,
            growth_per_s: slope(points),
            example_task: self.example_task.clone(),
            censuses: points.len(),
        })
    }
}

/// Least-squares slope of `points`, per second.
fn slope(points: &[(f64, u64)]) -> f64 {
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_c = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for &(t, c) in points {
        num += (t - mean_t) * (c as f64 - mean_c);
        den += (t - mean_t) * (t - mean_t);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// A coroutine's pending tasks now, and where they are going.
#[derive(Debug, Clone, PartialEq)]
pub struct CoroutineTrend {
    /// The coroutine.
    pub site: CoroutineSite,
    /// Where one of its tasks is suspended.
    pub line: u32,
    /// Its pending tasks at the last census.
    pub pending: u64,
    /// Its growth lately, tasks a second.
    pub growth_per_s: f64,
    /// Whether its series is a leak.
    pub leak: bool,
}

/// Every coroutine's pending-task series over a recording.
#[derive(Debug, Default)]
pub struct LeakWatch {
    series: HashMap<CoroutineSite, Series>,
    first_at: Option<Instant>,
    /// Censuses taken.
    pub censuses: u64,
    /// Pending tasks at the latest census (every coroutine).
    pub pending_now: u64,
    /// Censuses that could not count every task (the target had more than the reader counts).
    pub partial_censuses: u64,
}

impl LeakWatch {
    /// Adds one census. A followed coroutine missing from it has no pending task now.
    pub fn add(&mut self, census: &TaskCensus) {
        let first = *self.first_at.get_or_insert(census.at);
        let at_s = census.at.saturating_duration_since(first).as_secs_f64();
        self.censuses += 1;
        self.pending_now = census.by_coroutine.iter().map(|c| c.pending).sum();
        if census.left_out > 0 {
            self.partial_censuses += 1;
        }
        let mut seen = HashSet::with_capacity(census.by_coroutine.len());
        for count in &census.by_coroutine {
            let site = CoroutineSite {
                coroutine: count.coroutine.clone(),
                file: count.file.clone(),
            };
            if !self.series.contains_key(&site) && self.series.len() >= MAX_COROUTINES {
                let smallest = self
                    .series
                    .iter()
                    .min_by_key(|(site, s)| (s.last_pending(), (*site).clone()))
                    .map(|(site, _)| site.clone());
                match smallest {
                    Some(smallest) if self.series[&smallest].last_pending() < count.pending => {
                        self.series.remove(&smallest);
                    }
                    _ => continue,
                }
            }
            let series = self.series.entry(site.clone()).or_default();
            series.push(at_s, count.pending);
            series.line = count.line;
            if count.example_task.is_some() {
                series.example_task.clone_from(&count.example_task);
            }
            seen.insert(site);
        }
        for (site, series) in &mut self.series {
            if !seen.contains(site) && series.last_pending() != 0 {
                series.push(at_s, 0);
            }
        }
    }

    /// The coroutines that kept growing, fastest first.
    pub fn leaks(&self) -> Vec<TaskLeak> {
        let mut leaks: Vec<TaskLeak> = self
            .series
            .iter()
            .filter_map(|(site, series)| series.leak(site))
            .collect();
        leaks.sort_by(|a, b| {
            b.growth_per_s
                .total_cmp(&a.growth_per_s)
                .then_with(|| a.site.cmp(&b.site))
        });
        leaks
    }

    /// Pending tasks by coroutine at the latest census, most first (at most `limit`), each with
    /// its growth over the last `window_s` seconds (tasks a second, least squares) and whether
    /// it is a leak.
    pub fn pending_with_trend(&self, limit: usize, window_s: f64) -> Vec<CoroutineTrend> {
        let leaks: HashSet<CoroutineSite> = self.leaks().into_iter().map(|l| l.site).collect();
        self.pending_by_coroutine(limit)
            .into_iter()
            .map(|(site, line, pending)| {
                let points = &self.series[&site].points;
                let end = points.last().map_or(0.0, |p| p.0);
                let from = points.partition_point(|p| p.0 < end - window_s);
                let recent = &points[from..];
                CoroutineTrend {
                    leak: leaks.contains(&site),
                    growth_per_s: if recent.len() >= 2 {
                        slope(recent)
                    } else {
                        0.0
                    },
                    site,
                    line,
                    pending,
                }
            })
            .collect()
    }

    /// Pending tasks by coroutine at the latest census, most first (at most `limit`), with
    /// the line one of them was suspended at.
    pub fn pending_by_coroutine(&self, limit: usize) -> Vec<(CoroutineSite, u32, u64)> {
        let mut now: Vec<(CoroutineSite, u32, u64)> = self
            .series
            .iter()
            .map(|(site, s)| (site.clone(), s.line, s.last_pending()))
            .filter(|(_, _, n)| *n > 0)
            .collect();
        now.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        now.truncate(limit);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::CoroutineCount;
    use std::time::Duration;

    fn census(at: Instant, counts: &[(&str, u64)]) -> TaskCensus {
        TaskCensus {
            pid: 1,
            at,
            by_coroutine: counts
                .iter()
                .map(|(name, pending)| CoroutineCount {
                    coroutine: name.to_string(),
                    file: "app.py".into(),
                    line: 10,
                    pending: *pending,
                    example_task: Some(format!("{name}-task")),
                })
                .collect(),
            left_out: 0,
            links: Vec::new(),
        }
    }

    /// Feeds one census a second from `counts(second)`, for `seconds` seconds.
    fn watch(seconds: u64, counts: impl Fn(u64) -> Vec<(&'static str, u64)>) -> LeakWatch {
        let start = Instant::now();
        let mut w = LeakWatch::default();
        for s in 0..seconds {
            w.add(&census(start + Duration::from_secs(s), &counts(s)));
        }
        w
    }

    #[test]
    fn a_steadily_leaking_coroutine_is_named_with_its_rate() {
        let w = watch(10, |s| vec![("handle_request", 1 + 25 * s), ("server", 1)]);
        let leaks = w.leaks();
        assert_eq!(leaks.len(), 1, "{leaks:?}");
        let leak = &leaks[0];
        assert_eq!(leak.site.coroutine, "handle_request");
        assert_eq!((leak.pending_start, leak.pending_end), (1, 226));
        assert!((leak.growth_per_s - 25.0).abs() < 0.01, "{leak:?}");
        assert_eq!(leak.example_task.as_deref(), Some("handle_request-task"));
    }

    #[test]
    fn a_noisy_leak_is_still_a_leak() {
        // +10 a second with jitter that sometimes steps back.
        let w = watch(20, |s| {
            vec![("leaky", 10 * s + [0, 7, 3, 9, 1][s as usize % 5])]
        });
        let leaks = w.leaks();
        assert_eq!(leaks.len(), 1, "{leaks:?}");
        assert!((leaks[0].growth_per_s - 10.0).abs() < 1.5, "{leaks:?}");
    }

    #[test]
    fn a_fixed_pool_a_server_task_and_a_drained_burst_are_no_leaks() {
        let w = watch(12, |s| {
            vec![
                ("worker", 16),
                ("server", 1),
                // 5 000 tasks created at once, draining over five seconds.
                (
                    "burst",
                    if (3..8).contains(&s) {
                        5000 - 1000 * (s - 3)
                    } else {
                        0
                    },
                ),
            ]
        });
        assert_eq!(w.leaks(), vec![]);
    }

    #[test]
    fn a_batch_started_once_and_still_running_is_no_leak() {
        // One step up, then flat: not growing.
        let w = watch(10, |s| vec![("batch", if s >= 4 { 3000 } else { 0 })]);
        assert_eq!(w.leaks(), vec![]);
    }

    #[test]
    fn too_short_or_too_small_is_not_judged() {
        assert_eq!(watch(3, |s| vec![("fast", 100 * s)]).leaks(), vec![]);
        assert_eq!(watch(10, |s| vec![("slow", 1 + s)]).leaks(), vec![]);
    }

    #[test]
    fn trends_say_which_coroutine_grows_lately_and_which_leaks() {
        let w = watch(20, |s| {
            vec![
                ("leaky", 5 * s),
                ("pool", 16),
                ("late", if s < 15 { 0 } else { 3 * (s - 14) }),
            ]
        });
        let trends = w.pending_with_trend(10, 5.0);
        let of = |name: &str| trends.iter().find(|t| t.site.coroutine == name).unwrap();
        assert!(of("leaky").leak && (of("leaky").growth_per_s - 5.0).abs() < 0.01);
        assert!(!of("pool").leak && of("pool").growth_per_s == 0.0);
        assert!(of("late").growth_per_s > 2.0, "{trends:?}");
        assert_eq!(trends[0].site.coroutine, "leaky");
    }

    #[test]
    fn a_coroutine_gone_from_a_census_has_no_pending_task() {
        let w = watch(6, |s| if s < 3 { vec![("gone", 50)] } else { vec![] });
        assert_eq!(w.pending_by_coroutine(10), vec![]);
        assert_eq!(w.pending_now, 0);
    }

    #[test]
    fn memory_stays_bounded_over_hours_and_thousands_of_coroutines() {
        let start = Instant::now();
        let mut w = LeakWatch::default();
        let names: Vec<String> = (0..1000).map(|i| format!("coro_{i}")).collect();
        for s in 0..20_000u64 {
            let mut c = census(start + Duration::from_secs(s), &[("leaky", s)]);
            let i = (s % 1000) as usize;
            c.by_coroutine.push(CoroutineCount {
                coroutine: names[i].clone(),
                file: "x.py".into(),
                line: 1,
                pending: 1,
                example_task: None,
            });
            w.add(&c);
        }
        assert!(w.series.len() <= MAX_COROUTINES);
        assert!(w.series.values().all(|s| s.points.len() <= MAX_POINTS));
        let leaks = w.leaks();
        assert_eq!(leaks.len(), 1);
        assert_eq!(leaks[0].site.coroutine, "leaky");
        assert_eq!(leaks[0].pending_start, 0);
        assert!((leaks[0].growth_per_s - 1.0).abs() < 0.01);
    }
}
