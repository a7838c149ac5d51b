//! Device protocols spoken by journey monitors over TCP (and UDP): framing, checksums,
//! the messages we use and the replies devices expect. Pure and synchronous, one module
//! per protocol: a listener feeds the bytes it read in and writes the replies out,
//! only after what a frame carried is stored.

pub mod gt06;
pub mod jt808;
pub mod osmand;
pub mod teltonika;

use crate::domain::FixCandidate;

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

/// An alarm a device reports with a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alarm {
    /// Emergency button.
    Sos,
    /// Main power cut or disconnected.
    PowerCut,
    /// Shock or vibration sensor.
    Vibration,
    /// Backup battery low.
    LowBattery,
    /// The device's own overspeed alarm (fleetwatch judges speed itself).
    Overspeed,
    /// Any other alarm, kept as the device's raw code.
    Other(u32),
}

impl Alarm {
    /// Stable name, for logs, metrics and stored events.
    pub fn name(self) -> &'static str {
        match self {
            Alarm::Sos => "sos",
            Alarm::PowerCut => "power_cut",
            Alarm::Vibration => "vibration",
            Alarm::LowBattery => "low_battery",
            Alarm::Overspeed => "device_overspeed",
            Alarm::Other(_) => "other",
        }
    }
}

/// A position as a device reported it, with what the device adds to it.
#[derive(Debug, Clone, PartialEq)]
pub struct DevicePosition {
    /// The fix, to be validated like any other (the vehicle comes from the device's
    /// identity, not from the frame).
    pub fix: FixCandidate,
    /// The receiver had a position fix; a position without one repeats the last known
    /// place and must not feed the rules.
    pub gps_valid: bool,
    /// The device marks this position as uploaded from its buffer (blind area).
    pub buffered: bool,
    /// Alarms the device reported with this position.
    pub alarms: Vec<Alarm>,
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

/// Parses a hex string of a captured frame (tests).
#[cfg(test)]
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
