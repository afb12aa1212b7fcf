//! Command-line interface. clap parses raw flags into [`RawRecordArgs`]; [`RawRecordArgs::validate`]
//! turns them into the typed [`RecordSettings`] the rest of loopspy takes. Invalid input dies
//! here, once, with one message.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

pub use crate::output::ProfileFormat;
use crate::record::{RecordSettings, TargetSpec};

/// loopspy: find out what blocks your asyncio event loop.
#[derive(Debug, Parser)]
#[command(name = "loopspy", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record a running Python process (--pid) or a command (after --), find event-loop
    /// blocking incidents, and write flame graphs and an incident report. `loopspy attach
    /// --pid PID` is the same command.
    #[command(visible_alias = "attach")]
    Record(RawRecordArgs),
    /// Print every thread's stack once, which threads run event loops, and whether each loop
    /// is idle or inside a callback (and for how long).
    Dump(RawDumpArgs),
    /// List every asyncio task of a running process once: a tree (each task, the coroutine
    /// frames it is suspended in, the tasks it waits for) and a table, or --json.
    Tasks(RawTasksArgs),
    /// Watch a running process live: loop health, incidents as they happen, and where time
    /// goes, in a full-screen terminal view (`?` shows the keys).
    Top(RawTopArgs),
    /// Watch every asyncio process on the host (or those named) for days: event-loop health
    /// and incidents as Prometheus metrics (--listen) and rotated JSON lines
    /// (--incidents-dir). Processes are found and attached as they appear, let go when they
    /// exit.
    Agent(RawAgentArgs),
}

/// Which stack reader samples the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReaderChoice {
    /// loopspy's own reader (CPython 3.8–3.13): event-loop threads every tick, the others at
    /// --other-threads-rate, code objects cached.
    Own,
    /// py-spy's reader: every thread every tick, everything re-read each time.
    PySpy,
}

impl From<ReaderChoice> for crate::sampler::ReaderKind {
    fn from(choice: ReaderChoice) -> Self {
        match choice {
            ReaderChoice::Own => crate::sampler::ReaderKind::Own,
            ReaderChoice::PySpy => crate::sampler::ReaderKind::PySpy,
        }
    }
}

/// Sampling flags shared by `record` and `top`.
#[derive(Debug, Args)]
pub struct RawSamplingArgs {
    /// Samples per second of event-loop threads.
    #[arg(short, long, default_value_t = DEFAULT_RATE_HZ)]
    pub rate: u32,
    /// Samples per second of threads that run no event loop (at most --rate).
    #[arg(long, default_value_t = DEFAULT_OTHER_THREADS_HZ, value_name = "HZ")]
    pub other_threads_rate: u32,
    /// Stack reader.
    #[arg(long, value_enum, default_value_t = ReaderChoice::Own)]
    pub reader: ReaderChoice,
}

impl RawSamplingArgs {
    fn validate(&self) -> Result<crate::sampler::SamplerSettings, String> {
        if self.rate == 0 || self.rate > MAX_RATE_HZ {
            return Err(format!(
                "--rate must be between 1 and {MAX_RATE_HZ} samples per second"
            ));
        }
        if self.other_threads_rate == 0 {
            return Err("--other-threads-rate must be at least 1 sample per second".into());
        }
        Ok(crate::sampler::SamplerSettings {
            rate_hz: self.rate,
            other_threads_hz: self.other_threads_rate.min(self.rate),
            reader: self.reader.into(),
            duration: None,
            runs_loop: crate::analyzer::loop_detect::runs_loop,
            task_census: false,
        })
    }
}

/// `loopspy top` flags.
#[derive(Debug, Args)]
pub struct RawTopArgs {
    /// PID of a running Python process.
    #[arg(short, long)]
    pub pid: i32,
    #[command(flatten)]
    pub sampling: RawSamplingArgs,
    /// A loop busy at least this long is an incident (e.g. 50ms).
    #[arg(short, long, default_value = "50ms", allow_hyphen_values = true)]
    pub threshold: String,
    /// Print one plain-text snapshot after --once-after and exit (the default when stdout is
    /// not a terminal).
    #[arg(long)]
    pub once: bool,
    /// How long to sample before a plain-text snapshot.
    #[arg(long, default_value = "2s")]
    pub once_after: String,
    /// Pause the target while reading each sample.
    #[arg(long)]
    pub blocking: bool,
}

impl RawTopArgs {
    /// Checks the flags and converts them to settings.
    pub fn validate(self) -> Result<crate::view::TopSettings, String> {
        let threshold = parse_threshold(&self.threshold)?;
        let once_after = parse_duration(&self.once_after, Unit::Seconds)
            .map_err(|e| format!("--once-after: {e}"))?;
        Ok(crate::view::TopSettings {
            pid: self.pid,
            sampling: self.sampling.validate()?,
            threshold,
            once: self.once,
            once_after,
            blocking: self.blocking,
        })
    }
}

/// `loopspy agent` flags.
#[derive(Debug, Args)]
pub struct RawAgentArgs {
    /// Watch only this process; give it several times for several. Default: every Python
    /// process with an asyncio loop that loopspy may read.
    #[arg(short, long)]
    pub pid: Vec<i32>,
    /// Watch only Python processes whose command line matches this regular expression
    /// (e.g. `uvicorn|gunicorn`).
    #[arg(long, value_name = "REGEX")]
    pub r#match: Option<String>,
    /// Samples per second of each process's event-loop threads.
    #[arg(short, long, default_value_t = DEFAULT_AGENT_RATE_HZ)]
    pub rate: u32,
    /// A loop busy at least this long is an incident (e.g. 50ms).
    #[arg(short, long, default_value = "50ms", allow_hyphen_values = true)]
    pub threshold: String,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub listen: String,
    /// Serve no metrics endpoint.
    #[arg(long, conflicts_with = "listen")]
    pub no_listen: bool,
    /// Append every incident to DIR/incidents.jsonl (rotated: .1 .. .3).
    #[arg(long, value_name = "DIR")]
    pub incidents_dir: Option<PathBuf>,
    /// Size budget of the incident files together (e.g. 64MB).
    #[arg(long, default_value = "64MB", value_name = "SIZE")]
    pub incidents_max_size: String,
    /// Stop after this long (default: until Ctrl-C or SIGTERM).
    #[arg(short, long, allow_hyphen_values = true)]
    pub duration: Option<String>,
    /// How often to look for new processes.
    #[arg(long, default_value = "2s")]
    pub scan_every: String,
    /// How long a process may run no asyncio loop before it is let go (looked at again a
    /// minute later).
    #[arg(long, default_value = "10s")]
    pub probe_for: String,
    /// Processes watched at most at once.
    #[arg(long, default_value_t = 512)]
    pub max_targets: usize,
    /// Push each process's event-loop busy profile to this Pyroscope server (e.g.
    /// http://pyroscope:4040), as folded stacks to its /ingest endpoint.
    #[arg(long, value_name = "URL")]
    pub pyroscope: Option<String>,
    /// How often profiles are pushed to --pyroscope.
    #[arg(long, default_value = "10s")]
    pub pyroscope_every: String,
}

/// The agent's default rate: incidents of 50 ms are seen within 10 ms, for about 0.012 of a
/// core per watched process (200 Hz costs 0.021; docs/performance.md).
pub const DEFAULT_AGENT_RATE_HZ: u32 = 100;

impl RawAgentArgs {
    /// Checks the flags and converts them to settings.
    pub fn validate(self) -> Result<crate::agent::AgentSettings, String> {
        use crate::agent::discover::Scope;
        let scope = match (&self.r#match, self.pid.is_empty()) {
            (Some(_), false) => return Err("give --pid or --match, not both".into()),
            (Some(re), true) => Scope::Match(regex::Regex::new(re).map_err(|e| {
                // The parser's message spans lines (the pattern, a caret, the error).
                let why = e.to_string();
                let why = why
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                format!("--match: `{re}` is not a regular expression ({why})")
            })?),
            (None, false) => Scope::Pids(self.pid.clone()),
            (None, true) => Scope::All,
        };
        let sampling = RawSamplingArgs {
            rate: self.rate,
            other_threads_rate: (self.rate / 10).max(1),
            reader: ReaderChoice::Own,
        }
        .validate()?;
        let threshold = parse_threshold(&self.threshold)?;
        let listen = if self.no_listen {
            None
        } else {
            Some(self.listen.parse().map_err(|_| {
                format!(
                    "--listen: `{}` is not an address (try 127.0.0.1:9464, or 0.0.0.0:9464 for every interface)",
                    self.listen
                )
            })?)
        };
        let duration = self
            .duration
            .as_deref()
            .map(|d| parse_duration(d, Unit::Seconds).map_err(|e| format!("--duration: {e}")))
            .transpose()?;
        let scan_every = parse_duration(&self.scan_every, Unit::Seconds)
            .map_err(|e| format!("--scan-every: {e}"))?
            .max(Duration::from_millis(100));
        let probe_for = parse_duration(&self.probe_for, Unit::Seconds)
            .map_err(|e| format!("--probe-for: {e}"))?;
        let incidents_max_bytes = parse_size(&self.incidents_max_size)
            .map_err(|e| format!("--incidents-max-size: {e}"))?;
        if self.max_targets == 0 {
            return Err("--max-targets must be at least 1".into());
        }
        if let Some(url) = &self.pyroscope {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "--pyroscope: `{url}` is not an http:// or https:// URL (e.g. http://pyroscope:4040)"
                ));
            }
        }
        let pyroscope_every = parse_duration(&self.pyroscope_every, Unit::Seconds)
            .map_err(|e| format!("--pyroscope-every: {e}"))?
            .max(Duration::from_secs(1));
        Ok(crate::agent::AgentSettings {
            scope,
            sampling,
            threshold,
            listen,
            incidents_dir: self.incidents_dir,
            incidents_max_bytes,
            duration,
            scan_every,
            probe_for,
            max_targets: self.max_targets,
            pyroscope: self.pyroscope,
            pyroscope_every,
        })
    }
}

/// Parses `64MB`, `512KB`, `1GB` or a bare number of bytes (units of 1000; `MiB` etc. of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (value, unit) =
        number_and_unit(text).ok_or_else(|| format!("`{text}` is not a size (try 64MB)"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use KB, MB or GB)"
            ))
        }
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 16_384.0 {
        return Err(format!("`{text}` is too small (at least 16KB)"));
    }
    Ok(bytes as u64)
}

/// `loopspy dump` flags.
#[derive(Debug, Args)]
pub struct RawDumpArgs {
    /// PID of a running Python process.
    #[arg(short, long)]
    pub pid: i32,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Pause the target while reading.
    #[arg(long)]
    pub blocking: bool,
    /// Stack reader.
    #[arg(long, value_enum, default_value_t = ReaderChoice::Own)]
    pub reader: ReaderChoice,
    /// With --json: also print the struct offsets loopspy reads this interpreter with
    /// (`layout`), taken from the target's own debug offsets on CPython 3.13+.
    #[arg(long, requires = "json")]
    pub show_offsets: bool,
}

impl RawDumpArgs {
    /// Converts to settings (nothing to validate beyond clap's parsing).
    pub fn validate(self) -> crate::dump::DumpSettings {
        crate::dump::DumpSettings {
            pid: self.pid,
            json: self.json,
            blocking: self.blocking,
            reader: self.reader.into(),
            show_offsets: self.show_offsets,
        }
    }
}

/// `loopspy tasks` flags.
#[derive(Debug, Args)]
pub struct RawTasksArgs {
    /// PID of a running Python process.
    #[arg(short, long)]
    pub pid: i32,
    /// Print JSON instead of the tree and table.
    #[arg(long)]
    pub json: bool,
    /// List at most this many tasks; the others are counted (`left_out`).
    #[arg(long, default_value_t = crate::remote::all_tasks::DEFAULT_MAX_TASKS)]
    pub max_tasks: usize,
}

impl RawTasksArgs {
    /// Checks the flags and converts them to settings.
    pub fn validate(self) -> Result<crate::tasks_cmd::TasksSettings, String> {
        if self.max_tasks == 0 {
            return Err("--max-tasks must be at least 1".into());
        }
        Ok(crate::tasks_cmd::TasksSettings {
            pid: self.pid,
            json: self.json,
            max_tasks: self.max_tasks,
        })
    }
}

/// `loopspy record` flags as typed by the user.
#[derive(Debug, Args)]
pub struct RawRecordArgs {
    /// PID of a running Python process to attach to; give it several times to record several
    /// processes at once.
    #[arg(short, long)]
    pub pid: Vec<i32>,
    /// Also follow every Python child process of the targets, present and future (uvicorn
    /// --workers, gunicorn, Celery): incidents per process, outputs per process plus combined.
    #[arg(long)]
    pub subprocesses: bool,
    /// Stop after this long (e.g. 30s, 2m, 500ms; a bare number is seconds). Default: until
    /// Ctrl-C or the target exits.
    #[arg(short, long, allow_hyphen_values = true)]
    pub duration: Option<String>,
    /// A loop busy at least this long is an incident (e.g. 50ms, 0.2s; a bare number is ms).
    #[arg(short, long, default_value = "50ms", allow_hyphen_values = true)]
    pub threshold: String,
    #[command(flatten)]
    pub sampling: RawSamplingArgs,
    /// Output directory (default: loopspy-<pid>-<YYYYmmdd-HHMMSS>/).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Pause the target while reading each sample (exact stacks, but slows the target).
    #[arg(long)]
    pub blocking: bool,
    /// Treat only this thread (kernel thread id, as `threading.get_native_id()`) as the event
    /// loop thread, instead of detecting loop threads automatically.
    #[arg(long)]
    pub thread: Option<u64>,
    /// CI gate: exit with code 10 and print the incidents, like test failures, if the loop was
    /// blocked at least this long (e.g. 100ms); otherwise exit with the launched command's own
    /// code. Use with a command after `--`.
    #[arg(long, value_name = "LIMIT", allow_hyphen_values = true)]
    pub fail_on_block: Option<String>,
    /// Exit with code 11 if a coroutine's pending tasks kept growing over the recording (a
    /// task leak: tasks created and never awaited or finished); checked after
    /// --fail-on-block.
    #[arg(long)]
    pub fail_on_leak: bool,
    /// Profile formats to write, comma-separated: svg (flamegraph.svg, blocking.svg),
    /// speedscope (profile.speedscope.json), collapsed (folded stacks), perfetto (trace.json),
    /// pprof (profile.pb.gz: go tool pprof, Pyroscope).
    /// report.html, report.md, incidents.json and incidents.jsonl are always written.
    #[arg(short, long, value_delimiter = ',', default_value = "svg")]
    pub format: Vec<ProfileFormat>,
    /// Command to launch and record, e.g. `-- python3 app.py --port 8000`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Default sampling rate: 1 ms resolution, incident durations within 2 ms. The own reader
/// does it for about a tenth of a core (docs/performance.md).
pub const DEFAULT_RATE_HZ: u32 = 1000;
/// Default rate of threads that run no event loop: enough for their flame graph, and cheap.
pub const DEFAULT_OTHER_THREADS_HZ: u32 = 100;
/// The highest rate accepted.
pub const MAX_RATE_HZ: u32 = 20_000;

impl RawRecordArgs {
    /// Checks the flags and converts them to settings.
    pub fn validate(self) -> Result<RecordSettings, String> {
        let target = match (self.pid.first(), self.command.is_empty()) {
            (Some(_), false) => {
                return Err("give either --pid PID or a command after --, not both".into())
            }
            (Some(_), true) => TargetSpec::Pids(self.pid.clone()),
            (None, false) => TargetSpec::Launch(self.command),
            (None, true) => {
                return Err(
                    "nothing to record: give --pid PID, or a command after -- (e.g. `loopspy record -- python3 app.py`)"
                        .into(),
                )
            }
        };
        let duration = self
            .duration
            .as_deref()
            .map(|d| parse_duration(d, Unit::Seconds).map_err(|e| format!("--duration: {e}")))
            .transpose()?;
        if duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be more than zero".into());
        }
        let threshold = parse_threshold(&self.threshold)?;
        let sampling = self.sampling.validate()?;
        let fail_on_block = self
            .fail_on_block
            .as_deref()
            .map(|t| parse_duration(t, Unit::Millis).map_err(|e| format!("--fail-on-block: {e}")))
            .transpose()?;
        if fail_on_block.is_some() && !matches!(target, TargetSpec::Launch(_)) {
            return Err(
                "--fail-on-block gates a command: give it after -- (e.g. `loopspy record --fail-on-block 100ms -- pytest -q`)"
                    .into(),
            );
        }
        Ok(RecordSettings {
            target,
            duration,
            threshold,
            sampling,
            output: self.output,
            blocking: self.blocking,
            thread: self.thread,
            formats: dedup(self.format),
            // A gated test run often starts Python workers of its own (pytest-xdist, a
            // spawned service): the gate covers them too.
            subprocesses: self.subprocesses || fail_on_block.is_some(),
            fail_on_block,
            fail_on_leak: self.fail_on_leak,
        })
    }
}

fn dedup(formats: Vec<ProfileFormat>) -> Vec<ProfileFormat> {
    let mut out = Vec::new();
    for f in formats {
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// The unit of a bare number.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Seconds.
    Seconds,
    /// Milliseconds.
    Millis,
}

/// `--threshold`: a duration (a bare number is ms), more than zero.
fn parse_threshold(text: &str) -> Result<Duration, String> {
    let threshold = parse_duration(text, Unit::Millis).map_err(|e| format!("--threshold: {e}"))?;
    if threshold.is_zero() {
        return Err("--threshold must be more than zero".into());
    }
    Ok(threshold)
}

/// `12.5ms` as (12.5, "ms"): the leading number and the unit after it, trimmed.
fn number_and_unit(text: &str) -> Option<(f64, &str)> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    Some((number.parse().ok()?, unit.trim()))
}

/// Parses `30s`, `1.5s`, `250ms`, `2m`, `1h`, `500us`, or a bare number in `bare_unit`.
pub fn parse_duration(text: &str, bare_unit: Unit) -> Result<Duration, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!(
            "`{text}` is negative: give a positive duration (30s, 250ms, 2m)"
        ));
    }
    let (value, unit) = number_and_unit(text)
        .ok_or_else(|| format!("`{text}` is not a duration (try 30s, 250ms, 2m)"))?;
    let seconds = match unit {
        "" => match bare_unit {
            Unit::Seconds => value,
            Unit::Millis => value / 1000.0,
        },
        "us" | "µs" => value / 1e6,
        "ms" => value / 1000.0,
        "s" | "sec" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use us, ms, s, m or h)"
            ))
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30s", Unit::Seconds).unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            parse_duration("50ms", Unit::Seconds).unwrap(),
            Duration::from_millis(50)
        );
        assert_eq!(
            parse_duration("50", Unit::Millis).unwrap(),
            Duration::from_millis(50)
        );
        assert_eq!(
            parse_duration("2m", Unit::Seconds).unwrap(),
            Duration::from_secs(120)
        );
        assert_eq!(
            parse_duration("1.5", Unit::Seconds).unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_duration("fast", Unit::Seconds).is_err());
        assert!(parse_duration("5 parsecs", Unit::Seconds).is_err());
    }

    fn raw(pid: Option<i32>, command: &[&str]) -> RawRecordArgs {
        RawRecordArgs {
            pid: pid.into_iter().collect(),
            subprocesses: false,
            duration: None,
            threshold: "50ms".into(),
            sampling: RawSamplingArgs {
                rate: 200,
                other_threads_rate: 100,
                reader: ReaderChoice::Own,
            },
            output: None,
            blocking: false,
            thread: None,
            format: vec![ProfileFormat::Svg],
            fail_on_block: None,
            fail_on_leak: false,
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn needs_exactly_one_target() {
        assert!(raw(None, &[]).validate().is_err());
        assert!(raw(Some(1), &["python3"]).validate().is_err());
        assert_eq!(
            raw(Some(7), &[]).validate().unwrap().target,
            TargetSpec::Pids(vec![7])
        );
    }
}
