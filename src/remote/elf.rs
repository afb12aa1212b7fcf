//! Finding a named section (`.PyRuntime`, `.AsyncioDebug`) in the binaries a target maps, and
//! where it sits in the target's address space.
//!
//! CPython 3.13+ places its runtime state, whose first member is the debug-offsets table that
//! describes every struct layout, in a section of its own; 3.14+'s `_asyncio` module does the
//! same for the task layout. Neither needs a symbol table (the `.AsyncioDebug` one has no
//! symbol at all), only the section headers.
//!
//! The file is the target's, so nothing in it is trusted: only the ELF header, the program and
//! section headers and the section-name table are read, each with a size bound, with `pread`
//! (never the whole file). The file is opened as the target sees it: through
//! `/proc/<pid>/map_files/` (the exact file mapped, whatever namespace or chroot the target is
//! in), else inside the target's root (`/proc/<pid>/root`, resolved so that no path leaves it).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::source;

/// Section headers read at most (real binaries have ~40).
const MAX_SECTIONS: usize = 4096;
/// Program headers read at most.
const MAX_SEGMENTS: usize = 256;
/// Bytes of the section-name table read at most.
const MAX_NAMES: u64 = 1 << 20;
/// Lines of `/proc/<pid>/maps` looked at (a process with more mappings is searched partly).
const MAX_MAP_LINES: usize = 1 << 16;

/// A section of a mapped binary, placed in the target's address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedSection {
    /// Address of the section's first byte in the target.
    pub address: u64,
    /// Its size in bytes (`sh_size`).
    pub size: u64,
    /// The mapped file's path, as `/proc/<pid>/maps` names it.
    pub file: String,
}

/// A section header, as the file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Section {
    addr: u64,
    size: u64,
}

/// One file-backed mapping of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    path: String,
}

fn parse_maps(maps: &str) -> Vec<Mapping> {
    maps.lines()
        .take(MAX_MAP_LINES)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, _perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
            let (_dev, _inode) = (fields.next()?, fields.next()?);
            let path: String = fields.collect::<Vec<_>>().join(" ");
            if !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path,
            })
        })
        .collect()
}

/// Finds section `name` in the first mapped file, in maps order, whose file name satisfies
/// `wanted` and has that section, and says where the target has it.
pub fn find_mapped_section(
    pid: i32,
    wanted: impl Fn(&str) -> bool,
    name: &str,
) -> Option<MappedSection> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mappings = parse_maps(&maps);
    let mut tried: Vec<&str> = Vec::new();
    for first in &mappings {
        let file_name = first.path.rsplit('/').next().unwrap_or("");
        if !wanted(file_name) || tried.contains(&first.path.as_str()) {
            continue;
        }
        tried.push(&first.path);
        let Some(file) = open_mapped(pid, first) else {
            continue;
        };
        let Some(section) = section_by_name(&file, name) else {
            continue;
        };
        // The file's lowest mapping is its first PT_LOAD segment (offset 0 of the file): the
        // load bias is where it landed minus the address the file asked for.
        let base = mappings
            .iter()
            .filter(|m| m.path == first.path)
            .min_by_key(|m| m.start)?;
        let (vaddr, align) = first_load(&file)?;
        let link_base = vaddr & !align.saturating_sub(1);
        let bias = base.start.wrapping_sub(base.offset).wrapping_sub(link_base);
        let address = section.addr.wrapping_add(bias);
        // The section must lie inside one of the file's mappings.
        let mapped = mappings.iter().any(|m| {
            m.path == first.path
                && address >= m.start
                && address
                    .checked_add(section.size)
                    .is_some_and(|end| end <= m.end)
        });
        if mapped {
            return Some(MappedSection {
                address,
                size: section.size,
                file: first.path.clone(),
            });
        }
    }
    None
}

/// Opens the file behind `mapping` as the target sees it.
fn open_mapped(pid: i32, mapping: &Mapping) -> Option<File> {
    let map_file = format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    );
    if let Ok(file) = File::open(&map_file) {
        return Some(file);
    }
    source::open_in_target_root(pid, &mapping.path).map(File::from)
}

fn read_at(file: &File, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]) as u64)
        .unwrap_or(0)
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap()) as u64)
        .unwrap_or(0)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
        .unwrap_or(0)
}

/// The ELF header of a little-endian 64-bit file (the only kind loopspy reads: x86_64).
fn header(file: &File) -> Option<Vec<u8>> {
    let h = read_at(file, 0, 64)?;
    (h[..4] == *b"\x7fELF" && h[4] == 2 && h[5] == 1).then_some(h)
}

/// Section `name`'s address and size as linked.
fn section_by_name(file: &File, name: &str) -> Option<Section> {
    let h = header(file)?;
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&h, 40),
        u16_at(&h, 58),
        u16_at(&h, 60),
        u16_at(&h, 62),
    );
    if shentsize < 64 || shnum == 0 || shnum as usize > MAX_SECTIONS || shstrndx >= shnum {
        return None;
    }
    let table = read_at(file, shoff, (shentsize * shnum) as usize)?;
    let entry = |i: u64| &table[(i * shentsize) as usize..(i * shentsize + 64) as usize];
    let names = entry(shstrndx);
    let (names_off, names_size) = (u64_at(names, 24), u64_at(names, 32).min(MAX_NAMES));
    let names = read_at(file, names_off, names_size as usize)?;
    (0..shnum).find_map(|i| {
        let e = entry(i);
        let at = u32_at(e, 0) as usize;
        let end = at.checked_add(name.len())?;
        let matches = names.get(at..end) == Some(name.as_bytes()) && names.get(end) == Some(&0);
        matches.then(|| Section {
            addr: u64_at(e, 16),
            size: u64_at(e, 32),
        })
    })
}

/// The first `PT_LOAD` segment's virtual address and alignment.
fn first_load(file: &File) -> Option<(u64, u64)> {
    let h = header(file)?;
    let (phoff, phentsize, phnum) = (u64_at(&h, 32), u16_at(&h, 54), u16_at(&h, 56));
    if phentsize < 56 || phnum as usize > MAX_SEGMENTS {
        return None;
    }
    let table = read_at(file, phoff, (phentsize * phnum) as usize)?;
    (0..phnum).find_map(|i| {
        let e = &table[(i * phentsize) as usize..];
        (u32_at(e, 0) == 1).then(|| (u64_at(e, 16), u64_at(e, 48)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse_with_spaces_in_paths_and_skip_anonymous() {
        let maps = "00400000-00401000 r--p 00000000 08:01 123 /usr/bin/python3.14\n\
                    7f00-8f00 rw-p 00000000 00:00 0 \n\
                    7f0000-7f1000 r-xp 00001000 08:01 9 /opt/my dir/libpython3.15.so\n\
                    ffff-1000 r--p 0 00:00 0 [vdso]\n";
        let m = parse_maps(maps);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].path, "/opt/my dir/libpython3.15.so");
        assert_eq!((m[1].start, m[1].offset), (0x7f0000, 0x1000));
    }

    #[test]
    fn finds_a_section_in_our_own_executable_and_places_it() {
        // The test binary is an ELF file with a `.text` section mapped into this process.
        let me = std::process::id() as i32;
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let exe_name = exe.file_name().unwrap().to_string_lossy().into_owned();
        let found = find_mapped_section(me, |name| name == exe_name, ".text").unwrap();
        // `main`-adjacent code lives in .text: this function's own address must be inside.
        let here = finds_a_section_in_our_own_executable_and_places_it as *const () as usize as u64;
        assert!(
            here >= found.address && here < found.address + found.size,
            "{here:#x} outside {found:?}"
        );
        assert!(find_mapped_section(me, |name| name == exe_name, ".no-such").is_none());
    }

    #[test]
    fn garbage_files_are_not_elf() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("empty", Vec::new()),
            ("text", b"hello, this is not an ELF file at all".repeat(10)),
            ("trunc", b"\x7fELF\x02\x01\x01".to_vec()),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            let file = File::open(&path).unwrap();
            assert!(section_by_name(&file, ".PyRuntime").is_none());
            assert!(first_load(&file).is_none());
        }
        // A header claiming a huge section table is refused before anything big is read.
        let mut h = vec![0u8; 64];
        h[..6].copy_from_slice(b"\x7fELF\x02\x01");
        h[40..48].copy_from_slice(&64u64.to_le_bytes());
        h[58..60].copy_from_slice(&64u16.to_le_bytes());
        h[60..62].copy_from_slice(&u16::MAX.to_le_bytes());
        let path = dir.path().join("huge");
        std::fs::write(&path, &h).unwrap();
        assert!(section_by_name(&File::open(&path).unwrap(), ".PyRuntime").is_none());
    }
}
