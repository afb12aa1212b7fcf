//! Showing, before it is trusted, that the own reader reads an interpreter right when no other
//! reader can vouch for it: on CPython 3.13+ its layout is the target's own debug offsets, and
//! py-spy's hard-coded structs (the other check, `pyspy::own_reader_agrees`) may be the ones
//! that are wrong. What the reader reads must match what the kernel and the target's files say:
//! every Python thread is a live thread of the process, and the code objects on the stacks
//! name files that exist in the target's root with the lines they point at.

use std::time::{Duration, Instant};

use crate::remote::memory::RemoteMemory;
use crate::remote::source::SourceCache;
use crate::remote::stacks::StackReader;
use crate::remote::threads::{live_tids, NamespaceTids};
use crate::sample::Frame;

/// Attempts before the reader is not trusted (the target runs on between reads).
const ATTEMPTS: usize = 20;

/// Whether the reader's view of the interpreter checks out (see the module's doc).
pub(super) fn own_reader_checks_out<M: RemoteMemory>(own: &mut StackReader<M>, pid: i32) -> bool {
    let mut sources = SourceCache::new(pid);
    let mut ns_tids = NamespaceTids::new(pid);
    (0..ATTEMPTS).any(|attempt| {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        attempt_checks_out(own, pid, &mut sources, &mut ns_tids)
    })
}

fn attempt_checks_out<M: RemoteMemory>(
    own: &mut StackReader<M>,
    pid: i32,
    sources: &mut SourceCache,
    ns_tids: &mut NamespaceTids,
) -> bool {
    own.begin_tick(Instant::now());
    let Ok(heads) = own.threads() else {
        return false;
    };
    let live = live_tids(pid);
    let threads_live = !heads.is_empty()
        && heads.iter().all(|h| {
            h.native_tid
                .and_then(|tid| ns_tids.host_tid(tid))
                .is_some_and(|tid| live.contains(&tid))
        });
    if !threads_live {
        return false;
    }
    let mut stacks: Vec<Frame> = Vec::new();
    let mut frames = Vec::new();
    for head in &heads {
        if own.stack(head, &mut frames).is_err() {
            return false;
        }
        stacks.append(&mut frames);
    }
    files_check_out(&stacks, sources)
}

/// Every frame names a function; of the frames whose file is a path, the file exists in the
/// target's root and holds the line (a wrong code offset gives garbage names or lines far past
/// the end of the file). Frames of frozen modules (`<frozen ...>`) have no file to look at.
fn files_check_out(frames: &[Frame], sources: &mut SourceCache) -> bool {
    frames.iter().all(|f| {
        !f.function.is_empty()
            && (!f.file.starts_with('/') || sources.line(&f.file, f.line.max(1)).is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_must_name_real_lines_of_real_files() {
        let mut sources = SourceCache::new(std::process::id() as i32);
        let here = concat!(env!("CARGO_MANIFEST_DIR"), "/src/sampler/self_check.rs");
        let frame = |function: &str, file: &str, line| Frame {
            function: function.into(),
            file: file.into(),
            line,
        };
        assert!(files_check_out(
            &[frame("f", here, 3), frame("g", "<frozen runpy>", 0)],
            &mut sources
        ));
        assert!(!files_check_out(
            &[frame("f", here, 1_000_000)],
            &mut sources
        ));
        assert!(!files_check_out(
            &[frame("f", "/no/such/file.py", 1)],
            &mut sources
        ));
        assert!(!files_check_out(&[frame("", here, 3)], &mut sources));
    }
}
