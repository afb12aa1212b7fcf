//! What a blocked thread is waiting on: the file descriptor behind its syscall, and what that
//! descriptor is — a file path, a TCP/UDP peer with its well-known service, a unix socket, a
//! pipe. Read-only: `/proc/<pid>/fd`, `/proc/<pid>/net/*`, and for `poll`/`select` the fd array
//! the syscall was given, read from the target's memory.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::memory;
use super::procfs;
use crate::sample::{Resource, Syscall};
use crate::syscalls;

/// Well-known ports, named.
pub fn service_name(port: u16) -> Option<&'static str> {
    Some(match port {
        80 | 8000 | 8080 => "HTTP",
        443 | 8443 => "HTTPS",
        5432 => "PostgreSQL",
        3306 => "MySQL",
        6379 => "Redis",
        27017 => "MongoDB",
        11211 => "memcached",
        9200 => "Elasticsearch",
        5672 => "AMQP",
        9092 => "Kafka",
        53 => "DNS",
        25 | 587 => "SMTP",
        _ => return None,
    })
}

/// Resolves the fd behind blocked syscalls; caches socket tables per inode, since parsing
/// `/proc/<pid>/net/tcp` on every sample would be wasteful.
#[derive(Debug, Default)]
pub struct ResourceResolver {
    sockets: HashMap<u64, Resource>,
}

/// Bound on cached sockets; a server with churning connections must not grow us forever.
const SOCKET_CACHE_LIMIT: usize = 4096;

impl ResourceResolver {
    /// The resource `syscall` of a thread of `pid` waits on, if it takes one.
    pub fn resolve(&mut self, pid: i32, syscall: &Syscall) -> Option<Resource> {
        let fd = waited_fd(pid, syscall)?;
        let link = procfs::fd_target(pid, fd)?;
        Some(self.describe(pid, &link))
    }

    fn describe(&mut self, pid: i32, link: &str) -> Resource {
        if let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        {
            if let Some(found) = self.sockets.get(&inode) {
                return found.clone();
            }
            let found = find_socket(pid, inode).unwrap_or_else(|| Resource::Other(link.into()));
            if self.sockets.len() >= SOCKET_CACHE_LIMIT {
                self.sockets.clear();
            }
            self.sockets.insert(inode, found.clone());
            return found;
        }
        if link.starts_with("pipe:") {
            return Resource::Pipe;
        }
        if link.starts_with('/') {
            return Resource::File(link.into());
        }
        Resource::Other(link.into())
    }
}

/// The file descriptor a syscall waits on: the first argument for read/write/recv/fsync-like
/// calls, the first entry of the fd array for poll/ppoll, the first set bit for select.
fn waited_fd(pid: i32, syscall: &Syscall) -> Option<u64> {
    let a = &syscall.args;
    match syscall.nr {
        nr if syscalls::waits_on_first_arg_fd(nr) => Some(a[0]),
        // poll, ppoll: struct pollfd { int fd; short events; short revents; } fds[nfds]
        syscalls::POLL | syscalls::PPOLL if a[1] >= 1 => {
            let mut pollfd = [0u8; 8];
            memory::read_exact(pid, a[0] as usize, &mut pollfd).ok()?;
            let fd = i32::from_ne_bytes(pollfd[..4].try_into().ok()?);
            (fd >= 0).then_some(fd as u64)
        }
        // select, pselect6: the lowest fd set in readfds, else writefds.
        syscalls::SELECT | syscalls::PSELECT6 if a[0] >= 1 => {
            let nfds = a[0].min(1024) as usize;
            for set in [a[1], a[2]] {
                if set == 0 {
                    continue;
                }
                let mut bits = vec![0u8; nfds.div_ceil(8)];
                memory::read_exact(pid, set as usize, &mut bits).ok()?;
                if let Some(fd) = (0..nfds).find(|&fd| bits[fd / 8] & (1 << (fd % 8)) != 0) {
                    return Some(fd as u64);
                }
            }
            None
        }
        _ => None,
    }
}

/// Looks `inode` up in the target's socket tables (its own network namespace's view).
fn find_socket(pid: i32, inode: u64) -> Option<Resource> {
    for (table, v6) in [("tcp", false), ("tcp6", true)] {
        if let Some((local, peer)) = find_inet(pid, table, inode, v6) {
            let service = if peer.1 == 0 {
                service_name(local.1)
            } else {
                service_name(peer.1)
            };
            return Some(Resource::Tcp {
                local: format_addr(local),
                peer: format_addr(peer),
                service,
            });
        }
    }
    for (table, v6) in [("udp", false), ("udp6", true)] {
        if let Some((_, peer)) = find_inet(pid, table, inode, v6) {
            return Some(Resource::Udp {
                peer: format_addr(peer),
            });
        }
    }
    let unix = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).ok()?;
    unix.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(6)?.parse::<u64>().ok()? == inode)
            .then(|| Resource::Unix(fields.get(7).map(|p| p.to_string())))
    })
}

type Endpoint = (IpAddr, u16);

fn find_inet(pid: i32, table: &str, inode: u64, v6: bool) -> Option<(Endpoint, Endpoint)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        Some((
            parse_endpoint(fields.get(1)?, v6)?,
            parse_endpoint(fields.get(2)?, v6)?,
        ))
    })
}

/// Parses `0100007F:1F90` (little-endian words, as the kernel prints them).
pub fn parse_endpoint(text: &str, v6: bool) -> Option<Endpoint> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = if v6 {
        let mut bytes = [0u8; 16];
        for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
            let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        let v6 = Ipv6Addr::from(bytes);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        let word = u32::from_str_radix(addr, 16).ok()?;
        IpAddr::V4(Ipv4Addr::from(word.to_le_bytes()))
    };
    Some((ip, port))
}

fn format_addr((ip, port): Endpoint) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_endpoints() {
        let (ip, port) = parse_endpoint("0100007F:1F90", false).unwrap();
        assert_eq!(format_addr((ip, port)), "127.0.0.1:8080");
        let (ip, port) = parse_endpoint("0000000000000000FFFF00000100007F:1538", true).unwrap();
        assert_eq!(format_addr((ip, port)), "127.0.0.1:5432");
    }

    #[test]
    fn resolves_our_own_tcp_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        use std::os::fd::AsRawFd;
        let fd = stream.as_raw_fd() as u64;
        let pid = std::process::id() as i32;
        let syscall = Syscall {
            nr: 45,
            args: [fd, 0, 0, 0, 0, 0],
        };
        let resource = ResourceResolver::default().resolve(pid, &syscall).unwrap();
        assert_eq!(resource.peer(), Some(format!("127.0.0.1:{port}").as_str()));
        assert!(resource.to_string().starts_with("TCP 127.0.0.1:"));
    }

    #[test]
    fn resolves_a_poll_array() {
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        use std::os::fd::AsRawFd;
        let pollfd: [i32; 2] = [file.as_raw_fd(), 0];
        let syscall = Syscall {
            nr: 7,
            args: [pollfd.as_ptr() as u64, 1, 0, 0, 0, 0],
        };
        let pid = std::process::id() as i32;
        let resource = ResourceResolver::default().resolve(pid, &syscall).unwrap();
        assert!(
            resource.path().is_some_and(|p| p.ends_with("/stat")),
            "{resource}"
        );
    }
}
