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

fn live_tids(pid: i32) -> HashSet<u64> {
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
