//! The canonical JSON payload of a simulated fix, written by hand.
//!
//! The load generator must write well over 500k payloads per second on one core. A
//! fixed-decimal writer is several times faster than `serde_json` and prints what a
//! device prints: fixed decimals, never `1e-7` nor `10.901230000000001`.

/// Everything one payload holds. Coordinates are WGS84 degrees, lat/lon order.
pub(crate) struct PayloadFix<'a> {
    /// Vehicle id; ids are restricted to `A-Z 0-9 - _ .`, so no JSON escaping is needed.
    pub vehicle: &'a str,
    /// Fix time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub speed_kmh: f64,
    pub heading_deg: f64,
    /// Driver id (same safe alphabet as vehicle ids); omitted when nobody is logged in.
    pub driver: Option<&'a str>,
    pub ignition: bool,
    pub satellites: u8,
    pub hdop: f64,
    pub odometer_m: f64,
}

/// Appends the payload of `f` to `out`, keys in the canonical order.
pub(crate) fn write(out: &mut Vec<u8>, f: &PayloadFix<'_>) {
    debug_assert!(is_safe_id(f.vehicle), "unsafe vehicle id {:?}", f.vehicle);
    out.extend_from_slice(b"{\"vehicle\":\"");
    out.extend_from_slice(f.vehicle.as_bytes());
    out.extend_from_slice(b"\",\"ts\":\"");
    push_rfc3339(out, f.ts_ms);
    out.extend_from_slice(b"\",\"lat\":");
    push_fixed(out, f.lat, 6);
    out.extend_from_slice(b",\"lon\":");
    push_fixed(out, f.lon, 6);
    out.extend_from_slice(b",\"speed_kmh\":");
    push_fixed(out, f.speed_kmh, 1);
    out.extend_from_slice(b",\"heading_deg\":");
    // Rounding 359.96 to one decimal would print 360.0; a heading is in 0..360.
    let heading_tenths = ((f.heading_deg * 10.0).round() as i64).rem_euclid(3600);
    push_tenths(out, heading_tenths);
    if let Some(driver) = f.driver {
        debug_assert!(is_safe_id(driver), "unsafe driver id {driver:?}");
        out.extend_from_slice(b",\"driver_id\":\"");
        out.extend_from_slice(driver.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(if f.ignition {
        b",\"ignition\":true"
    } else {
        b",\"ignition\":false"
    });
    out.extend_from_slice(b",\"satellites\":");
    push_uint(out, u64::from(f.satellites));
    out.extend_from_slice(b",\"hdop\":");
    push_fixed(out, f.hdop, 1);
    out.extend_from_slice(b",\"odometer_m\":");
    push_fixed(out, f.odometer_m, 1);
    out.push(b'}');
}

fn is_safe_id(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// RFC 3339 UTC: whole seconds (`...T08:00:05Z`) when `ts_ms` has no milliseconds,
/// else with milliseconds (`...T08:00:05.250Z`).
pub(crate) fn push_rfc3339(out: &mut Vec<u8>, ts_ms: i64) {
    let secs = ts_ms.div_euclid(1000);
    let millis = ts_ms.rem_euclid(1000) as u32;
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400) as u32;
    push_digits(out, year.clamp(0, 9999) as u32, 4);
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
    out.push(b'T');
    push_digits(out, sod / 3600, 2);
    out.push(b':');
    push_digits(out, sod / 60 % 60, 2);
    out.push(b':');
    push_digits(out, sod % 60, 2);
    if millis != 0 {
        out.push(b'.');
        push_digits(out, millis, 3);
    }
    out.push(b'Z');
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `value` with exactly `decimals` decimals (at most 9), rounded half away from zero.
pub(crate) fn push_fixed(out: &mut Vec<u8>, value: f64, decimals: u32) {
    debug_assert!(decimals <= 9 && value.is_finite());
    let scale = 10u64.pow(decimals);
    let scaled = (value * scale as f64).round();
    if scaled < 0.0 {
        out.push(b'-');
    }
    let n = scaled.abs() as u64;
    push_uint(out, n / scale);
    if decimals > 0 {
        out.push(b'.');
        push_digits(out, (n % scale) as u32, decimals as usize);
    }
}

fn push_tenths(out: &mut Vec<u8>, tenths: i64) {
    push_uint(out, (tenths / 10) as u64);
    out.push(b'.');
    out.push(b'0' + (tenths % 10) as u8);
}

fn push_uint(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// `n` zero-padded to exactly `width` digits (`n` must fit).
fn push_digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let mut buf = [b'0'; 10];
    for slot in buf[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[..width]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, SecondsFormat};

    fn fixed(v: f64, d: u32) -> String {
        let mut out = Vec::new();
        push_fixed(&mut out, v, d);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fixed_decimals_round_and_pad() {
        assert_eq!(fixed(10.901234, 6), "10.901234");
        assert_eq!(fixed(106.7, 6), "106.700000");
        assert_eq!(fixed(0.04, 1), "0.0");
        assert_eq!(fixed(0.05, 1), "0.1");
        assert_eq!(fixed(-12.345, 2), "-12.35");
        assert_eq!(fixed(123456.0, 0), "123456");
        assert_eq!(fixed(9.96, 1), "10.0");
    }

    #[test]
    fn rfc3339_matches_chrono() {
        for ts_ms in [
            0i64,
            951_782_400_000,       // 2000-02-29
            1_795_507_205_000,     // 2026-11-24T08:00:05Z
            1_795_507_205_250,     // with millis
            4_102_444_799_000,     // 2099-12-31T23:59:59Z
            -86_400_000,           // 1969-12-31
            1_709_164_800_000 - 1, // last ms of 2024-02-28
        ] {
            let mut out = Vec::new();
            push_rfc3339(&mut out, ts_ms);
            let want = DateTime::from_timestamp_millis(ts_ms)
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::AutoSi, true);
            let want = if ts_ms % 1000 == 0 {
                want
            } else {
                DateTime::from_timestamp_millis(ts_ms)
                    .unwrap()
                    .to_rfc3339_opts(SecondsFormat::Millis, true)
            };
            assert_eq!(String::from_utf8(out).unwrap(), want, "ts_ms {ts_ms}");
        }
    }

    #[test]
    fn heading_never_prints_360() {
        let mut out = Vec::new();
        write(
            &mut out,
            &PayloadFix {
                vehicle: "61C-330.12",
                ts_ms: 1_795_507_205_000,
                lat: 10.90123,
                lon: 106.75012,
                speed_kmh: 42.5,
                heading_deg: 359.97,
                driver: Some("079123456789"),
                ignition: true,
                satellites: 9,
                hdop: 0.9,
                odometer_m: 123_456.7,
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"vehicle":"61C-330.12","ts":"2026-11-24T08:00:05Z","lat":10.901230,"lon":106.750120,"speed_kmh":42.5,"heading_deg":0.0,"driver_id":"079123456789","ignition":true,"satellites":9,"hdop":0.9,"odometer_m":123456.7}"#
        );
    }
}
