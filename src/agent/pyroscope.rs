//! `--pyroscope URL`: every watched process's event-loop busy profile, pushed each window to a
//! Pyroscope-compatible ingest endpoint (`POST URL/ingest?name=…&from=…&until=…&format=folded
//! &sampleRate=…&spyName=loopspy&units=samples&aggregationType=sum`, body: folded stacks
//! `root;…;leaf count`), as Pyroscope's and Grafana's agents push.
//!
//! The HTTP requests run on a thread of their own behind a bounded queue: a slow or absent
//! server delays nothing else, and what does not fit in the queue is dropped and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Pushes waiting at most (a server that stalls loses the newest windows, not our memory).
const QUEUE: usize = 256;
/// How long one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest label value in the application name.
const MAX_LABEL_CHARS: usize = 96;

/// One process's profile of one window.
pub struct Push {
    /// `loopspy.busy{pid=…,command=…}`.
    pub name: String,
    /// The window, seconds since the epoch.
    pub from: u64,
    pub until: u64,
    /// Samples a second (what one count stands for).
    pub sample_rate: u32,
    /// Folded stacks with sample counts.
    pub body: String,
}

/// Outcomes so far, for the agent's own metrics.
#[derive(Debug, Default)]
pub struct PushCounts {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// The pushing thread.
pub struct Pusher {
    tx: Option<crossbeam_channel::Sender<Push>>,
    thread: Option<JoinHandle<()>>,
    /// Outcomes so far.
    pub counts: Arc<PushCounts>,
}

impl Pusher {
    /// Starts pushing to `base` (`http://host:4040`, `https://…`; `/ingest` is added).
    pub fn start(base: &str) -> Pusher {
        let (tx, rx) = crossbeam_channel::bounded::<Push>(QUEUE);
        let counts = Arc::new(PushCounts::default());
        let url = format!("{}/ingest", base.trim_end_matches('/'));
        let outcome = counts.clone();
        let thread = std::thread::Builder::new()
            .name("loopspy-pyroscope".into())
            .spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(PUSH_TIMEOUT).build();
                for push in rx {
                    let sent = agent
                        .post(&url)
                        .query("name", &push.name)
                        .query("from", &push.from.to_string())
                        .query("until", &push.until.to_string())
                        .query("format", "folded")
                        .query("sampleRate", &push.sample_rate.to_string())
                        .query("spyName", "loopspy")
                        .query("units", "samples")
                        .query("aggregationType", "sum")
                        .set("Content-Type", "text/plain")
                        .send_string(&push.body);
                    match sent {
                        Ok(_) => outcome.sent.fetch_add(1, Ordering::Relaxed),
                        Err(err) => {
                            let failed = outcome.failed.fetch_add(1, Ordering::Relaxed);
                            // The first failure and then every hundredth: a server that is
                            // down does not flood the log.
                            if failed % 100 == 0 {
                                eprintln!(
                                    "loopspy agent: warning: pushing to {url} failed ({err}); {} push(es) failed so far",
                                    failed + 1
                                );
                            }
                            failed
                        }
                    };
                }
            })
            .expect("spawning the pyroscope thread");
        Pusher {
            tx: Some(tx),
            thread: Some(thread),
            counts,
        }
    }

    /// Queues `push`, or drops it (counted) when the queue is full.
    pub fn push(&self, push: Push) {
        if let Some(tx) = &self.tx {
            if tx.try_send(push).is_err() {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for Pusher {
    /// Sends what is queued (each push bounded by its timeout), then ends the thread.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A label value Pyroscope's application-name syntax accepts: letters, digits and `_.:/-`,
/// anything else as `_`, at most [`MAX_LABEL_CHARS`].
pub fn label_value(text: &str) -> String {
    text.chars()
        .take(MAX_LABEL_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.:/-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A command line as a label value: each path shortened to its file name (the interpreter and
/// script say which service it is; their folders mostly do not), then [`label_value`].
pub fn command_label(command: &str) -> String {
    let words: Vec<&str> = command
        .split_whitespace()
        .map(|w| {
            if w.contains('/') {
                w.rsplit('/').next().unwrap_or(w)
            } else {
                w
            }
        })
        .collect();
    label_value(&words.join(" "))
}

/// Folded lines weighted in microseconds (`flamegraph::collapsed_lines`) as sample counts at
/// `interval_us` a sample (at least 1 for any line kept).
pub fn as_sample_counts(lines: &[String], interval_us: u64) -> String {
    let mut body = String::new();
    for line in lines {
        let Some((stack, us)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(us) = us.parse::<u64>() else { continue };
        let count = (us + interval_us / 2) / interval_us.max(1);
        body.push_str(stack);
        body.push(' ');
        body.push_str(&count.max(1).to_string());
        body.push('\n');
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_keep_to_the_name_syntax() {
        assert_eq!(
            label_value("python3 app.py --x={a,b}"),
            "python3_app.py_--x__a_b_"
        );
        assert_eq!(label_value(&"x".repeat(200)).len(), MAX_LABEL_CHARS);
        assert_eq!(
            command_label("/usr/bin/python3.12 /srv/app/main.py --port 80"),
            "python3.12_main.py_--port_80"
        );
    }

    #[test]
    fn microseconds_become_sample_counts() {
        let lines = vec!["a;b 10000".to_string(), "a;c 4000".into(), "bad".into()];
        assert_eq!(as_sample_counts(&lines, 10_000), "a;b 1\na;c 1\n");
        assert_eq!(as_sample_counts(&lines[..1], 1_000), "a;b 10\n");
    }
}
