//! Kernel thread ids for Python threads on CPython < 3.11, whose thread state records only the
//! `pthread_t` (3.11+ also stores the native id, which py-spy reads), and the mapping of the
//! ids a target in its own PID namespace (a container) knows its threads by to ours.
//!
//! On glibc and musl a `pthread_t` is the address of the thread's `struct pthread`, which holds
//! the kernel tid a few hundred bytes in (0x2d0 on x86_64 glibc 2.3x). That tid is the one the
//! target's own PID namespace gives it: `1` for a container's main thread, a value that also
//! sits in a dozen other fields of the struct (flags, counts). So the offset is never taken
//! from one match: it is learned once, by one of
//! - loopspy's own `struct pthread`: where our own tid sits (an unmistakable number in ours),
//!   used when the target's struct has its self-pointers where ours does (the same libc layout);
//! - agreement of the target's threads: the one offset at which every thread read holds a live
//!   tid, a different one for each thread.
//!
//! A process with a single thread needs none of that. When none of it decides, the thread's
//! kernel id is unknown, and its kernel view is reported unreadable, never guessed. No ptrace,
//! no register reads: it works in py-spy's non-blocking mode.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use super::memory;

/// How far into `struct pthread` to look for the tid.
const WINDOW: usize = 2048;
/// Tids from here on are too large to sit in a field of `struct pthread` by chance (counts
/// and flags are small); a container's tids start at 1.
const DISTINCT_TID: u64 = 4096;
/// Threads whose candidate offsets are kept while the offset is not yet known.
const MAX_CANDIDATE_THREADS: usize = 64;

/// Cached `pthread_t` -> kernel tid mapping of one process. Tids are the target's: those of
/// its own PID namespace (see [`NamespaceTids`] for ours).
#[derive(Debug, Default)]
pub struct ThreadIdMap {
    known: HashMap<u64, u64>,
    offset: Option<usize>,
    /// While `offset` is unknown: per `pthread_t`, the offsets in its struct holding a live tid
    /// of the target, with the tid.
    candidates: HashMap<u64, Vec<(usize, u64)>>,
}

/// Where loopspy's own libc keeps the tid in `struct pthread`, and which words of it point at
/// the struct itself (the TCB's self-pointers: a fingerprint of the layout).
#[derive(Debug, Clone)]
struct Layout {
    tid_offset: usize,
    self_pointers: Vec<usize>,
}

/// [`Layout`] of the thread calling it, read from our own memory; None if our tid is not in
/// the window exactly once.
fn own_layout() -> Option<Layout> {
    static OWN: OnceLock<Option<Layout>> = OnceLock::new();
    OWN.get_or_init(|| {
        // SAFETY: both calls only return ids of the calling thread.
        let (pthread, tid) = unsafe {
            (
                libc::pthread_self() as u64,
                libc::syscall(libc::SYS_gettid) as u64,
            )
        };
        let mut window = vec![0u8; WINDOW];
        memory::read_exact(std::process::id() as i32, pthread as usize, &mut window).ok()?;
        let at: Vec<usize> = u32_matches(&window, |v| v == tid).map(|(o, _)| o).collect();
        let &[tid_offset] = &at[..] else {
            return None;
        };
        let self_pointers = self_pointers(&window, pthread, tid_offset);
        (!self_pointers.is_empty()).then_some(Layout {
            tid_offset,
            self_pointers,
        })
    })
    .clone()
}

/// 8-byte-aligned offsets below `limit` whose word is `address`.
fn self_pointers(window: &[u8], address: u64, limit: usize) -> Vec<usize> {
    (0..limit.min(window.len()) / 8)
        .map(|i| i * 8)
        .filter(|&o| memory::word_at(window, o) == address)
        .collect()
}

/// 4-byte-aligned offsets whose value passes `keep`, with the value.
fn u32_matches<'a>(
    window: &'a [u8],
    keep: impl Fn(u64) -> bool + 'a,
) -> impl Iterator<Item = (usize, u64)> + 'a {
    window
        .chunks_exact(4)
        .enumerate()
        .filter_map(move |(i, chunk)| {
            let value = u32::from_ne_bytes(chunk.try_into().ok()?) as u64;
            keep(value).then_some((i * 4, value))
        })
}

impl ThreadIdMap {
    /// The kernel tid, as the target knows it (its PID namespace's), of the thread whose
    /// `pthread_t` is `pthread`, if it can be told for sure; `ns` maps it to ours.
    pub fn resolve(&mut self, pthread: u64, ns: &mut NamespaceTids) -> Option<u64> {
        if let Some(&tid) = self.known.get(&pthread) {
            if ns.is_live(tid) {
                return Some(tid);
            }
            self.known.remove(&pthread);
        }
        let tids = ns.target_tids();
        let tid = self.find(ns.pid, pthread, &tids)?;
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
            memory::read_exact(pid, pthread as usize + offset, &mut word).ok()?;
            let value = u32::from_ne_bytes(word) as u64;
            return tids.contains(&value).then_some(value);
        }
        let mut window = vec![0u8; WINDOW];
        memory::read_exact(pid, pthread as usize, &mut window).ok()?;
        // One thread in the process: it is this one.
        if tids.len() == 1 {
            return tids.iter().next().copied();
        }
        let found: Vec<(usize, u64)> = u32_matches(&window, |v| tids.contains(&v)).collect();
        // Our libc's layout, when the target's struct is fingerprinted like ours.
        if let Some(own) = own_layout() {
            let same_layout = own
                .self_pointers
                .iter()
                .all(|&o| memory::word_at(&window, o) == pthread);
            if same_layout {
                if let Some(&(offset, tid)) = found.iter().find(|(o, _)| *o == own.tid_offset) {
                    self.learned(offset);
                    return Some(tid);
                }
            }
        }
        // A large tid found alone (or beside the pid field old glibc kept next to it, which is
        // the same number on the main thread) is no chance match.
        if let Some(&(_, tid)) = found.first() {
            if tid >= DISTINCT_TID && found.iter().all(|&(_, v)| v == tid) {
                return Some(tid);
            }
        }
        if self.candidates.len() >= MAX_CANDIDATE_THREADS {
            self.candidates.clear();
        }
        self.candidates.insert(pthread, found);
        let offset = agreed_offset(&self.candidates)?;
        self.learned(offset);
        self.candidates
            .get(&pthread)?
            .iter()
            .find(|(o, _)| *o == offset)
            .map(|&(_, tid)| tid)
    }

    fn learned(&mut self, offset: usize) {
        self.offset = Some(offset);
        self.candidates.clear();
    }
}

/// The one offset at which every thread holds a live tid, a different one for each: with two
/// threads or more, the flags and counts that happen to equal a small tid agree across threads,
/// or differ from thread to thread, but do not do both at one offset.
fn agreed_offset(candidates: &HashMap<u64, Vec<(usize, u64)>>) -> Option<usize> {
    if candidates.len() < 2 {
        return None;
    }
    let mut threads = candidates.values();
    let first = threads.next()?;
    let mut agreed: Vec<usize> = first
        .iter()
        .map(|&(offset, _)| offset)
        .filter(|&offset| {
            let mut seen = HashSet::new();
            candidates.values().all(|found| {
                found
                    .iter()
                    .find(|(o, _)| *o == offset)
                    .is_some_and(|&(_, tid)| seen.insert(tid))
            })
        })
        .collect();
    agreed.dedup();
    match agreed[..] {
        [offset] => Some(offset),
        _ => None,
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

    /// The target's live thread ids, as its own PID namespace numbers them.
    pub fn target_tids(&mut self) -> HashSet<u64> {
        let live = live_tids(self.pid);
        if !self.foreign {
            return live;
        }
        let mapped: HashSet<u64> = self.map.values().copied().collect();
        if !live.is_subset(&mapped) {
            self.map = namespace_tids(self.pid);
            self.refreshed = Some(std::time::Instant::now());
        }
        self.map
            .iter()
            .filter(|(_, host)| live.contains(host))
            .map(|(&ns, _)| ns)
            .collect()
    }

    /// Whether the target's thread `ns_tid` (its namespace's id) is alive.
    pub fn is_live(&mut self, ns_tid: u64) -> bool {
        self.host_tid(ns_tid).is_some_and(|tid| {
            std::path::Path::new(&format!("/proc/{}/task/{tid}", self.pid)).exists()
        })
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

/// `pid` as the target's own PID namespace numbers it (a container's `1`), when that namespace
/// is not ours; None for a process in loopspy's own namespace or one that is gone.
pub fn ns_pid(pid: i32) -> Option<u64> {
    if !NamespaceTids::new(pid).foreign() {
        return None;
    }
    innermost_nspid(&read_bounded(&format!("/proc/{pid}/status"), 8192)?)
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
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u64;
            tx.send((pthread, tid)).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
        });
        let (pthread, tid) = rx.recv().unwrap();
        let mut map = ThreadIdMap::default();
        let mut ns = NamespaceTids::new(pid);
        assert_eq!(map.resolve(pthread, &mut ns), Some(tid));
        let me = unsafe { libc::pthread_self() } as u64;
        let my_tid = unsafe { libc::syscall(libc::SYS_gettid) } as u64;
        assert_eq!(map.resolve(me, &mut ns), Some(my_tid));
        handle.join().unwrap();
        // Our own layout is what the target's is compared with: it must be found.
        let own = own_layout().expect("our own struct pthread holds our tid once");
        assert!(own.self_pointers.contains(&0), "{own:?}");
    }

    #[test]
    fn small_tids_are_told_by_agreement_of_threads() {
        // A container's two threads, tids 1 and 2: flags equal to 1 or 2 sit at other offsets,
        // the same in both structs or at offsets only one struct has.
        let main = vec![(0x18, 1), (0x2d0, 1), (0x310, 1), (0x308, 2)];
        let worker = vec![(0x18, 1), (0x2d0, 2), (0x308, 2), (0x310, 1), (0x610, 1)];
        let mut candidates = HashMap::new();
        candidates.insert(0x1000, main.clone());
        assert_eq!(
            agreed_offset(&candidates),
            None,
            "one thread decides nothing"
        );
        candidates.insert(0x2000, worker);
        assert_eq!(agreed_offset(&candidates), Some(0x2d0));
        // Two offsets that both tell the threads apart: undecided.
        candidates.insert(0x1000, vec![(0x2d0, 1), (0x400, 1), (0x18, 1)]);
        candidates.insert(0x2000, vec![(0x2d0, 2), (0x400, 2), (0x18, 1)]);
        assert_eq!(agreed_offset(&candidates), None);
    }
}
