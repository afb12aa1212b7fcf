//! Drawing the live view from a [`Snapshot`] — a plain value built from the analyzer and the
//! function table — so the same snapshot can be drawn with ratatui or printed as text
//! (`--once`, or when stdout is not a terminal).

use std::fmt::Write as _;

use crate::text;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table};
use ratatui::Frame;

use super::input::HELP;
use super::state::{Row as FunctionRow, SortColumn};

/// Health of one event loop.
#[derive(Debug, Clone)]
pub struct LoopHealth {
    /// Kernel thread id.
    pub thread_id: u64,
    /// Thread name.
    pub name: String,
    /// `selector` or `uvloop`.
    pub kind: &'static str,
    /// Busy share since the previous refresh, %.
    pub busy_pct: f64,
    /// Current stall, ms (0 when idle).
    pub stall_now_ms: f64,
    /// Stalls of at least [`STALL_MIN_MS`] in the last minute.
    pub stalls_per_min: usize,
    /// Percentiles of those stalls, ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub max_ms: f64,
    /// Longest stall per second over the last minute, ms, oldest first.
    pub spark: Vec<u64>,
    /// Incidents so far.
    pub incidents: u32,
}

/// A busy run shorter than this is not counted as a stall in the live view.
pub const STALL_MIN_MS: f64 = 10.0;

/// One incident in the feed.
#[derive(Debug, Clone)]
pub struct FeedLine {
    /// Local time.
    pub time: String,
    /// Duration, ms.
    pub duration_ms: f64,
    /// `blocking` or `saturation`.
    pub kind: &'static str,
    /// `function (file:line)`.
    pub culprit: String,
    /// Culprit source line.
    pub source: Option<String>,
    /// Cause category.
    pub cause: &'static str,
    /// Task name.
    pub task: Option<String>,
}

/// The target's pending tasks, from the task census.
#[derive(Debug, Clone)]
pub struct TasksLine {
    /// Pending tasks at the last census.
    pub pending: u64,
    /// The most numerous coroutines: name, pending tasks, growth lately (tasks a second),
    /// whether it leaks.
    pub top: Vec<(String, u64, f64, bool)>,
}

/// Everything one frame shows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Target pid.
    pub pid: i32,
    /// Its Python version.
    pub python_version: String,
    /// Samples per second achieved since the previous refresh.
    pub rate_hz: f64,
    /// Rate asked for.
    pub asked_rate_hz: u32,
    /// Failed reads so far.
    pub sample_errors: u64,
    /// Sampling gaps so far.
    pub gaps: u64,
    /// Loops.
    pub loops: Vec<LoopHealth>,
    /// Latest incidents, newest first.
    pub feed: Vec<FeedLine>,
    /// Incidents in all (since reset).
    pub incident_count: usize,
    /// Pending tasks, once a task census was taken.
    pub tasks: Option<TasksLine>,
    /// Function table rows and the total time they share.
    pub functions: Vec<FunctionRow>,
    /// 100% of the function table, µs.
    pub functions_total_us: u64,
    /// What the function table covers (`loop thread 4242 (MainThread)`, `all threads`).
    pub functions_scope: String,
    /// Sort column.
    pub sort: SortColumn,
    /// Display frozen.
    pub paused: bool,
    /// Idle samples counted.
    pub include_idle: bool,
    /// Help shown.
    pub help: bool,
}

const SORT_HEADERS: [&str; 5] = ["own%", "total%", "own s", "total s", "function"];

fn pct(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * part as f64 / total as f64
    }
}

fn title(s: &Snapshot) -> String {
    format!(
        "loopspy top — pid {} (Python {}) · {:.0}/{} Hz · {} skipped reads · {} incidents{}{}{}",
        s.pid,
        s.python_version,
        s.rate_hz,
        s.asked_rate_hz,
        s.sample_errors,
        s.incident_count,
        match s.gaps {
            0 => String::new(),
            n => format!(" · {n} sampling gaps"),
        },
        if s.paused { " · PAUSED" } else { "" },
        if s.include_idle { " · idle shown" } else { "" },
    )
}

fn loop_line(l: &LoopHealth) -> String {
    format!(
        "Loop {} {} ({})  busy {:.1}%  stall now {:.0} ms  incidents {}",
        l.thread_id, l.name, l.kind, l.busy_pct, l.stall_now_ms, l.incidents
    )
}

fn stall_line(l: &LoopHealth) -> String {
    format!(
        "  stalls >= {STALL_MIN_MS:.0} ms: {}/min  p50 {:.0}  p99 {:.0}  max {:.0} ms",
        l.stalls_per_min, l.p50_ms, l.p99_ms, l.max_ms
    )
}

fn feed_line(f: &FeedLine) -> String {
    let mut line = format!(
        "{} {:>6.0} ms {:<10} {}",
        f.time, f.duration_ms, f.cause, f.culprit
    );
    // Blocking is the usual kind; only saturation is worth the width.
    if f.kind != "blocking" {
        let _ = write!(line, " ({})", f.kind);
    }
    if let Some(task) = &f.task {
        let _ = write!(line, " [{task}]");
    }
    if let Some(source) = &f.source {
        let _ = write!(line, " `{source}`");
    }
    line
}

/// `Tasks: 202 pending — notify_subscribers 184 (+19.7/s LEAK) · worker 16 · ...`
fn tasks_line(t: &TasksLine) -> String {
    let mut line = format!("Tasks: {} pending", t.pending);
    for (i, (name, pending, growth, leak)) in t.top.iter().enumerate() {
        line += if i == 0 { " — " } else { " · " };
        let _ = write!(line, "{name} {pending}");
        if *leak {
            let _ = write!(line, " ({growth:+.1}/s LEAK)");
        } else if growth.abs() >= 0.5 {
            let _ = write!(line, " ({growth:+.1}/s)");
        }
    }
    line
}

fn short(path: &str) -> &str {
    crate::analyzer::short_path(path)
}

/// Draws the whole view.
pub fn draw(frame: &mut Frame, s: &Snapshot) {
    let area = frame.area();
    let loop_rows = (s.loops.len().min(2) * 3).max(1) as u16;
    let task_rows = u16::from(s.tasks.is_some());
    let [title_area, loops_area, tasks_area, feed_area, table_area, footer_area] =
        Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(loop_rows),
            Constraint::Length(task_rows),
            Constraint::Length(7),
            Constraint::Min(4),
            Constraint::Length(1),
        ])
        .areas(area);

    frame.render_widget(
        Paragraph::new(title(s)).style(Style::new().add_modifier(Modifier::BOLD)),
        title_area,
    );
    draw_loops(frame, loops_area, s);
    if let Some(tasks) = &s.tasks {
        let leaking = tasks.top.iter().any(|t| t.3);
        let style = if leaking {
            Style::new().add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        frame.render_widget(Paragraph::new(tasks_line(tasks)).style(style), tasks_area);
    }

    let feed: Vec<Line> = if s.feed.is_empty() {
        vec![Line::from("no incidents yet".dim())]
    } else {
        s.feed.iter().map(|f| Line::from(feed_line(f))).collect()
    };
    frame.render_widget(
        Paragraph::new(feed).block(
            Block::new()
                .borders(Borders::TOP)
                .title(format!(" Incidents ({}) — newest first ", s.incident_count)),
        ),
        feed_area,
    );

    draw_functions(frame, table_area, s);
    frame.render_widget(
        Paragraph::new(
            "q quit · s/1-5 sort · p pause · t thread · a all · i idle · r reset · ? help".dim(),
        ),
        footer_area,
    );
    if s.help {
        draw_help(frame, area);
    }
}

fn draw_loops(frame: &mut Frame, area: Rect, s: &Snapshot) {
    if s.loops.is_empty() {
        frame.render_widget(
            Paragraph::new("No asyncio event loop seen yet in this process."),
            area,
        );
        return;
    }
    let rows = Layout::vertical(vec![Constraint::Length(1); area.height as usize]).split(area);
    for (i, l) in s.loops.iter().take(2).enumerate() {
        if let Some(line_area) = rows.get(i * 3) {
            frame.render_widget(
                Paragraph::new(loop_line(l)).style(Style::new().add_modifier(Modifier::BOLD)),
                *line_area,
            );
        }
        if let Some(line_area) = rows.get(i * 3 + 1) {
            frame.render_widget(Paragraph::new(stall_line(l)), *line_area);
        }
        if let Some(spark_area) = rows.get(i * 3 + 2) {
            let [label, spark] =
                Layout::horizontal([Constraint::Length(20), Constraint::Min(1)]).areas(*spark_area);
            frame.render_widget(Paragraph::new("  longest stall/s:".dim()), label);
            frame.render_widget(
                Sparkline::default()
                    .data(l.spark.iter().copied())
                    .style(Style::new().yellow()),
                spark,
            );
        }
    }
}

fn draw_functions(frame: &mut Frame, area: Rect, s: &Snapshot) {
    let header = Row::new(SORT_HEADERS.iter().zip(SortColumn::ALL).map(|(h, col)| {
        let cell = Cell::from(*h);
        if col == s.sort {
            cell.style(Style::new().add_modifier(Modifier::REVERSED))
        } else {
            cell
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = s.functions.iter().map(|r| {
        Row::new(vec![
            Cell::from(format!("{:.1}", pct(r.own_us, s.functions_total_us))),
            Cell::from(format!("{:.1}", pct(r.total_us, s.functions_total_us))),
            Cell::from(format!("{:.2}", r.own_us as f64 / 1e6)),
            Cell::from(format!("{:.2}", r.total_us as f64 / 1e6)),
            Cell::from(format!(
                "{} ({}:{})",
                text::name(&r.function),
                text::human(short(&r.file), text::PATH_CHARS),
                r.line
            )),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Min(20),
        ],
    )
    .header(header)
    .block(
        Block::new()
            .borders(Borders::TOP)
            .title(format!(" Functions — {} ", s.functions_scope)),
    );
    frame.render_widget(table, area);
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let width = 60.min(area.width);
    let height = (HELP.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(keys, what)| {
            Line::from(vec![
                Span::from(format!("{keys:<16}")).bold(),
                Span::from(*what),
            ])
        })
        .collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys ")),
        popup,
    );
}

/// The snapshot as plain text, for `--once` and non-terminal output.
pub fn text(s: &Snapshot, max_functions: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", title(s));
    if s.loops.is_empty() {
        let _ = writeln!(out, "No asyncio event loop seen in this process.");
    }
    for l in &s.loops {
        let _ = writeln!(out, "{}\n{}", loop_line(l), stall_line(l));
    }
    if let Some(tasks) = &s.tasks {
        let _ = writeln!(out, "{}", tasks_line(tasks));
    }
    let _ = writeln!(out, "\nIncidents ({}), newest first:", s.incident_count);
    if s.feed.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for f in &s.feed {
        let _ = writeln!(out, "  {}", feed_line(f));
    }
    let _ = writeln!(out, "\nFunctions — {}:", s.functions_scope);
    let _ = writeln!(
        out,
        "  {:>6} {:>7} {:>7} {:>8}  function",
        "own%", "total%", "own s", "total s"
    );
    for r in s.functions.iter().take(max_functions) {
        let _ = writeln!(
            out,
            "  {:>6.1} {:>7.1} {:>7.2} {:>8.2}  {} ({}:{})",
            pct(r.own_us, s.functions_total_us),
            pct(r.total_us, s.functions_total_us),
            r.own_us as f64 / 1e6,
            r.total_us as f64 / 1e6,
            text::name(&r.function),
            text::human(short(&r.file), text::PATH_CHARS),
            r.line
        );
    }
    out
}
