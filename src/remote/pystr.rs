//! CPython's compact `str` (every code object's names, task names, dict keys) as both of our
//! readers see it: the fixed header that says its length, character width and where its data
//! starts, and the decoding of that data. Each reader keeps its own bounds and plausibility rules
//! (the stack reader cuts long names, the task reader refuses them); the layout is here once.

use super::memory::word_at;
use super::offsets::UnicodeOffsets;

/// What a compact str's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrHeader {
    /// Characters.
    pub chars: usize,
    /// The `state` kind: 1, 2 or 4 bytes a character for a well-formed str (anything else
    /// is garbage).
    pub kind: u32,
    /// Flagged compact.
    pub compact: bool,
    /// Flagged ASCII (its data follows the shorter header).
    pub ascii: bool,
}

impl StrHeader {
    /// Parses the fixed part every compact str has (`u.ascii_data` bytes: a short ASCII str
    /// can end its mapping right after its data, so read no more than that).
    pub fn parse(header: &[u8], u: &UnicodeOffsets) -> Option<StrHeader> {
        let state = u32::from_ne_bytes(header.get(u.state..u.state + 4)?.try_into().ok()?);
        Some(StrHeader {
            chars: word_at(header, u.length) as usize,
            kind: (state >> 2) & 7,
            compact: (state >> 5) & 1 == 1,
            ascii: (state >> 6) & 1 == 1,
        })
    }

    /// Offset of the character data from the object's start.
    pub fn data_offset(&self, u: &UnicodeOffsets) -> usize {
        if self.ascii {
            u.ascii_data
        } else {
            u.compact_data
        }
    }

    /// Bytes a character.
    pub fn width(&self) -> usize {
        self.kind as usize
    }
}

/// Decodes `data`, characters of `width` bytes (ASCII-flagged when `ascii`); the reason when
/// it is no text ("not ASCII", "invalid character").
pub fn decode(data: Vec<u8>, width: usize, ascii: bool) -> Result<String, &'static str> {
    match width {
        1 if ascii => String::from_utf8(data)
            .ok()
            .filter(|s| s.is_ascii())
            .ok_or("not ASCII"),
        1 => Ok(data.iter().map(|&b| b as char).collect()),
        2 => data
            .chunks_exact(2)
            .map(|c| char::from_u32(u16::from_ne_bytes([c[0], c[1]]) as u32))
            .collect::<Option<String>>()
            .ok_or("invalid character"),
        _ => data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect::<Option<String>>()
            .ok_or("invalid character"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_width() {
        assert_eq!(decode(b"tick".to_vec(), 1, true), Ok("tick".into()));
        assert_eq!(decode(vec![0xff], 1, true), Err("not ASCII"));
        assert_eq!(decode(vec![0xe9], 1, false), Ok("é".into()));
        let ucs2: Vec<u8> = "δ".encode_utf16().flat_map(u16::to_ne_bytes).collect();
        assert_eq!(decode(ucs2, 2, false), Ok("δ".into()));
        assert_eq!(
            decode(0xd800u16.to_ne_bytes().to_vec(), 2, false),
            Err("invalid character")
        );
        assert_eq!(
            decode(0x1f40du32.to_ne_bytes().to_vec(), 4, false),
            Ok("🐍".into())
        );
        assert_eq!(
            decode(0x11_0000u32.to_ne_bytes().to_vec(), 4, false),
            Err("invalid character")
        );
    }
}
