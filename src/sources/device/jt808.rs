//! JT/T 808, the Chinese national terminal protocol (2013 and 2019 editions), spoken by
//! most journey monitors sold in Vietnam: frames `7E header body xor 7E` with `7D`
//! escaping, BCD terminal phone numbers, registration (0x0100 -> 0x8100 with an auth
//! code), authentication (0x0102), heartbeats (0x0002), positions (0x0200) with their
//! additional items, batch and blind-area uploads (0x0704), and driver card events
//! (0x0702). Every terminal message but a registration is answered by the platform's
//! general response 0x8001, which the terminal waits for before it drops a buffered
//! position: sent only once the position is stored, it is a true acknowledgement.

use chrono::{DateTime, Duration, NaiveDate, Utc};

use super::{bcd, be, Alarm, DevicePosition, Scan};
use crate::domain::FixCandidate;

/// Terminal general response.
pub const TERMINAL_RESPONSE: u16 = 0x0001;
/// Heartbeat.
pub const HEARTBEAT: u16 = 0x0002;
/// Terminal logout.
pub const LOGOUT: u16 = 0x0003;
/// Terminal registration.
pub const REGISTER: u16 = 0x0100;
/// Terminal authentication.
pub const AUTH: u16 = 0x0102;
/// Location report.
pub const LOCATION: u16 = 0x0200;
/// Driver identity (card inserted or removed).
pub const DRIVER: u16 = 0x0702;
/// Batch of locations (normal, or blind-area re-upload).
pub const BATCH: u16 = 0x0704;
/// Platform general response.
pub const PLATFORM_RESPONSE: u16 = 0x8001;
/// Registration response.
pub const REGISTER_RESPONSE: u16 = 0x8100;

/// Largest frame we accept (escaped): the body length field is 10 bits (1023 bytes),
/// doubled by escaping, plus header.
pub const MAX_FRAME: usize = 2 * (1023 + 30) + 2;

/// Why a JT/T 808 frame could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Jt808Error {
    /// `7D` followed by something other than `01` or `02`.
    #[error("bad escape 7d {0:02x}")]
    BadEscape(u8),
    /// The XOR check code does not match.
    #[error("bad check code: frame says {stated:02x}, bytes give {computed:02x}")]
    BadChecksum { stated: u8, computed: u8 },
    /// Header or body shorter than stated or needed.
    #[error("message 0x{msg_id:04x} too short")]
    TooShort { msg_id: u16 },
    /// The body length in the header differs from the bytes present.
    #[error("body length {stated} in header, {actual} in frame")]
    LengthMismatch { stated: usize, actual: usize },
    /// An encrypted body (RSA), which we cannot read.
    #[error("encrypted message body")]
    Encrypted,
    /// A BCD field with a non-decimal digit, or a date out of range.
    #[error("invalid BCD or date in message 0x{msg_id:04x}")]
    BadBcd { msg_id: u16 },
}

impl Jt808Error {
    /// Low-cardinality reason label for metrics and dead letters.
    pub fn label(&self) -> &'static str {
        match self {
            Jt808Error::BadChecksum { .. } => "bad_checksum",
            Jt808Error::Encrypted => "unsupported_message",
            _ => "malformed",
        }
    }
}

/// Finds the frame at the start of `buf`: from a `7E` to the next.
pub fn scan(buf: &[u8]) -> Scan {
    match buf.first() {
        None => Scan::Incomplete,
        Some(0x7e) => match buf[1..].iter().position(|&b| b == 0x7e) {
            // Two flags in a row: the first closed a frame we lost the start of.
            Some(0) => Scan::Garbage(1),
            // Longer than any frame: skip it up to its closing flag, which may open
            // the next one.
            Some(i) if i + 2 > MAX_FRAME => Scan::Garbage(i + 1),
            Some(i) => Scan::Frame(i + 2),
            None if buf.len() > MAX_FRAME => Scan::Garbage(buf.len()),
            None => Scan::Incomplete,
        },
        Some(_) => Scan::Garbage(buf.iter().position(|&b| b == 0x7e).unwrap_or(buf.len())),
    }
}

/// Protocol edition of a frame, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edition {
    /// JT/T 808-2013 (and 2011): 6-byte BCD phone number.
    V2013,
    /// JT/T 808-2019: version byte and 10-byte BCD phone number.
    V2019 {
        /// Protocol version number from the header.
        version: u8,
    },
}

/// A checked, unescaped frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Message id.
    pub msg_id: u16,
    /// Edition, as the header says.
    pub edition: Edition,
    /// Terminal phone number as sent (BCD digits, leading zeros kept): the device's
    /// identity, echoed in every reply.
    pub phone: String,
    /// The terminal's serial number of this message, echoed in the reply.
    pub serial: u16,
    /// Sub-package (total, index from 1) of a long message split by the terminal.
    pub part: Option<(u16, u16)>,
    /// Message body.
    pub body: Vec<u8>,
}

/// Unescapes and checks a frame as [`scan`] delimited it (flags included).
pub fn parse(frame: &[u8]) -> Result<Frame, Jt808Error> {
    let inner = &frame[1..frame.len() - 1];
    let mut b = Vec::with_capacity(inner.len());
    let mut it = inner.iter();
    while let Some(&x) = it.next() {
        if x == 0x7d {
            match it.next() {
                Some(0x01) => b.push(0x7d),
                Some(0x02) => b.push(0x7e),
                other => return Err(Jt808Error::BadEscape(other.copied().unwrap_or(0))),
            }
        } else {
            b.push(x);
        }
    }
    let short = |msg_id| Jt808Error::TooShort { msg_id };
    let Some((&stated, data)) = b.split_last() else {
        return Err(short(0));
    };
    let computed = data.iter().fold(0u8, |a, x| a ^ x);
    if stated != computed {
        return Err(Jt808Error::BadChecksum { stated, computed });
    }
    let msg_id = be::<2>(data, 0).ok_or(short(0))? as u16;
    let props = be::<2>(data, 2).ok_or(short(msg_id))? as u16;
    if props & 0x1c00 != 0 {
        return Err(Jt808Error::Encrypted);
    }
    let (edition, phone_len, mut at) = if props & 0x4000 != 0 {
        let version = *data.get(4).ok_or(short(msg_id))?;
        (Edition::V2019 { version }, 10, 5)
    } else {
        (Edition::V2013, 6, 4)
    };
    let phone = bcd(data.get(at..at + phone_len).ok_or(short(msg_id))?)
        .ok_or(Jt808Error::BadBcd { msg_id })?;
    at += phone_len;
    let serial = be::<2>(data, at).ok_or(short(msg_id))? as u16;
    at += 2;
    let part = if props & 0x2000 != 0 {
        let total = be::<2>(data, at).ok_or(short(msg_id))? as u16;
        let index = be::<2>(data, at + 2).ok_or(short(msg_id))? as u16;
        at += 4;
        Some((total, index))
    } else {
        None
    };
    let stated = usize::from(props & 0x03ff);
    let body = &data[at.min(data.len())..];
    if body.len() != stated {
        return Err(Jt808Error::LengthMismatch {
            stated,
            actual: body.len(),
        });
    }
    Ok(Frame {
        msg_id,
        edition,
        phone,
        serial,
        part,
        body: body.to_vec(),
    })
}

/// What a frame says.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A terminal registers: it gets an auth code it presents from then on.
    Register {
        /// Terminal model (manufacturer's, ASCII, zero padding removed).
        model: String,
        /// Terminal id (manufacturer's, ASCII, zero padding removed).
        terminal_id: String,
        /// Licence plate as registered in the terminal (GBK decoded), if any.
        plate: Option<String>,
    },
    /// A terminal authenticates with its auth code.
    Auth {
        /// The code.
        code: String,
        /// IMEI (2019 edition only).
        imei: Option<String>,
        /// Software version (2019 edition only): the terminal's firmware.
        software: Option<String>,
    },
    /// Heartbeat.
    Heartbeat,
    /// Terminal logout.
    Logout,
    /// One or more positions (a report, or a batch).
    Positions(Vec<DevicePosition>),
    /// A driver inserted (`licence` known) or removed a card at the reader.
    Driver {
        /// When, UTC.
        at: DateTime<Utc>,
        /// Qualification certificate (licence) number on an inserted, readable card;
        /// `None` on removal or a read failure.
        licence: Option<String>,
        /// Card inserted (true) or removed.
        inserted: bool,
    },
    /// A message we do not use (including our own general responses): kept raw.
    Unsupported,
}

/// Decodes a frame's body. Terminals send local time; `utc_offset_s` is the offset
/// they are set to (GMT+8 in the standard, often reconfigured).
pub fn decode(f: &Frame, utc_offset_s: i32) -> Result<Message, Jt808Error> {
    let short = Jt808Error::TooShort { msg_id: f.msg_id };
    let b = &f.body[..];
    match f.msg_id {
        HEARTBEAT => Ok(Message::Heartbeat),
        LOGOUT => Ok(Message::Logout),
        REGISTER => {
            // Province 2, city 2, maker 5 | 11, model 20 | 30, terminal id 7 | 30,
            // plate colour 1, plate (GBK).
            let (maker, model, id) = match f.edition {
                Edition::V2013 => (5, 20, 7),
                Edition::V2019 { .. } => (11, 30, 30),
            };
            let id_at = 4 + maker + model;
            let model = ascii(b.get(4 + maker..id_at).ok_or(short.clone())?);
            let terminal_id = ascii(b.get(id_at..id_at + id).ok_or(short.clone())?);
            let plate = b.get(id_at + id + 1..).filter(|p| !p.is_empty()).map(|p| {
                let (s, _, _) = encoding_rs::GBK.decode(p);
                s.trim_end_matches('\0').trim().to_string()
            });
            Ok(Message::Register {
                model,
                terminal_id,
                plate: plate.filter(|p| !p.is_empty()),
            })
        }
        AUTH => match f.edition {
            Edition::V2013 => Ok(Message::Auth {
                code: ascii(b),
                imei: None,
                software: None,
            }),
            Edition::V2019 { .. } => {
                let n = usize::from(*b.first().ok_or(short.clone())?);
                let code = ascii(b.get(1..1 + n).ok_or(short.clone())?);
                // Terminals without one send the field zero-filled.
                let imei = b
                    .get(1 + n..1 + n + 15)
                    .map(ascii)
                    .filter(|i| !i.is_empty());
                let software = b
                    .get(1 + n + 15..1 + n + 15 + 20)
                    .map(ascii)
                    .filter(|v| !v.is_empty());
                Ok(Message::Auth {
                    code,
                    imei,
                    software,
                })
            }
        },
        LOCATION => Ok(Message::Positions(vec![location(
            b,
            f.msg_id,
            utc_offset_s,
            false,
        )?])),
        BATCH => {
            let count = be::<2>(b, 0).ok_or(short.clone())? as usize;
            let blind = *b.get(2).ok_or(short.clone())? == 1;
            let mut at = 3;
            let mut out = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                let n = be::<2>(b, at).ok_or(short.clone())? as usize;
                let item = b.get(at + 2..at + 2 + n).ok_or(short.clone())?;
                out.push(location(item, f.msg_id, utc_offset_s, blind)?);
                at += 2 + n;
            }
            Ok(Message::Positions(out))
        }
        DRIVER => {
            let inserted = *b.first().ok_or(short.clone())? == 0x01;
            let at = bcd_time(b.get(1..7).ok_or(short.clone())?, utc_offset_s)
                .ok_or(Jt808Error::BadBcd { msg_id: f.msg_id })?;
            let mut licence = None;
            // Inserted and read (result 0): name (length-prefixed), then the
            // 20-byte qualification certificate number.
            if inserted && b.get(7) == Some(&0) {
                let n = usize::from(*b.get(8).ok_or(short.clone())?);
                let cert = b.get(9 + n..9 + n + 20).ok_or(short)?;
                licence = Some(ascii(cert)).filter(|s| !s.is_empty());
            }
            Ok(Message::Driver {
                at,
                licence,
                inserted,
            })
        }
        _ => Ok(Message::Unsupported),
    }
}

/// A 0x0200 location body: alarm 4, status 4, lat 4, lon 4 (1e-6 degree), altitude 2,
/// speed 2 (0.1 km/h), direction 2, time BCD 6, then additional items (id, length,
/// value).
fn location(
    b: &[u8],
    msg_id: u16,
    utc_offset_s: i32,
    blind: bool,
) -> Result<DevicePosition, Jt808Error> {
    let short = Jt808Error::TooShort { msg_id };
    if b.len() < 28 {
        return Err(short);
    }
    let alarm = be::<4>(b, 0).unwrap_or(0) as u32;
    let status = be::<4>(b, 4).unwrap_or(0) as u32;
    let mut lat = be::<4>(b, 8).unwrap_or(0) as f64 / 1e6;
    let mut lon = be::<4>(b, 12).unwrap_or(0) as f64 / 1e6;
    if status & 0x04 != 0 {
        lat = -lat;
    }
    if status & 0x08 != 0 {
        lon = -lon;
    }
    let ts = bcd_time(&b[22..28], utc_offset_s).ok_or(Jt808Error::BadBcd { msg_id })?;
    let mut fix = FixCandidate {
        vehicle: None,
        ts: Some(ts),
        lat,
        lon,
        speed_kmh: Some(be::<2>(b, 18).unwrap_or(0) as f64 / 10.0),
        heading_deg: Some(be::<2>(b, 20).unwrap_or(0) as f64),
        driver: None,
        ignition: Some(status & 0x01 != 0),
        satellites: None,
        hdop: None,
        odometer_m: None,
        accuracy_m: None,
    };
    let mut at = 28;
    while let (Some(&id), Some(&len)) = (b.get(at), b.get(at + 1)) {
        let Some(v) = b.get(at + 2..at + 2 + usize::from(len)) else {
            break; // a cut item: keep the position, drop the item
        };
        match (id, v.len()) {
            // Mileage, 0.1 km.
            (0x01, 4) => fix.odometer_m = Some(be::<4>(v, 0).unwrap_or(0) as f64 * 100.0),
            // GNSS satellites in use.
            (0x31, 1) => fix.satellites = Some(i64::from(v[0])),
            _ => {}
        }
        at += 2 + usize::from(len);
    }
    let mut alarms = Vec::new();
    for bit in 0..32 {
        if alarm & (1 << bit) != 0 {
            alarms.push(match bit {
                0 => Alarm::Sos,
                1 => Alarm::Overspeed,
                8 => Alarm::PowerCut,
                n => Alarm::Other(n),
            });
        }
    }
    Ok(DevicePosition {
        fix,
        gps_valid: status & 0x02 != 0,
        buffered: blind,
        alarms,
    })
}

/// `YYMMDDhhmmss` in BCD, local time at `utc_offset_s`, as UTC.
fn bcd_time(b: &[u8], utc_offset_s: i32) -> Option<DateTime<Utc>> {
    let s = bcd(b)?;
    let n = |i: usize| s[i..i + 2].parse::<u32>().ok();
    let t = NaiveDate::from_ymd_opt(2000 + n(0)? as i32, n(2)?, n(4)?)?.and_hms_opt(
        n(6)?,
        n(8)?,
        n(10)?,
    )?;
    Some(
        DateTime::<Utc>::from_naive_utc_and_offset(t, Utc)
            - Duration::seconds(i64::from(utc_offset_s)),
    )
}

/// ASCII text of a fixed-width field: zero padding and spaces trimmed, anything
/// outside printable ASCII dropped.
fn ascii(b: &[u8]) -> String {
    b.iter()
        .filter(|c| c.is_ascii_graphic() || **c == b' ')
        .map(|&c| char::from(c))
        .collect::<String>()
        .trim()
        .to_string()
}

/// Result codes of the platform general response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// Accepted (stored).
    Ok = 0,
    /// Failed (e.g. authentication refused).
    Failure = 1,
    /// The message was wrong (bad frame content).
    MessageError = 2,
    /// Not supported.
    NotSupported = 3,
}

/// The platform general response (0x8001) to `f`.
pub fn general_response(f: &Frame, outcome: Outcome, serial: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(5);
    body.extend_from_slice(&f.serial.to_be_bytes());
    body.extend_from_slice(&f.msg_id.to_be_bytes());
    body.push(outcome as u8);
    encode(PLATFORM_RESPONSE, f.edition, &f.phone, serial, &body)
}

/// The registration response (0x8100): accepted with `auth_code`, or refused
/// (`None`: result 4, "no such terminal in the database").
pub fn register_response(f: &Frame, auth_code: Option<&str>, serial: u16) -> Vec<u8> {
    let mut body = f.serial.to_be_bytes().to_vec();
    match auth_code {
        Some(code) => {
            body.push(0);
            body.extend_from_slice(code.as_bytes());
        }
        None => body.push(4),
    }
    encode(REGISTER_RESPONSE, f.edition, &f.phone, serial, &body)
}

/// Builds an escaped frame (replies, and devices in tests). `phone` is the BCD digit
/// string (12 digits for 2013, 20 for 2019).
pub fn encode(msg_id: u16, edition: Edition, phone: &str, serial: u16, body: &[u8]) -> Vec<u8> {
    let mut raw = Vec::with_capacity(body.len() + 20);
    raw.extend_from_slice(&msg_id.to_be_bytes());
    let mut props = (body.len() as u16) & 0x03ff;
    if let Edition::V2019 { .. } = edition {
        props |= 0x4000;
    }
    raw.extend_from_slice(&props.to_be_bytes());
    if let Edition::V2019 { version } = edition {
        raw.push(version);
    }
    let digits: Vec<u8> = phone.bytes().map(|c| c.wrapping_sub(b'0') & 0x0f).collect();
    raw.extend(
        digits
            .chunks(2)
            .map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(0)),
    );
    raw.extend_from_slice(&serial.to_be_bytes());
    raw.extend_from_slice(body);
    raw.push(raw.iter().fold(0u8, |a, x| a ^ x));
    let mut out = Vec::with_capacity(raw.len() + 4);
    out.push(0x7e);
    for x in raw {
        match x {
            0x7e => out.extend_from_slice(&[0x7d, 0x02]),
            0x7d => out.extend_from_slice(&[0x7d, 0x01]),
            _ => out.push(x),
        }
    }
    out.push(0x7e);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::device::hex;

    const GMT8: i32 = 8 * 3600;

    fn frame(raw: &[u8]) -> Frame {
        assert_eq!(scan(raw), Scan::Frame(raw.len()));
        parse(raw).expect("valid frame")
    }

    // Frames below are captures from real terminals, as published with open-source
    // tracking servers' decoder tests.

    #[test]
    fn registration_gives_terminal_and_plate_and_gets_an_auth_code() {
        let raw = hex("7E0100002D013511221122000500000000373031303748422D52303347424400000000000000000000003233363631303402CBD5424136383630387E");
        let f = frame(&raw);
        assert_eq!(
            (f.msg_id, f.phone.as_str(), f.serial),
            (REGISTER, "013511221122", 5)
        );
        assert_eq!(
            decode(&f, GMT8).unwrap(),
            Message::Register {
                model: "HB-R03GBD".into(),
                terminal_id: "2366104".into(),
                plate: Some("苏BA6860".into())
            }
        );
        let r = parse(&register_response(&f, Some("code-1"), 1)).unwrap();
        assert_eq!(r.msg_id, REGISTER_RESPONSE);
        assert_eq!(r.phone, "013511221122");
        assert_eq!(&r.body[..3], &[0x00, 0x05, 0x00]);
        assert_eq!(&r.body[3..], b"code-1");
    }

    #[test]
    fn authentication_code() {
        let raw = hex("7E0102000E013511221122000661757468656E7469636174696F6E3F7E");
        assert_eq!(
            decode(&frame(&raw), GMT8).unwrap(),
            Message::Auth {
                code: "authentication".into(),
                imei: None,
                software: None
            }
        );
    }

    #[test]
    fn authentication_2019_with_and_without_an_imei() {
        let phone = "00000000013912345678";
        let v2019 = Edition::V2019 { version: 1 };
        let body = |imei: &[u8; 15]| {
            let mut b = vec![6];
            b.extend_from_slice(b"code-1");
            b.extend_from_slice(imei);
            // Software version, zero-padded to 20 bytes.
            b.extend_from_slice(b"1.0.2");
            b.resize(1 + 6 + 15 + 20, 0);
            b
        };
        let auth = |imei| decode(&frame(&encode(AUTH, v2019, phone, 1, &body(imei))), GMT8);
        assert_eq!(
            auth(b"864717003283581").unwrap(),
            Message::Auth {
                code: "code-1".into(),
                imei: Some("864717003283581".into()),
                software: Some("1.0.2".into())
            }
        );
        assert_eq!(
            auth(&[0; 15]).unwrap(),
            Message::Auth {
                code: "code-1".into(),
                imei: None,
                software: Some("1.0.2".into())
            },
            "a zero-filled IMEI is none"
        );
    }

    #[test]
    fn heartbeat_is_answered_with_a_general_response() {
        let raw = hex("7e0002000004304832546500b7ca7e");
        let f = frame(&raw);
        assert_eq!(decode(&f, GMT8).unwrap(), Message::Heartbeat);
        let r = parse(&general_response(&f, Outcome::Ok, 9)).unwrap();
        assert_eq!((r.msg_id, r.serial), (PLATFORM_RESPONSE, 9));
        assert_eq!(r.body, vec![0x00, 0xb7, 0x00, 0x02, 0x00]);
    }

    #[test]
    fn location_in_gmt8_with_sos_west_of_greenwich_and_mileage() {
        let raw = hex("7e0200002e094027587492000a000000010000000a03083db7001329f3000000140000130412164952010400000012360a0002341502cb0c20085c107e");
        let Message::Positions(p) = decode(&frame(&raw), GMT8).unwrap() else {
            panic!()
        };
        let p = &p[0];
        assert_eq!(p.fix.ts.unwrap().to_rfc3339(), "2013-04-12T08:49:52+00:00");
        assert!((p.fix.lat - 50.871735).abs() < 1e-9);
        assert!((p.fix.lon - -1.255923).abs() < 1e-9);
        assert_eq!(p.fix.speed_kmh, Some(2.0));
        assert_eq!(p.fix.ignition, Some(false));
        assert_eq!(p.fix.odometer_m, Some(1800.0));
        assert_eq!(p.alarms, vec![Alarm::Sos]);
        assert!(p.gps_valid && !p.buffered);
    }

    #[test]
    fn location_with_satellites_item() {
        let raw = hex("7e0200002c00160128561400020000000000040001005de1f7065c6cef00000000000017011710044201040000a9002a02000030011b3101030c7e");
        let Message::Positions(p) = decode(&frame(&raw), GMT8).unwrap() else {
            panic!()
        };
        assert_eq!(p[0].fix.satellites, Some(3));
        assert_eq!(p[0].fix.ignition, Some(true));
    }

    #[test]
    fn location_with_speed_heading_and_mileage() {
        let raw = hex("7E0200002A013833501744001900000000000000C201597FA806CC01580080000000081508180721210104000002F502020000030200009F7E");
        let Message::Positions(p) = decode(&frame(&raw), GMT8).unwrap() else {
            panic!()
        };
        assert_eq!(p[0].fix.speed_kmh, Some(0.0));
        assert_eq!(p[0].fix.odometer_m, Some(75_700.0));
        assert_eq!(
            p[0].fix.ts.unwrap().to_rfc3339(),
            "2015-08-17T23:21:21+00:00"
        );
    }

    #[test]
    fn blind_area_batch_gives_every_position_flagged_buffered() {
        let raw = hex("7E0704014301356777777707F5000801002600000000000000030159741206CBFD5001720000000116052709062401040000001D03020000002600000000000000030159746606CBFD50016B0000000116052709065301040000001D0302000000260000000000000003015975E406CBFE58013F0000000116052709072701040000001D0302000000260000000000000003015976DE06CBFF10012E0000000116052709075601040000001D0302000000260000000000000003015976BC06CBFED0012D0000000116052709083001040000001D0302000000260000000000000003015976FE06CBFEC001080000000116052709090001040000001D0302000000260000000000000003015976FE06CBFE7800FC0000000116052709093301040000001D0302000000260000000000000003015977A606CBFF3001080000000116052709100201040000001D030200001F7E");
        let f = frame(&raw);
        let Message::Positions(p) = decode(&f, GMT8).unwrap() else {
            panic!()
        };
        assert_eq!(p.len(), 8);
        assert!(p.iter().all(|p| p.buffered));
        assert_eq!(
            p[0].fix.ts.unwrap().to_rfc3339(),
            "2016-05-27T01:06:24+00:00"
        );
        assert_eq!(
            p[7].fix.ts.unwrap().to_rfc3339(),
            "2016-05-27T01:10:02+00:00"
        );
        assert!(p.windows(2).all(|w| w[0].fix.ts < w[1].fix.ts));
        assert_eq!(general_response(&f, Outcome::Ok, 1)[1..3], [0x80, 0x01]);
    }

    #[test]
    fn sos_and_power_cut_alarms_and_southern_western_hemisphere() {
        let mut body = vec![0, 0, 0x01, 0x01, 0, 0, 0, 0x0f];
        body.extend_from_slice(&10_762_000u32.to_be_bytes());
        body.extend_from_slice(&106_660_000u32.to_be_bytes());
        body.extend_from_slice(&[0, 10, 0x03, 0x20, 0, 90]);
        body.extend_from_slice(&hex("261202083000"));
        let raw = encode(LOCATION, Edition::V2013, "012345678901", 3, &body);
        let Message::Positions(p) = decode(&frame(&raw), 7 * 3600).unwrap() else {
            panic!()
        };
        assert_eq!(p[0].alarms, vec![Alarm::Sos, Alarm::PowerCut]);
        assert_eq!((p[0].fix.lat, p[0].fix.lon), (-10.762, -106.66));
        assert_eq!(p[0].fix.speed_kmh, Some(80.0));
        assert_eq!(
            p[0].fix.ts.unwrap().to_rfc3339(),
            "2026-12-02T01:30:00+00:00"
        );
    }

    #[test]
    fn edition_2019_header_and_escaping_round_trip() {
        // Serial 0x7e7d and a body of flags and escapes: all must come back unchanged.
        let body = [0x7e, 0x7d, 0x01, 0x02, 0x7e];
        let raw = encode(
            0x0900,
            Edition::V2019 { version: 1 },
            "00000000013912345678",
            0x7e7d,
            &body,
        );
        assert_eq!(
            raw.iter().filter(|&&b| b == 0x7e).count(),
            2,
            "only the two flags"
        );
        let f = frame(&raw);
        assert_eq!(f.edition, Edition::V2019 { version: 1 });
        assert_eq!(f.phone, "00000000013912345678");
        assert_eq!(f.serial, 0x7e7d);
        assert_eq!(f.body, body);
        assert_eq!(decode(&f, 0).unwrap(), Message::Unsupported);
    }

    #[test]
    fn driver_card_inserted_gives_the_licence() {
        let mut body = vec![0x01];
        body.extend_from_slice(&hex("261202070000"));
        body.push(0); // read OK
        body.push(3);
        body.extend_from_slice("Anh".as_bytes());
        body.extend_from_slice(b"079123456789\0\0\0\0\0\0\0\0");
        body.push(0);
        body.extend_from_slice(&hex("20301231"));
        let raw = encode(DRIVER, Edition::V2013, "012345678901", 4, &body);
        assert_eq!(
            decode(&frame(&raw), 7 * 3600).unwrap(),
            Message::Driver {
                at: "2026-12-02T00:00:00Z".parse().unwrap(),
                licence: Some("079123456789".into()),
                inserted: true
            }
        );
    }

    #[test]
    fn corruption_is_caught() {
        let mut raw = hex("7e0002000004304832546500b7ca7e");
        raw[6] ^= 0x10;
        assert!(matches!(parse(&raw), Err(Jt808Error::BadChecksum { .. })));
        let bad_escape = [0x7e, 0x7d, 0x05, 0x00, 0x7e];
        assert_eq!(parse(&bad_escape), Err(Jt808Error::BadEscape(0x05)));
        // Body length in the header that the bytes do not have.
        let mut long = encode(HEARTBEAT, Edition::V2013, "012345678901", 1, &[]);
        long[4] = 0x05;
        let n = long.len();
        long[n - 2] ^= 0x05;
        assert!(matches!(
            parse(&long),
            Err(Jt808Error::LengthMismatch { .. })
        ));
    }

    #[test]
    fn scanner_resynchronises() {
        let hb = hex("7e0002000004304832546500b7ca7e");
        for cut in 0..hb.len() {
            assert_eq!(scan(&hb[..cut]), Scan::Incomplete, "cut at {cut}");
        }
        let mut s = b"junk".to_vec();
        s.extend_from_slice(&hb);
        assert_eq!(scan(&s), Scan::Garbage(4));
        assert_eq!(scan(&hex("7e7e00027e")), Scan::Garbage(1));
    }

    #[test]
    fn flags_further_apart_than_the_largest_frame_are_skipped() {
        // Found by fuzzing: the scanner delimited a "frame" of any length between two
        // flags, past MAX_FRAME.
        let hb = hex("7e0002000004304832546500b7ca7e");
        let mut s = vec![0x7e];
        s.resize(MAX_FRAME, 0x55);
        s.push(0x7e);
        s.extend_from_slice(&hb);
        assert_eq!(scan(&s), Scan::Garbage(MAX_FRAME));
        // What is left, the closing flag and the heartbeat, resynchronises.
        assert_eq!(scan(&s[MAX_FRAME..]), Scan::Garbage(1));
        assert_eq!(scan(&s[MAX_FRAME + 1..]), Scan::Frame(hb.len()));
        // A frame of exactly the largest size is still one.
        let mut largest = vec![0x7e; MAX_FRAME];
        largest[1..MAX_FRAME - 1].fill(0x55);
        assert_eq!(scan(&largest), Scan::Frame(MAX_FRAME));
    }

    #[test]
    fn truncated_bodies_are_errors_not_panics() {
        for id in [REGISTER, AUTH, LOCATION, BATCH, DRIVER] {
            for n in 0..40 {
                let raw = encode(id, Edition::V2013, "012345678901", 1, &vec![0x01; n]);
                let _ = decode(&frame(&raw), GMT8);
                let raw = encode(
                    id,
                    Edition::V2019 { version: 1 },
                    "01234567890123456789",
                    1,
                    &vec![0x01; n],
                );
                let _ = decode(&frame(&raw), GMT8);
            }
        }
    }
}
