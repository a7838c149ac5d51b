//! Messages for people: an alert (or an hourly digest) as a subject, plain text and
//! HTML, in Vietnamese or English, times in local time, with a link to the map.

use std::fmt::Write;

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{json, Value};

use super::spec::Language;
use crate::domain::alert::{AlertKind, Level};

/// One revision of an alert, as delivered: kept with its delivery, since the alert
/// row itself moves on to later revisions.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlertView {
    /// The alert's id.
    pub id: String,
    /// Its revision (see migration 13).
    pub revision: i32,
    /// Its vehicle.
    pub vehicle: String,
    /// Its cooperative.
    pub cooperative: String,
    /// The driver's licence number, when known.
    pub driver: Option<String>,
    /// Its kind.
    pub kind: AlertKind,
    /// Its level.
    pub level: Level,
    /// `open`, `closed` or `retracted`.
    pub status: String,
    /// The episode's own status (`open`, `closed`), also for a retracted alert.
    pub episode_status: String,
    /// Overspeed severity band.
    pub severity: Option<u8>,
    /// Episode start (fix time).
    pub start: DateTime<Utc>,
    /// Episode end, once closed.
    pub end: Option<DateTime<Utc>>,
    /// Latitude, WGS84 degrees.
    pub lat: f64,
    /// Longitude, WGS84 degrees.
    pub lon: f64,
    /// The rule's details (speeds, durations, zone ...).
    pub details: Value,
    /// Why it was retracted.
    pub retraction_reason: Option<String>,
}

impl AlertView {
    /// The idempotency key of this revision: `{alert_id}:{revision}`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.id, self.revision)
    }

    /// The fix time this revision reports: the end of a closed episode, else its start.
    pub fn event_time(&self) -> DateTime<Utc> {
        self.end.unwrap_or(self.start)
    }

    /// The link to the map at the alert's time and place, under `base` (the service's
    /// public address; empty: no link).
    pub fn map_link(&self, base: &str) -> Option<String> {
        if base.is_empty() {
            return None;
        }
        let t = self
            .start
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("vehicle", &self.vehicle)
            .append_pair("t", &t)
            .append_pair("lat", &format!("{:.6}", self.lat))
            .append_pair("lon", &format!("{:.6}", self.lon))
            .finish();
        Some(format!("{}/map#{q}", base.trim_end_matches('/')))
    }

    /// The JSON of this revision in webhook bodies.
    pub fn json(&self, map_base: &str) -> Value {
        json!({
            "idempotency_key": self.key(),
            "alert_id": self.id,
            "revision": self.revision,
            "vehicle": self.vehicle,
            "cooperative": self.cooperative,
            "driver_id": self.driver,
            "kind": self.kind,
            "level": self.level,
            "status": self.status,
            "episode_status": self.episode_status,
            "severity": self.severity,
            "start": self.start,
            "end": self.end,
            "lat": self.lat,
            "lon": self.lon,
            "details": self.details,
            "retraction_reason": self.retraction_reason,
            "map_url": self.map_link(map_base),
        })
    }
}

/// A message for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// One line.
    pub subject: String,
    /// Plain text.
    pub text: String,
    /// HTML (every value escaped).
    pub html: String,
}

fn kind_name(k: AlertKind, l: Language) -> &'static str {
    use AlertKind::*;
    match (k, l) {
        (Overspeed, Language::Vi) => "Quá tốc độ",
        (Overspeed, Language::En) => "Overspeed",
        (ContinuousDriving, Language::Vi) => "Lái xe liên tục quá thời gian",
        (ContinuousDriving, Language::En) => "Continuous driving",
        (DailyDriving, Language::Vi) => "Quá thời gian lái xe trong ngày",
        (DailyDriving, Language::En) => "Daily driving time",
        (WeeklyDriving, Language::Vi) => "Quá thời gian lái xe trong tuần",
        (WeeklyDriving, Language::En) => "Weekly driving time",
        (OffRoute, Language::Vi) => "Đi sai lộ trình",
        (OffRoute, Language::En) => "Off route",
        (RestrictedZone, Language::Vi) => "Đi vào khu vực cấm",
        (RestrictedZone, Language::En) => "Restricted zone",
        (ZoneEnter, Language::Vi) => "Vào vùng",
        (ZoneEnter, Language::En) => "Zone entered",
        (ZoneExit, Language::Vi) => "Ra khỏi vùng",
        (ZoneExit, Language::En) => "Zone left",
        (NoSignal, Language::Vi) => "Mất tín hiệu",
        (NoSignal, Language::En) => "No signal",
        (DataGap, Language::Vi) => "Gián đoạn dữ liệu",
        (DataGap, Language::En) => "Data gap",
        (DeviceAlarm, Language::Vi) => "Cảnh báo từ thiết bị",
        (DeviceAlarm, Language::En) => "Device alarm",
        (StopSkipped, Language::Vi) => "Bỏ điểm dừng",
        (StopSkipped, Language::En) => "Stop skipped",
        (ScheduleDeviation, Language::Vi) => "Lệch biểu đồ chạy xe",
        (ScheduleDeviation, Language::En) => "Off schedule",
    }
}

fn level_name(v: Level, l: Language) -> &'static str {
    match (v, l) {
        (Level::Info, Language::Vi) => "Thông tin",
        (Level::Info, Language::En) => "Info",
        (Level::Warning, Language::Vi) => "Cảnh báo",
        (Level::Warning, Language::En) => "Warning",
        (Level::Violation, Language::Vi) => "Vi phạm",
        (Level::Violation, Language::En) => "Violation",
    }
}

fn status_name(s: &str, l: Language) -> &str {
    match (s, l) {
        ("open", Language::Vi) => "đang diễn ra",
        ("open", Language::En) => "ongoing",
        ("closed", Language::Vi) => "đã kết thúc",
        ("closed", Language::En) => "ended",
        ("retracted", Language::Vi) => "đã thu hồi",
        ("retracted", Language::En) => "retracted",
        (other, _) => other,
    }
}

/// Labels of the body's rows.
struct Labels {
    vehicle: &'static str,
    driver: &'static str,
    status: &'static str,
    start: &'static str,
    end: &'static str,
    speed: &'static str,
    position: &'static str,
    map: &'static str,
    alert: &'static str,
    reason: &'static str,
    digest: &'static str,
    footer: &'static str,
}

fn labels(l: Language) -> Labels {
    match l {
        Language::Vi => Labels {
            vehicle: "Xe",
            driver: "Lái xe",
            status: "Trạng thái",
            start: "Bắt đầu",
            end: "Kết thúc",
            speed: "Tốc độ",
            position: "Vị trí",
            map: "Bản đồ",
            alert: "Mã cảnh báo",
            reason: "Lý do thu hồi",
            digest: "Tổng hợp",
            footer: "Thông báo tự động của fleetwatch theo Thông tư 12/2020/TT-BGTVT, điều 5.",
        },
        Language::En => Labels {
            vehicle: "Vehicle",
            driver: "Driver",
            status: "Status",
            start: "Start",
            end: "End",
            speed: "Speed",
            position: "Position",
            map: "Map",
            alert: "Alert id",
            reason: "Retracted because",
            digest: "Digest",
            footer: "Automatic notice from fleetwatch (Circular 12/2020/TT-BGTVT, art. 5).",
        },
    }
}

fn local(t: DateTime<Utc>, offset_s: i32) -> String {
    let off = FixedOffset::east_opt(offset_s)
        .unwrap_or_else(|| FixedOffset::east_opt(0).expect("zero offset"));
    t.with_timezone(&off)
        .format("%d/%m/%Y %H:%M:%S (UTC%:z)")
        .to_string()
}

/// `a` in one line: "Vi phạm: Quá tốc độ — 61C-207.45 (đã kết thúc)".
fn headline(a: &AlertView, l: Language) -> String {
    format!(
        "{}: {} — {} ({})",
        level_name(a.level, l),
        kind_name(a.kind, l),
        a.vehicle,
        status_name(&a.status, l)
    )
}

/// The rows of one alert: (label, value, link).
fn rows(
    a: &AlertView,
    l: Language,
    offset_s: i32,
    map_base: &str,
) -> Vec<(&'static str, String, bool)> {
    let lb = labels(l);
    let mut r = vec![(lb.vehicle, a.vehicle.clone(), false)];
    if let Some(d) = &a.driver {
        r.push((lb.driver, d.clone(), false));
    }
    r.push((lb.status, status_name(&a.status, l).to_string(), false));
    r.push((lb.start, local(a.start, offset_s), false));
    if let Some(e) = a.end {
        r.push((lb.end, local(e, offset_s), false));
    }
    if a.kind == AlertKind::Overspeed {
        let num = |k: &str| a.details.get(k).and_then(Value::as_f64);
        if let (Some(max), Some(limit)) = (num("max_speed_kmh"), num("limit_kmh")) {
            let band = a.severity.map(|b| match l {
                Language::Vi => format!(", mức {b}"),
                Language::En => format!(", band {b}"),
            });
            let text = match l {
                Language::Vi => format!(
                    "tối đa {max:.0} km/h, giới hạn {limit:.0} km/h{}",
                    band.unwrap_or_default()
                ),
                Language::En => format!(
                    "max {max:.0} km/h, limit {limit:.0} km/h{}",
                    band.unwrap_or_default()
                ),
            };
            r.push((lb.speed, text, false));
        }
    }
    r.push((lb.position, format!("{:.5}, {:.5}", a.lat, a.lon), false));
    if let Some(link) = a.map_link(map_base) {
        r.push((lb.map, link, true));
    }
    if let Some(why) = &a.retraction_reason {
        r.push((lb.reason, why.clone(), false));
    }
    r.push((lb.alert, a.key(), false));
    r
}

/// HTML-escapes text (element content and quoted attribute values).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Renders one alert, or a digest of several (in the order given), for `cooperative`.
pub fn render(
    alerts: &[AlertView],
    cooperative: &str,
    l: Language,
    offset_s: i32,
    map_base: &str,
) -> Message {
    let lb = labels(l);
    let subject = match alerts {
        [a] => format!("[{cooperative}] {}", headline(a, l)),
        many => match l {
            Language::Vi => format!("[{cooperative}] {}: {} sự kiện", lb.digest, many.len()),
            Language::En => format!("[{cooperative}] {}: {} events", lb.digest, many.len()),
        },
    };
    let mut text = String::new();
    let mut html = format!(
        "<!DOCTYPE html><html lang=\"{}\"><head><meta charset=\"utf-8\"><title>{}</title></head><body>",
        match l {
            Language::Vi => "vi",
            Language::En => "en",
        },
        escape_html(&subject)
    );
    for (i, a) in alerts.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        let _ = writeln!(text, "{}", headline(a, l));
        let _ = write!(html, "<h2>{}</h2><table>", escape_html(&headline(a, l)));
        for (label, value, link) in rows(a, l, offset_s, map_base) {
            let _ = writeln!(text, "  {label}: {value}");
            let v = escape_html(&value);
            let cell = if link {
                format!("<a href=\"{v}\">{v}</a>")
            } else {
                v
            };
            let _ = write!(
                html,
                "<tr><th align=\"left\">{}</th><td>{cell}</td></tr>",
                escape_html(label)
            );
        }
        html.push_str("</table>");
    }
    let _ = write!(text, "\n-- \n{}\n", lb.footer);
    let _ = write!(
        html,
        "<hr><p><small>{}</small></p></body></html>",
        escape_html(lb.footer)
    );
    Message {
        subject,
        text,
        html,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overspeed() -> AlertView {
        AlertView {
            id: "0f3a".into(),
            revision: 2,
            vehicle: "61C-207.45".into(),
            cooperative: "HTX-TDM".into(),
            driver: Some("079123456789".into()),
            kind: AlertKind::Overspeed,
            level: Level::Violation,
            status: "closed".into(),
            episode_status: "closed".into(),
            severity: Some(2),
            start: "2026-11-24T01:15:03Z".parse().unwrap(),
            end: Some("2026-11-24T01:16:00Z".parse().unwrap()),
            lat: 10.98,
            lon: 106.65,
            details: json!({"max_speed_kmh": 85.2, "limit_kmh": 70}),
            retraction_reason: None,
        }
    }

    #[test]
    fn one_alert_in_vietnamese() {
        let m = render(
            &[overspeed()],
            "HTX-TDM",
            Language::Vi,
            7 * 3600,
            "https://fleet.example.vn/",
        );
        assert_eq!(
            m.subject,
            "[HTX-TDM] Vi phạm: Quá tốc độ — 61C-207.45 (đã kết thúc)"
        );
        assert!(
            m.text.contains("Bắt đầu: 24/11/2026 08:15:03 (UTC+07:00)"),
            "{}",
            m.text
        );
        assert!(
            m.text
                .contains("Tốc độ: tối đa 85 km/h, giới hạn 70 km/h, mức 2"),
            "{}",
            m.text
        );
        assert!(m.text.contains("Lái xe: 079123456789"));
        assert!(m.text.contains("Mã cảnh báo: 0f3a:2"));
        let link = "https://fleet.example.vn/map#vehicle=61C-207.45&t=2026-11-24T01%3A15%3A03Z&lat=10.980000&lon=106.650000";
        assert!(m.text.contains(link), "{}", m.text);
        // In HTML the link's '&' are escaped.
        let href = format!("<a href=\"{}\">", escape_html(link));
        assert!(
            href.contains("&amp;t=") && m.html.contains(&href),
            "{}",
            m.html
        );
        assert!(m.html.starts_with("<!DOCTYPE html><html lang=\"vi\">"));
    }

    #[test]
    fn one_alert_in_english_and_a_digest() {
        let m = render(&[overspeed()], "HTX-TDM", Language::En, 7 * 3600, "");
        assert_eq!(
            m.subject,
            "[HTX-TDM] Violation: Overspeed — 61C-207.45 (ended)"
        );
        assert!(m.text.contains("Speed: max 85 km/h, limit 70 km/h, band 2"));
        assert!(!m.text.contains("Map:"), "no base, no link");
        let zone = AlertView {
            kind: AlertKind::ZoneEnter,
            level: Level::Info,
            severity: None,
            details: json!({"zone_id": "DEPOT"}),
            ..overspeed()
        };
        let d = render(&[zone.clone(), zone], "HTX-TDM", Language::Vi, 7 * 3600, "");
        assert_eq!(d.subject, "[HTX-TDM] Tổng hợp: 2 sự kiện");
        assert_eq!(
            d.text.matches("Thông tin: Vào vùng — 61C-207.45").count(),
            2
        );
    }

    #[test]
    fn html_is_escaped() {
        let a = AlertView {
            vehicle: "<b>".into(),
            retraction_reason: Some("\"x\" & 'y'".into()),
            status: "retracted".into(),
            ..overspeed()
        };
        let m = render(&[a], "HTX-TDM", Language::En, 0, "");
        assert!(!m.html.contains("<b>") && m.html.contains("&lt;b&gt;"));
        assert!(m.html.contains("&quot;x&quot; &amp; &#39;y&#39;"));
        assert!(m.subject.ends_with("(retracted)"));
    }
}
