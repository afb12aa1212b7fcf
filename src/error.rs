//! The errors a user can meet, each with the exit code `main` maps it to and a message that
//! says what to do about it. Codes are documented in `docs/usage.md`; keep the two in step.

use std::path::PathBuf;

/// Everything that ends a loopspy command early, in the words the user will read.
#[derive(Debug, thiserror::Error)]
pub enum LoopspyError {
    /// No process with this PID exists (or it exited before we attached).
    #[error("no process with PID {0} exists (check the PID with `ps`; it may have exited)")]
    NoSuchProcess(i32),

    /// No process with this PID is visible from loopspy's PID namespace (a container's), or it
    /// exists only inside a container, under another PID here.
    #[error("no process with PID {pid} is visible here: {hint}")]
    NotVisible {
        /// The PID asked for.
        pid: i32,
        /// Where to find the right PID.
        hint: String,
    },

    /// The process exists but does not look like a CPython interpreter.
    #[error("process {pid} ({command}) is not a Python process: no CPython interpreter was found in it ({detail})")]
    NotPython {
        /// Target process id.
        pid: i32,
        /// Its command line, to help the user see which process they named.
        command: String,
        /// What went wrong while looking for the interpreter.
        detail: String,
    },

    /// The interpreter is a CPython version loopspy has no support for.
    #[error("process {pid} runs Python {version}, which loopspy does not support (supported: CPython 3.8 to 3.15){detail}")]
    UnsupportedPython {
        /// Target process id.
        pid: i32,
        /// Version found in the target.
        version: String,
        /// Why, when there is more to say (`: pre-releases are not supported ...`).
        detail: String,
    },

    /// A free-threaded (no-GIL) build, whose object and frame layouts loopspy does not read.
    #[error("process {pid} runs a free-threaded build of Python {version} (python3.Xt), which loopspy does not support yet; run the service on the default (GIL) build of the same version to profile it")]
    FreeThreaded {
        /// Target process id.
        pid: i32,
        /// Version found in the target.
        version: String,
    },

    /// The kernel refused to let us read the target's memory.
    #[error("permission denied reading process {pid}: {hint}")]
    PermissionDenied {
        /// Target process id.
        pid: i32,
        /// What to do, worded for where loopspy runs (`remote::confinement::permission_hint`).
        hint: String,
    },

    /// The output directory cannot be created or written.
    #[error("cannot write to output directory {path}: {reason} (choose another with -o DIR)")]
    OutputNotWritable {
        /// Directory the user asked for (or the default one).
        path: PathBuf,
        /// The OS error.
        reason: String,
    },

    /// The command to launch could not be started.
    #[error("could not start `{command}`: {reason}")]
    LaunchFailed {
        /// The command line.
        command: String,
        /// Why.
        reason: String,
    },

    /// The launched program ended before loopspy could read it (it ran too briefly, or failed
    /// at once); loopspy exits with the program's own code.
    #[error(
        "`{command}` exited with code {code} before loopspy could read it; exiting with its code"
    )]
    LaunchedProgramExited {
        /// The command line.
        command: String,
        /// Its exit code, as a shell reports it.
        code: i32,
    },

    /// Something else; the message carries the context.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Exit codes. 0 is success; 2 is reserved for usage errors (clap's own code).
pub mod exit_code {
    /// Generic failure.
    pub const FAILURE: i32 = 1;
    /// Bad command-line usage (clap).
    pub const USAGE: i32 = 2;
    /// No such process.
    pub const NO_SUCH_PROCESS: i32 = 3;
    /// Not a Python process.
    pub const NOT_PYTHON: i32 = 4;
    /// Python found but its version is unsupported.
    pub const UNSUPPORTED_PYTHON: i32 = 5;
    /// ptrace / memory read permission denied.
    pub const PERMISSION_DENIED: i32 = 6;
    /// Output directory not writable.
    pub const OUTPUT_NOT_WRITABLE: i32 = 7;
    /// Recording done and written, but no asyncio event loop was ever seen in the target.
    pub const NO_EVENT_LOOP: i32 = 8;
    /// The command to launch could not be started.
    pub const LAUNCH_FAILED: i32 = 9;
    /// `--fail-on-block`: an incident reached the limit (everything was still written).
    pub const BLOCKED: i32 = 10;
    /// `--fail-on-leak`: a coroutine's pending tasks kept growing (everything was still
    /// written).
    pub const TASK_LEAK: i32 = 11;
}

impl LoopspyError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        use exit_code::*;
        match self {
            LoopspyError::NoSuchProcess(_) | LoopspyError::NotVisible { .. } => NO_SUCH_PROCESS,
            LoopspyError::NotPython { .. } => NOT_PYTHON,
            LoopspyError::UnsupportedPython { .. } | LoopspyError::FreeThreaded { .. } => {
                UNSUPPORTED_PYTHON
            }
            LoopspyError::PermissionDenied { .. } => PERMISSION_DENIED,
            LoopspyError::OutputNotWritable { .. } => OUTPUT_NOT_WRITABLE,
            LoopspyError::LaunchFailed { .. } => LAUNCH_FAILED,
            LoopspyError::LaunchedProgramExited { code, .. } => *code,
            LoopspyError::Other(_) => FAILURE,
        }
    }
}
