//! What the agent exposes: a snapshot of every watched process, published by the agent's main
//! loop and rendered by the HTTP thread in Prometheus's text exposition format (0.0.4).
//!
//! The snapshot holds cumulative values only (seconds busy and observed, incidents, stall
//! counts), so a scrape never waits on the analyzers and a missed scrape loses nothing; the
//! one windowed value, `loopspy_loop_busy_ratio`, is computed by the renderer between two
//! scrapes. Every label value the target names (command, thread name, site) is bounded and
//! escaped here.

use std::collections::HashMap;
use std::fmt::Write as _;

/// Longest label value written (longer ones are cut, with `…`).
pub const MAX_LABEL_CHARS: usize = 160;

/// Sites per process with a series of their own; the rest share `site="other"`.
pub const MAX_SITES_PER_TARGET: usize = 20;

/// Upper bounds of the stall histogram's buckets, in seconds (and `+Inf`).
pub const STALL_BUCKETS_S: [f64; 11] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Everything one scrape shows.
#[derive(Debug, Clone, Default)]
pub struct FleetSnapshot {
    /// The processes being watched, by pid.
    pub targets: Vec<TargetSnapshot>,
    /// The agent's own health.
    pub agent: AgentHealth,
}

/// The agent's own figures.
#[derive(Debug, Clone, Default)]
pub struct AgentHealth {
    /// Processes attached since the agent started.
    pub attached_total: u64,
    /// Python processes that could not be attached (permissions, unsupported versions).
    pub attach_failures_total: u64,
    /// Python processes let go of because they ran no asyncio loop.
    pub without_loop_total: u64,
    /// Seconds since the agent started.
    pub uptime_s: f64,
    /// The sampling rate asked for, per process.
    pub rate_hz: u32,
    /// Profile pushes (sent, failed, dropped for a full queue), with `--pyroscope`.
    pub pyroscope: Option<(u64, u64, u64)>,
}

/// One watched process.
#[derive(Debug, Clone, Default)]
pub struct TargetSnapshot {
    pub pid: i32,
    pub command: String,
    pub python_version: String,
    /// Its event-loop threads.
    pub loops: Vec<LoopSnapshot>,
    /// Incidents by (site, cause), with `site="other"` past [`MAX_SITES_PER_TARGET`].
    pub incidents: Vec<(String, String, u64)>,
    /// Busy runs of all its loops: cumulative counts below each of [`STALL_BUCKETS_S`].
    pub stall_buckets: [u64; STALL_BUCKETS_S.len()],
    pub stall_count: u64,
    pub stall_sum_s: f64,
    pub samples: u64,
    pub read_errors: u64,
    /// Samples a second over the last publication window.
    pub achieved_rate_hz: f64,
}

/// One event-loop thread.
#[derive(Debug, Clone, Default)]
pub struct LoopSnapshot {
    pub thread_id: u64,
    pub thread_name: String,
    /// Time the loop was seen inside a callback or its own bookkeeping.
    pub busy_s: f64,
    /// Time the loop was watched.
    pub observed_s: f64,
}

/// The busy ratio's memory between scrapes: each loop's cumulative (busy, observed) at the
/// previous scrape, and the ratio then (kept when two scrapes come too close to say anything).
#[derive(Debug, Default)]
pub struct ScrapeWindows {
    last: HashMap<(i32, u64), (f64, f64, f64)>,
}

/// Observed time a window needs before its ratio replaces the previous one.
const MIN_WINDOW_S: f64 = 0.2;

impl ScrapeWindows {
    /// The busy ratio of `l` (of `pid`) since the previous scrape.
    fn ratio(&mut self, pid: i32, l: &LoopSnapshot) -> f64 {
        let whole = if l.observed_s > 0.0 {
            l.busy_s / l.observed_s
        } else {
            0.0
        };
        let entry = self
            .last
            .entry((pid, l.thread_id))
            .or_insert((0.0, 0.0, whole));
        let (busy, observed) = (l.busy_s - entry.0, l.observed_s - entry.1);
        if observed >= MIN_WINDOW_S {
            *entry = (l.busy_s, l.observed_s, (busy / observed).clamp(0.0, 1.0));
        }
        entry.2
    }

    /// Forgets loops no longer in `snapshot` (bounded by what is watched).
    fn retain(&mut self, snapshot: &FleetSnapshot) {
        self.last.retain(|(pid, tid), _| {
            snapshot
                .targets
                .iter()
                .any(|t| t.pid == *pid && t.loops.iter().any(|l| l.thread_id == *tid))
        });
    }
}

/// A label value as the exposition format wants it: at most [`MAX_LABEL_CHARS`], with `\`,
/// `"` and newlines escaped.
pub fn label_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_LABEL_CHARS) + 2);
    for (n, c) in text.chars().enumerate() {
        if n == MAX_LABEL_CHARS {
            out.push('…');
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Writes `# HELP` and `# TYPE` of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `{a="x",b="y"}` from already escaped values.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", inner.join(","))
}

/// A float as Prometheus reads it.
fn number(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else if value.is_nan() {
        "NaN".into()
    } else if value > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

/// The whole `/metrics` page.
pub fn render(snapshot: &FleetSnapshot, windows: &mut ScrapeWindows) -> String {
    let mut out = String::with_capacity(4096 + snapshot.targets.len() * 2048);
    struct Target<'a> {
        t: &'a TargetSnapshot,
        pid: String,
        command: String,
    }
    let targets: Vec<Target> = snapshot
        .targets
        .iter()
        .map(|t| Target {
            t,
            pid: t.pid.to_string(),
            command: label_value(&t.command),
        })
        .collect();
    // Each loop with its labels, written once.
    let loops: Vec<(&Target, &LoopSnapshot, String)> = targets
        .iter()
        .flat_map(|target| {
            target.t.loops.iter().map(move |l| {
                let tid = l.thread_id.to_string();
                let name = label_value(&l.thread_name);
                let set = labels(&[
                    ("pid", &target.pid),
                    ("command", &target.command),
                    ("thread", &name),
                    ("thread_id", &tid),
                ]);
                (target, l, set)
            })
        })
        .collect();

    family(
        &mut out,
        "loopspy_loop_busy_ratio",
        "gauge",
        "Share of the time since the previous scrape the event loop was busy (inside a callback or its own bookkeeping), 0-1.",
    );
    for (target, l, set) in &loops {
        let ratio = windows.ratio(target.t.pid, l);
        let _ = writeln!(out, "loopspy_loop_busy_ratio{set} {}", number(ratio));
    }
    windows.retain(snapshot);
    for (metric, help, value) in [
        (
            "loopspy_loop_busy_seconds_total",
            "Time the event loop was seen busy (rate() of it over rate() of loopspy_loop_observed_seconds_total is the busy ratio over any window).",
            (|l: &LoopSnapshot| l.busy_s) as fn(&LoopSnapshot) -> f64,
        ),
        (
            "loopspy_loop_observed_seconds_total",
            "Time the event loop was watched.",
            |l: &LoopSnapshot| l.observed_s,
        ),
    ] {
        family(&mut out, metric, "counter", help);
        for (_, l, set) in &loops {
            let _ = writeln!(out, "{metric}{set} {}", number(value(l)));
        }
    }

    family(
        &mut out,
        "loopspy_incidents_total",
        "counter",
        "Blocking incidents (the loop held by one callback or one iteration past the threshold), by culprit site and cause.",
    );
    for target in &targets {
        for (site, cause, count) in &target.t.incidents {
            let _ = writeln!(
                out,
                "loopspy_incidents_total{} {count}",
                labels(&[
                    ("pid", &target.pid),
                    ("command", &target.command),
                    ("site", &label_value(site)),
                    ("cause", &label_value(cause))
                ])
            );
        }
    }

    family(
        &mut out,
        "loopspy_stall_seconds",
        "histogram",
        "Length of every busy run of the process's event loops (a callback, or callbacks back to back without a wait).",
    );
    for target in &targets {
        let t = target.t;
        for (le, count) in STALL_BUCKETS_S.iter().zip(t.stall_buckets) {
            let le = number(*le);
            let _ = writeln!(
                out,
                "loopspy_stall_seconds_bucket{} {count}",
                labels(&[
                    ("pid", &target.pid),
                    ("command", &target.command),
                    ("le", &le)
                ])
            );
        }
        let _ = writeln!(
            out,
            "loopspy_stall_seconds_bucket{} {}",
            labels(&[
                ("pid", &target.pid),
                ("command", &target.command),
                ("le", "+Inf")
            ]),
            t.stall_count
        );
        let base = labels(&[("pid", &target.pid), ("command", &target.command)]);
        let _ = writeln!(
            out,
            "loopspy_stall_seconds_sum{base} {}",
            number(t.stall_sum_s)
        );
        let _ = writeln!(out, "loopspy_stall_seconds_count{base} {}", t.stall_count);
    }

    family(
        &mut out,
        "loopspy_target_info",
        "gauge",
        "A process being watched (always 1), with its Python version.",
    );
    for target in &targets {
        let _ = writeln!(
            out,
            "loopspy_target_info{} 1",
            labels(&[
                ("pid", &target.pid),
                ("command", &target.command),
                ("python_version", &label_value(&target.t.python_version))
            ])
        );
    }
    for (metric, kind, help, value) in [
        (
            "loopspy_samples_total",
            "counter",
            "Samples taken of the process.",
            (|t: &TargetSnapshot| t.samples as f64) as fn(&TargetSnapshot) -> f64,
        ),
        (
            "loopspy_read_errors_total",
            "counter",
            "Samples that could not be read.",
            |t: &TargetSnapshot| t.read_errors as f64,
        ),
        (
            "loopspy_sampling_rate_hz",
            "gauge",
            "Samples a second achieved lately.",
            |t: &TargetSnapshot| t.achieved_rate_hz,
        ),
    ] {
        family(&mut out, metric, kind, help);
        for target in &targets {
            let _ = writeln!(
                out,
                "{metric}{} {}",
                labels(&[("pid", &target.pid), ("command", &target.command)]),
                number(value(target.t))
            );
        }
    }

    let a = &snapshot.agent;
    for (metric, kind, help, value) in [
        (
            "loopspy_targets",
            "gauge",
            "Processes being watched.",
            snapshot.targets.len() as f64,
        ),
        (
            "loopspy_attached_total",
            "counter",
            "Processes attached since the agent started.",
            a.attached_total as f64,
        ),
        (
            "loopspy_attach_failures_total",
            "counter",
            "Python processes that could not be attached (permissions, unsupported versions).",
            a.attach_failures_total as f64,
        ),
        (
            "loopspy_without_loop_total",
            "counter",
            "Python processes let go of because they ran no asyncio event loop.",
            a.without_loop_total as f64,
        ),
        (
            "loopspy_agent_uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            a.uptime_s,
        ),
        (
            "loopspy_agent_rate_hz",
            "gauge",
            "Sampling rate asked for, per process.",
            a.rate_hz as f64,
        ),
    ] {
        family(&mut out, metric, kind, help);
        let _ = writeln!(out, "{metric} {}", number(value));
    }
    if let Some((sent, failed, dropped)) = a.pyroscope {
        family(
            &mut out,
            "loopspy_pyroscope_pushes_total",
            "counter",
            "Profile pushes to Pyroscope, by outcome (dropped: the queue was full).",
        );
        for (outcome, n) in [("sent", sent), ("failed", failed), ("dropped", dropped)] {
            let _ = writeln!(
                out,
                "loopspy_pyroscope_pushes_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> TargetSnapshot {
        TargetSnapshot {
            pid: 42,
            command: "python3 app.py --name \"x\"\\y\nz".into(),
            python_version: "3.12.1".into(),
            loops: vec![LoopSnapshot {
                thread_id: 43,
                thread_name: "MainThread".into(),
                busy_s: 1.0,
                observed_s: 4.0,
            }],
            incidents: vec![("handler (/app/app.py:7)".into(), "sleep".into(), 3)],
            stall_buckets: [1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9],
            stall_count: 10,
            stall_sum_s: 12.5,
            samples: 1000,
            read_errors: 2,
            achieved_rate_hz: 199.5,
        }
    }

    #[test]
    fn label_values_are_escaped_and_bounded() {
        assert_eq!(label_value("a\"b\\c\nd\re"), "a\\\"b\\\\c\\nd e");
        let long = "é".repeat(500);
        let cut = label_value(&long);
        assert_eq!(cut.chars().count(), MAX_LABEL_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn renders_every_family_with_one_help_and_type_each() {
        let snapshot = FleetSnapshot {
            targets: vec![target()],
            agent: AgentHealth {
                rate_hz: 200,
                ..AgentHealth::default()
            },
        };
        let page = render(&snapshot, &mut ScrapeWindows::default());
        for line in page.lines().filter(|l| !l.starts_with('#')) {
            // name{labels} value, the value a number.
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
        }
        assert!(page.contains(
            "loopspy_incidents_total{pid=\"42\",command=\"python3 app.py --name \\\"x\\\"\\\\y\\nz\",site=\"handler (/app/app.py:7)\",cause=\"sleep\"} 3"
        ), "{page}");
        assert!(page.contains("le=\"0.05\"} 5"), "{page}");
        assert!(page.contains("le=\"+Inf\"} 10"), "{page}");
        assert!(page.contains("loopspy_targets 1"));
        let types = page.matches("# TYPE ").count();
        let helps = page.matches("# HELP ").count();
        assert_eq!(types, helps);
        assert_eq!(types, 15, "{page}");
    }

    #[test]
    fn the_busy_ratio_is_of_the_window_since_the_previous_scrape() {
        let mut windows = ScrapeWindows::default();
        let mut t = target();
        let mut snapshot = FleetSnapshot {
            targets: vec![t.clone()],
            agent: AgentHealth::default(),
        };
        let ratio = |page: &str| -> f64 {
            let line = page
                .lines()
                .find(|l| l.starts_with("loopspy_loop_busy_ratio{"))
                .unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        // First scrape: everything so far (1 of 4 s).
        assert_eq!(ratio(&render(&snapshot, &mut windows)), 0.25);
        // Then 2 s more, 1.8 of them busy.
        t.loops[0].busy_s = 2.8;
        t.loops[0].observed_s = 6.0;
        snapshot.targets = vec![t.clone()];
        assert!((ratio(&render(&snapshot, &mut windows)) - 0.9).abs() < 1e-9);
        // A scrape right after says the same, not 0/0.
        assert!((ratio(&render(&snapshot, &mut windows)) - 0.9).abs() < 1e-9);
        // A target gone is forgotten.
        snapshot.targets.clear();
        render(&snapshot, &mut windows);
        assert!(windows.last.is_empty());
    }
}
