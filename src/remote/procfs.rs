//! Small readers of `/proc/<pid>/...`: the kernel's view of a process and its threads. These are
//! cheap (one `read` each) and read-only, so the sampler may call them every tick.

use std::collections::HashMap;
use std::fs;

use crate::sample::{Syscall, ThreadCounters};

/// Parses the text of a `syscall` file: `NR ARG1 .. ARG6 SP PC` in hex after the number.
pub fn parse_syscall(text: &str) -> Option<Syscall> {
    let mut fields = text.split_whitespace();
    let nr: i64 = fields.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for arg in args.iter_mut() {
        let field = fields.next()?;
        *arg = u64::from_str_radix(field.trim_start_matches("0x"), 16).ok()?;
    }
    Some(Syscall { nr, args })
}

/// What file descriptor `fd` of `pid` points at (`/path`, `socket:[inode]`, `pipe:[..]`), a
/// path as the target sees it: the kernel writes paths from loopspy's root, so a chrooted
/// target's files come with its root in front, which is taken off.
pub fn fd_target(pid: i32, fd: u64) -> Option<String> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let link = link.to_string_lossy().into_owned();
    let root = fs::read_link(format!("/proc/{pid}/root")).ok();
    Some(as_target_sees(&link, root.as_deref()))
}

/// `path` (from our root) as a target whose root is `root` (from ours) sees it.
fn as_target_sees(path: &str, root: Option<&std::path::Path>) -> String {
    let root = root.and_then(|r| r.to_str()).unwrap_or("/");
    match path.strip_prefix(root) {
        Some(rest) if root != "/" && rest.starts_with('/') => rest.to_string(),
        _ => path.to_string(),
    }
}

/// The one-letter scheduler state of a process (`R`, `S`, `D`, `Z`, ...), `None` if it is gone.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// When the process started, in clock ticks since boot (`starttime` in its `stat`): with the
/// pid, what tells a process from a later one that reuses its pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// `schedstat`'s first two numbers: nanoseconds on a CPU, nanoseconds waiting on a run queue.
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// `starttime` (field 22) of a `stat` line, counted after the parenthesised command name.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` runs CPython, by the cheap signs: an executable named `python*`, or
/// `libpython` among its first [`MAX_MAPS_LINES`] mappings (an embedding program, uWSGI).
pub fn looks_like_python(pid: i32) -> bool {
    use std::io::BufRead;
    let named_python = fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
        exe.file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("python"))
    });
    if named_python {
        return true;
    }
    let Ok(maps) = fs::File::open(format!("/proc/{pid}/maps")) else {
        return false;
    };
    std::io::BufReader::new(maps)
        .lines()
        .take(MAX_MAPS_LINES)
        .map_while(Result::ok)
        .any(|line| line.contains("libpython"))
}

/// Mappings [`looks_like_python`] reads at most (libpython is mapped early).
const MAX_MAPS_LINES: usize = 4096;

/// Every process id in `/proc`.
pub fn all_pids() -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .collect()
}

/// What the kernel says a thread is doing, from its `/proc/<pid>/task/<tid>/syscall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelView {
    /// Runnable: the kernel prints `running` for a thread in state `R`.
    Running,
    /// Off CPU, in this system call when the file names one.
    Waiting(Option<Syscall>),
}

impl KernelView {
    /// The system call waited in, if any.
    pub fn syscall(self) -> Option<Syscall> {
        match self {
            KernelView::Running => None,
            KernelView::Waiting(syscall) => syscall,
        }
    }
}

/// The `syscall` files of a process's threads, kept open and re-read in place (`pread` at
/// offset 0 makes the kernel render them afresh), so the sampler's per-tick look at a thread
/// costs one system call instead of open, read and close.
#[derive(Debug)]
pub struct ThreadFiles {
    pid: i32,
    open: HashMap<u64, Option<fs::File>>,
}

impl ThreadFiles {
    /// Most threads kept open; past it the files are closed and opened again as needed.
    const MAX_OPEN: usize = 256;

    /// For the threads of `pid`.
    pub fn new(pid: i32) -> Self {
        ThreadFiles {
            pid,
            open: HashMap::new(),
        }
    }

    /// Thread `tid` as the kernel sees it (one read), `None` when it is gone or unreadable.
    pub fn kernel_view(&mut self, tid: u64) -> Option<KernelView> {
        use std::os::unix::fs::FileExt;
        if self.open.len() >= Self::MAX_OPEN && !self.open.contains_key(&tid) {
            self.open.clear();
        }
        let pid = self.pid;
        let file = self
            .open
            .entry(tid)
            .or_insert_with(|| fs::File::open(format!("/proc/{pid}/task/{tid}/syscall")).ok());
        let mut buf = [0u8; 256];
        super::cost::proc_read();
        let read = file.as_ref().and_then(|f| f.read_at(&mut buf, 0).ok());
        let Some(n) = read.filter(|&n| n > 0) else {
            self.open.remove(&tid);
            return None;
        };
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        if text.starts_with("running") {
            return Some(KernelView::Running);
        }
        Some(KernelView::Waiting(parse_syscall(text)))
    }

    /// Closes the files of threads not in `live`.
    pub fn retain(&mut self, live: impl Fn(u64) -> bool) {
        self.open.retain(|tid, _| live(*tid));
    }
}

/// `utime` and `stime` (clock ticks) from the text of a `stat` file.
pub fn parse_stat_times(text: &str) -> Option<(u64, u64)> {
    // The command name is in parentheses and may itself contain spaces or parentheses; after
    // it come the state (field 3) ... utime (14) and stime (15).
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace().skip(11);
    let utime = fields.next()?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// Fills the byte counters of `counters` from the text of an `io` file.
pub fn parse_io(text: &str, counters: &mut ThreadCounters) -> Option<()> {
    let mut seen = 0;
    for line in text.lines() {
        let (key, value) = line.split_once(':')?;
        let value: u64 = value.trim().parse().ok()?;
        let slot = match key {
            "rchar" => &mut counters.read_chars,
            "wchar" => &mut counters.written_chars,
            "write_bytes" => &mut counters.storage_written,
            _ => continue,
        };
        *slot = value;
        seen += 1;
    }
    (seen == 3).then_some(())
}

/// The `stat` and `io` files of a process's threads, kept open and re-read in place like
/// [`ThreadFiles`]. Read only for event-loop threads while their loop is busy, at a low rate:
/// two reads each time.
#[derive(Debug)]
pub struct CounterFiles {
    pid: i32,
    open: HashMap<u64, Option<(fs::File, fs::File, Option<fs::File>)>>,
}

impl CounterFiles {
    /// Most threads kept open (event-loop threads only: a handful).
    const MAX_OPEN: usize = 64;

    /// For the threads of `pid`.
    pub fn new(pid: i32) -> Self {
        CounterFiles {
            pid,
            open: HashMap::new(),
        }
    }

    /// Thread `tid`'s CPU times and I/O totals, `None` when gone or unreadable (`io` needs
    /// the same access as reading the target's memory; a kernel without task I/O accounting
    /// has no `io` file).
    pub fn read(&mut self, tid: u64) -> Option<ThreadCounters> {
        use std::os::unix::fs::FileExt;
        if self.open.len() >= Self::MAX_OPEN && !self.open.contains_key(&tid) {
            self.open.clear();
        }
        let pid = self.pid;
        let files = self.open.entry(tid).or_insert_with(|| {
            let open = |name: &str| fs::File::open(format!("/proc/{pid}/task/{tid}/{name}"));
            Some((open("stat").ok()?, open("io").ok()?, open("schedstat").ok()))
        });
        let (stat, io, schedstat) = files.as_ref()?;
        let mut buf = [0u8; 1024];
        let mut counters = ThreadCounters::default();
        let read = |file: &fs::File, buf: &mut [u8]| -> Option<usize> {
            super::cost::proc_read();
            file.read_at(buf, 0)
                .ok()
                .filter(|&n| n > 0 && n < buf.len())
        };
        let parsed = read(stat, &mut buf)
            .and_then(|n| parse_stat_times(std::str::from_utf8(&buf[..n]).ok()?))
            .and_then(|(user, system)| {
                counters.user_ticks = user;
                counters.system_ticks = system;
                let n = read(io, &mut buf)?;
                parse_io(std::str::from_utf8(&buf[..n]).ok()?, &mut counters)
            });
        if parsed.is_none() {
            self.open.remove(&tid);
            return None;
        }
        counters.schedstat = schedstat
            .as_ref()
            .and_then(|file| read(file, &mut buf))
            .and_then(|n| parse_schedstat(std::str::from_utf8(&buf[..n]).ok()?));
        Some(counters)
    }

    /// Closes the files of threads not in `live`.
    pub fn retain(&mut self, live: impl Fn(u64) -> bool) {
        self.open.retain(|tid, _| live(*tid));
    }
}

/// Most descriptors [`open_files`] looks at: a server with thousands of sockets open costs
/// a bounded look (sockets are skipped cheaply, but each is a `readlink`).
pub const MAX_FDS_LOOKED_AT: usize = 1024;

/// One regular file a process has open, as [`open_files`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFile {
    /// The descriptor.
    pub fd: u64,
    /// Its path, as the target sees it.
    pub path: String,
    /// The file offset (`pos` in fdinfo). Moves only when a read or write call returns.
    pub offset: u64,
    /// The file's size, for a file open for writing: it grows while one long `write()` is
    /// still copying into the page cache (the offset does not move until the call returns).
    pub size: Option<u64>,
}

/// The regular files `pid` has open (`/proc/<pid>/fd`, `fdinfo`). Comparing two looks tells
/// which file is being written or read when no syscall can be read (a thread on CPU in
/// `write()`).
pub fn open_files(pid: i32) -> Vec<OpenFile> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return found;
    };
    for entry in entries.flatten().take(MAX_FDS_LOOKED_AT) {
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // Sockets, pipes and anonymous inodes have no path (and no offset worth reading).
        let Some(path) = fd_target(pid, fd).filter(|p| p.starts_with('/')) else {
            continue;
        };
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let Some(offset) = field("pos:").and_then(|v| v.parse().ok()) else {
            continue;
        };
        let writable = field("flags:")
            .and_then(|v| u32::from_str_radix(v, 8).ok())
            .is_some_and(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32);
        // stat() through the magic link reaches the target's file even in another mount
        // namespace; only regular files have a size that means progress.
        let size = fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .ok()
            .filter(|m| writable && m.is_file())
            .map(|m| m.len());
        found.push(OpenFile {
            fd,
            path,
            offset,
            size,
        });
    }
    found
}

/// True while the process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    !matches!(process_state(pid), None | Some('Z') | Some('X'))
}

/// The process's command line, arguments joined by spaces (empty if unreadable).
pub fn command_line(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Parent pid of every process on the machine.
pub fn parent_map() -> HashMap<i32, i32> {
    let mut parents = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return parents;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(close) = stat.rfind(')') {
                let mut fields = stat[close + 1..].split_whitespace();
                let _state = fields.next();
                if let Some(ppid) = fields.next().and_then(|s| s.parse().ok()) {
                    parents.insert(pid, ppid);
                }
            }
        }
    }
    parents
}

/// `pid` followed by all its descendants, breadth first.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let parents = parent_map();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        let mut children: Vec<i32> = parents
            .iter()
            .filter(|(_, p)| **p == parent)
            .map(|(c, _)| *c)
            .collect();
        children.sort_unstable();
        tree.extend(children);
        i += 1;
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_is_on_cpu_then_waiting() {
        assert_eq!(parse_schedstat("178704 176713 2\n"), Some((178704, 176713)));
        assert_eq!(parse_schedstat("x"), None);
        // The test binary's main thread has run a while (a thread just started may show 0).
        let pid = std::process::id();
        let own = CounterFiles::new(pid as i32).read(pid as u64).unwrap();
        assert!(
            own.schedstat.is_some_and(|(on_cpu, _)| on_cpu > 0),
            "{own:?}"
        );
    }

    #[test]
    fn start_time_is_field_22_whatever_the_command_name() {
        let stat = "77 (a) b) (c) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 9 9";
        assert_eq!(parse_start_time(stat), Some(123456));
        assert!(start_time(std::process::id() as i32).is_some());
    }
    use std::path::Path;

    #[test]
    fn paths_are_shown_as_a_chrooted_target_sees_them() {
        let root = std::path::Path::new("/var/lib/c1/rootfs");
        assert_eq!(
            as_target_sees("/var/lib/c1/rootfs/tmp/a.log", Some(root)),
            "/tmp/a.log"
        );
        assert_eq!(
            as_target_sees("/var/lib/c1/rootfsx/a", Some(root)),
            "/var/lib/c1/rootfsx/a"
        );
        assert_eq!(
            as_target_sees("/tmp/a.log", Some(std::path::Path::new("/"))),
            "/tmp/a.log"
        );
        assert_eq!(as_target_sees("socket:[123]", Some(root)), "socket:[123]");
    }

    #[test]
    fn parses_a_blocked_syscall_line() {
        let s = parse_syscall("45 0x4 0x7f00 0x10000 0x0 0x0 0x0 0x7ffd 0x7f12\n").unwrap();
        assert_eq!(s.nr, 45);
        assert_eq!(s.args[0], 4);
        assert_eq!(s.args[2], 0x10000);
    }

    #[test]
    fn running_thread_has_no_syscall() {
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x7ffd 0x7f12\n"), None);
    }

    #[test]
    fn parses_cpu_times_and_io_totals() {
        let stat = "42 (a (b) c) R 1 42 42 0 -1 4194304 100 0 0 0 37 12 0 0 20 0 1 0 5 0\n";
        assert_eq!(parse_stat_times(stat), Some((37, 12)));
        let io = "rchar: 10\nwchar: 64000000\nsyscr: 3\nsyscw: 1\nread_bytes: 0\n\
                  write_bytes: 63995904\ncancelled_write_bytes: 0\n";
        let mut c = ThreadCounters::default();
        assert!(parse_io(io, &mut c).is_some());
        assert_eq!(
            (c.read_chars, c.written_chars, c.storage_written),
            (10, 64_000_000, 63_995_904)
        );
        assert!(parse_io("rchar: 1\n", &mut ThreadCounters::default()).is_none());
    }

    #[test]
    fn reads_own_threads_counters_and_file_offsets() {
        use std::io::Write;
        let me = std::process::id() as i32;
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u64;
        let mut counters = CounterFiles::new(me);
        let before = counters.read(tid).expect("own thread's stat and io");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("written.bin");
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(&vec![7u8; 3 << 20]).unwrap();
        let after = counters.read(tid).unwrap();
        assert!(after.written_chars >= before.written_chars + (3 << 20));
        let open = open_files(me);
        let listed = open
            .iter()
            .find(|f| Path::new(&f.path) == path)
            .expect("the open file is listed");
        assert_eq!((listed.offset, listed.size), (3 << 20, Some(3 << 20)));
    }

    #[test]
    fn own_process_is_alive_and_has_a_command_line() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(!command_line(me).is_empty());
        assert!(process_tree(me).contains(&me));
    }
}
