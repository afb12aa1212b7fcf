//! Why did the loop block? Every busy sample of the loop thread adds evidence — was the thread
//! on a CPU, which syscall it sat in and on which file or socket, whether it was waiting for a
//! GIL another thread held, which library frames were on the stack — and an incident's cause is
//! decided from the evidence of all its samples, so one odd sample does not decide it.

use std::collections::HashMap;

use serde::Serialize;

use crate::sampler::{Frame, OsState, ThreadSample};

/// The cause of an incident. `category` is one of the documented words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// `sleep`, `cpu`, `network`, `file`, `database`, `subprocess`, `lock`, `gil`, `logging`
    /// or `unknown`.
    pub category: &'static str,
    /// One human line: syscall, resource, library.
    pub detail: String,
}

/// x86_64 syscall numbers we name.
fn syscall_name(nr: i64) -> &'static str {
    match nr {
        0 => "read",
        1 => "write",
        7 => "poll",
        17 => "pread64",
        18 => "pwrite64",
        19 => "readv",
        20 => "writev",
        23 => "select",
        35 => "nanosleep",
        42 => "connect",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        46 => "sendmsg",
        47 => "recvmsg",
        61 => "wait4",
        74 => "fsync",
        75 => "fdatasync",
        202 => "futex",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        247 => "waitid",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        288 => "accept4",
        295 => "preadv",
        296 => "pwritev",
        _ => "syscall",
    }
}

/// A wait, keyed by what the thread waited in: the syscall and, for an fd, what it points at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WaitKey {
    nr: Option<i64>,
    zero_fds: bool,
    fd_target: Option<String>,
}

/// Evidence gathered over an incident's samples. Bounded: one entry per distinct wait.
#[derive(Debug, Default, Clone)]
pub struct CauseEvidence {
    samples: u32,
    running: u32,
    gil_waits: u32,
    gil_holders: HashMap<String, u32>,
    waits: HashMap<WaitKey, u32>,
    library_hits: HashMap<&'static str, u32>,
}

/// Libraries recognised from the files on the stack, with their category.
const LIBRARY_HINTS: &[(&str, &str, &str)] = &[
    ("/logging/", "logging", "logging"),
    ("/sqlite3/", "database", "sqlite3"),
    ("/psycopg2/", "database", "psycopg2"),
    ("/psycopg/", "database", "psycopg"),
    ("/pymysql/", "database", "pymysql"),
    ("/MySQLdb/", "database", "MySQLdb"),
    ("/redis/", "database", "redis"),
    ("/sqlalchemy/", "database", "SQLAlchemy"),
    ("/requests/", "network", "requests"),
    ("/urllib3/", "network", "urllib3"),
    ("/http/client.py", "network", "http.client"),
    ("/urllib/request.py", "network", "urllib"),
    ("/botocore/", "network", "botocore"),
    ("/ssl.py", "network", "ssl"),
    ("/socket.py", "network", "socket"),
    ("/subprocess.py", "subprocess", "subprocess"),
    ("/threading.py", "lock", "threading"),
    ("/queue.py", "lock", "queue"),
    ("/concurrent/futures/", "lock", "concurrent.futures"),
];

impl CauseEvidence {
    /// Adds one busy sample of the loop thread. `callback_frames` are the frames of the running
    /// callback (above the loop), where library hints are looked for; `gil_holder` is the thread
    /// that held the GIL in the same sample, when it was another thread.
    pub fn add(
        &mut self,
        thread: &ThreadSample,
        callback_frames: &[Frame],
        gil_holder: Option<&ThreadSample>,
    ) {
        self.samples += 1;
        match &thread.os_state {
            OsState::Running => self.running += 1,
            OsState::Waiting { syscall, fd_target } => {
                let key = WaitKey {
                    nr: syscall.map(|s| s.nr),
                    zero_fds: syscall.is_some_and(|s| s.args[0] == 0),
                    fd_target: fd_target.clone(),
                };
                *self.waits.entry(key).or_default() += 1;
                let futex = syscall.is_some_and(|s| s.nr == 202);
                if futex && !thread.owns_gil {
                    if let Some(holder) = gil_holder {
                        self.gil_waits += 1;
                        let name = describe_thread(holder);
                        *self.gil_holders.entry(name).or_default() += 1;
                    }
                }
            }
        }
        if let Some(lib) = library_on_stack(callback_frames) {
            *self.library_hits.entry(lib).or_default() += 1;
        }
    }

    /// Decides the cause from everything seen.
    pub fn decide(&self) -> Cause {
        let total = self.samples.max(1);
        let pct = |n: u32| (100.0 * n as f64 / total as f64).round() as u32;
        let library = self
            .library_hits
            .iter()
            .max_by_key(|(name, n)| (**n, *name))
            .map(|(name, _)| *name);
        let (lib_category, lib_name) = library
            .and_then(|name| {
                LIBRARY_HINTS
                    .iter()
                    .find(|(_, _, n)| *n == name)
                    .map(|(_, cat, n)| (*cat, *n))
            })
            .unzip();

        if self.running * 2 >= total {
            let detail = format!("thread on CPU in {}% of samples", pct(self.running));
            return match lib_category {
                Some("database") | Some("logging") => Cause {
                    category: lib_category.unwrap_or("cpu"),
                    detail: format!("{detail}, inside {}", lib_name.unwrap_or("?")),
                },
                _ => Cause {
                    category: "cpu",
                    detail,
                },
            };
        }
        if self.gil_waits * 2 >= total {
            let holder = self
                .gil_holders
                .iter()
                .max_by_key(|(name, n)| (**n, (*name).clone()))
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| "another thread".into());
            return Cause {
                category: "gil",
                detail: format!(
                    "waiting for the GIL held by {holder} in {}% of samples",
                    pct(self.gil_waits)
                ),
            };
        }
        let Some((wait, count)) = self.waits.iter().max_by_key(|(k, n)| (**n, k.nr)) else {
            return Cause {
                category: "unknown",
                detail: "no thread state could be read".into(),
            };
        };
        let Some(nr) = wait.nr else {
            return Cause {
                category: lib_category.unwrap_or("unknown"),
                detail: format!("off CPU in {}% of samples, syscall unreadable", pct(*count)),
            };
        };
        let name = syscall_name(nr);
        let share = pct(*count);
        let on = wait
            .fd_target
            .as_deref()
            .map(|t| format!(" on {t}"))
            .unwrap_or_default();
        let via = lib_name.map(|l| format!(" via {l}")).unwrap_or_default();
        let detail = format!("{name}(){on}{via} in {share}% of samples");
        let category = match nr {
            35 | 230 => "sleep",
            // CPython before 3.11 sleeps with select() on no file descriptors.
            23 | 270 if wait.zero_fds => "sleep",
            61 | 247 => "subprocess",
            74 | 75 => "file",
            202 => match lib_category {
                Some("logging") => "logging",
                _ => "lock",
            },
            42 | 43 | 44 | 45 | 46 | 47 | 288 => lib_category
                .filter(|c| *c == "database")
                .unwrap_or("network"),
            _ => match wait.fd_target.as_deref() {
                Some(t) if t.starts_with("socket:") => lib_category
                    .filter(|c| *c == "database")
                    .unwrap_or("network"),
                Some(t) if t.starts_with('/') => match lib_category {
                    Some("logging") => "logging",
                    Some("database") => "database",
                    _ => "file",
                },
                Some(t) if t.starts_with("pipe:") && lib_category == Some("subprocess") => {
                    "subprocess"
                }
                _ => lib_category.unwrap_or("unknown"),
            },
        };
        Cause { category, detail }
    }
}

fn describe_thread(thread: &ThreadSample) -> String {
    let name = thread.name.as_deref().unwrap_or("thread");
    match thread.frames.first() {
        Some(leaf) => format!("{name} ({}) running {}", thread.os_tid, leaf.function),
        None => format!("{name} ({})", thread.os_tid),
    }
}

fn library_on_stack(frames: &[Frame]) -> Option<&'static str> {
    frames.iter().find_map(|frame| {
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
        "gil" => "another thread holds the GIL: move its CPU work to a process pool or release the GIL more often",
        "logging" => "log through a logging.handlers.QueueHandler + QueueListener so handlers don't run on the loop",
        _ => "inspect the stack; run blocking work with `await asyncio.to_thread(...)`",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::procfs::Syscall;

    fn waiting(nr: i64, arg0: u64, fd: Option<&str>) -> ThreadSample {
        ThreadSample {
            os_tid: 1,
            name: None,
            frames: vec![],
            os_state: OsState::Waiting {
                syscall: Some(Syscall {
                    nr,
                    args: [arg0, 0, 0, 0, 0, 0],
                }),
                fd_target: fd.map(String::from),
            },
            owns_gil: false,
        }
    }

    #[test]
    fn sleep_from_clock_nanosleep_and_empty_select() {
        let mut e = CauseEvidence::default();
        e.add(&waiting(230, 0, None), &[], None);
        assert_eq!(e.decide().category, "sleep");
        let mut e = CauseEvidence::default();
        e.add(&waiting(23, 0, None), &[], None);
        assert_eq!(e.decide().category, "sleep");
    }

    #[test]
    fn cpu_when_mostly_running() {
        let mut e = CauseEvidence::default();
        let mut running = waiting(0, 0, None);
        running.os_state = OsState::Running;
        e.add(&running, &[], None);
        e.add(&running, &[], None);
        e.add(&waiting(230, 0, None), &[], None);
        let cause = e.decide();
        assert_eq!(cause.category, "cpu");
        assert!(cause.detail.contains("67%"), "{}", cause.detail);
    }

    #[test]
    fn socket_read_is_network() {
        let mut e = CauseEvidence::default();
        e.add(&waiting(45, 4, Some("socket:[9539]")), &[], None);
        let cause = e.decide();
        assert_eq!(cause.category, "network");
        assert!(cause.detail.contains("recvfrom() on socket:[9539]"));
    }
}
