//! Small readers of `/proc/<pid>/...`: the kernel's view of a process and its threads. These are
//! cheap (one `read` each) and read-only, so the sampler may call them every tick.

use std::collections::HashMap;
use std::fs;

use crate::sample::Syscall;

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
    fn own_process_is_alive_and_has_a_command_line() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(!command_line(me).is_empty());
        assert!(process_tree(me).contains(&me));
    }
}
