//! Device protocols spoken by journey monitors over TCP (and UDP): framing, checksums,
//! the messages we use and the replies devices expect. Pure and synchronous, one module
//! per protocol: a listener feeds the bytes it read in and writes the replies out,
//! only after what a frame carried is stored.

#[cfg(test)]
mod fuzz;
pub mod gt06;
pub mod jt808;
pub mod osmand;
pub mod teltonika;

pub use crate::pipeline::delivery::{Alarm, DevicePosition};

/// What a protocol's scanner found at the start of a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Not enough bytes yet for a whole frame: read more.
    Incomplete,
    /// A whole frame of this many bytes (its checksum is checked when it is parsed).
    Frame(usize),
    /// This many bytes that cannot start a frame (line noise, a frame cut short):
    /// kept as a dead letter and skipped, so the stream resynchronises.
    Garbage(usize),
}

/// Reads a big-endian unsigned integer of `N` bytes at `at`.
pub(crate) fn be<const N: usize>(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + N)?;
    Some(s.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// Decodes packed BCD digits (two per byte, high nibble first); `None` if a nibble
/// is not a decimal digit.
pub(crate) fn bcd(bytes: &[u8]) -> Option<String> {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        for n in [b >> 4, b & 0x0f] {
            if n > 9 {
                return None;
            }
            s.push(char::from(b'0' + n));
        }
    }
    Some(s)
}

/// CRC-16/IBM (ARC, Teltonika's) written out bit by bit, independent of the `crc`
/// crate (tests check the codecs and encoders against it).
#[cfg(test)]
pub(crate) fn crc16_ibm_bitwise(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xa001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Parses a hex string of a captured frame (tests).
#[cfg(test)]
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
