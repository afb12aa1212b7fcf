//! The shared vocabulary: what one sample of the target is — its threads, their frames, what the
//! kernel says each was doing, the asyncio tasks being stepped. Every layer speaks it and this
//! module imports none of them: `remote` fills it in, the sampler sends it, the analyzer, the
//! outputs and the live view read it.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// One Python frame, as read from the target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Function name; qualified (`Class.method`) on CPython 3.11+. Shared with the reader's
    /// code cache, so a sample costs no string copies.
    pub function: Arc<str>,
    /// Source file path as the target sees it.
    pub file: Arc<str>,
    /// Line number being executed (0 when unknown).
    pub line: u32,
}

/// What the kernel says a thread was doing at the sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OsState {
    /// On a CPU (or runnable).
    Running,
    /// Off CPU, inside `syscall` when it could be read, waiting on `resource` when the
    /// syscall names a file descriptor (directly, or through a poll/select fd array).
    Waiting {
        /// The system call, if `/proc/<pid>/task/<tid>/syscall` could be read.
        syscall: Option<Syscall>,
        /// What the waited-on descriptor is.
        resource: Option<Resource>,
    },
    /// The kernel's view could not be read: which kernel thread this Python thread is was not
    /// found (CPython 3.8–3.10, whose thread states record only the `pthread_t`, in a PID
    /// namespace of its own, when its libc's layout could not be told for sure). Neither on
    /// nor off CPU: every consumer says "unreadable".
    Unknown,
}

/// One thread in one sample.
#[derive(Debug, Clone)]
pub struct ThreadSample {
    /// Kernel thread id (what `threading.get_native_id()` returns).
    pub os_tid: u64,
    /// Python's thread id (`threading.get_ident()`, the `pthread_t`).
    pub python_tid: u64,
    /// Python's thread name when known (`MainThread`, ...); shared, not copied, per sample.
    pub name: Option<Arc<str>>,
    /// Frames, innermost (leaf) first.
    pub frames: Vec<Frame>,
    /// Kernel view of the thread.
    pub os_state: OsState,
    /// Whether this thread held the GIL.
    pub owns_gil: bool,
    /// How many ticks this read stands for: 1 for event-loop threads, which are read every
    /// tick; more for other threads, read at `--other-threads-rate`.
    pub every: u32,
    /// The stack was deeper than the reader reads (`remote::stacks::MAX_FRAMES`): `frames` are its
    /// innermost ones, the outermost (where the event loop is) are missing.
    pub truncated: bool,
    /// The thread's callback clock (`PyThreadState.context_ver`, own reader): +1 each time the
    /// thread enters or leaves a `contextvars.Context`. asyncio's and uvloop's handles run every
    /// callback inside its context, so two reads with the same value saw the same callback, and
    /// a changed value proves a boundary in between — however short the callbacks, whatever
    /// the allocator does with handle addresses, on every loop of the process separately.
    pub context_ver: Option<u64>,
    /// Where a selector loop is in its handle loop: `_run_once`'s `i`, the index of the
    /// handle it runs this iteration, and the callback clock of that moment (own reader; read
    /// together, see `remote::stacks::StackReader::handle_index`). With the clock it tells
    /// iterations apart: within one, the clock moves two per handle run.
    pub handle_index: Option<HandleIndex>,
    /// The callback clock read once more after the running tasks (own reader, a loop thread
    /// out of its selector, with a task running): equal to `context_ver`, no callback began or
    /// ended between the two reads, so the frames and the running task read in between are of
    /// that callback. The task is read last, and a loop of short callbacks is often in the
    /// next one by then: two samples naming the same task under two clocks prove it stepped
    /// twice only when both were read so.
    pub clock_after: Option<u64>,
    /// The thread's id inside the target's own PID namespace (a container), when that is not
    /// ours; `os_tid` is always our (the host's) id.
    pub ns_tid: Option<u64>,
    /// The kernel's running totals for this thread, when they were read with this sample: only
    /// for an event-loop thread out of its selector, at most every few milliseconds (a write
    /// into the page cache runs on CPU in the kernel, with no syscall to read; these tell it
    /// from a Python loop).
    pub counters: Option<ThreadCounters>,
}

/// A thread's CPU-time and I/O totals as the kernel keeps them (`/proc/<pid>/task/<tid>/stat`
/// and `.../io`). Running totals: what a busy run did is the difference of two readings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadCounters {
    /// Time on CPU in user space, in clock ticks (`utime`; `USER_HZ`, 100 a second).
    pub user_ticks: u64,
    /// Time on CPU in the kernel, in clock ticks (`stime`).
    pub system_ticks: u64,
    /// Bytes passed to `read()`-like calls (`rchar`: files, pipes, ttys; page-cache hits too).
    pub read_chars: u64,
    /// Bytes passed to `write()`-like calls (`wchar`).
    pub written_chars: u64,
    /// Bytes this thread dirtied for storage (`write_bytes`; a page-cache write counts at once).
    pub storage_written: u64,
    /// The regular file of the process whose offset moved most since the sampler last looked,
    /// when this reading looked (only when the thread moved bytes): a file written or read on
    /// CPU leaves no syscall to read its descriptor from.
    pub busiest_file: Option<String>,
    /// From `schedstat`: nanoseconds on a CPU and nanoseconds runnable but waiting for one
    /// (`run_delay`), when the kernel keeps them. What tells a thread starved of CPU — by the
    /// host's load or its cgroup's CPU quota — from one computing: both show as running.
    pub schedstat: Option<(u64, u64)>,
}

/// `_run_once`'s handle index and the callback clock, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleIndex {
    /// `i` of `for i in range(ntodo)`.
    pub index: u64,
    /// The thread's callback clock (`context_ver`) while `i` held it.
    pub clock: u64,
}

/// Every Python thread of the target at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The process sampled.
    pub pid: i32,
    /// Monotonic time of the read.
    pub at: Instant,
    /// Wall-clock seconds since the epoch (same clock as the target's `time.time()`).
    pub unix: f64,
    /// The threads.
    pub threads: Vec<ThreadSample>,
    /// asyncio tasks being stepped at this instant (one per busy loop at most).
    pub running_tasks: Vec<RunningTask>,
    /// Generation of the target's running-task table, when it could be read.
    pub task_generation: Option<TaskGeneration>,
}

/// What the sampler sends.
#[derive(Debug)]
pub enum SamplerMessage {
    /// A complete sample.
    Sample(Sample),
    /// The target's pending asyncio tasks counted by coroutine (about once a second).
    Census(TaskCensus),
    /// A read failed (torn state in non-blocking mode); counted and dropped.
    ReadError {
        /// The process whose read failed.
        pid: i32,
    },
}

impl SamplerMessage {
    /// The process the message is about.
    pub fn pid(&self) -> i32 {
        match self {
            SamplerMessage::Sample(sample) => sample.pid,
            SamplerMessage::Census(census) => census.pid,
            SamplerMessage::ReadError { pid } => *pid,
        }
    }
}

/// The target's pending asyncio tasks at one moment, counted by the coroutine each runs (its
/// outermost one: what `create_task` was given). What task-leak detection is fed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskCensus {
    /// The process counted.
    pub pid: i32,
    /// When.
    pub at: Instant,
    /// Pending tasks per coroutine.
    pub by_coroutine: Vec<CoroutineCount>,
    /// Tasks not counted (past the reader's bound): the counts are a lower bound.
    pub left_out: u64,
    /// Who waits for whom: every task the census found awaited by another, and every task
    /// awaiting one (bounded), so an incident can name the chain of tasks its task blocked.
    pub links: Vec<TaskLink>,
}

/// One task of a census's await graph.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskLink {
    /// Address of the task object.
    pub address: u64,
    /// `task.get_name()`.
    pub name: String,
    /// The coroutine's `__qualname__`.
    pub coroutine: String,
    /// Addresses of the tasks waiting for it.
    pub awaited_by: Vec<u64>,
}

/// Pending tasks running one coroutine (by name and file).
#[derive(Debug, Clone, PartialEq)]
pub struct CoroutineCount {
    /// The coroutine's (qualified) name.
    pub coroutine: String,
    /// Its source file.
    pub file: String,
    /// The line one of its tasks is suspended at, in the coroutine's own frame (0 when unknown).
    pub line: u32,
    /// Its pending tasks.
    pub pending: u64,
    /// The name of one of them.
    pub example_task: Option<String>,
}

/// The system call a thread is blocked in, as `/proc/<pid>/task/<tid>/syscall` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    /// x86_64 syscall number.
    pub nr: i64,
    /// The six argument registers.
    pub args: [u64; 6],
}

/// A resource a thread waits on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A regular file (or device) path.
    File(String),
    /// A TCP connection (or listening socket when `peer` is unspecified).
    Tcp {
        /// Local address:port.
        local: String,
        /// Remote address:port.
        peer: String,
        /// Well-known service of the remote port (or local port for servers), if any.
        service: Option<&'static str>,
    },
    /// A UDP socket.
    Udp {
        /// Remote address:port.
        peer: String,
    },
    /// A unix-domain socket, with its path when bound.
    Unix(Option<String>),
    /// A pipe (e.g. to a subprocess).
    Pipe,
    /// Anything else `readlink` showed (`anon_inode:[eventfd]`, an unknown socket, ...).
    Other(String),
}

impl Resource {
    /// The file path, for file resources.
    pub fn path(&self) -> Option<&str> {
        match self {
            Resource::File(path) => Some(path),
            _ => None,
        }
    }

    /// The remote `address:port`, for network sockets.
    pub fn peer(&self) -> Option<&str> {
        match self {
            Resource::Tcp { peer, .. } | Resource::Udp { peer } => Some(peer),
            _ => None,
        }
    }

    /// The well-known service on the other side (`PostgreSQL`, `HTTP`, ...).
    pub fn service(&self) -> Option<&'static str> {
        match self {
            Resource::Tcp { service, .. } => *service,
            _ => None,
        }
    }

    /// True for TCP/UDP/unix sockets.
    pub fn is_socket(&self) -> bool {
        matches!(
            self,
            Resource::Tcp { .. } | Resource::Udp { .. } | Resource::Unix(_)
        ) || matches!(self, Resource::Other(s) if s.starts_with("socket:"))
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::File(path) => write!(f, "file {path}"),
            Resource::Tcp {
                local,
                peer,
                service,
            } => {
                write!(f, "TCP {local} -> {peer}")?;
                if let Some(service) = service {
                    write!(f, " ({service})")?;
                }
                Ok(())
            }
            Resource::Udp { peer } => write!(f, "UDP {peer}"),
            Resource::Unix(Some(path)) => write!(f, "unix socket {path}"),
            Resource::Unix(None) => write!(f, "unix socket"),
            Resource::Pipe => write!(f, "pipe"),
            Resource::Other(text) => write!(f, "{text}"),
        }
    }
}

/// A task being stepped by some event loop at the time of the sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningTask {
    /// Address of the task object: its identity while it lives.
    pub address: u64,
    /// `task.get_name()`.
    pub name: String,
    /// The coroutine's `__qualname__`.
    pub coroutine: String,
}

/// Changes whenever any task step starts or ends (see `remote::tasks::TaskReader::running_tasks`): the same
/// task seen under two generations stepped twice, so its loop went round in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskGeneration {
    /// Address of the table's keys object.
    pub keys: u64,
    /// Entries ever appended to it.
    pub entries: u64,
}
