//! Source lines of the target's code, read as the target sees its files and never trusting the
//! path: a code object's file name is whatever the target says (`/dev/zero`, a FIFO, a 10 GB
//! file, `../../etc/shadow`, a symlink out of its container).
//!
//! - The path is resolved *inside the target's root* (`/proc/<pid>/root` opened once, then
//!   `openat2(RESOLVE_IN_ROOT)`): `..` and absolute symlinks cannot leave it, and the host's
//!   file of the same name is never shown in its place.
//! - Only regular files are read (opened non-blocking, so a FIFO cannot hang us, then checked
//!   with `fstat`), and only their first [`MAX_SOURCE_BYTES`].
//! - A line is cut at [`MAX_LINE_CHARS`] characters; the cache holds at most [`MAX_FILES`]
//!   files and [`MAX_CACHE_BYTES`] of text, and starts over past either.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// Files kept in memory at most.
const MAX_FILES: usize = 256;
/// Bytes of one file read at most: lines past them are unknown.
pub const MAX_SOURCE_BYTES: u64 = 4 << 20;
/// Text held by the cache at most.
pub const MAX_CACHE_BYTES: usize = 32 << 20;
/// Characters of one source line kept; a longer line ends with `…`.
pub const MAX_LINE_CHARS: usize = 400;
/// Longest file name looked up.
const MAX_PATH_BYTES: usize = 4096;

/// A few lines of a source file around one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContext {
    /// Number (1-based) of the first line in `lines`.
    pub first_line: u32,
    /// The lines, trailing space removed, each at most [`MAX_LINE_CHARS`] characters.
    pub lines: Vec<String>,
}

/// Per-process cache of source files.
#[derive(Debug)]
pub struct SourceCache {
    pid: i32,
    /// `/proc/<pid>/root`, opened on first use (None when it cannot be opened).
    root: Option<Option<OwnedFd>>,
    files: HashMap<String, Option<Arc<Vec<String>>>>,
    bytes: usize,
}

impl SourceCache {
    /// A cache reading `pid`'s files.
    pub fn new(pid: i32) -> Self {
        SourceCache {
            pid,
            root: None,
            files: HashMap::new(),
            bytes: 0,
        }
    }

    /// The trimmed text of `line` (1-based) of `file`, when readable.
    pub fn line(&mut self, file: &str, line: u32) -> Option<String> {
        let lines = self.lines_of(file, line)?;
        lines.get(line as usize - 1).map(|l| shorten(l.trim()))
    }

    /// `line` of `file` with up to `around` lines either side, indentation kept (people read
    /// a line in its block), each cut to [`MAX_LINE_CHARS`]. None when `line` is unknown.
    pub fn context(&mut self, file: &str, line: u32, around: u32) -> Option<SourceContext> {
        let lines = self.lines_of(file, line)?;
        let at = line as usize - 1;
        if at >= lines.len() {
            return None;
        }
        let first = at.saturating_sub(around as usize);
        let last = (at + around as usize).min(lines.len() - 1);
        Some(SourceContext {
            first_line: first as u32 + 1,
            lines: lines[first..=last]
                .iter()
                .map(|l| shorten(l.trim_end()))
                .collect(),
        })
    }

    /// The lines of `file`, read on first use, when `line` can name one of them.
    fn lines_of(&mut self, file: &str, line: u32) -> Option<Arc<Vec<String>>> {
        if line == 0 || !file.starts_with('/') || file.len() > MAX_PATH_BYTES {
            return None;
        }
        if !self.files.contains_key(file) {
            if self.files.len() >= MAX_FILES || self.bytes >= MAX_CACHE_BYTES {
                self.files.clear();
                self.bytes = 0;
            }
            let lines = self.read_file(file).map(Arc::new);
            self.bytes += lines
                .as_ref()
                .map_or(0, |l| l.iter().map(String::len).sum::<usize>());
            self.files.insert(file.to_string(), lines);
        }
        self.files.get(file)?.clone()
    }

    fn read_file(&mut self, file: &str) -> Option<Vec<String>> {
        let pid = self.pid;
        let root = self
            .root
            .get_or_insert_with(|| open_plain(&format!("/proc/{pid}/root"), libc::O_DIRECTORY))
            .as_ref()?;
        let fd = open_in_root(root, file)?;
        let mut f = File::from(fd);
        let meta = f.metadata().ok()?;
        if !meta.file_type().is_file() {
            return None;
        }
        let mut bytes = Vec::with_capacity(meta.len().min(MAX_SOURCE_BYTES) as usize);
        (&mut f)
            .take(MAX_SOURCE_BYTES)
            .read_to_end(&mut bytes)
            .ok()?;
        let text = String::from_utf8_lossy(&bytes);
        Some(text.lines().map(String::from).collect())
    }
}

/// `line` cut to [`MAX_LINE_CHARS`] characters.
fn shorten(line: &str) -> String {
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line.to_string(),
    }
}

/// Opens the regular file `path` as process `pid` sees it (resolved inside its root, see
/// [`open_in_root`]); None for anything but a regular file. For readers of the target's own
/// binaries (`remote::elf`).
pub fn open_in_target_root(pid: i32, path: &str) -> Option<OwnedFd> {
    if path.len() > MAX_PATH_BYTES {
        return None;
    }
    let root = open_plain(&format!("/proc/{pid}/root"), libc::O_DIRECTORY)?;
    let fd = open_in_root(&root, path)?;
    let file = File::from(fd);
    file.metadata().ok().filter(|m| m.is_file())?;
    Some(OwnedFd::from(file))
}

fn open_plain(path: &str, flags: libc::c_int) -> Option<OwnedFd> {
    let path = CString::new(path).ok()?;
    // SAFETY: a valid NUL-terminated path; the returned fd is owned by us alone.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_RDONLY | libc::O_CLOEXEC) };
    // SAFETY: fd is a fresh descriptor nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `path` read-only and non-blocking (a FIFO must not hang us), resolved with `root` as
/// `/`: no `..` or symlink leaves it. Needs Linux 5.6 (`openat2`); None before.
fn open_in_root(root: &OwnedFd, path: &str) -> Option<OwnedFd> {
    let path = CString::new(path.trim_start_matches('/')).ok()?;
    // SAFETY: open_how is plain data; zeroed is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid fd, NUL-terminated path and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    // SAFETY: a fresh descriptor nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> SourceCache {
        SourceCache::new(std::process::id() as i32)
    }

    #[test]
    fn reads_our_own_source() {
        let mut cache = me();
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/src/remote/source.rs");
        assert_eq!(
            cache.line(file, 1).as_deref(),
            Some("//! Source lines of the target's code, read as the target sees its files and never trusting the")
        );
        assert_eq!(cache.line(file, 0), None);
        assert_eq!(cache.line("<frozen x>", 3), None);
    }

    #[test]
    fn context_keeps_indentation_and_stops_at_the_file_edges() {
        let mut cache = me();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ctx.py");
        std::fs::write(&file, "def f():\n    a = 1\n    b = 2   \n    return a\n").unwrap();
        let path = file.to_str().unwrap();
        let ctx = cache.context(path, 1, 2).unwrap();
        assert_eq!(ctx.first_line, 1);
        assert_eq!(ctx.lines, ["def f():", "    a = 1", "    b = 2"]);
        let ctx = cache.context(path, 4, 1).unwrap();
        assert_eq!(ctx.first_line, 3);
        assert_eq!(ctx.lines, ["    b = 2", "    return a"]);
        assert_eq!(cache.context(path, 9, 2), None);
        assert_eq!(cache.context("/dev/zero", 1, 2), None);
    }

    #[test]
    fn devices_fifos_and_directories_are_not_read() {
        let mut cache = me();
        assert_eq!(cache.line("/dev/zero", 1), None);
        assert_eq!(cache.line("/dev/urandom", 1), None);
        assert_eq!(cache.line("/proc", 1), None);
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Opening a FIFO for reading with no writer would block forever without O_NONBLOCK.
        assert_eq!(cache.line(fifo.to_str().unwrap(), 1), None);
    }

    #[test]
    fn big_files_and_long_lines_are_bounded() {
        let mut cache = me();
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.py");
        let f = File::create(&big).unwrap();
        f.set_len(10 << 30).unwrap(); // 10 GiB, sparse
        drop(f);
        let line = cache.line(big.to_str().unwrap(), 1).unwrap();
        assert!(line.chars().count() <= MAX_LINE_CHARS + 1, "{}", line.len());
        assert!(cache.bytes <= MAX_SOURCE_BYTES as usize);
        // A line past the bytes read is unknown, not made up.
        let lines = dir.path().join("lines.py");
        let text: String = (0..600_000).map(|i| format!("x = {i}\n")).collect();
        std::fs::write(&lines, text).unwrap();
        assert_eq!(
            cache.line(lines.to_str().unwrap(), 2).as_deref(),
            Some("x = 1")
        );
        assert_eq!(cache.line(lines.to_str().unwrap(), 599_999), None);
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        // A made-up root holding a file, an absolute symlink and a `..` chain pointing out.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("app")).unwrap();
        std::fs::write(root.path().join("app/main.py"), "inside = 1\n").unwrap();
        std::os::unix::fs::symlink(
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            root.path().join("app/escape.py"),
        )
        .unwrap();
        let fd = open_plain(root.path().to_str().unwrap(), libc::O_DIRECTORY).unwrap();
        let read = |path: &str| {
            open_in_root(&fd, path).map(|fd| {
                let mut text = String::new();
                File::from(fd).read_to_string(&mut text).unwrap();
                text
            })
        };
        assert_eq!(read("/app/main.py").as_deref(), Some("inside = 1\n"));
        assert_eq!(
            read("/../../../app/main.py").as_deref(),
            Some("inside = 1\n")
        );
        // The symlink is followed inside the root, where its target does not exist.
        assert_eq!(read("/app/escape.py"), None);
        let outside = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        assert_eq!(read(&format!("/../../../../..{outside}")), None);
    }
}
