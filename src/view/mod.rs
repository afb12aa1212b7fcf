//! `loopspy top`: the live view. One loop — wait briefly for samples, feed them to the
//! analyzer and the function table, handle keys, redraw about once a second. `state` holds the
//! data (updated only from samples) and the UI state, `input` maps keys to actions, `render`
//! draws a [`render::Snapshot`]. The terminal is restored on every exit path: `q`, Ctrl-C (a
//! key in raw mode, or SIGINT from outside), the target exiting, an error, or a panic
//! (ratatui's panic hook).

pub mod input;
pub mod render;
pub mod state;

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use crate::analyzer::incident::Incident;
use crate::analyzer::Analyzer;
use crate::error::LoopspyError;
use crate::output::report::format_time;
use crate::remote;
use crate::sample::SamplerMessage;
use crate::sampler::SamplerSettings;
use crate::session;
use crate::text::{self, frame_label};
use input::Action;
use render::{FeedLine, LoopHealth, Snapshot, TasksLine, STALL_MIN_MS};
use state::{FunctionTable, ThreadFilter, ViewState};

/// Settings for `loopspy top`.
#[derive(Debug, Clone)]
pub struct TopSettings {
    /// Target pid.
    pub pid: i32,
    /// Rates and reader.
    pub sampling: crate::sampler::SamplerSettings,
    /// Incident threshold.
    pub threshold: Duration,
    /// Print one text snapshot and exit (also when stdout is not a terminal).
    pub once: bool,
    /// How long to sample before a `--once` snapshot.
    pub once_after: Duration,
    /// Pause the target during reads.
    pub blocking: bool,
}

const REFRESH: Duration = Duration::from_secs(1);
const FEED_LINES: usize = 20;
/// The window of the tasks line's growth figures, seconds.
const TASK_TREND_S: f64 = 10.0;

/// Everything the view knows.
struct App {
    analyzer: Analyzer,
    table: FunctionTable,
    view: ViewState,
    interval: Duration,
    pid: i32,
    python_version: String,
    asked_rate_hz: u32,
    last_refresh: Instant,
    last_samples: u64,
    last_loop_totals: HashMap<u64, (Duration, Duration)>,
    /// The latest incidents (the analyzer streams them here), oldest first.
    feed: VecDeque<Incident>,
    /// Incidents since start or the last reset.
    feed_count: usize,
}

impl App {
    fn absorb(&mut self, message: SamplerMessage) {
        if let SamplerMessage::Sample(sample) = &message {
            self.table
                .add(sample, self.interval, self.view.include_idle);
        }
        self.analyzer.feed(message);
        for incident in self.analyzer.take_closed() {
            self.feed_count += 1;
            if self.feed.len() == FEED_LINES {
                self.feed.pop_front();
            }
            self.feed.push_back(incident);
        }
    }

    fn apply(&mut self, action: Action) {
        let v = &mut self.view;
        match action {
            Action::Quit => {}
            Action::SortNext => v.sort = v.sort.next(),
            Action::SortBy(n) => v.sort = state::SortColumn::ALL[n.min(4)],
            Action::TogglePause => v.paused = !v.paused,
            Action::NextThread => {
                let loops = self.analyzer.analysis().loops.len().max(1);
                v.threads = match v.threads {
                    ThreadFilter::Loop(n) => ThreadFilter::Loop((n + 1) % loops),
                    ThreadFilter::All => ThreadFilter::Loop(0),
                }
            }
            Action::AllThreads => v.threads = ThreadFilter::All,
            Action::ToggleIdle => v.include_idle = !v.include_idle,
            Action::Reset => {
                self.table = FunctionTable::default();
                self.feed.clear();
                self.feed_count = 0;
            }
            Action::ToggleHelp => v.help = !v.help,
        }
    }

    fn snapshot(&mut self, now: Instant) -> Snapshot {
        let analysis = self.analyzer.analysis();
        let elapsed = now
            .duration_since(self.last_refresh)
            .as_secs_f64()
            .max(1e-3);
        let rate_hz = (analysis.samples - self.last_samples) as f64 / elapsed;
        self.last_samples = analysis.samples;
        self.last_refresh = now;

        let mut loops = Vec::new();
        for l in analysis.loops.values() {
            let (prev_busy, prev_observed) = self
                .last_loop_totals
                .insert(l.thread_id, (l.busy, l.observed))
                .unwrap_or_default();
            let observed = l.observed.saturating_sub(prev_observed).as_secs_f64();
            let busy = l.busy.saturating_sub(prev_busy).as_secs_f64();
            let recent = l.recent_health(now, STALL_MIN_MS);
            loops.push(LoopHealth {
                thread_id: l.thread_id,
                name: text::name(l.name.as_deref().unwrap_or("?")).into_owned(),
                kind: match l.kind {
                    crate::analyzer::loop_detect::LoopKind::Selector => "selector",
                    crate::analyzer::loop_detect::LoopKind::Uvloop => "uvloop",
                },
                busy_pct: if observed > 0.0 {
                    100.0 * busy / observed
                } else {
                    0.0
                },
                stall_now_ms: l
                    .current_stall(now)
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .unwrap_or(0.0),
                stalls_per_min: recent.count,
                p50_ms: recent.p50_ms,
                p99_ms: recent.p99_ms,
                max_ms: recent.max_ms,
                spark: recent.longest_per_second.to_vec(),
                incidents: l.incidents,
            });
        }

        let feed = self
            .feed
            .iter()
            .rev()
            .take(FEED_LINES)
            .map(|i| {
                let f = analysis.symbols.frames.get(i.culprit);
                FeedLine {
                    time: format_time(i.start_unix)
                        .split(' ')
                        .nth(1)
                        .unwrap_or_default()
                        .to_string(),
                    duration_ms: i.duration_ms,
                    kind: match i.kind {
                        crate::analyzer::incident::IncidentKind::Blocking => "blocking",
                        crate::analyzer::incident::IncidentKind::Saturation => "saturation",
                    },
                    culprit: frame_label(f, true),
                    source: i
                        .culprit_source
                        .as_deref()
                        .map(|s| text::human(s, text::SOURCE_CHARS).into_owned()),
                    cause: i.cause.category,
                    task: i.task.as_ref().map(|t| {
                        // The task, then who awaits it, outward.
                        std::iter::once(&t.name)
                            .chain(t.awaited_by_chain.iter().map(|a| &a.name))
                            .map(|n| text::name(n).into_owned())
                            .collect::<Vec<_>>()
                            .join(" <- ")
                    }),
                }
            })
            .collect();

        let loop_ids: Vec<u64> = analysis.loops.keys().copied().collect();
        let (scope, filter) = match self.view.threads {
            ThreadFilter::Loop(n) if !loop_ids.is_empty() => {
                let tid = loop_ids[n % loop_ids.len()];
                let name = analysis.thread_names.get(&tid).map(String::as_str);
                let name = text::name(name.unwrap_or_default());
                (format!("loop thread {tid} ({name})"), Some(vec![tid]))
            }
            _ => ("all threads".to_string(), None),
        };
        let (functions, functions_total_us) = self.table.rows(filter.as_deref(), self.view.sort);
        Snapshot {
            pid: self.pid,
            python_version: self.python_version.clone(),
            rate_hz,
            asked_rate_hz: self.asked_rate_hz,
            sample_errors: analysis.sample_errors,
            gaps: analysis.gaps.count,
            loops,
            feed,
            incident_count: self.feed_count,
            tasks: (analysis.task_leaks.censuses > 0).then(|| TasksLine {
                pending: analysis.task_leaks.pending_now,
                top: analysis
                    .task_leaks
                    .pending_with_trend(4, TASK_TREND_S)
                    .into_iter()
                    .map(|t| {
                        (
                            text::name(&t.site.coroutine).into_owned(),
                            t.pending,
                            t.growth_per_s,
                            t.leak,
                        )
                    })
                    .collect(),
            }),
            functions,
            functions_total_us,
            functions_scope: scope,
            sort: self.view.sort,
            paused: self.view.paused,
            include_idle: self.view.include_idle,
            help: self.view.help,
        }
    }
}

/// Why the view ended.
enum Ending {
    Quit,
    TargetExited,
}

/// Runs the command.
pub fn run(settings: TopSettings) -> Result<i32, LoopspyError> {
    let target = remote::attach(settings.pid, settings.blocking)?;
    let interrupted = session::interrupt_flag();
    let (tx, rx) = crossbeam_channel::bounded(2048);
    let session::Session {
        pid,
        python_version,
        stop,
        sampler,
        analyzer,
        ..
    } = session::start(
        target,
        SamplerSettings {
            duration: None,
            // Await chains of incidents (and pending tasks) from the task census.
            task_census: true,
            ..settings.sampling.clone()
        },
        &session::AnalysisSettings {
            threshold: settings.threshold,
            only_thread: None,
            stream: true,
            timeline: false,
        },
        tx,
    );
    let interval = Duration::from_secs_f64(1.0 / settings.sampling.rate_hz as f64);
    let mut app = App {
        analyzer,
        table: FunctionTable::default(),
        view: ViewState::default(),
        interval,
        pid,
        python_version,
        asked_rate_hz: settings.sampling.rate_hz,
        last_refresh: Instant::now(),
        last_samples: 0,
        last_loop_totals: HashMap::new(),
        feed: VecDeque::new(),
        feed_count: 0,
    };

    let interactive = !settings.once && std::io::stdout().is_terminal();
    let result = if interactive {
        run_tui(&mut app, &rx, &interrupted)
    } else {
        Ok(run_once(&mut app, &rx, settings.once_after))
    };
    stop.store(true, Ordering::SeqCst);
    drop(rx);
    let _ = sampler.join();
    let analysis = app.analyzer.analysis();
    let longest = analysis
        .loops
        .values()
        .map(|l| l.stall_histogram.max)
        .fold(0.0, f64::max);
    let summary = format!(
        "{} incidents, longest stall {:.0} ms",
        analysis.incidents_total, longest
    );
    match result? {
        Ending::Quit if interactive => {
            eprintln!("loopspy: stopped watching pid {pid} ({summary})")
        }
        Ending::Quit => {}
        Ending::TargetExited => eprintln!("loopspy: pid {pid} exited ({summary})"),
    }
    Ok(0)
}

fn run_once(app: &mut App, rx: &Receiver<SamplerMessage>, window: Duration) -> Ending {
    let start = Instant::now();
    app.last_refresh = start;
    let deadline = start + window;
    let mut ending = Ending::Quit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(message) => app.absorb(message),
            Err(RecvTimeoutError::Timeout) => break,
            Err(RecvTimeoutError::Disconnected) => {
                ending = Ending::TargetExited;
                break;
            }
        }
    }
    print!("{}", render::text(&app.snapshot(Instant::now()), 25));
    ending
}

/// Restores the terminal when dropped, whatever path leaves the view.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn run_tui(
    app: &mut App,
    rx: &Receiver<SamplerMessage>,
    interrupted: &AtomicBool,
) -> Result<Ending, LoopspyError> {
    let mut terminal = ratatui::try_init().map_err(|e| {
        anyhow::anyhow!("cannot set up the terminal ({e}); use --once for a text snapshot")
    })?;
    let _guard = TerminalGuard;
    let mut frozen: Option<Snapshot> = None;
    let mut next_draw = Instant::now();
    let ending = loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(message) => {
                app.absorb(message);
                while let Ok(message) = rx.try_recv() {
                    app.absorb(message);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Ending::TargetExited,
        }
        if interrupted.load(Ordering::SeqCst) {
            break Ending::Quit;
        }
        let mut redraw = false;
        let mut quit = false;
        while event::poll(Duration::ZERO).map_err(anyhow::Error::from)? {
            match event::read().map_err(anyhow::Error::from)? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    if let Some(action) = input::action(key) {
                        if action == Action::Quit {
                            quit = true;
                        }
                        app.apply(action);
                        redraw = true;
                    }
                }
                Event::Resize(..) => redraw = true,
                _ => {}
            }
        }
        if quit {
            break Ending::Quit;
        }
        let now = Instant::now();
        if redraw || now >= next_draw {
            let snapshot = match (&frozen, app.view.paused) {
                (Some(old), true) => Snapshot {
                    paused: true,
                    help: app.view.help,
                    ..old.clone()
                },
                _ => app.snapshot(now),
            };
            frozen = Some(snapshot.clone());
            terminal
                .draw(|frame| render::draw(frame, &snapshot))
                .map_err(anyhow::Error::from)?;
            if now >= next_draw {
                next_draw = now + REFRESH;
            }
        }
    };
    Ok(ending)
}
