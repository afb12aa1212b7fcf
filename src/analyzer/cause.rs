//! Why did the loop block? Every busy sample of the loop thread adds evidence — was the thread
//! on a CPU, which syscall it sat in and on what (file, TCP peer, pipe), whether it waited for
//! a GIL another thread held, which libraries were on the callback's stack — and an incident's
//! cause is decided once from the evidence of all its samples, so one odd sample decides
//! nothing. The order of the rules is documented in `docs/how-it-works.md`.

use std::collections::HashMap;

use serde::Serialize;

use crate::sample::{Frame, OsState, Resource, ThreadCounters, ThreadSample};
use crate::syscalls;

/// The cause of an incident. `category` is one of the documented words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// `sleep`, `cpu`, `network`, `file`, `database`, `subprocess`, `lock`, `gil`, `logging`
    /// or `unknown`.
    pub category: &'static str,
    /// One human line: syscall, resource, library.
    pub detail: String,
    /// The syscall the loop thread waited in most, when it waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<std::borrow::Cow<'static, str>>,
    /// What it waited on (`TCP 127.0.0.1:40112 -> 127.0.0.1:5432 (PostgreSQL)`, `file /x`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Remote `address:port` for network waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// File path for file waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Library recognised on the callback's stack (`requests`, `sqlite3`, `logging`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<&'static str>,
    /// For `gil`: the thread that held the GIL, and what it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gil_holder: Option<String>,
    /// What the kernel counted for the loop thread over the incident, when it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelCounts>,
}

/// The loop thread's CPU time and bytes moved over an incident, from the kernel's running
/// totals (the difference of the first and last reading in the busy run, which cover most of
/// it: they are read every 10 ms or so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KernelCounts {
    /// On CPU in user space, ms (10 ms resolution).
    pub user_ms: u64,
    /// On CPU in the kernel, ms (10 ms resolution).
    pub system_ms: u64,
    /// Bytes passed to read()-like calls.
    pub read_bytes: u64,
    /// Bytes passed to write()-like calls.
    pub written_bytes: u64,
    /// Runnable but waiting for a CPU, ms (the kernel's `schedstat`, when it keeps it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_for_cpu_ms: Option<u64>,
    /// On a CPU by the same count (ns resolution, unlike `user_ms` + `system_ms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled_ms: Option<u64>,
}

impl KernelCounts {
    /// Runnable but mostly without a CPU: waiting at least [`STARVED_MS`] and three times as
    /// long as it ran. A thread that computes runs; one starved of CPU — a saturated host, or
    /// its cgroup's CPU quota spent — waits with the same `R` state. A CPU-bound callback on a
    /// machine twice oversubscribed runs about half the time: that is still `cpu` (measured: a
    /// 120 ms render next to two busy loops on 2 cores ran 55 ms and waited 52).
    fn is_starved(&self) -> bool {
        match (self.waited_for_cpu_ms, self.scheduled_ms) {
            (Some(waited), Some(ran)) => waited >= STARVED_MS && waited >= 3 * ran,
            _ => false,
        }
    }

    /// Share of the CPU time spent in the kernel, percent (None without CPU time to share).
    pub fn system_pct(&self) -> Option<u32> {
        let total = self.user_ms + self.system_ms;
        (total > 0).then(|| (100 * self.system_ms + total / 2) as u32 / total as u32)
    }

    /// File I/O done on CPU: the kernel had at least half of the CPU time (and two clock
    /// ticks of it), and the thread moved at least [`BULK_BYTES`]. A Python loop is user
    /// time; a big allocation's page faults are kernel time without bytes.
    fn is_bulk_io(&self) -> bool {
        self.system_ms >= 20
            && 2 * self.system_ms >= self.user_ms + self.system_ms
            && self.read_bytes + self.written_bytes >= BULK_BYTES
    }
}

/// Time runnable without a CPU that makes a busy run `starved`.
const STARVED_MS: u64 = 20;

/// Bytes a busy run must move through read()/write() to count as bulk file I/O.
const BULK_BYTES: u64 = 1 << 20;

/// Clock ticks a second in `/proc/*/stat` (`USER_HZ`: 100 in the Linux x86_64 ABI).
const TICKS_PER_SECOND: u64 = 100;

/// How many distinct files an incident's evidence counts (readings name few).
const MAX_FILES_COUNTED: usize = 16;

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

impl Cause {
    fn new(category: &'static str, detail: String) -> Self {
        Cause {
            category,
            detail,
            syscall: None,
            resource: None,
            peer: None,
            path: None,
            library: None,
            gil_holder: None,
            kernel: None,
        }
    }
}

/// A wait, keyed by what the thread waited in: the syscall and what it waited on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WaitKey {
    nr: Option<i64>,
    zero_fds: bool,
    resource: Option<Resource>,
}

/// Evidence gathered over an incident's samples. Bounded: one entry per distinct wait,
/// library and GIL holder.
#[derive(Debug, Default, Clone)]
pub struct CauseEvidence {
    samples: u32,
    running: u32,
    /// Samples whose kernel view could not be read (neither on nor off CPU).
    unreadable: u32,
    gil_waits: u32,
    gil_holders: HashMap<String, u32>,
    waits: HashMap<WaitKey, u32>,
    library_hits: HashMap<&'static str, u32>,
    /// The first and the latest kernel counter reading of the busy run.
    counters_first: Option<ThreadCounters>,
    counters_last: Option<ThreadCounters>,
    /// Files the sampler saw moving while the loop thread moved bytes, with how often.
    files_moved: HashMap<String, u32>,
}

/// Libraries recognised from the files on the callback's stack, with their category. The
/// order matters: the first pattern a frame matches names it.
const LIBRARY_HINTS: &[(&str, &str, &str)] = &[
    ("/logging/", "logging", "logging"),
    ("/sqlite3/", "database", "sqlite3"),
    ("/psycopg2/", "database", "psycopg2"),
    ("/psycopg/", "database", "psycopg"),
    ("/pymysql/", "database", "pymysql"),
    ("/MySQLdb/", "database", "MySQLdb"),
    ("/redis/", "database", "redis"),
    ("/pymongo/", "database", "pymongo"),
    ("/sqlalchemy/", "database", "SQLAlchemy"),
    ("/subprocess.py", "subprocess", "subprocess"),
    ("/requests/", "network", "requests"),
    ("/urllib3/", "network", "urllib3"),
    ("/http/client.py", "network", "http.client"),
    ("/urllib/request.py", "network", "urllib"),
    ("/botocore/", "network", "botocore"),
    ("/boto3/", "network", "boto3"),
    ("/ssl.py", "network", "ssl"),
    ("/socket.py", "network", "socket"),
    ("/concurrent/futures/", "lock", "concurrent.futures"),
    ("/queue.py", "lock", "queue"),
    ("/threading.py", "lock", "threading"),
    ("/json/", "cpu", "json"),
    ("/re.py", "cpu", "re"),
    ("/re/", "cpu", "re"),
    ("/pickle.py", "cpu", "pickle"),
];

/// Categories a library on the stack decides outright, whatever the syscall: a logging
/// handler doing network I/O is a logging problem, with a logging fix.
const DECIDING_LIBRARIES: &[&str] = &["logging", "database", "subprocess"];

/// Calls that talk to a database through a C driver (sqlite3, psycopg2, ...): these leave no
/// Python frame, so the culprit line's text is the evidence.
const DATABASE_CALLS: &[&str] = &[
    ".execute(",
    ".executemany(",
    ".executescript(",
    ".fetchall(",
    ".fetchone(",
    ".fetchmany(",
    ".commit(",
];

/// Culprit-line calls that do file I/O.
const FILE_CALLS: &[&str] = &[".write(", ".read(", "fsync(", ".flush(", "open(", ".dump("];

impl CauseEvidence {
    /// Adds one busy sample of the loop thread. `callback_frames` are the frames of the running
    /// callback (above the loop), where library hints are looked for; `gil_holder` is the thread
    /// that held the GIL in the same sample, when it was another thread.
    pub fn add(
        &mut self,
        thread: &ThreadSample,
        library: Option<&'static str>,
        gil_holder: Option<&ThreadSample>,
    ) {
        self.samples += 1;
        match &thread.os_state {
            OsState::Running => self.running += 1,
            OsState::Unknown => self.unreadable += 1,
            OsState::Waiting { syscall, resource } => {
                let futex = syscall.is_some_and(|s| s.nr == 202);
                match gil_holder {
                    Some(holder) if futex && !thread.owns_gil => {
                        self.gil_waits += 1;
                        *self.gil_holders.entry(describe_thread(holder)).or_default() += 1;
                    }
                    _ => {
                        let key = WaitKey {
                            nr: syscall.map(|s| s.nr),
                            zero_fds: syscall.is_some_and(|s| s.args[0] == 0),
                            resource: resource.clone(),
                        };
                        *self.waits.entry(key).or_default() += 1;
                    }
                }
            }
        }
        if let Some(lib) = library {
            *self.library_hits.entry(lib).or_default() += 1;
        }
        if let Some(counters) = &thread.counters {
            self.add_counters(counters);
        }
    }

    /// Where the run's kernel counts start from: the counters read with its first sample, or
    /// else the loop thread's latest reading before it (the counters of a loop idle in its
    /// selector do not move, so that reading is as good).
    pub fn counters_start(&mut self, counters: Option<&ThreadCounters>) {
        self.counters_first = counters.cloned();
    }

    /// Adds a kernel counter reading taken with a busy sample.
    pub fn add_counters(&mut self, counters: &ThreadCounters) {
        if self.counters_first.is_none() {
            self.counters_first = Some(counters.clone());
        }
        if let Some(file) = &counters.busiest_file {
            if self.files_moved.len() < MAX_FILES_COUNTED || self.files_moved.contains_key(file) {
                *self.files_moved.entry(file.clone()).or_default() += 1;
            }
        }
        self.counters_last = Some(counters.clone());
    }

    /// What the kernel counted between the run's first and latest readings.
    pub fn kernel_counts(&self) -> Option<KernelCounts> {
        let (a, b) = (self.counters_first.as_ref()?, self.counters_last.as_ref()?);
        let ms = |ticks: u64| ticks * 1000 / TICKS_PER_SECOND;
        let sched = a
            .schedstat
            .zip(b.schedstat)
            .map(|((ran_a, waited_a), (ran_b, waited_b))| {
                (
                    ran_b.saturating_sub(ran_a) / 1_000_000,
                    waited_b.saturating_sub(waited_a) / 1_000_000,
                )
            });
        Some(KernelCounts {
            user_ms: ms(b.user_ticks.saturating_sub(a.user_ticks)),
            system_ms: ms(b.system_ticks.saturating_sub(a.system_ticks)),
            read_bytes: b.read_chars.saturating_sub(a.read_chars),
            written_bytes: b.written_chars.saturating_sub(a.written_chars),
            scheduled_ms: sched.map(|(ran, _)| ran),
            waited_for_cpu_ms: sched.map(|(_, waited)| waited),
        })
    }

    /// The file the sampler saw moving most often.
    fn file_moved(&self) -> Option<&str> {
        self.files_moved
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(path, _)| path.as_str())
    }

    /// Decides the cause from everything seen. `culprit_source` is the text of the culprit
    /// line, when it could be read.
    pub fn decide(&self, culprit_source: Option<&str>) -> Cause {
        let mut cause = self.decide_category(culprit_source);
        cause.kernel = self.kernel_counts();
        cause
    }

    fn decide_category(&self, culprit_source: Option<&str>) -> Cause {
        let total = self.samples.max(1);
        let pct = |n: u32| (100.0 * n as f64 / total as f64).round() as u32;
        // A library counts when it was on the stack in a real share of the samples, not in a
        // sample or two of a neighbouring callback caught at the run's edge.
        let library = self
            .library_hits
            .iter()
            .filter(|(_, n)| **n >= 2 && 10 * **n >= 3 * total)
            .max_by_key(|(name, n)| (**n, *name))
            .map(|(name, _)| *name);
        let lib_category = library.and_then(|name| {
            LIBRARY_HINTS
                .iter()
                .find(|(_, _, n)| *n == name)
                .map(|(_, cat, _)| *cat)
        });
        let db_call = culprit_source.and_then(|text| {
            DATABASE_CALLS
                .iter()
                .find(|call| text.contains(*call))
                .map(|call| call.trim_matches(|c| c == '.' || c == '('))
        });
        let top_wait = self.waits.iter().max_by_key(|(k, n)| (**n, k.nr));
        let kernel = self.kernel_counts();
        let via = library.map(|l| format!(" via {l}")).unwrap_or_default();

        // 1. Waiting for a GIL another thread holds.
        if self.gil_waits * 3 >= total && self.gil_waits > 0 {
            let holder = self
                .gil_holders
                .iter()
                .max_by_key(|(name, n)| (**n, (*name).clone()))
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| "another thread".into());
            let mut cause = Cause::new(
                "gil",
                format!(
                    "waiting for the GIL in {}% of samples; held by {holder}",
                    pct(self.gil_waits)
                ),
            );
            cause.syscall = Some("futex".into());
            cause.gil_holder = Some(holder);
            return cause;
        }

        // Without the kernel's view of most samples, on or off CPU is not known: say that,
        // and let the stack (libraries, the culprit line) decide what it can.
        let known = total.saturating_sub(self.unreadable);
        if self.unreadable * 2 >= total {
            let mut cause = Cause::new(
                "unknown",
                format!(
                    "kernel view unreadable in {}% of samples (its kernel thread is not known){via}",
                    pct(self.unreadable)
                ),
            );
            cause.library = library;
            if let Some(category) = lib_category {
                cause.category = category;
            } else if let Some(call) = db_call {
                cause.category = "database";
                cause.detail = format!("database call `{call}()`: {}", cause.detail);
            }
            return cause;
        }
        let unreadable = if self.unreadable > 0 {
            format!(", kernel view unreadable in {}%", pct(self.unreadable))
        } else {
            String::new()
        };

        // 1b. Runnable but without a CPU most of the time: neither the code nor a wait held the
        // loop, the machine did (its load, or the container's CPU quota).
        if let Some(k) = kernel.filter(|k| k.is_starved() && self.running * 2 >= known) {
            let waited = k.waited_for_cpu_ms.unwrap_or(0);
            let ran = k.scheduled_ms.unwrap_or(0);
            let mut cause = Cause::new(
                "starved",
                format!(
                    "runnable but waiting for a CPU {waited} ms, on a CPU {ran} ms: the host is saturated or the container's CPU quota is spent{unreadable}"
                ),
            );
            cause.library = library;
            return cause;
        }

        // What the dominant wait (if any) says, to be combined below.
        let (wait_category, mut cause) = match top_wait {
            Some((wait, count)) if self.running * 2 < known => {
                let (category, cause) = self.wait_cause(wait, *count, pct(*count), &via);
                (Some(category), cause)
            }
            _ => {
                let in_kernel = kernel
                    .and_then(|k| k.system_pct())
                    .map(|p| format!(", {p}% of its CPU time in the kernel"))
                    .unwrap_or_default();
                (
                    None,
                    Cause::new(
                        "cpu",
                        format!(
                            "thread on CPU in {}% of samples{in_kernel}{unreadable}{via}",
                            pct(self.running)
                        ),
                    ),
                )
            }
        };
        cause.library = library;

        // 2. Libraries and calls that decide the category whatever the thread did.
        if let Some(category) = lib_category.filter(|c| DECIDING_LIBRARIES.contains(c)) {
            cause.category = category;
            return cause;
        }
        if let Some(call) = db_call {
            if !matches!(
                wait_category,
                Some("network" | "sleep" | "subprocess" | "lock")
            ) {
                cause.category = "database";
                cause.detail = format!("database call `{call}()`: {}", cause.detail);
                return cause;
            }
        }
        // A large write runs in the kernel (the thread shows as running, with no syscall to
        // read). The kernel's counters say so: mostly system time while bulk bytes moved.
        let file_wait = self
            .waits
            .iter()
            .filter(|(k, _)| matches!(k.resource, Some(Resource::File(_))))
            .max_by_key(|(k, n)| (**n, k.nr));
        // So does a wait the syscall alone cannot place, with bulk bytes moved: close() of a
        // file just rewritten flushes it (ext4's auto_da_alloc) after the descriptor is gone.
        let unplaced_wait = wait_category == Some("unknown");
        if let Some(counts) =
            kernel.filter(|k| (wait_category.is_none() || unplaced_wait) && k.is_bulk_io())
        {
            // The descriptor a file wait named is exact; the file whose offset moved is the
            // sampler's best look when the thread never left the CPU.
            let path = file_wait
                .and_then(|(k, _)| k.resource.as_ref().and_then(Resource::path))
                .or_else(|| self.file_moved());
            let (verb, bytes) = if counts.written_bytes >= counts.read_bytes {
                ("wrote", counts.written_bytes)
            } else {
                ("read", counts.read_bytes)
            };
            let target = match (path, verb) {
                (Some(path), "wrote") => format!(" to file {path}"),
                (Some(path), _) => format!(" from file {path}"),
                (None, _) => " (file not identified)".to_string(),
            };
            let mut file = Cause::new(
                "file",
                format!(
                    "file I/O on CPU in the kernel: {verb} {}{target}, {}% of {} ms on CPU in the kernel{via}",
                    megabytes(bytes),
                    counts.system_pct().unwrap_or(0),
                    counts.user_ms + counts.system_ms,
                ),
            );
            if let Some(path) = path {
                file.resource = Some(Resource::File(path.to_string()).to_string());
                file.path = Some(path.to_string());
            }
            file.syscall = file_wait.and_then(|(k, _)| k.nr).map(syscalls::name);
            if unplaced_wait {
                file.detail = format!("{}; {}", file.detail, cause.detail);
                file.syscall = file.syscall.or_else(|| cause.syscall.clone());
            }
            file.library = library;
            return file;
        }
        // A file wait seen in some samples plus a file-I/O culprit line says "file" too (no
        // counters: the py-spy reader, or a kernel without task I/O accounting).
        if wait_category.is_none() {
            if let Some((wait, _)) = file_wait {
                let file_io = culprit_source
                    .is_some_and(|text| FILE_CALLS.iter().any(|call| text.contains(call)));
                if file_io {
                    let on_cpu = pct(self.running);
                    let (_, mut file) = self.wait_cause(wait, 0, pct(self.waits[wait]), &via);
                    file.detail = format!(
                        "file I/O: in the kernel on CPU {on_cpu}% of samples, {}",
                        file.detail
                    );
                    file.category = "file";
                    file.library = library;
                    return file;
                }
            }
        }
        // 3. On CPU, else 4. the wait itself.
        match wait_category {
            Some(category) => {
                cause.category = category;
                if category == "network"
                    && cause.resource.as_deref().is_some_and(|r| {
                        ["PostgreSQL", "MySQL", "Redis", "MongoDB", "memcached"]
                            .iter()
                            .any(|db| r.contains(db))
                    })
                {
                    cause.category = "database";
                }
                if category == "unknown" {
                    if let Some(lib_category) = lib_category {
                        cause.category = lib_category;
                    }
                }
            }
            None => cause.category = "cpu",
        }
        cause
    }

    fn wait_cause(
        &self,
        wait: &WaitKey,
        count: u32,
        share: u32,
        via: &str,
    ) -> (&'static str, Cause) {
        let Some(nr) = wait.nr else {
            return (
                "unknown",
                Cause::new(
                    "unknown",
                    format!("off CPU in {share}% of samples, syscall unreadable{via}"),
                ),
            );
        };
        let _ = count;
        let name = syscalls::name(nr);
        let on = wait
            .resource
            .as_ref()
            .map(|r| format!(" on {r}"))
            .unwrap_or_default();
        let category = match name.as_ref() {
            "nanosleep" | "clock_nanosleep" => "sleep",
            // CPython before 3.11 sleeps with select() on no file descriptors.
            "select" | "pselect6" if wait.zero_fds => "sleep",
            "wait4" | "waitid" => "subprocess",
            "flock" | "futex" => "lock",
            "fsync" | "fdatasync" => "file",
            _ => match &wait.resource {
                Some(r) if r.is_socket() => "network",
                Some(Resource::File(_)) => "file",
                Some(Resource::Pipe) => "subprocess",
                _ => "unknown",
            },
        };
        let mut detail = format!("{name}(){on}{via} in {share}% of samples");
        if category == "sleep" && nr != 35 && nr != 230 {
            detail.push_str(" (select() on no descriptors: time.sleep)");
        }
        let mut cause = Cause::new(category, detail);
        cause.syscall = Some(name);
        if let Some(resource) = &wait.resource {
            cause.resource = Some(resource.to_string());
            cause.peer = resource.peer().map(String::from);
            cause.path = resource.path().map(String::from);
        }
        (category, cause)
    }
}

fn describe_thread(thread: &ThreadSample) -> String {
    let name = thread.name.as_deref().unwrap_or("thread");
    match thread.frames.first() {
        Some(leaf) => format!(
            "{} ({}) in {}",
            crate::text::name(name),
            thread.os_tid,
            crate::text::frame_label(leaf, true)
        ),
        None => format!("{} ({})", crate::text::name(name), thread.os_tid),
    }
}

/// The outermost recognised library on the callback's stack: the one the user's code called
/// (`urllib`, not the `socket` it uses underneath; `logging`, not the HTTP client its handler
/// uses).
pub fn library_on_stack(frames: &[Frame]) -> Option<&'static str> {
    frames.iter().rev().find_map(|frame| {
        LIBRARY_HINTS
            .iter()
            .find(|(pattern, _, _)| frame.file.contains(pattern))
            .map(|(_, _, name)| *name)
    })
}

/// What to do instead, per category: the concrete async replacement.
pub fn suggestion(category: &str) -> &'static str {
    match category {
        "sleep" => "replace time.sleep(...) with `await asyncio.sleep(...)`",
        "cpu" => "move the CPU-heavy work off the loop: `await loop.run_in_executor(process_pool, fn, ...)` (or `asyncio.to_thread` if it releases the GIL), or split it with `await asyncio.sleep(0)`",
        "network" => "use an async client (httpx.AsyncClient or aiohttp instead of requests/urllib; asyncio streams instead of blocking sockets), or `await asyncio.to_thread(...)`",
        "file" => "use aiofiles or `await asyncio.to_thread(...)` for file I/O and fsync",
        "database" => "use an async driver (asyncpg, aiomysql, aiosqlite, redis.asyncio) or `await asyncio.to_thread(...)`",
        "subprocess" => "use `await asyncio.create_subprocess_exec(...)` instead of subprocess.run/check_output",
        "lock" => "don't block on threading locks, queues or `future.result()` in the loop: `await asyncio.wrap_future(fut)`, asyncio.Lock/Queue, or `await asyncio.to_thread(...)`",
        "gil" => "another thread holds the GIL: move its CPU work to a process pool (ProcessPoolExecutor) or call code that releases the GIL",
        "logging" => "log through a logging.handlers.QueueHandler + QueueListener so handlers don't run on the loop",
        "starved" => "the process got no CPU: check the host's load and the container's CPU limit (cgroup cpu.stat nr_throttled); give it more CPU or fewer neighbours",
        _ => "inspect the stack; run blocking work with `await asyncio.to_thread(...)`",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Syscall;

    fn waiting(nr: i64, arg0: u64, resource: Option<Resource>) -> ThreadSample {
        ThreadSample {
            os_tid: 1,
            python_tid: 1,
            name: None,
            frames: vec![],
            os_state: OsState::Waiting {
                syscall: Some(Syscall {
                    nr,
                    args: [arg0, 0, 0, 0, 0, 0],
                }),
                resource,
            },
            owns_gil: false,
            every: 1,
            truncated: false,
            context_ver: None,
            handle_index: None,
            clock_after: None,
            ns_tid: None,
            counters: None,
        }
    }

    fn frame(file: &str) -> Frame {
        Frame {
            function: "f".into(),
            file: file.into(),
            line: 1,
        }
    }

    #[test]
    fn sleep_from_clock_nanosleep_and_empty_select() {
        let mut e = CauseEvidence::default();
        e.add(&waiting(230, 0, None), None, None);
        assert_eq!(e.decide(None).category, "sleep");
        let mut e = CauseEvidence::default();
        e.add(&waiting(23, 0, None), None, None);
        assert_eq!(e.decide(None).category, "sleep");
    }

    #[test]
    fn cpu_when_mostly_running() {
        let mut e = CauseEvidence::default();
        let mut running = waiting(0, 0, None);
        running.os_state = OsState::Running;
        e.add(&running, None, None);
        e.add(&running, None, None);
        e.add(&waiting(230, 0, None), None, None);
        let cause = e.decide(None);
        assert_eq!(cause.category, "cpu");
        assert!(cause.detail.contains("67%"), "{}", cause.detail);
    }

    #[test]
    fn an_unreadable_kernel_view_is_never_on_or_off_cpu() {
        let mut unknown = waiting(0, 0, None);
        unknown.os_state = OsState::Unknown;
        let mut e = CauseEvidence::default();
        for _ in 0..3 {
            e.add(&unknown, None, None);
        }
        e.add(&waiting(230, 0, None), None, None);
        let cause = e.decide(None);
        assert_eq!(cause.category, "unknown");
        assert!(
            cause.detail.contains("kernel view unreadable in 75%") && !cause.detail.contains("CPU"),
            "{}",
            cause.detail
        );
        // The stack still decides what it can.
        let mut e = CauseEvidence::default();
        for _ in 0..3 {
            e.add(&unknown, Some("logging"), None);
        }
        assert_eq!(e.decide(None).category, "logging");
        // A minority of unreadable samples is said, not counted as either.
        let mut e = CauseEvidence::default();
        let mut running = waiting(0, 0, None);
        running.os_state = OsState::Running;
        e.add(&running, None, None);
        e.add(&running, None, None);
        e.add(&unknown, None, None);
        let cause = e.decide(None);
        assert_eq!(cause.category, "cpu");
        assert!(
            cause.detail.contains("unreadable in 33%"),
            "{}",
            cause.detail
        );
    }

    #[test]
    fn socket_wait_is_network_with_peer_and_db_ports_are_databases() {
        let tcp = |port: u16| Resource::Tcp {
            local: "127.0.0.1:40000".into(),
            peer: format!("127.0.0.1:{port}"),
            service: crate::remote::resources::service_name(port),
        };
        let mut e = CauseEvidence::default();
        e.add(&waiting(45, 4, Some(tcp(8080))), None, None);
        let cause = e.decide(None);
        assert_eq!(cause.category, "network");
        assert_eq!(cause.peer.as_deref(), Some("127.0.0.1:8080"));
        assert!(
            cause.detail.contains("recvfrom() on TCP"),
            "{}",
            cause.detail
        );
        let mut e = CauseEvidence::default();
        e.add(&waiting(45, 4, Some(tcp(5432))), None, None);
        assert_eq!(e.decide(None).category, "database");
    }

    #[test]
    fn logging_on_the_stack_decides() {
        let mut e = CauseEvidence::default();
        let frames = [frame("/py/lib/python3.11/logging/__init__.py")];
        for _ in 0..3 {
            e.add(&waiting(230, 0, None), library_on_stack(&frames), None);
        }
        assert_eq!(e.decide(None).category, "logging");
    }

    #[test]
    fn a_library_seen_in_one_stray_sample_does_not_decide() {
        let mut e = CauseEvidence::default();
        let logging = [frame("/py/lib/python3.11/logging/__init__.py")];
        let app = [frame("/app/app.py")];
        e.add(&waiting(230, 0, None), library_on_stack(&logging), None);
        for _ in 0..40 {
            e.add(&waiting(230, 0, None), library_on_stack(&app), None);
        }
        assert_eq!(e.decide(None).category, "sleep");
        assert_eq!(e.decide(None).library, None);
    }

    #[test]
    fn database_call_line_on_cpu_is_database() {
        let mut e = CauseEvidence::default();
        let mut running = waiting(0, 0, None);
        running.os_state = OsState::Running;
        e.add(&running, None, None);
        let cause = e.decide(Some("cur.execute(SLOW_QUERY)"));
        assert_eq!(cause.category, "database");
        assert!(cause.detail.contains("execute()"), "{}", cause.detail);
    }

    /// A busy sample on CPU carrying a counter reading: `ticks` (user, system) and bytes
    /// (read, written) so far.
    fn on_cpu_with(ticks: (u64, u64), bytes: (u64, u64), file: Option<&str>) -> ThreadSample {
        let mut t = waiting(0, 0, None);
        t.os_state = OsState::Running;
        t.counters = Some(ThreadCounters {
            user_ticks: ticks.0,
            system_ticks: ticks.1,
            read_chars: bytes.0,
            written_chars: bytes.1,
            storage_written: bytes.1,
            busiest_file: file.map(String::from),
            schedstat: None,
        });
        t
    }

    #[test]
    fn runnable_without_a_cpu_is_starved_not_cpu() {
        let with_sched = |ran_ms: u64, waited_ms: u64| {
            let mut t = on_cpu_with((0, 0), (0, 0), None);
            t.counters.as_mut().unwrap().schedstat =
                Some((ran_ms * 1_000_000, waited_ms * 1_000_000));
            t
        };
        // 53 ms runnable, 2 of them on a CPU: the host or the quota held the loop.
        let mut e = CauseEvidence::default();
        e.add(&with_sched(1_000, 500), None, None);
        e.add(&with_sched(1_002, 551), None, None);
        let cause = e.decide(Some("n += 1"));
        assert_eq!(cause.category, "starved", "{}", cause.detail);
        assert!(
            cause.detail.contains("waiting for a CPU 51 ms"),
            "{}",
            cause.detail
        );
        let kernel = cause.kernel.unwrap();
        assert_eq!(
            (kernel.scheduled_ms, kernel.waited_for_cpu_ms),
            (Some(2), Some(51))
        );
        assert!(suggestion("starved").contains("CPU limit"));
        // Computing on a machine twice oversubscribed (running half the time) stays cpu.
        let mut e = CauseEvidence::default();
        e.add(&with_sched(1_000, 500), None, None);
        e.add(&with_sched(1_055, 552), None, None);
        assert_eq!(e.decide(None).category, "cpu");
    }

    #[test]
    fn a_write_on_cpu_in_the_kernel_is_file_naming_the_file() {
        // 64 MB written, 190 of 200 ms in the kernel, never off CPU: what a write() into the
        // page cache looks like.
        let mut e = CauseEvidence::default();
        e.counters_start(on_cpu_with((50, 10), (0, 1_000), None).counters.as_ref());
        e.add(&on_cpu_with((50, 12), (0, 1_000), None), None, None);
        e.add(
            &on_cpu_with((51, 20), (0, 1_000), Some("/srv/up.bin")),
            None,
            None,
        );
        e.add(&on_cpu_with((51, 29), (0, 64_001_000), None), None, None);
        let cause = e.decide(Some("f.write(payload)"));
        assert_eq!(cause.category, "file", "{}", cause.detail);
        assert_eq!(cause.path.as_deref(), Some("/srv/up.bin"));
        assert!(
            cause.detail.contains("wrote 64.0 MB to file /srv/up.bin"),
            "{}",
            cause.detail
        );
        let kernel = cause.kernel.unwrap();
        assert_eq!((kernel.user_ms, kernel.system_ms), (10, 190));
        assert_eq!(kernel.written_bytes, 64_000_000);
        assert!(suggestion(cause.category).contains("aiofiles"));
    }

    #[test]
    fn a_read_on_cpu_in_the_kernel_is_file_even_unnamed() {
        let mut e = CauseEvidence::default();
        e.add(&on_cpu_with((0, 0), (0, 0), None), None, None);
        e.add(&on_cpu_with((1, 9), (80_000_000, 0), None), None, None);
        let cause = e.decide(None);
        assert_eq!(cause.category, "file");
        assert_eq!(cause.path, None);
        assert!(
            cause.detail.contains("read 80.0 MB (file not identified)"),
            "{}",
            cause.detail
        );
    }

    #[test]
    fn a_close_that_flushes_a_rewritten_file_is_file() {
        // 256 MB written, then close() waits for the flush ext4 starts on a file truncated and
        // rewritten: off CPU in close() most of the time, on a descriptor already gone.
        let mut e = CauseEvidence::default();
        e.add(&on_cpu_with((0, 0), (0, 0), None), None, None);
        for _ in 0..5 {
            e.add(&waiting(3, 7, None), None, None);
        }
        e.add(&on_cpu_with((0, 12), (0, 256_000_000), None), None, None);
        let cause = e.decide(Some("f.write(payload)"));
        assert_eq!(cause.category, "file", "{}", cause.detail);
        assert_eq!(cause.syscall.as_deref(), Some("close"));
        assert!(
            cause.detail.contains("wrote 256.0 MB") && cause.detail.contains("close()"),
            "{}",
            cause.detail
        );
        // The same wait moving no bytes stays unknown: nothing says file.
        let mut e = CauseEvidence::default();
        e.add(&on_cpu_with((0, 0), (0, 0), None), None, None);
        for _ in 0..5 {
            e.add(&waiting(3, 7, None), None, None);
        }
        e.add(&on_cpu_with((0, 12), (0, 0), None), None, None);
        assert_eq!(e.decide(None).category, "unknown");
    }

    #[test]
    fn a_python_loop_and_kernel_time_without_bytes_stay_cpu() {
        // User time: a Python loop, whatever bytes a log line moved.
        let mut e = CauseEvidence::default();
        e.add(&on_cpu_with((0, 0), (0, 0), None), None, None);
        e.add(&on_cpu_with((15, 1), (0, 2_000_000), None), None, None);
        let cause = e.decide(None);
        assert_eq!(cause.category, "cpu");
        assert!(cause.detail.contains("6% of its CPU time in the kernel"));
        // Kernel time moving no bytes (page faults of a large allocation): still cpu.
        let mut e = CauseEvidence::default();
        e.add(&on_cpu_with((0, 0), (0, 0), None), None, None);
        e.add(&on_cpu_with((2, 14), (0, 4_096), None), None, None);
        let cause = e.decide(None);
        assert_eq!(cause.category, "cpu");
        assert!(cause.detail.contains("88% of its CPU time in the kernel"));
    }

    #[test]
    fn futex_with_another_gil_holder_is_gil() {
        let mut e = CauseEvidence::default();
        let mut holder = waiting(0, 0, None);
        holder.os_state = OsState::Running;
        holder.owns_gil = true;
        holder.name = Some("hog".into());
        holder.frames = vec![Frame {
            function: "spin".into(),
            file: "/app/x.py".into(),
            line: 3,
        }];
        e.add(&waiting(202, 0, None), None, Some(&holder));
        let cause = e.decide(None);
        assert_eq!(cause.category, "gil");
        assert!(cause
            .gil_holder
            .unwrap()
            .contains("hog (1) in spin (x.py:3)"));
        let mut e = CauseEvidence::default();
        e.add(&waiting(202, 0, None), None, None);
        assert_eq!(e.decide(None).category, "lock");
    }
}
