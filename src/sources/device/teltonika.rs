//! Teltonika (FMB, FMC, FMM and older FM units): an IMEI handshake, then AVL data
//! packets `00000000 len codec n records n crc` in Codec 8, 8 Extended and 16, over
//! TCP, or the same records in UDP datagrams. The server answers the handshake with
//! `01` and each packet with the number of records it accepted; a unit keeps and
//! resends records that were not acknowledged, so the count is sent only once they
//! are stored.

use chrono::{DateTime, Utc};
use crc::{Crc, CRC_16_ARC};

use super::{be, DevicePosition, Scan};
use crate::domain::FixCandidate;

/// CRC-16/IBM (ARC) as Teltonika uses it, over codec id to the second record count.
const CRC_IBM: Crc<u16> = Crc::<u16>::new(&CRC_16_ARC);

/// Codec 8.
pub const CODEC_8: u8 = 0x08;
/// Codec 8 Extended: 2-byte IO ids and counts, variable-length elements.
pub const CODEC_8E: u8 = 0x8e;
/// Codec 16: 2-byte IO ids, generation type.
pub const CODEC_16: u8 = 0x10;

/// IO element: ignition.
pub const IO_IGNITION: u16 = 239;
/// IO element: total odometer, metres.
pub const IO_TOTAL_ODOMETER: u16 = 16;
/// IO element: iButton (driver key) id.
pub const IO_IBUTTON: u16 = 78;

/// Largest AVL packet we accept (units send at most a few kilobytes).
pub const MAX_PACKET: usize = 64 * 1024;

/// Why a Teltonika packet could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TeltonikaError {
    /// The CRC does not match.
    #[error("bad CRC-16/IBM: packet says {stated:08x}, bytes give {computed:04x}")]
    BadChecksum { stated: u32, computed: u16 },
    /// A codec we do not decode (e.g. 12/13/14: commands and their answers).
    #[error("unsupported codec 0x{0:02x}")]
    UnsupportedCodec(u8),
    /// Records cut short, or the two record counts differ.
    #[error("malformed AVL data: {0}")]
    Malformed(&'static str),
    /// The handshake is not an IMEI of digits.
    #[error("handshake is not an IMEI")]
    BadImei,
}

impl TeltonikaError {
    /// Low-cardinality reason label for metrics and dead letters.
    pub fn label(&self) -> &'static str {
        match self {
            TeltonikaError::BadChecksum { .. } => "bad_checksum",
            TeltonikaError::UnsupportedCodec(_) => "unsupported_message",
            _ => "malformed",
        }
    }
}

/// Finds the IMEI handshake at the start of a TCP stream: a 2-byte length and the
/// IMEI's digits.
pub fn scan_imei(buf: &[u8]) -> Scan {
    match be::<2>(buf, 0) {
        None => Scan::Incomplete,
        Some(n) if !(1..=32).contains(&n) => Scan::Garbage(buf.len()),
        Some(n) if buf.len() < 2 + n as usize => Scan::Incomplete,
        Some(n) => Scan::Frame(2 + n as usize),
    }
}

/// The IMEI of a handshake frame.
pub fn imei(frame: &[u8]) -> Result<String, TeltonikaError> {
    let digits = &frame[2..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(TeltonikaError::BadImei);
    }
    Ok(String::from_utf8_lossy(digits).into_owned())
}

/// The handshake's answer: accepted (`01`) or refused (`00`).
pub fn imei_reply(accepted: bool) -> [u8; 1] {
    [u8::from(accepted)]
}

/// Finds an AVL packet at the start of a TCP stream (after the handshake).
pub fn scan(buf: &[u8]) -> Scan {
    if let Some(i) = buf.iter().take(4).position(|&b| b != 0) {
        // Not a preamble: resynchronise on the next one (or the start of one).
        let next = (i + 1..buf.len()).find(|&j| buf[j..].iter().take(4).all(|&b| b == 0));
        return Scan::Garbage(next.unwrap_or(buf.len()));
    }
    if buf.len() < 8 {
        return Scan::Incomplete;
    }
    let len = be::<4>(buf, 4).unwrap_or(0) as usize;
    let total = 8 + len + 4;
    if len < 3 || total > MAX_PACKET {
        return Scan::Garbage(4);
    }
    if buf.len() < total {
        return Scan::Incomplete;
    }
    Scan::Frame(total)
}

/// Decodes a TCP AVL packet as [`scan`] delimited it: its positions, oldest first as
/// the unit sent them.
pub fn decode(packet: &[u8]) -> Result<Vec<DevicePosition>, TeltonikaError> {
    let data = &packet[8..packet.len() - 4];
    // The CRC field is 4 bytes whose first two are zero: all four must match.
    let stated = be::<4>(packet, packet.len() - 4).unwrap_or(0) as u32;
    let computed = CRC_IBM.checksum(data);
    if stated != u32::from(computed) {
        return Err(TeltonikaError::BadChecksum { stated, computed });
    }
    records(data)
}

/// The answer to an AVL packet: how many records were accepted (stored).
pub fn reply(accepted: u32) -> [u8; 4] {
    accepted.to_be_bytes()
}

/// A UDP datagram: its ids (echoed in the answer), the unit's IMEI and positions.
#[derive(Debug, Clone, PartialEq)]
pub struct Datagram {
    /// Packet id of the UDP channel header.
    pub packet_id: u16,
    /// AVL packet id.
    pub avl_id: u8,
    /// The unit's IMEI (every datagram carries it: UDP has no session).
    pub imei: String,
    /// The records.
    pub positions: Vec<DevicePosition>,
}

/// Decodes a UDP datagram: length 2, packet id 2, packet type 1, AVL packet id 1,
/// IMEI length 2, IMEI, then codec id to the second record count (no CRC: UDP's own
/// checksum covers it).
pub fn decode_udp(d: &[u8]) -> Result<Datagram, TeltonikaError> {
    let m = TeltonikaError::Malformed;
    let len = be::<2>(d, 0).ok_or(m("short datagram"))? as usize;
    if d.len() != 2 + len {
        return Err(m("datagram length"));
    }
    let packet_id = be::<2>(d, 2).ok_or(m("short datagram"))? as u16;
    let avl_id = *d.get(5).ok_or(m("short datagram"))?;
    let n = be::<2>(d, 6).ok_or(m("short datagram"))? as usize;
    let imei_bytes = d.get(8..8 + n).ok_or(m("short datagram"))?;
    if imei_bytes.is_empty() || !imei_bytes.iter().all(u8::is_ascii_digit) {
        return Err(TeltonikaError::BadImei);
    }
    Ok(Datagram {
        packet_id,
        avl_id,
        imei: String::from_utf8_lossy(imei_bytes).into_owned(),
        positions: records(&d[8 + n..])?,
    })
}

/// The answer to a UDP datagram: length, packet id, type `01`, AVL packet id, number
/// of records accepted.
pub fn reply_udp(d: &Datagram, accepted: u8) -> [u8; 7] {
    let id = d.packet_id.to_be_bytes();
    [0x00, 0x05, id[0], id[1], 0x01, d.avl_id, accepted]
}

/// Codec id, count, records, count.
fn records(data: &[u8]) -> Result<Vec<DevicePosition>, TeltonikaError> {
    let m = TeltonikaError::Malformed;
    let codec = *data.first().ok_or(m("empty"))?;
    if !matches!(codec, CODEC_8 | CODEC_8E | CODEC_16) {
        return Err(TeltonikaError::UnsupportedCodec(codec));
    }
    let count = usize::from(*data.get(1).ok_or(m("no record count"))?);
    let mut r = Reader { b: data, at: 2 };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(record(&mut r, codec).ok_or(m("record cut short"))?);
    }
    if r.b.get(r.at) != Some(&(count as u8)) || r.at + 1 != data.len() {
        return Err(m("record counts differ or trailing bytes"));
    }
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn n<const N: usize>(&mut self) -> Option<u64> {
        let v = be::<N>(self.b, self.at)?;
        self.at += N;
        Some(v)
    }
    /// An IO id or count: 1 byte in Codec 8, 2 in 8 Extended (ids of Codec 16 too).
    fn wide(&mut self, wide: bool) -> Option<u16> {
        if wide {
            self.n::<2>().map(|v| v as u16)
        } else {
            self.n::<1>().map(|v| v as u16)
        }
    }
}

fn record(r: &mut Reader<'_>, codec: u8) -> Option<DevicePosition> {
    let ts_ms = r.n::<8>()? as i64;
    let _priority = r.n::<1>()?;
    let lon = r.n::<4>()? as u32 as i32;
    let lat = r.n::<4>()? as u32 as i32;
    let _altitude_m = r.n::<2>()?;
    let angle = r.n::<2>()?;
    let satellites = r.n::<1>()?;
    let speed = r.n::<2>()?;
    let ids_wide = codec != CODEC_8;
    let counts_wide = codec == CODEC_8E;
    let _event_id = r.wide(ids_wide)?;
    if codec == CODEC_16 {
        let _generation = r.n::<1>()?;
    }
    let _total = r.wide(counts_wide)?;
    let mut fix = FixCandidate {
        vehicle: None,
        ts: DateTime::<Utc>::from_timestamp_millis(ts_ms),
        lat: f64::from(lat) / 1e7,
        lon: f64::from(lon) / 1e7,
        speed_kmh: Some(speed as f64),
        heading_deg: Some(angle as f64),
        driver: None,
        ignition: None,
        satellites: Some(satellites as i64),
        hdop: None,
        odometer_m: None,
        accuracy_m: None,
    };
    let mut io = |id: u16, v: u64| match id {
        IO_IGNITION => fix.ignition = Some(v != 0),
        IO_TOTAL_ODOMETER => fix.odometer_m = Some(v as f64),
        IO_IBUTTON if v != 0 => fix.driver = Some(format!("{v:016X}")),
        _ => {}
    };
    for width in [1usize, 2, 4, 8] {
        let n = r.wide(counts_wide)?;
        for _ in 0..n {
            let id = r.wide(ids_wide)?;
            let v = match width {
                1 => r.n::<1>()?,
                2 => r.n::<2>()?,
                4 => r.n::<4>()?,
                _ => r.n::<8>()?,
            };
            io(id, v);
        }
    }
    if codec == CODEC_8E {
        // Variable-length elements: id, length, bytes. None of ours.
        let n = r.n::<2>()?;
        for _ in 0..n {
            let _id = r.n::<2>()?;
            let len = r.n::<2>()? as usize;
            r.b.get(r.at..r.at + len)?;
            r.at += len;
        }
    }
    Some(DevicePosition {
        fix,
        // Units report their last known place with no satellites when they have none.
        gps_valid: satellites > 0,
        buffered: false,
        alarms: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::device::hex;

    // Packets below are captures from real units, as published with open-source
    // tracking servers' decoder tests.

    fn packet(h: &str) -> Vec<DevicePosition> {
        let raw = hex(h);
        assert_eq!(scan(&raw), Scan::Frame(raw.len()));
        decode(&raw).expect("valid packet")
    }

    #[test]
    fn handshake() {
        let raw = hex("000F313233343536373839303132333435");
        assert_eq!(scan_imei(&raw), Scan::Frame(raw.len()));
        assert_eq!(imei(&raw).unwrap(), "123456789012345");
        assert_eq!(scan_imei(&raw[..10]), Scan::Incomplete);
        assert_eq!(imei_reply(true), [1]);
        assert!(imei(&hex("0003414243")).is_err());
    }

    #[test]
    fn codec8_vienna_with_odometer() {
        let p = packet("000000000000004c08010000016818d500580009c28d9f1cb3757a00be00c60f0053000f06f0011503c80001011d00fc0007423799180053cdf80dce426f430f88190bb8560bb802f100005aa110002887e000010000ee8d");
        assert_eq!(p.len(), 1);
        let f = &p[0].fix;
        assert_eq!(f.ts.unwrap().timestamp_millis(), 0x0000_0168_18d5_0058);
        assert!((f.lat - 48.1523066).abs() < 1e-9);
        assert!((f.lon - 16.3745183).abs() < 1e-9);
        assert_eq!(
            (f.speed_kmh, f.heading_deg, f.satellites),
            (Some(83.0), Some(198.0), Some(15))
        );
        assert_eq!(f.odometer_m, Some(2_656_224.0));
        assert_eq!(f.ignition, None);
        assert!(p[0].gps_valid);
    }

    #[test]
    fn codec8_ignition_on() {
        let p = packet("000000000000004508010000015eb70a86d00024089d4d21dee3860137005f12005f000e06ef01f00150011503c800450108b5000bb6000642382718005fcd057ace19d3430f57440000000001000002bf");
        assert_eq!(p[0].fix.ignition, Some(true));
        assert!((p[0].fix.lat - 56.8255366).abs() < 1e-9);
        assert!((p[0].fix.lon - 60.4544333).abs() < 1e-9);
        assert_eq!(p[0].fix.speed_kmh, Some(95.0));
    }

    #[test]
    fn codec8_extended_with_variable_length_elements() {
        let p = packet("00000000000000818e0100000166e368a510000f0d8b5b20961c35008d010308000000000014000900ef0000f00100500100150400c800004501001e00002500002900000a00b5000800b60007004230dc0018000000430fcb0044005f001103de001200e50013001200240000000000000001010000113141314a433534343452373235323336370100005e99");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].fix.ignition, Some(false));
        assert_eq!(p[0].fix.satellites, Some(8));
    }

    #[test]
    fn codec16_southern_western_hemisphere() {
        let p = packet("000000000000009F100100000164D855401800D5E3B744EC11C762023B011A060000000007200A010000010500010600010D00010E00010F00011600011700011800011F001301010000010700000108000001090000010A0000010B0000010C000001100000011100000112000001130000011400000115000001190000011A0000011B0000011C0000011D0000011E000003010200000000010300000000010400000000000100000D3B");
        assert_eq!(p.len(), 1);
        assert!(
            (p[0].fix.lat - -33.4379166).abs() < 1e-9,
            "{}",
            p[0].fix.lat
        );
        assert!((p[0].fix.lon - -70.64967).abs() < 1e-9, "{}", p[0].fix.lon);
        assert_eq!(
            (p[0].fix.satellites, p[0].fix.heading_deg),
            (Some(6), Some(282.0))
        );
    }

    #[test]
    fn bad_crc_and_counts_are_errors() {
        let mut raw = hex("000000000000004508010000015eb70a86d00024089d4d21dee3860137005f12005f000e06ef01f00150011503c800450108b5000bb6000642382718005fcd057ace19d3430f57440000000001000002bf");
        raw[20] ^= 1;
        assert!(matches!(
            decode(&raw),
            Err(TeltonikaError::BadChecksum { .. })
        ));
        // Found by fuzzing: a corrupted upper half of the 4-byte CRC field was not
        // checked, so the packet was accepted.
        let mut raw = hex("000000000000004508010000015eb70a86d00024089d4d21dee3860137005f12005f000e06ef01f00150011503c800450108b5000bb6000642382718005fcd057ace19d3430f57440000000001000002bf");
        let n = raw.len();
        raw[n - 4] ^= 0x01;
        assert_eq!(
            decode(&raw),
            Err(TeltonikaError::BadChecksum {
                stated: 0x0100_02bf,
                computed: 0x02bf
            })
        );
        // A packet whose stated length and CRC are wrong (as some units send).
        let raw = hex("0000000000000000080100000113fc208dff00209cca800f14f650006f00d60400040004030101150316030001460000015d000100000000");
        assert_eq!(scan(&raw), Scan::Garbage(4));
    }

    #[test]
    fn udp_datagram_and_answer() {
        let tcp = hex("000000000000004508010000015eb70a86d00024089d4d21dee3860137005f12005f000e06ef01f00150011503c800450108b5000bb6000642382718005fcd057ace19d3430f57440000000001000002bf");
        let avl = &tcp[8..tcp.len() - 4];
        let imei = b"352093081452251";
        let mut d = vec![0, 0, 0xca, 0xfe, 0x01, 0x07, 0x00, imei.len() as u8];
        d.extend_from_slice(imei);
        d.extend_from_slice(avl);
        let len = (d.len() - 2) as u16;
        d[..2].copy_from_slice(&len.to_be_bytes());
        let g = decode_udp(&d).unwrap();
        assert_eq!(
            (g.packet_id, g.avl_id, g.imei.as_str()),
            (0xcafe, 7, "352093081452251")
        );
        assert_eq!(g.positions.len(), 1);
        assert_eq!(reply_udp(&g, 1), [0x00, 0x05, 0xca, 0xfe, 0x01, 0x07, 0x01]);
    }

    #[test]
    fn stream_scanning_waits_and_resyncs() {
        let raw = hex("000000000000004508010000015eb70a86d00024089d4d21dee3860137005f12005f000e06ef01f00150011503c800450108b5000bb6000642382718005fcd057ace19d3430f57440000000001000002bf");
        for cut in 0..raw.len() {
            assert_eq!(scan(&raw[..cut]), Scan::Incomplete, "cut at {cut}");
        }
        let mut noisy = vec![0x55, 0x66];
        noisy.extend_from_slice(&raw);
        assert_eq!(scan(&noisy), Scan::Garbage(2));
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let raw = hex("00000000000000818e0100000166e368a510000f0d8b5b20961c35008d010308000000000014000900ef0000f00100500100150400c800004501001e00002500002900000a00b5000800b60007004230dc0018000000430fcb0044005f001103de001200e50013001200240000000000000001010000113141314a433534343452373235323336370100005e99");
        let data = &raw[8..raw.len() - 4];
        for n in 0..data.len() {
            assert!(records(&data[..n]).is_err());
        }
    }
}
