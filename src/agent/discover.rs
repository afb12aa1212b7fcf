//! Which processes the agent watches: Python processes found by scanning `/proc`, narrowed by
//! `--pid` or `--match`. Each process (pid and start time: a reused pid is a new process) is
//! looked at once; one that is not Python is never looked at again, one that could not be
//! attached or ran no event loop is looked at again after a while.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::remote::procfs;

/// Which processes to consider.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every Python process the agent may read.
    All,
    /// Only these pids.
    Pids(Vec<i32>),
    /// Python processes whose command line matches.
    Match(regex::Regex),
}

/// What the agent concluded about one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not CPython, or outside the scope: never again.
    Ignored,
    /// Look again at this time (attach failed, or no event loop ran).
    RetryAt(Instant),
    /// Being watched.
    Watched,
}

/// Processes remembered at most (a host with more has them looked at again later).
const MAX_REMEMBERED: usize = 65_536;

/// The scan's memory.
pub struct Discovery {
    scope: Scope,
    own_pid: i32,
    known: HashMap<i32, (u64, Verdict)>,
}

impl Discovery {
    pub fn new(scope: Scope) -> Self {
        Discovery {
            scope,
            own_pid: std::process::id() as i32,
            known: HashMap::new(),
        }
    }

    /// Processes to try attaching now: in scope, Python by the cheap signs, not watched, and
    /// not waiting out a retry.
    pub fn candidates(&mut self, now: Instant) -> Vec<(i32, u64)> {
        let pids = match &self.scope {
            Scope::Pids(pids) => pids.clone(),
            _ => procfs::all_pids(),
        };
        let mut found = Vec::new();
        let mut alive = Vec::with_capacity(pids.len());
        for pid in pids {
            if pid == self.own_pid {
                continue;
            }
            let Some(started) = procfs::start_time(pid) else {
                continue;
            };
            alive.push(pid);
            match self.known.get(&pid) {
                Some((s, Verdict::Ignored | Verdict::Watched)) if *s == started => continue,
                Some((s, Verdict::RetryAt(at))) if *s == started && now < *at => continue,
                Some((s, Verdict::RetryAt(_))) if *s == started => {}
                _ => {
                    // New (or a reused pid): is it ours to watch?
                    let in_scope = match &self.scope {
                        Scope::Match(re) => re.is_match(&procfs::command_line(pid)),
                        _ => true,
                    };
                    if !in_scope || !procfs::looks_like_python(pid) {
                        self.remember(pid, started, Verdict::Ignored);
                        continue;
                    }
                }
            }
            found.push((pid, started));
        }
        // Processes gone are forgotten.
        if self.known.len() > alive.len() {
            alive.sort_unstable();
            self.known.retain(|pid, _| alive.binary_search(pid).is_ok());
        }
        found
    }

    /// `pid` (started at `started`) is watched now.
    pub fn watched(&mut self, pid: i32, started: u64) {
        self.remember(pid, started, Verdict::Watched);
    }

    /// `pid` is not Python after all (or an unsupported one): never again.
    pub fn ignore(&mut self, pid: i32, started: u64) {
        self.remember(pid, started, Verdict::Ignored);
    }

    /// Look at `pid` again after `after`.
    pub fn retry_later(&mut self, pid: i32, started: u64, after: Duration, now: Instant) {
        self.remember(pid, started, Verdict::RetryAt(now + after));
    }

    fn remember(&mut self, pid: i32, started: u64, verdict: Verdict) {
        if self.known.len() >= MAX_REMEMBERED && !self.known.contains_key(&pid) {
            self.known.clear();
        }
        self.known.insert(pid, (started, verdict));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_out_of_scope_or_not_python_is_looked_at_once() {
        // This test binary is not Python: found never, remembered as ignored.
        let own = std::process::id() as i32;
        let mut d = Discovery::new(Scope::All);
        d.own_pid = -1;
        assert!(!d.candidates(Instant::now()).iter().any(|(p, _)| *p == own));
        assert_eq!(d.known.get(&own).map(|k| k.1), Some(Verdict::Ignored));
        // A pid that does not exist is skipped; a retry waits its time.
        let mut d = Discovery::new(Scope::Pids(vec![i32::MAX]));
        assert!(d.candidates(Instant::now()).is_empty());
        let started = procfs::start_time(own).unwrap();
        let mut d = Discovery::new(Scope::Pids(vec![own]));
        d.own_pid = -1;
        let now = Instant::now();
        d.retry_later(own, started, Duration::from_secs(60), now);
        assert!(d.candidates(now).is_empty());
        assert_eq!(d.candidates(now + Duration::from_secs(61)).len(), 1);
    }
}
