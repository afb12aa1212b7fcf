//! `loopspy agent`: always-on event-loop health for every asyncio process on a host (or those
//! named), for the monitoring a team already runs.
//!
//! It finds Python processes by itself ([`discover`]), attaches as they appear through the same
//! session wiring as `record` (one sampler thread each, one channel, one analyzer each), lets
//! go of a process that runs no event loop after [`AgentSettings::probe_for`] (looking again
//! later) and of one that exits. Its main loop feeds the analyzers, counts closed incidents by
//! site and cause, appends them to rotated JSON lines, and publishes a snapshot twice a second
//! that the `/metrics` endpoint ([`http`]) renders for Prometheus ([`metrics`]).

pub mod discover;
pub mod http;
pub mod metrics;
pub mod pyroscope;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::analyzer::incident::Incident;
use crate::analyzer::{Analysis, Analyzer};
use crate::error::LoopspyError;
use crate::output::rotating::RotatingJsonl;
use crate::remote;
use crate::sample::SamplerMessage;
use crate::sampler::{SamplerOutcome, SamplerSettings};
use crate::session::{self, AnalysisSettings};
use discover::{Discovery, Scope};
use metrics::{FleetSnapshot, LoopSnapshot, TargetSnapshot, MAX_SITES_PER_TARGET};

/// Validated settings for `loopspy agent`.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Which processes to watch.
    pub scope: Scope,
    /// Rates and reader of every process's sampler.
    pub sampling: SamplerSettings,
    /// A loop busy at least this long is an incident.
    pub threshold: Duration,
    /// Where `/metrics` is served, if anywhere.
    pub listen: Option<SocketAddr>,
    /// Where incidents go as rotated JSON lines, if anywhere.
    pub incidents_dir: Option<PathBuf>,
    /// Size budget of those files together.
    pub incidents_max_bytes: u64,
    /// Stop after this long (None: until Ctrl-C or SIGTERM).
    pub duration: Option<Duration>,
    /// How often `/proc` is scanned for new processes.
    pub scan_every: Duration,
    /// How long a process may run no event loop before it is let go.
    pub probe_for: Duration,
    /// Processes watched at most at once.
    pub max_targets: usize,
    /// A Pyroscope server to push busy profiles to (`http://host:4040`).
    pub pyroscope: Option<String>,
    /// How often profiles are pushed.
    pub pyroscope_every: Duration,
}

/// How often the main loop takes what the samplers sent.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// How often the snapshot scrapes read is rebuilt.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// Capacity of the sampler -> agent channel (shared by every process's sampler).
const CHANNEL_CAPACITY: usize = 8192;
/// A process with no loop, or that could not be attached, is looked at again after this.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How often the analyzers drop their profiles (the agent reports no flame graphs; this keeps
/// memory flat over days).
const FORGET_PROFILES_EVERY: Duration = Duration::from_secs(600);

/// One process being watched.
struct Watched {
    pid: i32,
    started: u64,
    command: String,
    python_version: String,
    attached_at: Instant,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<SamplerOutcome>>,
    analyzer: Analyzer,
    /// Incidents by (site, cause); past [`MAX_SITES_PER_TARGET`] sites, `other`.
    incidents: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Samples at the previous publication, and when (the achieved rate).
    last_published: (Instant, u64),
    /// Where the window of the next profile push starts, seconds since the epoch.
    pushed_until: u64,
    achieved_rate_hz: f64,
}

/// The agent's state.
struct Agent<'a> {
    settings: &'a AgentSettings,
    started: Instant,
    discovery: Discovery,
    watched: BTreeMap<i32, Watched>,
    tx: crossbeam_channel::Sender<SamplerMessage>,
    jsonl: Option<RotatingJsonl>,
    jsonl_error_said: bool,
    health: metrics::AgentHealth,
    pusher: Option<pyroscope::Pusher>,
}

/// Runs the agent until Ctrl-C, SIGTERM or `--duration`; exit code 0.
pub fn run(settings: AgentSettings) -> Result<i32, LoopspyError> {
    let published: http::Published = Arc::new(Mutex::new(Arc::new(FleetSnapshot::default())));
    // Everything that can fail on the user's input fails before anything is attached.
    let server = match settings.listen {
        Some(addr) => Some(
            http::MetricsServer::start(addr, published.clone()).map_err(|e| {
                LoopspyError::Other(anyhow::anyhow!(
                    "cannot listen on {addr} ({e}); is another agent running? choose another address with --listen"
                ))
            })?,
        ),
        None => None,
    };
    let jsonl = match &settings.incidents_dir {
        Some(dir) => Some(
            RotatingJsonl::open(dir, "incidents.jsonl", settings.incidents_max_bytes).map_err(
                |e| {
                    LoopspyError::Other(anyhow::anyhow!(
                        "cannot write incidents to {} ({e}); choose another --incidents-dir",
                        dir.display()
                    ))
                },
            )?,
        ),
        None => None,
    };
    let interrupted = session::interrupt_flag();
    let (tx, rx) = crossbeam_channel::bounded(CHANNEL_CAPACITY);
    eprintln!(
        "loopspy agent: watching {} at {} Hz, incidents >= {} ms{}{}; Ctrl-C or SIGTERM stops",
        match &settings.scope {
            Scope::All => "every Python process with an asyncio loop".to_string(),
            Scope::Pids(pids) => format!(
                "pid {}",
                pids.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Scope::Match(re) => format!("Python processes matching `{re}`"),
        },
        settings.sampling.rate_hz,
        settings.threshold.as_secs_f64() * 1000.0,
        match &server {
            Some(s) => format!("; metrics on http://{}/metrics", s.addr),
            None => String::new(),
        },
        match &settings.incidents_dir {
            Some(dir) => format!("; incidents in {}", dir.join("incidents.jsonl").display()),
            None => String::new(),
        },
    );
    let mut agent = Agent {
        settings: &settings,
        started: Instant::now(),
        discovery: Discovery::new(settings.scope.clone()),
        watched: BTreeMap::new(),
        tx,
        jsonl,
        jsonl_error_said: false,
        health: metrics::AgentHealth {
            rate_hz: settings.sampling.rate_hz,
            ..Default::default()
        },
        pusher: settings.pyroscope.as_deref().map(pyroscope::Pusher::start),
    };
    agent.watch(&rx, &interrupted, &published);
    let pids: Vec<i32> = agent.watched.keys().copied().collect();
    agent.push_profiles();
    for pid in pids {
        agent.let_go(pid, &rx);
    }
    // What is queued for Pyroscope is sent (each push bounded by its timeout).
    drop(agent.pusher.take());
    drop(server);
    eprintln!("loopspy agent: stopped");
    Ok(0)
}

impl Agent<'_> {
    /// The main loop.
    fn watch(
        &mut self,
        rx: &Receiver<SamplerMessage>,
        interrupted: &AtomicBool,
        published: &http::Published,
    ) {
        let mut next_scan = Instant::now();
        let mut next_publish = Instant::now();
        let mut next_forget = Instant::now() + FORGET_PROFILES_EVERY;
        let mut next_push = Instant::now() + self.settings.pyroscope_every;
        loop {
            std::thread::sleep(DRAIN_EVERY);
            self.drain(rx);
            if interrupted.load(Ordering::SeqCst) {
                return;
            }
            if self
                .settings
                .duration
                .is_some_and(|d| self.started.elapsed() >= d)
            {
                return;
            }
            let now = Instant::now();
            if now >= next_scan {
                next_scan = now + self.settings.scan_every;
                self.let_go_of_the_done(rx, now);
                self.attach_new(now);
            }
            if self.pusher.is_some() && now >= next_push {
                next_push = now + self.settings.pyroscope_every;
                self.push_profiles();
            }
            if now >= next_forget {
                next_forget = now + FORGET_PROFILES_EVERY;
                for w in self.watched.values_mut() {
                    w.analyzer.forget_profiles();
                }
            }
            if now >= next_publish {
                next_publish = now + PUBLISH_EVERY;
                let snapshot = Arc::new(self.snapshot(now));
                if let Ok(mut slot) = published.lock() {
                    *slot = snapshot;
                }
            }
        }
    }

    /// Feeds what the samplers sent to their analyzers.
    fn drain(&mut self, rx: &Receiver<SamplerMessage>) {
        while let Ok(message) = rx.try_recv() {
            let pid = message.pid();
            let Some(w) = self.watched.get_mut(&pid) else {
                continue;
            };
            w.analyzer.feed(message);
            let closed = w.analyzer.take_closed();
            if !closed.is_empty() {
                self.closed(pid, &closed);
            }
        }
    }

    /// Counts and writes incidents that closed in process `pid`.
    fn closed(&mut self, pid: i32, incidents: &[Incident]) {
        let Some(w) = self.watched.get_mut(&pid) else {
            return;
        };
        let analysis = w.analyzer.analysis();
        for incident in incidents {
            let frame = analysis.symbols.frames.get(incident.culprit);
            let mut site = crate::text::frame_label(frame, false);
            if !w.incidents.contains_key(&site) && w.incidents.len() >= MAX_SITES_PER_TARGET {
                site = "other".into();
            }
            *w.incidents
                .entry(site)
                .or_default()
                .entry(incident.cause.category)
                .or_default() += 1;
        }
        if let Some(jsonl) = self.jsonl.as_mut() {
            for incident in incidents {
                let mut line = crate::output::json::incident_json(analysis, incident);
                line["command"] = serde_json::Value::String(w.command.clone());
                if let Err(err) = jsonl.write(&line) {
                    if !self.jsonl_error_said {
                        self.jsonl_error_said = true;
                        eprintln!("loopspy agent: warning: writing incidents.jsonl failed ({err}); metrics go on");
                    }
                }
            }
        }
    }

    /// Lets go of processes that exited, and of those that ran no loop for the probe time.
    fn let_go_of_the_done(&mut self, rx: &Receiver<SamplerMessage>, now: Instant) {
        let done: Vec<(i32, bool)> = self
            .watched
            .values()
            .filter_map(|w| {
                let exited = w.sampler.as_ref().is_none_or(|s| s.is_finished());
                let no_loop = now.saturating_duration_since(w.attached_at)
                    >= self.settings.probe_for
                    && w.analyzer.analysis().loops.is_empty();
                (exited || no_loop).then_some((w.pid, exited))
            })
            .collect();
        for (pid, exited) in done {
            let started = self.watched[&pid].started;
            if exited {
                eprintln!("loopspy agent: pid {pid} exited");
            } else {
                eprintln!(
                    "loopspy agent: pid {pid} ran no asyncio event loop in {:.0}s; looking again in {}s",
                    self.settings.probe_for.as_secs_f64(),
                    RETRY_AFTER.as_secs()
                );
                self.health.without_loop_total += 1;
                self.discovery.retry_later(pid, started, RETRY_AFTER, now);
            }
            self.let_go(pid, rx);
        }
    }

    /// Stops watching `pid`: its sampler stopped and joined, its last incidents counted.
    fn let_go(&mut self, pid: i32, rx: &Receiver<SamplerMessage>) {
        let Some(w) = self.watched.get_mut(&pid) else {
            return;
        };
        w.stop.store(true, Ordering::SeqCst);
        if let Some(sampler) = w.sampler.take() {
            let _ = sampler.join();
        }
        self.drain(rx);
        if let Some(w) = self.watched.get_mut(&pid) {
            w.analyzer.close_all();
            let closed = w.analyzer.take_closed();
            self.closed(pid, &closed);
        }
        self.watched.remove(&pid);
    }

    /// Attaches to the processes discovery offers.
    fn attach_new(&mut self, now: Instant) {
        for (pid, started) in self.discovery.candidates(now) {
            if self.watched.len() >= self.settings.max_targets {
                self.discovery.retry_later(pid, started, RETRY_AFTER, now);
                continue;
            }
            match remote::attach::attach_found(pid, false) {
                Ok(mut target) => {
                    // A just-started interpreter may not have its thread state yet.
                    if !target.has_threads() {
                        continue;
                    }
                    self.discovery.watched(pid, started);
                    self.health.attached_total += 1;
                    eprintln!(
                        "loopspy agent: watching pid {pid} (Python {}): {}",
                        target.python_version,
                        crate::text::name(&target.command)
                    );
                    let session = session::start(
                        target,
                        self.settings.sampling.clone(),
                        &AnalysisSettings {
                            threshold: self.settings.threshold,
                            only_thread: None,
                            stream: true,
                            timeline: false,
                        },
                        self.tx.clone(),
                    );
                    self.watched.insert(
                        pid,
                        Watched {
                            pid,
                            started,
                            command: session.command,
                            python_version: session.python_version,
                            attached_at: now,
                            stop: session.stop,
                            sampler: Some(session.sampler),
                            analyzer: session.analyzer,
                            incidents: BTreeMap::new(),
                            last_published: (now, 0),
                            pushed_until: unix_now(),
                            achieved_rate_hz: 0.0,
                        },
                    );
                }
                Err(
                    LoopspyError::NotPython { .. }
                    | LoopspyError::UnsupportedPython { .. }
                    | LoopspyError::FreeThreaded { .. },
                ) => self.discovery.ignore(pid, started),
                Err(LoopspyError::NoSuchProcess(_)) => {}
                Err(err) => {
                    self.health.attach_failures_total += 1;
                    eprintln!("loopspy agent: cannot watch pid {pid}: {err}");
                    self.discovery.retry_later(pid, started, RETRY_AFTER, now);
                }
            }
        }
    }

    /// Queues each process's busy profile since its last push, and starts the next window.
    fn push_profiles(&mut self) {
        let Some(pusher) = &self.pusher else { return };
        let until = unix_now();
        let interval_us = 1_000_000 / self.settings.sampling.rate_hz.max(1) as u64;
        for w in self.watched.values_mut() {
            let analysis = w.analyzer.analysis();
            let lines =
                crate::output::flamegraph::collapsed_lines(analysis, &analysis.busy_profile);
            let body = pyroscope::as_sample_counts(&lines, interval_us);
            if !body.is_empty() && until > w.pushed_until {
                pusher.push(pyroscope::Push {
                    name: format!(
                        "loopspy.busy{{pid={},command={}}}",
                        w.pid,
                        pyroscope::command_label(&w.command)
                    ),
                    from: w.pushed_until,
                    until,
                    sample_rate: self.settings.sampling.rate_hz,
                    body,
                });
            }
            w.pushed_until = until;
            w.analyzer.forget_profiles();
        }
    }

    /// What scrapes show now.
    fn snapshot(&mut self, now: Instant) -> FleetSnapshot {
        let targets = self
            .watched
            .values_mut()
            .map(|w| {
                let analysis = w.analyzer.analysis();
                let (at, samples) = w.last_published;
                let window = now.saturating_duration_since(at).as_secs_f64();
                if window > 0.0 {
                    w.achieved_rate_hz = analysis.samples.saturating_sub(samples) as f64 / window;
                }
                w.last_published = (now, analysis.samples);
                target_snapshot(w, w.analyzer.analysis())
            })
            .collect();
        FleetSnapshot {
            targets,
            agent: metrics::AgentHealth {
                uptime_s: self.started.elapsed().as_secs_f64(),
                pyroscope: self.pusher.as_ref().map(|p| {
                    let c = &p.counts;
                    (
                        c.sent.load(Ordering::Relaxed),
                        c.failed.load(Ordering::Relaxed),
                        c.dropped.load(Ordering::Relaxed),
                    )
                }),
                ..self.health.clone()
            },
        }
    }
}

/// Seconds since the epoch, now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn target_snapshot(w: &Watched, analysis: &Analysis) -> TargetSnapshot {
    let mut stall_buckets = [0u64; metrics::STALL_BUCKETS_S.len()];
    let (mut stall_count, mut stall_sum_ms) = (0, 0.0);
    let loops = analysis
        .loops
        .values()
        .map(|l| {
            for (bucket, le) in stall_buckets.iter_mut().zip(metrics::STALL_BUCKETS_S) {
                // Whole milliseconds below the bound.
                *bucket += l.stall_histogram.count_at_most(le * 1000.0 - 1.0);
            }
            stall_count += l.stall_histogram.count;
            stall_sum_ms += l.stall_histogram.sum;
            LoopSnapshot {
                thread_id: l.thread_id,
                thread_name: l.name.clone().unwrap_or_default(),
                busy_s: l.busy.as_secs_f64(),
                observed_s: l.observed.as_secs_f64(),
            }
        })
        .collect();
    TargetSnapshot {
        pid: w.pid,
        command: w.command.chars().take(metrics::MAX_LABEL_CHARS).collect(),
        python_version: w.python_version.clone(),
        loops,
        incidents: w
            .incidents
            .iter()
            .flat_map(|(site, causes)| {
                causes
                    .iter()
                    .map(move |(cause, n)| (site.clone(), cause.to_string(), *n))
            })
            .collect(),
        stall_buckets,
        stall_count,
        stall_sum_s: stall_sum_ms / 1000.0,
        samples: analysis.samples,
        read_errors: analysis.sample_errors,
        achieved_rate_hz: w.achieved_rate_hz,
    }
}
