//! Attaching to a running interpreter: the checks that turn "py-spy could not read it" into an
//! error the user can act on (no such process, not Python, wrong version, no permission).

use std::io;

use py_spy::config::LockingStrategy;
use py_spy::{Config, PythonSpy};

use super::{memory, procfs};
use crate::error::LoopspyError;

/// Oldest and newest CPython minor versions loopspy supports.
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u64> = 8..=13;

/// A target we hold a reader on.
pub struct AttachedTarget {
    /// py-spy's interpreter reader, configured for our use.
    pub spy: PythonSpy,
    /// Process id of the interpreter.
    pub pid: i32,
    /// Full version, e.g. `3.11.7`.
    pub python_version: String,
    /// The target's command line.
    pub command: String,
}

/// Attaches to `pid`. `blocking` pauses the target during each read (py-spy's default);
/// loopspy's default is not to.
pub fn attach(pid: i32, blocking: bool) -> Result<AttachedTarget, LoopspyError> {
    precheck(pid)?;
    let command = procfs::command_line(pid);
    let config = spy_config(blocking);
    let spy = PythonSpy::new(pid, &config).map_err(|err| classify_spy_error(pid, &command, err))?;
    let version = &spy.version;
    if version.major != 3 || !SUPPORTED_MINORS.contains(&version.minor) {
        return Err(LoopspyError::UnsupportedPython {
            pid,
            version: version.to_string(),
        });
    }
    Ok(AttachedTarget {
        python_version: version.to_string(),
        spy,
        pid,
        command,
    })
}

/// The py-spy configuration loopspy reads with: Python frames only, thread names on.
pub fn spy_config(blocking: bool) -> Config {
    Config {
        blocking: if blocking {
            LockingStrategy::Lock
        } else {
            LockingStrategy::NonBlocking
        },
        native: false,
        collect_thread_names: true,
        include_idle: true,
        ..Config::default()
    }
}

/// Cheap checks before py-spy's heavier probing, so that the common mistakes get precise
/// messages: a wrong PID, a permission problem, a process with no Python in it.
fn precheck(pid: i32) -> Result<(), LoopspyError> {
    if pid <= 0 || !procfs::is_alive(pid) {
        return Err(LoopspyError::NoSuchProcess(pid));
    }
    let maps = match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        Ok(maps) => maps,
        Err(err) if is_permission(&err) => return Err(LoopspyError::PermissionDenied { pid }),
        Err(_) => return Err(LoopspyError::NoSuchProcess(pid)),
    };
    // Reading /proc/<pid>/maps can be allowed where reading memory is not (yama scope 1+).
    if let Some(addr) = first_readable_address(&maps) {
        if let Err(err) = memory::read_exact(pid, addr, &mut [0u8; 1]) {
            if is_permission(&err) {
                return Err(LoopspyError::PermissionDenied { pid });
            }
        }
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let has_python = maps.lines().any(|line| line.contains("libpython"))
        || exe
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("python"));
    if !has_python {
        return Err(LoopspyError::NotPython {
            pid,
            command: procfs::command_line(pid),
            detail: format!("its executable is {exe} and it maps no libpython"),
        });
    }
    Ok(())
}

fn classify_spy_error(pid: i32, command: &str, err: anyhow::Error) -> LoopspyError {
    if !procfs::is_alive(pid) {
        return LoopspyError::NoSuchProcess(pid);
    }
    let chain = format!("{err:#}");
    if chain.contains("Permission denied") || chain.contains("Operation not permitted") {
        return LoopspyError::PermissionDenied { pid };
    }
    LoopspyError::NotPython {
        pid,
        command: command.to_string(),
        detail: chain,
    }
}

fn is_permission(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::PermissionDenied) || err.raw_os_error() == Some(libc::EPERM)
}

fn first_readable_address(maps: &str) -> Option<usize> {
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let perms = fields.next()?;
        if !perms.starts_with('r') {
            return None;
        }
        usize::from_str_radix(range.split('-').next()?, 16).ok()
    })
}
