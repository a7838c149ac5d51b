//! Concox GT06 and its descendants (GT06N, GT800, JM01 and the many clones): frames
//! `78 78 len proto body serial crc 0D 0A` (or `79 79` with a 2-byte length), CRC-ITU
//! (CRC-16/X-25) over length to serial, login with the IMEI, heartbeats, GPS+LBS
//! positions and alarm packets.
//!
//! Acknowledgement: the protocol has the server answer login, heartbeat and alarm
//! packets (echoing protocol number and serial); plain position packets (0x10, 0x11,
//! 0x12, 0x22) get no answer, so the device does not resend them if they are lost.
//! A listener can only hold the connection's reads until they are stored.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use crc::{Crc, CRC_16_IBM_SDLC};

use super::{bcd, be, Alarm, DevicePosition, Scan};
use crate::domain::FixCandidate;

/// CRC-ITU as GT06 uses it: CRC-16/X-25 (= IBM-SDLC).
const CRC_ITU: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_SDLC);

/// Login: terminal id (IMEI) in BCD.
pub const LOGIN: u8 = 0x01;
/// GPS only.
pub const GPS: u8 = 0x10;
/// GPS and LBS, 2-byte MNC and 4-byte cell id.
pub const GPS_LBS_6: u8 = 0x11;
/// GPS and LBS (GT06).
pub const GPS_LBS_1: u8 = 0x12;
/// Status / heartbeat.
pub const STATUS: u8 = 0x13;
/// GPS, LBS and status: alarm packet.
pub const GPS_LBS_STATUS_1: u8 = 0x16;
/// GPS and LBS with ignition and upload mode (GT06N and later).
pub const GPS_LBS_2: u8 = 0x22;
/// Heartbeat (GK310 and others).
pub const HEARTBEAT: u8 = 0x23;
/// Alarm packet, second form.
pub const GPS_LBS_STATUS_2: u8 = 0x26;
/// Alarm packet with language.
pub const GPS_LBS_STATUS_3: u8 = 0x27;

/// Largest frame we accept: the extended form's 2-byte length allows 64 KiB, which
/// no position message comes near.
pub const MAX_FRAME: usize = 4096;

/// Why a GT06 frame could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Gt06Error {
    /// The frame's CRC does not match its bytes.
    #[error("bad CRC-ITU: frame says {stated:04x}, bytes give {computed:04x}")]
    BadChecksum { stated: u16, computed: u16 },
    /// The body is shorter than its message type needs.
    #[error("message 0x{protocol:02x} too short: {len} bytes of body")]
    TooShort { protocol: u8, len: usize },
    /// A login whose terminal id is not BCD digits.
    #[error("login terminal id is not BCD")]
    BadTerminalId,
    /// A date or time field out of range.
    #[error("invalid date/time in message 0x{0:02x}")]
    BadTime(u8),
}

impl Gt06Error {
    /// Low-cardinality reason label for metrics and dead letters.
    pub fn label(&self) -> &'static str {
        match self {
            Gt06Error::BadChecksum { .. } => "bad_checksum",
            Gt06Error::TooShort { .. } | Gt06Error::BadTerminalId | Gt06Error::BadTime(_) => {
                "malformed"
            }
        }
    }
}

/// Finds the frame at the start of `buf`.
pub fn scan(buf: &[u8]) -> Scan {
    let Some(&first) = buf.first() else {
        return Scan::Incomplete;
    };
    let start = |i: usize| matches!(buf.get(i..i + 2), Some([0x78, 0x78] | [0x79, 0x79]));
    if !start(0) {
        if buf.len() == 1 && (first == 0x78 || first == 0x79) {
            return Scan::Incomplete;
        }
        // Skip to the next possible start; a lone last byte may begin one.
        let next = (1..buf.len())
            .find(|&i| start(i) || (i + 1 == buf.len() && matches!(buf[i], 0x78 | 0x79)));
        return Scan::Garbage(next.unwrap_or(buf.len()));
    }
    let extended = first == 0x79;
    let (len, header) = if extended {
        match be::<2>(buf, 2) {
            Some(n) => (n as usize, 4),
            None => return Scan::Incomplete,
        }
    } else {
        match buf.get(2) {
            Some(&n) => (usize::from(n), 3),
            None => return Scan::Incomplete,
        }
    };
    // len counts protocol, body, serial and CRC: at least 5.
    let total = header + len + 2;
    if len < 5 || total > MAX_FRAME {
        return Scan::Garbage(2);
    }
    if buf.len() < total {
        return Scan::Incomplete;
    }
    if buf[total - 2..total] != [0x0d, 0x0a] {
        // The length does not lead to a stop: not a frame start after all.
        return Scan::Garbage(2);
    }
    Scan::Frame(total)
}

/// A checked frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// `79 79` form (2-byte length).
    pub extended: bool,
    /// Protocol number (message type).
    pub protocol: u8,
    /// Information content between protocol number and serial.
    pub body: &'a [u8],
    /// The device's serial number of this frame, echoed in the reply.
    pub serial: u16,
}

/// Checks a whole frame as [`scan`] delimited it: its CRC, then splits it.
pub fn parse(frame: &[u8]) -> Result<Frame<'_>, Gt06Error> {
    let extended = frame[0] == 0x79;
    let header = if extended { 4 } else { 3 };
    let n = frame.len();
    let stated = be::<2>(frame, n - 4).unwrap_or(0) as u16;
    let computed = CRC_ITU.checksum(&frame[2..n - 4]);
    if stated != computed {
        return Err(Gt06Error::BadChecksum { stated, computed });
    }
    Ok(Frame {
        extended,
        protocol: frame[header],
        body: &frame[header + 1..n - 6],
        serial: be::<2>(frame, n - 6).unwrap_or(0) as u16,
    })
}

/// What a frame says.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The device introduces itself; everything else on the connection is its.
    Login {
        /// IMEI (15 digits; the 16th BCD digit is a leading zero).
        imei: String,
    },
    /// The device is alive.
    Heartbeat {
        /// Ignition (ACC) if the heartbeat carries it.
        ignition: Option<bool>,
    },
    /// A position report.
    Position(DevicePosition),
    /// A message type we do not use: kept raw.
    Unsupported,
}

/// Decodes a checked frame. GT06 devices send UTC; `utc_offset_s` is for those
/// configured to send local time (subtracted to get UTC).
pub fn decode(f: &Frame<'_>, utc_offset_s: i32) -> Result<Message, Gt06Error> {
    let short = || Gt06Error::TooShort {
        protocol: f.protocol,
        len: f.body.len(),
    };
    match f.protocol {
        LOGIN => {
            let id = f.body.get(..8).ok_or_else(short)?;
            let digits = bcd(id).ok_or(Gt06Error::BadTerminalId)?;
            let imei = digits.strip_prefix('0').unwrap_or(&digits).to_string();
            Ok(Message::Login { imei })
        }
        STATUS => {
            let info = *f.body.first().ok_or_else(short)?;
            Ok(Message::Heartbeat {
                ignition: Some(info & 0x02 != 0),
            })
        }
        HEARTBEAT => Ok(Message::Heartbeat { ignition: None }),
        GPS | GPS_LBS_6 | GPS_LBS_1 | GPS_LBS_2 | GPS_LBS_STATUS_1 | GPS_LBS_STATUS_2
        | GPS_LBS_STATUS_3 => {
            let mut p = gps(f, utc_offset_s)?;
            let rest = &f.body[GPS_LEN..];
            match f.protocol {
                GPS_LBS_2 => {
                    // MCC (2), MNC (1, or 2 when the MCC's top bit says so), LAC (2),
                    // cell (3), then ACC, upload mode, real-time/re-upload, mileage?
                    let mnc = if be::<2>(rest, 0).ok_or_else(short)? & 0x8000 != 0 {
                        2
                    } else {
                        1
                    };
                    let tail = rest.get(2 + mnc + 5..).ok_or_else(short)?;
                    if let [acc, _mode, reupload, more @ ..] = tail {
                        p.fix.ignition = Some(*acc != 0);
                        p.buffered = *reupload != 0;
                        if let Some(m) = be::<4>(more, 0) {
                            p.fix.odometer_m = Some(m as f64);
                        }
                    }
                }
                GPS_LBS_STATUS_1 | GPS_LBS_STATUS_2 | GPS_LBS_STATUS_3 => {
                    // LBS with its own length byte (counting itself), then terminal
                    // info, voltage level, GSM signal, alarm, language.
                    let lbs = usize::from(*rest.first().ok_or_else(short)?).max(1);
                    let status = rest.get(lbs..lbs + 5).ok_or_else(short)?;
                    status_alarms(status[0], status[3], &mut p);
                }
                _ => {}
            }
            Ok(Message::Position(p))
        }
        _ => Ok(Message::Unsupported),
    }
}

/// Bytes of the GPS part: time 6, satellites 1, latitude 4, longitude 4, speed 1,
/// course and status 2.
const GPS_LEN: usize = 18;

fn gps(f: &Frame<'_>, utc_offset_s: i32) -> Result<DevicePosition, Gt06Error> {
    let b = f.body;
    if b.len() < GPS_LEN {
        return Err(Gt06Error::TooShort {
            protocol: f.protocol,
            len: b.len(),
        });
    }
    let ts = NaiveDate::from_ymd_opt(2000 + i32::from(b[0]), u32::from(b[1]), u32::from(b[2]))
        .and_then(|d| d.and_hms_opt(u32::from(b[3]), u32::from(b[4]), u32::from(b[5])))
        .map(|t| {
            DateTime::<Utc>::from_naive_utc_and_offset(t, Utc)
                - Duration::seconds(i64::from(utc_offset_s))
        })
        .ok_or(Gt06Error::BadTime(f.protocol))?;
    // Coordinates in units of 1/30000 minute.
    let mut lat = be::<4>(b, 7).unwrap_or(0) as f64 / 1_800_000.0;
    let mut lon = be::<4>(b, 11).unwrap_or(0) as f64 / 1_800_000.0;
    let flags = be::<2>(b, 16).unwrap_or(0) as u16;
    if flags & 0x0400 == 0 {
        lat = -lat;
    }
    if flags & 0x0800 != 0 {
        lon = -lon;
    }
    let ignition = (flags & 0x4000 != 0).then_some(flags & 0x8000 != 0);
    Ok(DevicePosition {
        fix: FixCandidate {
            vehicle: None,
            ts: Some(ts),
            lat,
            lon,
            speed_kmh: Some(f64::from(b[15])),
            heading_deg: Some(f64::from(flags & 0x03ff)),
            driver: None,
            ignition,
            satellites: Some(i64::from(b[6] & 0x0f)),
            hdop: None,
            odometer_m: None,
            accuracy_m: None,
        },
        gps_valid: flags & 0x1000 != 0,
        buffered: false,
        alarms: Vec::new(),
    })
}

/// Terminal information byte and alarm byte of an alarm packet.
fn status_alarms(info: u8, alarm: u8, p: &mut DevicePosition) {
    p.fix.ignition = Some(info & 0x02 != 0);
    let a = match alarm {
        0x00 => match (info >> 3) & 0x07 {
            0 => None,
            1 => Some(Alarm::Vibration),
            2 => Some(Alarm::PowerCut),
            3 => Some(Alarm::LowBattery),
            4 => Some(Alarm::Sos),
            n => Some(Alarm::Other(0x100 | u32::from(n))),
        },
        0x01 => Some(Alarm::Sos),
        0x02 => Some(Alarm::PowerCut),
        0x03 | 0x09 => Some(Alarm::Vibration),
        0x06 => Some(Alarm::Overspeed),
        0x0e | 0x0f => Some(Alarm::LowBattery),
        n => Some(Alarm::Other(u32::from(n))),
    };
    p.alarms.extend(a);
}

/// The reply a frame needs, if any: login, heartbeats and alarm packets are answered
/// with their protocol number and serial; positions are not.
pub fn reply(f: &Frame<'_>) -> Option<Vec<u8>> {
    match f.protocol {
        LOGIN | STATUS | HEARTBEAT | GPS_LBS_STATUS_1 | GPS_LBS_STATUS_2 | GPS_LBS_STATUS_3 => {
            Some(encode(f.extended, f.protocol, &[], f.serial))
        }
        _ => None,
    }
}

/// Builds a frame (replies, and devices in tests).
pub fn encode(extended: bool, protocol: u8, body: &[u8], serial: u16) -> Vec<u8> {
    let len = 1 + body.len() + 4;
    let mut out = Vec::with_capacity(len + 6);
    if extended {
        out.extend_from_slice(&[0x79, 0x79]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[0x78, 0x78, len as u8]);
    }
    out.push(protocol);
    out.extend_from_slice(body);
    out.extend_from_slice(&serial.to_be_bytes());
    let crc = CRC_ITU.checksum(&out[2..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&[0x0d, 0x0a]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::device::hex;

    fn frame(raw: &[u8]) -> Frame<'_> {
        assert_eq!(scan(raw), Scan::Frame(raw.len()));
        parse(raw).expect("valid frame")
    }

    fn position(raw: &str) -> DevicePosition {
        let raw = hex(raw);
        match decode(&frame(&raw), 0).unwrap() {
            Message::Position(p) => p,
            m => panic!("not a position: {m:?}"),
        }
    }

    // Frames below are captures from real devices, as published with open-source
    // tracking servers' decoder tests.

    #[test]
    fn login_gives_the_imei_and_is_answered() {
        let raw = hex("78780D01086471700328358100093F040D0A");
        let f = frame(&raw);
        assert_eq!(f.serial, 9);
        assert_eq!(
            decode(&f, 0).unwrap(),
            Message::Login {
                imei: "864717003283581".into()
            }
        );
        let r = reply(&f).unwrap();
        assert_eq!(&r[..6], &[0x78, 0x78, 0x05, 0x01, 0x00, 0x09]);
        // The reply is itself a valid frame.
        assert_eq!(scan(&r), Scan::Frame(r.len()));
        assert_eq!(parse(&r).unwrap().protocol, LOGIN);
    }

    #[test]
    fn gps_lbs_2_with_reupload_flag() {
        let p = position(
            "787822220F0C1D023305C9027AC8180C46586000140001CC00287D001F71000001000820860D0A",
        );
        assert_eq!(p.fix.ts.unwrap().to_rfc3339(), "2015-12-29T02:51:05+00:00");
        assert!((p.fix.lat - 23.111693).abs() < 1e-6, "{}", p.fix.lat);
        assert!((p.fix.lon - 114.409298).abs() < 1e-6, "{}", p.fix.lon);
        assert_eq!(p.fix.speed_kmh, Some(0.0));
        assert_eq!(p.fix.satellites, Some(9));
        assert_eq!(p.fix.ignition, Some(false));
        assert!(p.gps_valid);
        assert!(p.buffered, "real-time/re-upload byte is 1");
    }

    #[test]
    fn gps_lbs_2_western_europe_real_time() {
        let p = position(
            "78782222120616083817c5050cc8c801a819d600152400e8011dbf003332000000004862500d0a",
        );
        assert_eq!(p.fix.ts.unwrap().to_rfc3339(), "2018-06-22T08:56:23+00:00");
        assert!((p.fix.lat - 47.068840).abs() < 1e-6, "{}", p.fix.lat);
        assert!((p.fix.lon - 15.441043).abs() < 1e-6);
        assert_eq!(p.fix.heading_deg, Some(292.0));
        assert!(!p.buffered);
    }

    #[test]
    fn gps_lbs_1_with_ignition_in_course_flags() {
        let p = position(
            "787821121303120b2524c70138e363085b549003d43301940057d200cd52c000006aa1ca0d0a",
        );
        assert_eq!(p.fix.ts.unwrap().to_rfc3339(), "2019-03-18T11:37:36+00:00");
        assert!((p.fix.lat - 11.391913).abs() < 1e-6);
        assert!((p.fix.lon - 77.890640).abs() < 1e-6);
        assert_eq!(p.fix.speed_kmh, Some(3.0));
        assert_eq!(p.fix.heading_deg, Some(51.0));
        assert_eq!(p.fix.ignition, Some(true));
        assert_eq!(p.fix.satellites, Some(7));
    }

    #[test]
    fn alarm_packet_is_answered_and_keeps_the_raw_alarm() {
        let raw = hex(
            "7878251613020C12141AC5027951430C2A16F60014000900000000001A00007C550300020002F1E70D0A",
        );
        let f = frame(&raw);
        let Message::Position(p) = decode(&f, 0).unwrap() else {
            panic!()
        };
        assert_eq!(p.fix.ts.unwrap().to_rfc3339(), "2019-02-12T18:20:26+00:00");
        assert_eq!(p.fix.ignition, Some(false));
        // Terminal info bits 3-5 = 7: not one of ours, kept as its raw code.
        assert_eq!(p.alarms, vec![Alarm::Other(0x107)]);
        assert_eq!(reply(&f).unwrap()[3], GPS_LBS_STATUS_1);
    }

    #[test]
    fn sos_and_power_cut_map_onto_ours() {
        let gps = &hex("7878222213020C12141AC5027951430C2A16F6001400")[4..];
        for (alarm, want) in [(0x01, Alarm::Sos), (0x02, Alarm::PowerCut)] {
            let mut body = gps.to_vec();
            body.extend_from_slice(&[0x09, 0x01, 0xcc, 0x00, 0x28, 0x7d, 0x00, 0x1f, 0x71]);
            body.extend_from_slice(&[0x46, 0x06, 0x04, alarm, 0x02]);
            let raw = encode(false, GPS_LBS_STATUS_1, &body, 7);
            let Message::Position(p) = decode(&frame(&raw), 0).unwrap() else {
                panic!()
            };
            assert_eq!(p.alarms, vec![want]);
            assert_eq!(p.fix.ignition, Some(true));
        }
    }

    #[test]
    fn local_time_devices_are_shifted_to_utc() {
        let raw =
            hex("78782222120616083817c5050cc8c801a819d600152400e8011dbf003332000000004862500d0a");
        let Message::Position(p) = decode(&frame(&raw), 7 * 3600).unwrap() else {
            panic!()
        };
        assert_eq!(p.fix.ts.unwrap().to_rfc3339(), "2018-06-22T01:56:23+00:00");
    }

    #[test]
    fn heartbeat_is_answered() {
        let raw = encode(false, STATUS, &[0x46, 0x06, 0x04, 0x00, 0x02], 0x1234);
        let f = frame(&raw);
        assert_eq!(
            decode(&f, 0).unwrap(),
            Message::Heartbeat {
                ignition: Some(true)
            }
        );
        assert_eq!(&reply(&f).unwrap()[3..6], &[STATUS, 0x12, 0x34]);
    }

    #[test]
    fn corrupted_byte_fails_the_crc() {
        let mut raw = hex("78780D01086471700328358100093F040D0A");
        raw[5] ^= 0x01;
        assert_eq!(scan(&raw), Scan::Frame(raw.len()));
        assert!(matches!(parse(&raw), Err(Gt06Error::BadChecksum { .. })));
    }

    #[test]
    fn scanner_waits_for_split_frames_and_skips_noise() {
        let login = hex("78780D01086471700328358100093F040D0A");
        for cut in 0..login.len() {
            assert_eq!(scan(&login[..cut]), Scan::Incomplete, "cut at {cut}");
        }
        let mut noisy = b"AT+OK\r\n".to_vec();
        noisy.extend_from_slice(&login);
        assert_eq!(scan(&noisy), Scan::Garbage(7));
        assert_eq!(scan(&noisy[7..]), Scan::Frame(login.len()));
        // A start whose length leads nowhere near a stop is skipped.
        assert_eq!(scan(&hex("78780501000100000000")), Scan::Garbage(2));
    }

    #[test]
    fn extended_frames() {
        let raw = encode(true, LOGIN, &hex("0864717003283581"), 3);
        assert_eq!(&raw[..4], &[0x79, 0x79, 0x00, 0x0d]);
        let f = frame(&raw);
        assert!(f.extended);
        assert!(matches!(decode(&f, 0).unwrap(), Message::Login { .. }));
        assert_eq!(&reply(&f).unwrap()[..2], &[0x79, 0x79]);
    }

    #[test]
    fn truncated_bodies_are_errors_not_panics() {
        for protocol in [LOGIN, GPS_LBS_1, GPS_LBS_2, GPS_LBS_STATUS_1, STATUS] {
            for n in 0..20 {
                let raw = encode(false, protocol, &vec![0x11; n], 1);
                let _ = decode(&frame(&raw), 0);
            }
        }
    }
}
