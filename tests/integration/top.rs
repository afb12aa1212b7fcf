//! `loopspy top` driven for real: under tmux against a live blocking asyncio process, reading
//! the screen with `capture-pane` and pressing keys with `send-keys`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// A tmux session running one command; killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: &str, width: u16, height: u16, command: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            missing("tmux");
            return None;
        }
        let session = Tmux {
            name: format!("loopspy-test-{name}-{}", std::process::id()),
        };
        let ok = Command::new("tmux")
            .args(["new-session", "-d", "-s", &session.name])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .env_remove("TMUX")
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux new-session failed");
        session.tmux(&["set-option", "-t", &session.name, "remain-on-exit", "on"]);
        Some(session)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.name])
    }

    fn history(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-S", "-200", "-t", &self.name])
    }

    fn keys(&self, keys: &str) {
        self.tmux(&["send-keys", "-t", &self.name, keys]);
    }

    /// Waits until the screen satisfies `pred`, returning it; panics with the screen after
    /// `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("screen never showed {what}:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn dead(&self) -> bool {
        self.tmux(&["display", "-p", "-t", &self.name, "#{pane_dead}"])
            .trim()
            == "1"
    }

    fn alternate_screen(&self) -> bool {
        self.tmux(&["display", "-p", "-t", &self.name, "#{alternate_on}"])
            .trim()
            == "1"
    }

    fn wait_dead(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.dead() {
            assert!(
                Instant::now() < deadline,
                "loopspy top did not exit:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .status();
    }
}

fn top_command(pid: i32) -> String {
    format!("{} top --pid {pid}", loopspy_path().display())
}

fn periodic(python: &std::path::Path, seconds: &str) -> ChildGuard {
    start_python(
        python,
        &[
            fixture("periodic.py").to_str().unwrap(),
            "--seconds",
            seconds,
        ],
    )
}

#[test]
fn top_shows_loop_health_incidents_and_functions_and_obeys_keys() {
    let Some(python) = require_python("3.12") else {
        return;
    };
    let _serial = timing_lock();
    let target = periodic(&python, "60");
    let Some(tmux) = Tmux::start("keys", 140, 30, &top_command(target.pid())) else {
        return;
    };
    let screen = tmux.wait_for("an incident in the feed", Duration::from_secs(10), |s| {
        s.contains("stall_in_handler (periodic.py:") && s.contains("burn_cpu (periodic.py:")
    });
    // Header: per-loop health and sampling.
    assert!(
        screen.contains(&format!("loopspy top — pid {}", target.pid())),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("Loop {} MainThread (selector)", target.pid())),
        "{screen}"
    );
    assert!(
        screen.contains("busy") && screen.contains("stall now"),
        "{screen}"
    );
    assert!(
        screen.contains("stalls >= 10 ms:") && screen.contains("p99"),
        "{screen}"
    );
    assert!(screen.contains("longest stall/s:"), "{screen}");
    // Feed: time, duration, cause, culprit, task, source line.
    let feed_line = screen
        .lines()
        .find(|l| l.contains("stall_in_handler (periodic.py:17)"))
        .unwrap_or_else(|| panic!("{screen}"));
    assert!(
        feed_line.contains(" ms ") && feed_line.contains("sleep"),
        "{feed_line}"
    );
    assert!(
        feed_line.contains("[periodic-") && feed_line.contains("time.sleep(0.12)"),
        "{feed_line}"
    );
    // Function table for the loop thread.
    assert!(
        screen.contains("own%") && screen.contains("total%"),
        "{screen}"
    );
    assert!(screen.contains("Functions — loop thread"), "{screen}");

    tmux.keys("a");
    let all = tmux.wait_for("all threads", Duration::from_secs(5), |s| {
        s.contains("Functions — all threads") && s.contains("churn (periodic.py:")
    });
    assert!(all.contains("stall_in_handler"), "{all}");
    tmux.keys("t");
    tmux.wait_for("the loop thread again", Duration::from_secs(5), |s| {
        s.contains("Functions — loop thread")
    });
    tmux.keys("?");
    tmux.wait_for("the key help", Duration::from_secs(5), |s| {
        s.contains(" keys ") && s.contains("include / exclude idle samples")
    });
    tmux.keys("?");
    tmux.wait_for("help closed", Duration::from_secs(5), |s| {
        !s.contains("include / exclude idle")
    });
    tmux.keys("p");
    tmux.wait_for("paused", Duration::from_secs(5), |s| s.contains("PAUSED"));
    tmux.keys("p");
    tmux.keys("i");
    tmux.wait_for("idle shown", Duration::from_secs(5), |s| {
        s.contains("idle shown")
    });
    tmux.keys("r");
    tmux.wait_for("reset feed", Duration::from_secs(5), |s| {
        s.contains("Incidents (0)") || s.contains("Incidents (1)")
    });
    tmux.keys("q");
    tmux.wait_dead(Duration::from_secs(5));
    assert!(
        !tmux.alternate_screen(),
        "q must leave the alternate screen"
    );
    let history = tmux.history();
    assert!(
        history.contains(&format!("loopspy: stopped watching pid {}", target.pid())),
        "{history}"
    );
}

#[test]
fn top_fits_80x24_and_ctrl_c_restores_the_terminal() {
    let Some(python) = require_python("3.11") else {
        return;
    };
    let _serial = timing_lock();
    let target = periodic(&python, "60");
    let Some(tmux) = Tmux::start("small", 80, 24, &top_command(target.pid())) else {
        return;
    };
    let screen = tmux.wait_for("an incident", Duration::from_secs(10), |s| {
        s.contains("stall_in_handler (periodic.py:")
    });
    let lines: Vec<&str> = screen.lines().collect();
    assert!(
        lines.iter().any(|l| l.starts_with("q quit")),
        "footer visible:\n{screen}"
    );
    assert!(screen.contains("own%"), "{screen}");
    tmux.tmux(&["resize-window", "-t", &tmux.name, "-x", "120", "-y", "40"]);
    tmux.wait_for("a redraw at 120 columns", Duration::from_secs(5), |s| {
        s.lines()
            .any(|l| l.contains("stall_in_handler") && l.contains("time.sleep(0.12)"))
    });
    tmux.keys("C-c");
    tmux.wait_dead(Duration::from_secs(5));
    assert!(!tmux.alternate_screen());
}

#[test]
fn top_says_when_the_target_exits_and_restores_the_terminal() {
    let Some(python) = require_python("3.13") else {
        return;
    };
    let _serial = timing_lock();
    let target = periodic(&python, "2.5");
    let Some(tmux) = Tmux::start("exit", 100, 30, &top_command(target.pid())) else {
        return;
    };
    tmux.wait_dead(Duration::from_secs(15));
    assert!(!tmux.alternate_screen());
    let history = tmux.history();
    assert!(
        history.contains(&format!("loopspy: pid {} exited", target.pid())),
        "{history}"
    );
}

#[test]
fn top_without_a_terminal_prints_a_text_snapshot() {
    let Some(python) = require_python("3.10") else {
        return;
    };
    let _serial = timing_lock();
    let target = periodic(&python, "60");
    let pid = target.pid().to_string();
    // stdout is a pipe here: the plain-text fallback, even without --once.
    let run = run_loopspy(
        &["top", "--pid", &pid, "--once-after", "1.5s"],
        Duration::from_secs(20),
    );
    assert_eq!(run.code(), 0, "{}", run.stderr);
    let out = &run.stdout;
    assert!(
        out.contains(&format!("Loop {pid} MainThread (selector)")),
        "{out}"
    );
    assert!(out.contains("Incidents ("), "{out}");
    assert!(
        out.contains("stall_in_handler (periodic.py:") || out.contains("burn_cpu (periodic.py:"),
        "{out}"
    );
    assert!(out.contains("Functions — loop thread"), "{out}");
    let once = run_loopspy(
        &["top", "--pid", &pid, "--once", "--once-after", "1s"],
        Duration::from_secs(20),
    );
    assert_eq!(once.code(), 0);
    assert!(once.stdout.contains("own%"), "{}", once.stdout);
}
