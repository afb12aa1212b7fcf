//! Helpers shared by the integration tests: finding interpreters, starting real Python
//! fixtures (killed on drop, so a failing test leaves no stray process), running loopspy, and
//! reading what it wrote.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// In CI (or with LOOPSPY_STRICT=1) a missing interpreter or package fails the test instead of
/// skipping it.
pub fn strict() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("LOOPSPY_STRICT").is_some()
}

/// Skips (outside CI) or fails (in CI) with a reason.
pub fn missing(what: &str) {
    if strict() {
        panic!("{what} is required (CI/LOOPSPY_STRICT is set), but missing");
    }
    eprintln!("SKIPPED: {what} is missing (set LOOPSPY_STRICT=1 to fail instead)");
}

fn pyenv_root() -> PathBuf {
    std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".pyenv"))
}

/// The real interpreter binary of CPython `minor` ("3.8") from pyenv — not the `python3` shim,
/// which would start the interpreter as a child.
pub fn python(minor: &str) -> Option<PathBuf> {
    let versions = pyenv_root().join("versions");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&versions)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix(minor).is_some_and(|rest| {
                rest.starts_with('.') && rest[1..].chars().all(|c| c.is_ascii_digit())
            })
        })
        .map(|e| e.path().join("bin").join(format!("python{minor}")))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

/// [`python`], or skip/fail.
pub fn require_python(minor: &str) -> Option<PathBuf> {
    let found = python(minor);
    if found.is_none() {
        missing(&format!("CPython {minor} (pyenv install {minor})"));
    }
    found
}

/// True when `python` can import `module`; otherwise skip/fail.
pub fn require_module(python: &Path, module: &str) -> bool {
    let ok = Command::new(python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing(&format!(
            "{module} for {} (pip install {module})",
            python.display()
        ));
    }
    ok
}

/// Timing-sensitive tests run one at a time: on a 2-core machine two CPU-bound targets plus
/// their samplers would distort the very durations the tests assert.
pub fn timing_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Path of a file in tests/fixtures.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The loopspy binary under test.
pub fn loopspy() -> Command {
    Command::new(loopspy_path())
}

/// A private copy of the binary under test. Cargo re-links `target/release/loopspy` (removes
/// it, then hard-links it again) on every build, fresh or not — and the wheel test runs a build
/// (maturin) while other tests start loopspy: a start in that instant found no file. The copy
/// is made once, retried past that instant.
pub fn loopspy_path() -> &'static Path {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        // Copies left by earlier runs (30 MB each) go.
        for old in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
            if old.file_name().to_string_lossy().starts_with("bin-") {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
        let dir = tmp.join(format!("bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the test binary folder");
        let copy = dir.join("loopspy");
        let mut tries = 0;
        while let Err(err) = std::fs::copy(env!("CARGO_BIN_EXE_loopspy"), &copy) {
            tries += 1;
            assert!(tries < 100, "copying the loopspy binary: {err}");
            std::thread::sleep(Duration::from_millis(20));
        }
        copy
    })
}

/// `loopspy record --pid PID --rate 500 -o OUT` plus `extra`: how the tests attach.
pub fn record_pid(pid: i32, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = loopspy();
    cmd.args(["record", "--pid", &pid.to_string(), "--rate", "500", "-o"])
        .arg(out)
        .args(extra);
    cmd
}

/// A finished loopspy run.
pub struct Run {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
}

impl Run {
    /// The exit code (panics if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("loopspy died by a signal; stderr:\n{}", self.stderr))
    }
}

/// A loopspy process whose output is collected in the background, with a way to wait for a
/// line on stderr (loopspy says "sampling" once it reads the target).
pub struct Running {
    child: ChildGuard,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
    stdout: std::thread::JoinHandle<String>,
}

impl Running {
    /// Starts `cmd` with piped output.
    pub fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting loopspy");
        let stderr = child.stderr.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        Running {
            child: ChildGuard(child),
            lines,
            stderr: Vec::new(),
            stdout,
        }
    }

    /// The pid of loopspy.
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.stderr.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "loopspy never printed {needle:?}; stderr so far:\n{}",
                    self.stderr.join("\n")
                ),
            }
        }
    }

    /// Waits for loopspy to exit (killing it after `timeout`).
    pub fn finish(mut self, timeout: Duration) -> Run {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.0.try_wait().expect("waiting for loopspy") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.0.kill();
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.stderr.push(line);
                }
                panic!(
                    "loopspy did not finish within {timeout:?}; stderr:\n{}",
                    self.stderr.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.stderr.push(line);
        }
        Run {
            status,
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.stderr.join("\n"),
        }
    }
}

/// Runs loopspy with `args` to completion.
pub fn run_loopspy(args: &[&str], timeout: Duration) -> Run {
    let mut cmd = loopspy();
    cmd.args(args);
    Running::start(cmd).finish(timeout)
}

/// Reads and parses a JSON file.
pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// Starts a Python process and waits until it is past interpreter start-up.
pub fn start_python(python: &Path, args: &[&str]) -> ChildGuard {
    let child = Command::new(python)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("starting python");
    std::thread::sleep(Duration::from_millis(300));
    ChildGuard(child)
}

/// Starts a Python fixture that prints `ready` on stdout once it is set up, and waits for it.
pub fn start_until_ready(python: &Path, args: &[&str]) -> ChildGuard {
    let mut child = Command::new(python)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting python");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let guard = ChildGuard(child);
    assert_eq!(line.trim(), "ready", "{args:?} did not get ready");
    guard
}
