//! Kernel thread ids for Python threads on CPython < 3.11, whose thread state records only the
//! `pthread_t` (3.11+ also stores the native id, which py-spy reads).
//!
//! On glibc and musl a `pthread_t` is the address of the thread's `struct pthread`, which holds
//! the kernel tid a few hundred bytes in (0x2d0 on x86_64 glibc 2.3x). Rather than hard-code a
//! libc's layout, we read the first 2 KiB of the struct once per thread and look for the one
//! 4-byte-aligned value that equals a live tid of the target; the offset found is then reused.
//! No ptrace, no register reads: it works in py-spy's non-blocking mode.

use std::collections::{HashMap, HashSet};

use super::memory;

/// How far into `struct pthread` to look for the tid.
const WINDOW: usize = 2048;

/// Cached `pthread_t` -> kernel tid mapping of one process.
#[derive(Debug, Default)]
pub struct ThreadIdMap {
    known: HashMap<u64, u64>,
    offset: Option<usize>,
}

impl ThreadIdMap {
    /// The kernel tid of the thread whose `pthread_t` is `pthread`, if it can be found.
    pub fn resolve(&mut self, pid: i32, pthread: u64) -> Option<u64> {
        if let Some(&tid) = self.known.get(&pthread) {
            if std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
                return Some(tid);
            }
            self.known.remove(&pthread);
        }
        let tids = live_tids(pid);
        let tid = self.find(pid, pthread, &tids)?;
        if self.known.len() >= 4096 {
            // Thread churn: keep the map bounded; live threads are found again on demand.
            self.known.clear();
        }
        self.known.insert(pthread, tid);
        Some(tid)
    }

    fn find(&mut self, pid: i32, pthread: u64, tids: &HashSet<u64>) -> Option<u64> {
        if pthread == 0 {
            return None;
        }
        if let Some(offset) = self.offset {
            let mut word = [0u8; 4];
            if memory::read_exact(pid, pthread as usize + offset, &mut word).is_ok() {
                let value = u32::from_ne_bytes(word) as u64;
                if tids.contains(&value) {
                    return Some(value);
                }
            }
        }
        let mut window = vec![0u8; WINDOW];
        if memory::read_exact(pid, pthread as usize, &mut window).is_err() {
            return None;
        }
        let matches: Vec<(usize, u64)> = window
            .chunks_exact(4)
            .enumerate()
            .filter_map(|(i, chunk)| {
                let value = u32::from_ne_bytes(chunk.try_into().ok()?) as u64;
                tids.contains(&value).then_some((i * 4, value))
            })
            .collect();
        // The tid and the cached pid sit next to each other in glibc; for the main thread they
        // are equal, so take the first match.
        let &(offset, tid) = matches.first()?;
        if matches.iter().all(|&(_, v)| v == tid) || self.offset.is_none() {
            self.offset.get_or_insert(offset);
            return Some(tid);
        }
        None
    }
}

/// Kernel thread ids as a target in its own PID namespace (a container) knows them, mapped to
/// the ids loopspy's `/proc` knows them by. CPython 3.11+ records `gettid()` in each thread
/// state: inside a container that is the namespace's id (`1` for the main thread), and
/// `/proc/<pid>/task/1` from the host is nothing, or the wrong thread. The kernel lists each
/// thread's ids in every namespace it belongs to (`NSpid:` in `/proc/<pid>/task/<tid>/status`,
/// outermost first); the innermost one is the target's.
#[derive(Debug)]
pub struct NamespaceTids {
    pid: i32,
    /// The target's PID namespace is not ours.
    foreign: bool,
    /// Namespace tid -> our tid.
    map: HashMap<u64, u64>,
    refreshed: Option<std::time::Instant>,
}

/// Threads whose status is read at most per refresh.
const MAX_TASKS: usize = 4096;
/// A missing id is looked for again at most this often (a thread that just started).
const REFRESH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

impl NamespaceTids {
    /// For `pid`: tells whether its PID namespace differs from ours.
    pub fn new(pid: i32) -> Self {
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        let theirs = ns(&pid.to_string());
        NamespaceTids {
            pid,
            foreign: theirs.is_some() && theirs != ns("self"),
            map: HashMap::new(),
            refreshed: None,
        }
    }

    /// Whether the target lives in a PID namespace of its own.
    pub fn foreign(&self) -> bool {
        self.foreign
    }

    /// Our id of the thread the target calls `ns_tid`.
    pub fn host_tid(&mut self, ns_tid: u64) -> Option<u64> {
        if !self.foreign {
            return Some(ns_tid);
        }
        if let Some(&tid) = self.map.get(&ns_tid) {
            return Some(tid);
        }
        let now = std::time::Instant::now();
        if self
            .refreshed
            .is_some_and(|at| now.duration_since(at) < REFRESH_EVERY)
        {
            return None;
        }
        self.refreshed = Some(now);
        self.map = namespace_tids(self.pid);
        self.map.get(&ns_tid).copied()
    }

    /// The target's id of our thread `tid` (for reports), when it lives in its own namespace.
    pub fn ns_tid(&self, tid: u64) -> Option<u64> {
        if !self.foreign {
            return None;
        }
        self.map
            .iter()
            .find(|(_, &host)| host == tid)
            .map(|(&ns, _)| ns)
    }
}

/// Namespace tid -> our tid for every thread of `pid`.
fn namespace_tids(pid: i32) -> HashMap<u64, u64> {
    let mut map = HashMap::new();
    for tid in live_tids(pid).into_iter().take(MAX_TASKS) {
        let path = format!("/proc/{pid}/task/{tid}/status");
        let Some(status) = read_bounded(&path, 8192) else {
            continue;
        };
        if let Some(inner) = innermost_nspid(&status) {
            map.insert(inner, tid);
        }
    }
    map
}

/// The last id of the `NSpid:` line of a status file.
fn innermost_nspid(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line["NSpid:".len()..]
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

fn read_bounded(path: &str, limit: u64) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(limit)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// The kernel tids of `pid`'s threads, as `/proc/<pid>/task` lists them.
pub fn live_tids(pid: i32) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_lines_give_the_innermost_id() {
        let status = "Name:\tpython3\nTgid:\t4242\nNSpid:\t4242\t17\t1\nPPid:\t1\n";
        assert_eq!(innermost_nspid(status), Some(1));
        assert_eq!(innermost_nspid("NSpid:\t99\n"), Some(99));
        assert_eq!(innermost_nspid("Name: x\n"), None);
        // Our own process shares our namespace: ids are ours.
        let mut me = NamespaceTids::new(std::process::id() as i32);
        assert!(!me.foreign());
        assert_eq!(me.host_tid(12345), Some(12345));
    }

    #[test]
    fn finds_our_own_threads() {
        let pid = std::process::id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let pthread = unsafe { libc::pthread_self() } as u64;
            let tid = unsafe { libc::gettid() } as u64;
            tx.send((pthread, tid)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
        });
        let (pthread, tid) = rx.recv().unwrap();
        let mut map = ThreadIdMap::default();
        assert_eq!(map.resolve(pid, pthread), Some(tid));
        let me = unsafe { libc::pthread_self() } as u64;
        let my_tid = unsafe { libc::gettid() } as u64;
        assert_eq!(map.resolve(pid, me), Some(my_tid));
        handle.join().unwrap();
    }
}
