//! The bytes real devices send for a position, in each protocol the device gateway
//! speaks (GT06, JT/T 808, Teltonika, OsmAnd), so the demo and integration tests can
//! drive simulated vehicles over real sockets.
//!
//! Frames are built from the protocol layouts documented by the decoders in
//! [`crate::sources::device`], through their `encode` functions where they have one.
//! Each field is written at the protocol's resolution, as a device rounds it; a value
//! the field cannot hold saturates as a device's counter would (GT06 speed at
//! 255 km/h, satellites at 15). GT06 and JT/T 808 carry whole seconds (a fraction is
//! dropped) and a two-digit year: fix times must be in 2000–2099. Teltonika carries
//! milliseconds, OsmAnd milliseconds as a decimal of seconds.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};
use crc::{Crc, CRC_16_ARC};

use crate::sources::device::jt808::{self, Edition};
use crate::sources::device::{gt06, teltonika};

/// Knots to km/h, as the OsmAnd decoder converts back.
const KMH_PER_KNOT: f64 = 1.852;

/// CRC-16/IBM (ARC), over a Teltonika packet's codec id to its second record count.
const CRC_IBM: Crc<u16> = Crc::<u16>::new(&CRC_16_ARC);

/// The body length field of JT/T 808 is 10 bits.
const JT808_MAX_BODY: usize = 0x03ff;

/// Bytes of a JT/T 808 location body with the items we write (mileage, satellites).
const JT808_LOCATION_LEN: usize = 28 + 6 + 3;

/// Vietnam's mobile country code and Viettel's network code: the cell a simulated
/// GT06 reports alongside its GPS position.
const MCC_VIETNAM: u16 = 452;
const MNC_VIETTEL: u8 = 4;

/// One position as a device measured it. Coordinates are WGS84 degrees.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceFix {
    /// Fix time, UTC.
    pub ts: DateTime<Utc>,
    /// Latitude, degrees north.
    pub lat: f64,
    /// Longitude, degrees east.
    pub lon: f64,
    /// Ground speed, km/h.
    pub speed_kmh: f64,
    /// Course over ground, degrees clockwise from true north.
    pub heading_deg: f64,
    /// Ignition (ACC) on.
    pub ignition: bool,
    /// Satellites in use; 0 marks the position as not positioned (last known place).
    pub satellites: u8,
    /// The device's odometer, metres, if it keeps one.
    pub odometer_m: Option<f64>,
}

/// Why a frame could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// An IMEI that is not 15 decimal digits.
    #[error("IMEI must be 15 digits: {0:?}")]
    BadImei(String),
    /// A JT/T 808 phone number that is not digits or too long for its edition.
    #[error("JT/T 808 phone number must be at most {max_digits} digits: {got:?}")]
    BadPhone {
        /// Digits the edition's header holds.
        max_digits: usize,
        /// What was given.
        got: String,
    },
    /// A text field the protocol cannot carry as given.
    #[error("{field} must be {rule}")]
    BadField {
        /// Which field.
        field: &'static str,
        /// What it must be.
        rule: &'static str,
    },
    /// A message body over the protocol's length limit.
    #[error("{what} body of {len_bytes} bytes, at most {max_bytes} fit")]
    TooLong {
        /// Which message.
        what: &'static str,
        /// Its body length.
        len_bytes: usize,
        /// The protocol's limit.
        max_bytes: usize,
    },
    /// A multi-position message given no fixes, or more than its count field holds.
    #[error("{got} fixes: one message holds 1 to {max}")]
    FixCount {
        /// Fixes given.
        got: usize,
        /// Most the message holds.
        max: usize,
    },
}

/// A device's IMEI: 15 decimal digits (GT06 login, Teltonika handshake and datagrams).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imei(String);

impl Imei {
    /// Checks that `digits` is an IMEI.
    pub fn new(digits: &str) -> Result<Self, EncodeError> {
        if digits.len() == 15 && digits.bytes().all(|c| c.is_ascii_digit()) {
            Ok(Imei(digits.to_string()))
        } else {
            Err(EncodeError::BadImei(digits.to_string()))
        }
    }

    /// The 15 digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A JT/T 808 terminal's phone number and the protocol edition it speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jt808Phone {
    /// BCD digits as sent: 12 (2013) or 20 (2019), left-padded with zeros.
    digits: String,
    edition: Edition,
}

impl Jt808Phone {
    /// A 2013-edition terminal (the default of most units sold): up to 12 digits.
    pub fn new(digits: &str) -> Result<Self, EncodeError> {
        Self::with_edition(digits, Edition::V2013)
    }

    /// A 2019-edition terminal (protocol version 1): up to 20 digits.
    pub fn v2019(digits: &str) -> Result<Self, EncodeError> {
        Self::with_edition(digits, Edition::V2019 { version: 1 })
    }

    fn with_edition(digits: &str, edition: Edition) -> Result<Self, EncodeError> {
        let width = match edition {
            Edition::V2013 => 12,
            Edition::V2019 { .. } => 20,
        };
        if digits.is_empty() || digits.len() > width || !digits.bytes().all(|c| c.is_ascii_digit())
        {
            return Err(EncodeError::BadPhone {
                max_digits: width,
                got: digits.to_string(),
            });
        }
        Ok(Jt808Phone {
            digits: format!("{digits:0>width$}"),
            edition,
        })
    }

    /// The digits as the header carries them (and the decoder gives back).
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The edition of the terminal's headers.
    pub fn edition(&self) -> Edition {
        self.edition
    }
}

/// Heading in whole degrees, 0..360, as the protocols' integer course fields hold it.
fn heading_deg_u16(heading_deg: f64) -> u16 {
    (heading_deg.round() as i64).rem_euclid(360) as u16
}

/// Rounds a non-negative quantity into an unsigned field, saturating at its maximum.
fn saturating<T: TryFrom<u64> + Copy>(value: f64, max: T) -> T {
    // `as` saturates floats (NaN to 0); the conversion only fails above `max`'s type.
    T::try_from(value.round().max(0.0) as u64).unwrap_or(max)
}

/// Two decimal digits in one BCD byte.
fn bcd2(n: u32) -> u8 {
    (((n / 10) % 10) << 4 | (n % 10)) as u8
}

// ---------------------------------------------------------------------------------
// GT06

/// GT06 login (0x01): the IMEI in BCD, with the leading zero of 16 digits.
pub fn gt06_login(imei: &Imei, serial: u16) -> Vec<u8> {
    let digits: Vec<u8> = std::iter::once(0)
        .chain(imei.as_str().bytes().map(|c| c - b'0'))
        .collect();
    let body: Vec<u8> = digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect();
    gt06::encode(false, gt06::LOGIN, &body, serial)
}

/// GT06 position (0x22, GPS and LBS with ACC, upload mode and mileage), UTC time.
/// Coordinates in 1/1,800,000 degree, speed in whole km/h (at most 255), mileage in
/// metres (left out when the fix has no odometer).
pub fn gt06_position(fix: &DeviceFix, serial: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(33);
    body.extend_from_slice(&[
        (fix.ts.year() - 2000) as u8,
        fix.ts.month() as u8,
        fix.ts.day() as u8,
        fix.ts.hour() as u8,
        fix.ts.minute() as u8,
        fix.ts.second() as u8,
        // GPS information length (12) in the high nibble, satellites in the low.
        0xc0 | fix.satellites.min(15),
    ]);
    body.extend_from_slice(&saturating(fix.lat.abs() * 1_800_000.0, u32::MAX).to_be_bytes());
    body.extend_from_slice(&saturating(fix.lon.abs() * 1_800_000.0, u32::MAX).to_be_bytes());
    body.push(saturating(fix.speed_kmh, u8::MAX));
    let mut course = heading_deg_u16(fix.heading_deg);
    if fix.satellites > 0 {
        course |= 0x1000; // positioned
    }
    if fix.lon < 0.0 {
        course |= 0x0800; // west
    }
    if fix.lat >= 0.0 {
        course |= 0x0400; // north
    }
    body.extend_from_slice(&course.to_be_bytes());
    // LBS: MCC (top bit clear: one-byte MNC), MNC, LAC, cell id (3 bytes).
    body.extend_from_slice(&MCC_VIETNAM.to_be_bytes());
    body.push(MNC_VIETTEL);
    body.extend_from_slice(&[0x28, 0x7d, 0x00, 0x1f, 0x71]);
    // ACC, upload mode (0: at a fixed interval), real-time (0) rather than re-upload.
    body.extend_from_slice(&[u8::from(fix.ignition), 0x00, 0x00]);
    if let Some(m) = fix.odometer_m {
        body.extend_from_slice(&saturating(m, u32::MAX).to_be_bytes());
    }
    gt06::encode(false, gt06::GPS_LBS_2, &body, serial)
}

/// GT06 status heartbeat (0x13): terminal information with ACC, voltage level, GSM
/// signal, no alarm, English.
pub fn gt06_heartbeat(ignition: bool, serial: u16) -> Vec<u8> {
    // GPS tracking on (0x40) and charging (0x04), ACC in bit 1.
    let info = 0x44 | (u8::from(ignition) << 1);
    gt06::encode(false, gt06::STATUS, &[info, 0x06, 0x04, 0x00, 0x02], serial)
}

// ---------------------------------------------------------------------------------
// JT/T 808

/// JT/T 808 registration (0x0100): `terminal_id` printable ASCII (at most 7 bytes in
/// 2013, 30 in 2019), `plate` GBK-encodable (none: the vehicle is not registered, plate
/// colour 0).
pub fn jt808_register(
    phone: &Jt808Phone,
    terminal_id: &str,
    plate: Option<&str>,
    serial: u16,
) -> Result<Vec<u8>, EncodeError> {
    let (maker_len, model_len, id_len) = match phone.edition {
        Edition::V2013 => (5, 20, 7),
        Edition::V2019 { .. } => (11, 30, 30),
    };
    if terminal_id.len() > id_len || !terminal_id.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(EncodeError::BadField {
            field: "terminal id",
            rule: "printable ASCII of at most 7 bytes (2013) or 30 (2019)",
        });
    }
    // Province and city 0: not given.
    let mut body = vec![0, 0, 0, 0];
    push_padded(&mut body, b"FWSIM", maker_len);
    push_padded(&mut body, b"fleetwatch-sim", model_len);
    push_padded(&mut body, terminal_id.as_bytes(), id_len);
    match plate {
        None => body.push(0),
        Some(p) => {
            let (gbk, _, unmappable) = encoding_rs::GBK.encode(p);
            if unmappable || p.is_empty() {
                return Err(EncodeError::BadField {
                    field: "plate",
                    rule: "non-empty and GBK-encodable",
                });
            }
            // Colour 1 (blue), the commonest in the standard's table.
            body.push(1);
            body.extend_from_slice(&gbk);
        }
    }
    jt808_frame(jt808::REGISTER, phone, serial, &body, "0x0100")
}

/// Zero-padded fixed-width field (`value` no longer than `width`).
fn push_padded(out: &mut Vec<u8>, value: &[u8], width: usize) {
    out.extend_from_slice(value);
    out.resize(out.len() + width - value.len(), 0);
}

/// The auth code of a registration response (0x8100) that accepted the terminal.
pub fn jt808_auth_code(reply: &jt808::Frame) -> Option<String> {
    if reply.msg_id != jt808::REGISTER_RESPONSE || reply.body.get(2) != Some(&0) {
        return None;
    }
    String::from_utf8(reply.body[3..].to_vec()).ok()
}

/// JT/T 808 authentication (0x0102) with the code the registration response gave.
/// The 2019 edition also carries the IMEI and software version: sent as zeros.
pub fn jt808_auth(phone: &Jt808Phone, code: &str, serial: u16) -> Result<Vec<u8>, EncodeError> {
    let body = match phone.edition {
        Edition::V2013 => code.as_bytes().to_vec(),
        Edition::V2019 { .. } => {
            let n = u8::try_from(code.len()).map_err(|_| EncodeError::BadField {
                field: "auth code",
                rule: "at most 255 bytes",
            })?;
            let mut b = vec![n];
            b.extend_from_slice(code.as_bytes());
            b.resize(b.len() + 15 + 20, 0);
            b
        }
    };
    jt808_frame(jt808::AUTH, phone, serial, &body, "0x0102")
}

/// JT/T 808 heartbeat (0x0002).
pub fn jt808_heartbeat(phone: &Jt808Phone, serial: u16) -> Vec<u8> {
    jt808::encode(jt808::HEARTBEAT, phone.edition, &phone.digits, serial, &[])
}

/// JT/T 808 location report (0x0200): BCD local time at `utc_offset_s` (as terminals
/// send it), coordinates in 1e-6 degree, speed in 0.1 km/h, mileage item 0x01 in
/// 0.1 km, satellites item 0x31.
pub fn jt808_location(
    phone: &Jt808Phone,
    fix: &DeviceFix,
    utc_offset_s: i32,
    serial: u16,
) -> Vec<u8> {
    let body = jt808_location_body(fix, utc_offset_s);
    jt808::encode(jt808::LOCATION, phone.edition, &phone.digits, serial, &body)
}

/// JT/T 808 batch upload (0x0704) of `fixes`, oldest first; `blind` marks a blind-area
/// re-upload (positions buffered while out of coverage). At most 26 fixes with
/// odometers fit the 1023-byte body (30 without).
pub fn jt808_batch(
    phone: &Jt808Phone,
    fixes: &[DeviceFix],
    blind: bool,
    utc_offset_s: i32,
    serial: u16,
) -> Result<Vec<u8>, EncodeError> {
    let count = u16::try_from(fixes.len()).unwrap_or(u16::MAX);
    if fixes.is_empty() {
        return Err(EncodeError::FixCount {
            got: 0,
            max: JT808_MAX_BODY / (2 + JT808_LOCATION_LEN),
        });
    }
    let mut body = Vec::with_capacity(3 + fixes.len() * (2 + JT808_LOCATION_LEN));
    body.extend_from_slice(&count.to_be_bytes());
    body.push(u8::from(blind));
    for fix in fixes {
        let item = jt808_location_body(fix, utc_offset_s);
        body.extend_from_slice(&(item.len() as u16).to_be_bytes());
        body.extend_from_slice(&item);
    }
    jt808_frame(jt808::BATCH, phone, serial, &body, "0x0704")
}

fn jt808_frame(
    msg_id: u16,
    phone: &Jt808Phone,
    serial: u16,
    body: &[u8],
    what: &'static str,
) -> Result<Vec<u8>, EncodeError> {
    // Longer bodies would need sub-packages, which no message of ours needs.
    if body.len() > JT808_MAX_BODY {
        return Err(EncodeError::TooLong {
            what,
            len_bytes: body.len(),
            max_bytes: JT808_MAX_BODY,
        });
    }
    Ok(jt808::encode(
        msg_id,
        phone.edition,
        &phone.digits,
        serial,
        body,
    ))
}

fn jt808_location_body(fix: &DeviceFix, utc_offset_s: i32) -> Vec<u8> {
    let mut status = 0u32;
    if fix.ignition {
        status |= 0x01;
    }
    if fix.satellites > 0 {
        status |= 0x02; // positioned
    }
    if fix.lat < 0.0 {
        status |= 0x04; // south
    }
    if fix.lon < 0.0 {
        status |= 0x08; // west
    }
    let local = fix.ts + Duration::seconds(i64::from(utc_offset_s));
    let mut b = Vec::with_capacity(JT808_LOCATION_LEN);
    b.extend_from_slice(&0u32.to_be_bytes()); // no alarm
    b.extend_from_slice(&status.to_be_bytes());
    b.extend_from_slice(&saturating(fix.lat.abs() * 1e6, u32::MAX).to_be_bytes());
    b.extend_from_slice(&saturating(fix.lon.abs() * 1e6, u32::MAX).to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes()); // altitude, m: not simulated
    b.extend_from_slice(&saturating(fix.speed_kmh * 10.0, u16::MAX).to_be_bytes());
    b.extend_from_slice(&heading_deg_u16(fix.heading_deg).to_be_bytes());
    b.extend_from_slice(&[
        bcd2(local.year().rem_euclid(100) as u32),
        bcd2(local.month()),
        bcd2(local.day()),
        bcd2(local.hour()),
        bcd2(local.minute()),
        bcd2(local.second()),
    ]);
    if let Some(m) = fix.odometer_m {
        b.extend_from_slice(&[0x01, 4]);
        b.extend_from_slice(&saturating(m / 100.0, u32::MAX).to_be_bytes());
    }
    b.extend_from_slice(&[0x31, 1, fix.satellites]);
    b
}

// ---------------------------------------------------------------------------------
// Teltonika

/// Teltonika IMEI handshake: 2-byte length and the digits; the server answers `01`.
pub fn teltonika_imei(imei: &Imei) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.extend_from_slice(&15u16.to_be_bytes());
    out.extend_from_slice(imei.as_str().as_bytes());
    out
}

/// Teltonika TCP AVL packet in Codec 8 Extended of `fixes` (1 to 255, oldest first),
/// with IO 239 (ignition) and IO 16 (total odometer, metres): preamble, length, data,
/// CRC-16/IBM. The server answers with the record count, [`teltonika::reply`].
pub fn teltonika_packet(fixes: &[DeviceFix]) -> Result<Vec<u8>, EncodeError> {
    let data = teltonika_avl(fixes)?;
    let mut out = Vec::with_capacity(data.len() + 12);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&data);
    out.extend_from_slice(&u32::from(CRC_IBM.checksum(&data)).to_be_bytes());
    Ok(out)
}

/// Teltonika UDP datagram of `fixes` (1 to 255): channel header with `packet_id`,
/// AVL packet id `avl_id` and the IMEI (UDP has no session), then the same AVL data as
/// over TCP, without CRC.
pub fn teltonika_udp(
    imei: &Imei,
    packet_id: u16,
    avl_id: u8,
    fixes: &[DeviceFix],
) -> Result<Vec<u8>, EncodeError> {
    let data = teltonika_avl(fixes)?;
    let len = 2 + 1 + 1 + 2 + 15 + data.len();
    let mut out = Vec::with_capacity(2 + len);
    // A datagram is at most 64 KiB; 255 records of ~45 bytes are far below.
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.push(0x01); // packet type
    out.push(avl_id);
    out.extend_from_slice(&15u16.to_be_bytes());
    out.extend_from_slice(imei.as_str().as_bytes());
    out.extend_from_slice(&data);
    Ok(out)
}

/// Codec id, record count, records, record count.
fn teltonika_avl(fixes: &[DeviceFix]) -> Result<Vec<u8>, EncodeError> {
    let count = u8::try_from(fixes.len())
        .ok()
        .filter(|&n| n > 0)
        .ok_or(EncodeError::FixCount {
            got: fixes.len(),
            max: usize::from(u8::MAX),
        })?;
    let mut b = Vec::with_capacity(3 + fixes.len() * 45);
    b.push(teltonika::CODEC_8E);
    b.push(count);
    for fix in fixes {
        teltonika_record(&mut b, fix);
    }
    b.push(count);
    Ok(b)
}

fn teltonika_record(b: &mut Vec<u8>, fix: &DeviceFix) {
    b.extend_from_slice(&(fix.ts.timestamp_millis().max(0) as u64).to_be_bytes());
    b.push(0); // priority: low
               // Signed, 1e-7 degree; longitude first.
    b.extend_from_slice(&((fix.lon * 1e7).round() as i32).to_be_bytes());
    b.extend_from_slice(&((fix.lat * 1e7).round() as i32).to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes()); // altitude, m: not simulated
    b.extend_from_slice(&heading_deg_u16(fix.heading_deg).to_be_bytes());
    b.push(fix.satellites);
    b.extend_from_slice(&saturating(fix.speed_kmh, u16::MAX).to_be_bytes());
    let odometer = fix.odometer_m.map(|m| saturating(m, u32::MAX));
    // Event IO id 0 (periodic record), total IO count; Codec 8E ids and counts are
    // 2 bytes.
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&(1 + u16::from(odometer.is_some())).to_be_bytes());
    // 1-byte values: ignition.
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&teltonika::IO_IGNITION.to_be_bytes());
    b.push(u8::from(fix.ignition));
    // 2-byte values: none.
    b.extend_from_slice(&0u16.to_be_bytes());
    // 4-byte values: total odometer.
    b.extend_from_slice(&u16::from(odometer.is_some()).to_be_bytes());
    if let Some(m) = odometer {
        b.extend_from_slice(&teltonika::IO_TOTAL_ODOMETER.to_be_bytes());
        b.extend_from_slice(&m.to_be_bytes());
    }
    // 8-byte and variable-length values: none.
    b.extend_from_slice(&0u16.to_be_bytes());
    b.extend_from_slice(&0u16.to_be_bytes());
}

// ---------------------------------------------------------------------------------
// OsmAnd

/// OsmAnd / Traccar Client query string (`id`, `timestamp` in Unix seconds with
/// milliseconds when there are any, `lat`, `lon`, `speed` in knots, `bearing`,
/// `ignition`), percent-encoded. The protocol carries no odometer nor satellites.
pub fn osmand_query(device_id: &str, fix: &DeviceFix) -> String {
    // Shortest decimal that reads back to the same milliseconds: whole seconds print
    // as an integer.
    let timestamp = (fix.ts.timestamp_millis() as f64 / 1000.0).to_string();
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("id", device_id)
        .append_pair("timestamp", &timestamp)
        .append_pair("lat", &fix.lat.to_string())
        .append_pair("lon", &fix.lon.to_string())
        .append_pair("speed", &(fix.speed_kmh / KMH_PER_KNOT).to_string())
        .append_pair("bearing", &fix.heading_deg.to_string())
        .append_pair("ignition", if fix.ignition { "true" } else { "false" })
        .finish()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::domain::FixCandidate;
    use crate::sources::device::{osmand, DevicePosition, Scan};

    const GMT7: i32 = 7 * 3600;

    fn fix() -> DeviceFix {
        DeviceFix {
            ts: Utc.with_ymd_and_hms(2026, 11, 24, 8, 15, 30).unwrap(),
            lat: 10.980_412,
            lon: 106.651_937,
            speed_kmh: 47.6,
            heading_deg: 91.4,
            ignition: true,
            satellites: 9,
            odometer_m: Some(123_456.0),
        }
    }

    /// Fixes a second apart, south-west of Greenwich every other one, odometers rising.
    fn fixes(n: usize) -> Vec<DeviceFix> {
        (0..n)
            .map(|i| {
                let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
                DeviceFix {
                    ts: fix().ts + Duration::seconds(i as i64),
                    lat: sign * (10.98 + i as f64 * 1e-4),
                    lon: sign * (106.65 + i as f64 * 1e-4),
                    speed_kmh: 30.0 + i as f64,
                    heading_deg: (i * 37 % 360) as f64,
                    ignition: i % 3 != 0,
                    satellites: (i % 12) as u8 + 1,
                    odometer_m: Some(1_000.0 + i as f64 * 15.0),
                }
            })
            .collect()
    }

    /// Half a unit of each field's resolution: what rounding may cost.
    struct Resolution {
        deg: f64,
        speed_kmh: f64,
        odometer_m: f64,
    }

    const GT06: Resolution = Resolution {
        deg: 0.5 / 1_800_000.0,
        speed_kmh: 0.5,
        odometer_m: 0.5,
    };
    const JT808: Resolution = Resolution {
        deg: 0.5e-6,
        speed_kmh: 0.05,
        odometer_m: 50.0,
    };
    const TELTONIKA: Resolution = Resolution {
        deg: 0.5e-7,
        speed_kmh: 0.5,
        odometer_m: 0.5,
    };

    /// Float slack on top of the half unit (the decoders divide).
    const EPS: f64 = 1e-9;

    fn assert_same(got: &FixCandidate, want: &DeviceFix, r: &Resolution) {
        assert_eq!(got.ts, Some(want.ts), "time");
        assert!(
            (got.lat - want.lat).abs() <= r.deg + EPS,
            "lat {} vs {}",
            got.lat,
            want.lat
        );
        assert!(
            (got.lon - want.lon).abs() <= r.deg + EPS,
            "lon {} vs {}",
            got.lon,
            want.lon
        );
        let speed = got.speed_kmh.expect("speed");
        assert!(
            (speed - want.speed_kmh).abs() <= r.speed_kmh + EPS,
            "speed {speed} vs {}",
            want.speed_kmh
        );
        // Whole degrees in every binary protocol; 359.6 comes back as 0.
        let d = (got.heading_deg.expect("heading") - want.heading_deg).rem_euclid(360.0);
        assert!(
            d.min(360.0 - d) <= 0.5 + EPS,
            "heading {:?} vs {}",
            got.heading_deg,
            want.heading_deg
        );
        assert_eq!(got.ignition, Some(want.ignition), "ignition");
        match (got.odometer_m, want.odometer_m) {
            (Some(g), Some(w)) => {
                assert!((g - w).abs() <= r.odometer_m + EPS, "odometer {g} vs {w}")
            }
            (g, w) => assert_eq!(g, w, "odometer"),
        }
    }

    /// Whole-second fixes in 2000–2099 (two-digit years), with a day's margin for a
    /// local-time offset; speeds below GT06's 255 km/h ceiling.
    fn any_fix(whole_seconds: bool) -> impl Strategy<Value = DeviceFix> {
        (
            946_771_200_000i64..4_102_358_400_000,
            -90.0f64..=90.0,
            -180.0f64..=180.0,
            0.0f64..254.0,
            0.0f64..360.0,
            any::<bool>(),
            0u8..=15,
            proptest::option::of(0.0f64..4e9),
        )
            .prop_map(
                move |(ms, lat, lon, speed_kmh, heading_deg, ignition, satellites, odometer_m)| {
                    let ms = if whole_seconds { ms - ms % 1000 } else { ms };
                    DeviceFix {
                        ts: DateTime::from_timestamp_millis(ms).unwrap(),
                        lat,
                        lon,
                        speed_kmh,
                        heading_deg,
                        ignition,
                        satellites,
                        odometer_m,
                    }
                },
            )
    }

    fn gt06_frame(raw: &[u8]) -> gt06::Frame<'_> {
        assert_eq!(gt06::scan(raw), Scan::Frame(raw.len()));
        gt06::parse(raw).expect("valid GT06 frame")
    }

    fn gt06_decode(raw: &[u8]) -> DevicePosition {
        match gt06::decode(&gt06_frame(raw), 0).unwrap() {
            gt06::Message::Position(p) => p,
            m => panic!("not a position: {m:?}"),
        }
    }

    fn jt808_frame(raw: &[u8]) -> jt808::Frame {
        assert_eq!(jt808::scan(raw), Scan::Frame(raw.len()));
        jt808::parse(raw).expect("valid JT/T 808 frame")
    }

    fn jt808_positions(raw: &[u8], utc_offset_s: i32) -> Vec<DevicePosition> {
        match jt808::decode(&jt808_frame(raw), utc_offset_s).unwrap() {
            jt808::Message::Positions(p) => p,
            m => panic!("not positions: {m:?}"),
        }
    }

    fn teltonika_decode(raw: &[u8]) -> Vec<DevicePosition> {
        assert_eq!(teltonika::scan(raw), Scan::Frame(raw.len()));
        teltonika::decode(raw).expect("valid AVL packet")
    }

    fn imei() -> Imei {
        Imei::new("864717003283581").unwrap()
    }

    // GT06

    #[test]
    fn gt06_login_gives_the_imei_and_is_answered() {
        let raw = gt06_login(&imei(), 9);
        // Same bytes as a real GT06's login with this IMEI and serial.
        assert_eq!(
            raw,
            crate::sources::device::hex("78780D01086471700328358100093F040D0A")
        );
        let f = gt06_frame(&raw);
        assert_eq!(
            gt06::decode(&f, 0).unwrap(),
            gt06::Message::Login {
                imei: "864717003283581".into()
            }
        );
        let reply = gt06::reply(&f).expect("a login is answered");
        assert_eq!(&reply[3..6], &[gt06::LOGIN, 0x00, 0x09]);
    }

    #[test]
    fn gt06_position_round_trips_in_every_hemisphere() {
        for (lat, lon) in [
            (10.980_412, 106.651_937),
            (-33.437_917, -70.649_67),
            (51.5, -0.12),
        ] {
            let f = DeviceFix { lat, lon, ..fix() };
            let raw = gt06_position(&f, 3);
            let p = gt06_decode(&raw);
            assert_same(&p.fix, &f, &GT06);
            assert_eq!(p.fix.satellites, Some(9));
            assert!(p.gps_valid && !p.buffered);
            // Positions are not answered: the device does not wait for one.
            assert_eq!(gt06::reply(&gt06_frame(&raw)), None);
        }
    }

    #[test]
    fn gt06_fields_saturate_and_no_satellites_is_not_positioned() {
        let f = DeviceFix {
            speed_kmh: 300.0,
            satellites: 0,
            odometer_m: None,
            ..fix()
        };
        let p = gt06_decode(&gt06_position(&f, 1));
        assert_eq!(p.fix.speed_kmh, Some(255.0));
        assert_eq!(p.fix.odometer_m, None);
        assert!(!p.gps_valid);
        let p = gt06_decode(&gt06_position(
            &DeviceFix {
                satellites: 24,
                ..fix()
            },
            1,
        ));
        assert_eq!(p.fix.satellites, Some(15), "4-bit field");
    }

    #[test]
    fn gt06_heartbeat_carries_ignition_and_is_answered() {
        for ignition in [true, false] {
            let raw = gt06_heartbeat(ignition, 0x1234);
            let f = gt06_frame(&raw);
            assert_eq!(
                gt06::decode(&f, 0).unwrap(),
                gt06::Message::Heartbeat {
                    ignition: Some(ignition)
                }
            );
            assert_eq!(&gt06::reply(&f).unwrap()[3..6], &[gt06::STATUS, 0x12, 0x34]);
        }
    }

    // JT/T 808

    #[test]
    fn phone_numbers_are_padded_and_checked() {
        assert_eq!(
            Jt808Phone::new("13912345678").unwrap().digits(),
            "013912345678"
        );
        assert_eq!(
            Jt808Phone::v2019("13912345678").unwrap().digits(),
            "00000000013912345678"
        );
        for bad in ["", "0139-123", "0139123456789"] {
            assert!(Jt808Phone::new(bad).is_err(), "{bad:?}");
        }
        assert!(Jt808Phone::v2019("013912345678901234567").is_err());
        assert!(Imei::new("86471700328358").is_err());
        assert!(Imei::new("86471700328358x").is_err());
    }

    #[test]
    fn jt808_registration_and_authentication_in_both_editions() {
        for phone in [
            Jt808Phone::new("013912345678").unwrap(),
            Jt808Phone::v2019("13912345678").unwrap(),
        ] {
            let raw = jt808_register(&phone, "SIM0001", Some("苏BA6860"), 1).unwrap();
            let f = jt808_frame(&raw);
            assert_eq!(
                (f.phone.as_str(), f.edition),
                (phone.digits(), phone.edition())
            );
            assert_eq!(
                jt808::decode(&f, GMT7).unwrap(),
                jt808::Message::Register {
                    model: "fleetwatch-sim".into(),
                    terminal_id: "SIM0001".into(),
                    plate: Some("苏BA6860".into())
                }
            );
            // The platform's answer gives the code the terminal authenticates with.
            let answer = jt808::register_response(&f, Some("c0de-7"), 40);
            let code = jt808_auth_code(&jt808::parse(&answer).unwrap()).unwrap();
            assert_eq!(code, "c0de-7");
            let refused = jt808::register_response(&f, None, 41);
            assert_eq!(jt808_auth_code(&jt808::parse(&refused).unwrap()), None);

            let raw = jt808_auth(&phone, &code, 2).unwrap();
            let f = jt808_frame(&raw);
            let jt808::Message::Auth { code, imei, .. } = jt808::decode(&f, GMT7).unwrap() else {
                panic!("not an authentication")
            };
            assert_eq!(code, "c0de-7");
            // No IMEI is simulated: the 2019 field is zeros, which read as no digits.
            assert!(imei.as_deref().is_none_or(str::is_empty), "{imei:?}");
            let r = jt808::parse(&jt808::general_response(&f, jt808::Outcome::Ok, 3)).unwrap();
            assert_eq!(
                &r.body[..4],
                &[0x00, 0x02, 0x01, 0x02],
                "echoes serial and id"
            );
        }
    }

    #[test]
    fn jt808_registration_without_plate_and_bad_fields() {
        let phone = Jt808Phone::new("013912345678").unwrap();
        let raw = jt808_register(&phone, "7", None, 1).unwrap();
        assert_eq!(
            jt808::decode(&jt808_frame(&raw), 0).unwrap(),
            jt808::Message::Register {
                model: "fleetwatch-sim".into(),
                terminal_id: "7".into(),
                plate: None
            }
        );
        assert!(
            jt808_register(&phone, "TOO-LONG-ID", None, 1).is_err(),
            "7 bytes in 2013"
        );
        assert!(
            jt808_register(&phone, "SIM 1", None, 1).is_err(),
            "not printable"
        );
        assert!(
            jt808_register(&phone, "SIM1", Some("61C-330.12 ☃"), 1).is_err(),
            "not GBK"
        );
    }

    #[test]
    fn jt808_location_is_local_time_bcd_and_round_trips() {
        let phone = Jt808Phone::new("013912345678").unwrap();
        let raw = jt808_location(&phone, &fix(), GMT7, 5);
        let f = jt808_frame(&raw);
        // 08:15:30 UTC is 15:15:30 at GMT+7, in BCD.
        assert_eq!(&f.body[22..28], &[0x26, 0x11, 0x24, 0x15, 0x15, 0x30]);
        let p = jt808_positions(&raw, GMT7);
        assert_eq!(p.len(), 1);
        assert_same(&p[0].fix, &fix(), &JT808);
        assert_eq!(p[0].fix.satellites, Some(9));
        assert!(p[0].gps_valid && !p[0].buffered);
        // Read as UTC, the same frame is 7 hours late: the offset really is applied.
        let utc = jt808_positions(&raw, 0);
        assert_eq!(utc[0].fix.ts, Some(fix().ts + Duration::hours(7)));
        // The general response echoes the location's serial and id.
        let r = jt808::parse(&jt808::general_response(&f, jt808::Outcome::Ok, 1)).unwrap();
        assert_eq!(r.body, vec![0x00, 0x05, 0x02, 0x00, 0x00]);
    }

    #[test]
    fn jt808_2019_location_and_heartbeat() {
        let phone = Jt808Phone::v2019("13912345678").unwrap();
        let f = DeviceFix {
            lat: -33.437_917,
            lon: -70.649_67,
            ignition: false,
            ..fix()
        };
        let raw = jt808_location(&phone, &f, -4 * 3600, 7);
        assert_eq!(jt808_frame(&raw).edition, Edition::V2019 { version: 1 });
        assert_same(&jt808_positions(&raw, -4 * 3600)[0].fix, &f, &JT808);
        let hb = jt808_frame(&jt808_heartbeat(&phone, 8));
        assert_eq!((hb.phone.as_str(), hb.serial), ("00000000013912345678", 8));
        assert_eq!(jt808::decode(&hb, 0).unwrap(), jt808::Message::Heartbeat);
    }

    #[test]
    fn jt808_batch_gives_every_fix_in_order_and_marks_blind_uploads() {
        let phone = Jt808Phone::new("013912345678").unwrap();
        let want = fixes(10);
        for blind in [true, false] {
            let raw = jt808_batch(&phone, &want, blind, GMT7, 11).unwrap();
            let got = jt808_positions(&raw, GMT7);
            assert_eq!(got.len(), 10);
            for (g, w) in got.iter().zip(&want) {
                assert_same(&g.fix, w, &JT808);
                assert_eq!(g.buffered, blind);
            }
            let f = jt808_frame(&raw);
            let r = jt808::parse(&jt808::general_response(&f, jt808::Outcome::Ok, 1)).unwrap();
            assert_eq!(r.body, vec![0x00, 0x0b, 0x07, 0x04, 0x00]);
        }
    }

    #[test]
    fn jt808_batch_limits() {
        let phone = Jt808Phone::new("013912345678").unwrap();
        assert!(matches!(
            jt808_batch(&phone, &[], false, 0, 1),
            Err(EncodeError::FixCount { got: 0, .. })
        ));
        // 26 fixes with odometers fill 1,017 of the body's 1,023 bytes; 27 do not fit.
        let raw = jt808_batch(&phone, &fixes(26), false, 0, 1).unwrap();
        assert_eq!(jt808_positions(&raw, 0).len(), 26);
        assert!(matches!(
            jt808_batch(&phone, &fixes(27), false, 0, 1),
            Err(EncodeError::TooLong {
                len_bytes: 1056,
                ..
            })
        ));
        let no_odometer: Vec<_> = fixes(30)
            .into_iter()
            .map(|f| DeviceFix {
                odometer_m: None,
                ..f
            })
            .collect();
        assert_eq!(
            jt808_positions(&jt808_batch(&phone, &no_odometer, false, 0, 1).unwrap(), 0).len(),
            30
        );
    }

    // Teltonika

    #[test]
    fn reference_crc_matches_a_real_unit() {
        let raw = crate::sources::device::hex("000000000000004508010000015eb70a86d00024089d4d21dee3860137005f12005f000e06ef01f00150011503c800450108b5000bb6000642382718005fcd057ace19d3430f57440000000001000002bf");
        assert_eq!(
            crate::sources::device::crc16_ibm_bitwise(&raw[8..raw.len() - 4]),
            0x02bf
        );
    }

    #[test]
    fn teltonika_handshake() {
        let raw = teltonika_imei(&imei());
        assert_eq!(teltonika::scan_imei(&raw), Scan::Frame(17));
        assert_eq!(teltonika::imei(&raw).unwrap(), "864717003283581");
    }

    #[test]
    fn teltonika_packet_round_trips_and_its_count_is_the_reply() {
        let want = fixes(10);
        let raw = teltonika_packet(&want).unwrap();
        let got = teltonika_decode(&raw);
        assert_eq!(got.len(), 10);
        for (g, w) in got.iter().zip(&want) {
            assert_same(&g.fix, w, &TELTONIKA);
            assert_eq!(g.fix.satellites, Some(i64::from(w.satellites)));
        }
        // Codec 8E, and both record counts say 10.
        assert_eq!(
            (raw[8], raw[9], raw[raw.len() - 5]),
            (teltonika::CODEC_8E, 10, 10)
        );
        assert_eq!(teltonika::reply(u32::from(raw[9])), [0, 0, 0, 10]);
        let n = raw.len();
        assert_eq!(&raw[n - 4..n - 2], &[0, 0]);
        assert_eq!(
            u16::from_be_bytes([raw[n - 2], raw[n - 1]]),
            crate::sources::device::crc16_ibm_bitwise(&raw[8..n - 4])
        );
    }

    #[test]
    fn teltonika_without_odometer_and_with_sub_second_time() {
        let f = DeviceFix {
            ts: fix().ts + Duration::milliseconds(250),
            odometer_m: None,
            ignition: false,
            satellites: 0,
            ..fix()
        };
        let p = teltonika_decode(&teltonika_packet(std::slice::from_ref(&f)).unwrap());
        assert_same(&p[0].fix, &f, &TELTONIKA);
        assert!(!p[0].gps_valid, "no satellites: last known place");
    }

    #[test]
    fn teltonika_record_counts_are_limited() {
        assert!(teltonika_packet(&[]).is_err());
        let many = vec![fix(); 256];
        assert!(matches!(
            teltonika_packet(&many),
            Err(EncodeError::FixCount { got: 256, max: 255 })
        ));
        assert_eq!(
            teltonika_decode(&teltonika_packet(&many[..255]).unwrap()).len(),
            255
        );
    }

    #[test]
    fn teltonika_udp_round_trips_and_is_answered() {
        let want = fixes(3);
        let raw = teltonika_udp(&imei(), 0xcafe, 7, &want).unwrap();
        let d = teltonika::decode_udp(&raw).unwrap();
        assert_eq!(
            (d.packet_id, d.avl_id, d.imei.as_str()),
            (0xcafe, 7, "864717003283581")
        );
        assert_eq!(d.positions.len(), 3);
        for (g, w) in d.positions.iter().zip(&want) {
            assert_same(&g.fix, w, &TELTONIKA);
        }
        assert_eq!(
            teltonika::reply_udp(&d, 3),
            [0x00, 0x05, 0xca, 0xfe, 0x01, 0x07, 0x03]
        );
    }

    // OsmAnd

    fn assert_osmand(r: &osmand::Report, device_id: &str, want: &DeviceFix) {
        assert_eq!(r.device_id, device_id);
        assert_eq!(r.fix.ts, Some(want.ts));
        assert_eq!((r.fix.lat, r.fix.lon), (want.lat, want.lon));
        let speed = r.fix.speed_kmh.unwrap();
        assert!(
            (speed - want.speed_kmh).abs() <= 1e-9,
            "{speed} vs {}",
            want.speed_kmh
        );
        assert_eq!(r.fix.heading_deg, Some(want.heading_deg));
        assert_eq!(r.fix.ignition, Some(want.ignition));
        assert_eq!(r.fix.odometer_m, None, "the query carries no odometer");
    }

    #[test]
    fn osmand_query_round_trips_and_is_percent_encoded() {
        let q = osmand_query("phone 7&x=é", &fix());
        assert!(
            q.starts_with("id=phone+7%26x%3D%C3%A9&timestamp=1795508130&"),
            "{q}"
        );
        assert!(q.contains("&speed=25.70194384449244&"), "knots: {q}");
        assert_osmand(
            &osmand::decode_params(q.as_bytes()).unwrap(),
            "phone 7&x=é",
            &fix(),
        );
        let f = DeviceFix {
            ts: fix().ts + Duration::milliseconds(5),
            ignition: false,
            ..fix()
        };
        let q = osmand_query("7", &f);
        assert!(q.contains("timestamp=1795508130.005&"), "{q}");
        assert_osmand(&osmand::decode_params(q.as_bytes()).unwrap(), "7", &f);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn gt06_round_trips(f in any_fix(true), serial in any::<u16>()) {
            let raw = gt06_position(&f, serial);
            assert_eq!(gt06_frame(&raw).serial, serial);
            assert_same(&gt06_decode(&raw).fix, &f, &GT06);
        }

        #[test]
        fn jt808_round_trips(
            f in any_fix(true),
            utc_offset_s in -12 * 3600..=14 * 3600,
            v2019 in any::<bool>(),
        ) {
            let phone = if v2019 {
                Jt808Phone::v2019("13912345678")
            } else {
                Jt808Phone::new("13912345678")
            }
            .unwrap();
            let p = jt808_positions(&jt808_location(&phone, &f, utc_offset_s, 1), utc_offset_s);
            assert_same(&p[0].fix, &f, &JT808);
        }

        #[test]
        fn teltonika_round_trips(f in proptest::collection::vec(any_fix(false), 1..8)) {
            let p = teltonika_decode(&teltonika_packet(&f).unwrap());
            assert_eq!(p.len(), f.len());
            for (g, w) in p.iter().zip(&f) {
                assert_same(&g.fix, w, &TELTONIKA);
            }
        }

        #[test]
        fn osmand_round_trips(f in any_fix(false), id in "[ -~]{1,24}") {
            let r = osmand::decode_params(osmand_query(&id, &f).as_bytes()).unwrap();
            assert_osmand(&r, &id, &f);
        }
    }
}
