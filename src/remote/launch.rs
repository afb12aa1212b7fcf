//! Launch mode (`loopspy record -- python3 app.py`): start the command and find the CPython
//! interpreter it runs. The PID we spawn is often not the interpreter — pyenv's `python3` shim,
//! `uv run`, `poetry run` and shell wrappers start it as a child — so we search the spawned
//! process and its descendants until an interpreter answers.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::attach::{attach_found, AttachedTarget};
use super::procfs;
use crate::error::LoopspyError;

/// A process we started, and the interpreter found in it.
pub struct LaunchedProcess {
    /// The process we spawned (possibly a wrapper around the interpreter).
    pub child: Child,
    /// The interpreter inside it.
    pub target: AttachedTarget,
}

/// How long to wait for an interpreter to appear in the launched process tree.
const FIND_INTERPRETER_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts `argv` with inherited stdio and attaches to the Python interpreter it runs.
pub fn launch(argv: &[String], blocking: bool) -> Result<LaunchedProcess, LoopspyError> {
    let command_text = argv.join(" ");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .spawn()
        .map_err(|err| LoopspyError::LaunchFailed {
            command: command_text.clone(),
            reason: err.to_string(),
        })?;
    let root = child.id() as i32;
    let deadline = Instant::now() + FIND_INTERPRETER_TIMEOUT;
    let mut last_error = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            use std::os::unix::process::ExitStatusExt;
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            return Err(LoopspyError::LaunchedProgramExited {
                command: command_text,
                code,
            });
        }
        for pid in procfs::process_tree(root) {
            match attach_found(pid, blocking) {
                Ok(mut target) => {
                    // A just-started interpreter may not have its thread state yet.
                    if target.has_threads() {
                        return Ok(LaunchedProcess { child, target });
                    }
                }
                Err(err @ LoopspyError::UnsupportedPython { .. })
                | Err(err @ LoopspyError::FreeThreaded { .. })
                | Err(err @ LoopspyError::PermissionDenied { .. }) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err);
                }
                Err(err) => last_error = Some(err),
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let reason = last_error
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no process in its tree".into());
            return Err(LoopspyError::LaunchFailed {
                command: command_text,
                reason: format!(
                    "no Python interpreter found in it within {}s: {reason}",
                    FIND_INTERPRETER_TIMEOUT.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
