//! Reading the target's memory: `process_vm_readv`, read-only, never pausing the target.

use std::io::{self, IoSliceMut};

use nix::sys::uio::{process_vm_readv, RemoteIoVec};

/// Reads `buf.len()` bytes at `addr`; the OS error on failure (EPERM tells of ptrace rules).
pub fn read_exact(pid: i32, addr: usize, buf: &mut [u8]) -> io::Result<()> {
    let len = buf.len();
    let mut local = [IoSliceMut::new(buf)];
    let remote = [RemoteIoVec { base: addr, len }];
    match process_vm_readv(nix::unistd::Pid::from_raw(pid), &mut local, &remote) {
        Ok(n) if n == len => Ok(()),
        Ok(_) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
        Err(errno) => Err(io::Error::from_raw_os_error(errno as i32)),
    }
}

/// The pointer-sized word at `offset` of a buffer read earlier.
pub fn word_at(buf: &[u8], offset: usize) -> u64 {
    buf.get(offset..offset + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_ne_bytes)
        .unwrap_or(0)
}

/// Where the stack and task readers get the target's bytes from: the live process, or, in the
/// readers' property tests, a made-up memory image full of garbage.
pub trait RemoteMemory {
    /// Fills `buf` from `addr`; false when any byte of the range cannot be read.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

/// The target process's memory, read with `process_vm_readv` (never written, never paused).
#[derive(Debug, Clone, Copy)]
pub struct ProcessMemory {
    /// The process.
    pub pid: i32,
}

impl RemoteMemory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        addr != 0 && read_exact(self.pid, addr as usize, buf).is_ok()
    }
}

#[cfg(test)]
#[path = "fake_memory.rs"]
pub(crate) mod fake;
