//! Restricted zones and geofences. A stay in a `restricted` zone that concerns the
//! vehicle's class is a violation when it begins during banned local hours (or, with
//! `restricted_trigger = inside`, as soon as any fix inside falls in them); one alert
//! per stay, closed at the first fix outside. Entering and leaving depots, terminals
//! and ports are Info events.

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::alert::{AlertKind, AlertStatus, Level};
use super::config::RestrictedTrigger;
use super::state::{Ctx, Mark, Sample};
use crate::geo::{GeoIndex, Zone, ZoneKey, ZoneKind};

/// The vehicle is inside a zone that has events or may be banned to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stay {
    key: u64,
    /// The open restricted-zone violation of this stay.
    violation: Option<Mark>,
}

impl Stay {
    /// Start (ms) of the stay's open restricted-zone violation.
    pub(crate) fn violation_ms(&self) -> Option<i64> {
        self.violation.map(|m| m.ts_ms)
    }
}

/// Feeds fix `s`; `here` are the zones containing it that concern the vehicle's class
/// and have events or bans, sorted by key.
pub(crate) fn update(
    ctx: &mut Ctx<'_>,
    stays: &mut Vec<Stay>,
    s: &Sample,
    here: &[(ZoneKey, &Zone)],
    geo: &GeoIndex,
) {
    let minute = local_minute(s.ts_ms, ctx.p.offset_ms);
    // Exits first, in stay order.
    let mut i = 0;
    while i < stays.len() {
        if here.iter().any(|(k, _)| k.0 == stays[i].key) {
            i += 1;
            continue;
        }
        let stay = stays.remove(i);
        let zone = geo.zone(ZoneKey(stay.key));
        if let Some(start) = stay.violation {
            restricted(ctx, zone, stay.key, start, Some(s.ts_ms), minute);
        }
        if let Some(z) = zone.filter(|z| z.kind.has_events()) {
            event(ctx, AlertKind::ZoneExit, z, s);
        }
    }
    for &(key, zone) in here {
        let stay = match stays.iter().position(|st| st.key == key.0) {
            Some(i) => &mut stays[i],
            None => {
                if zone.kind.has_events() {
                    event(ctx, AlertKind::ZoneEnter, zone, s);
                }
                stays.push(Stay {
                    key: key.0,
                    violation: None,
                });
                let last = stays.len() - 1;
                let st = &mut stays[last];
                if zone.kind == ZoneKind::Restricted && zone.banned_at(minute) {
                    st.violation = Some(s.mark());
                    restricted(ctx, Some(zone), key.0, s.mark(), None, minute);
                }
                continue;
            }
        };
        if ctx.p.restricted_trigger == RestrictedTrigger::Inside
            && zone.kind == ZoneKind::Restricted
            && stay.violation.is_none()
            && zone.banned_at(minute)
        {
            stay.violation = Some(s.mark());
            restricted(ctx, Some(zone), key.0, s.mark(), None, minute);
        }
    }
}

/// Local minute of the day (0..1440).
fn local_minute(ts_ms: i64, offset_ms: i64) -> u16 {
    ((ts_ms + offset_ms).rem_euclid(86_400_000) / 60_000) as u16
}

fn event(ctx: &mut Ctx<'_>, kind: AlertKind, zone: &Zone, s: &Sample) {
    let details =
        json!({ "zone_id": zone.id, "zone_name": zone.name, "zone_kind": zone.kind.as_str() });
    let mut d = ctx.draft(kind, Level::Info, AlertStatus::Closed, s.mark(), details);
    d.end_ms = Some(s.ts_ms);
    d.tag = &zone.id;
    ctx.push(d);
}

/// The violation of a stay; `end_ms` set when closing. `zone` is `None` when a reload
/// removed the zone during the stay (the alert is still closed, by key).
fn restricted(
    ctx: &mut Ctx<'_>,
    zone: Option<&Zone>,
    key: u64,
    start: Mark,
    end_ms: Option<i64>,
    minute: u16,
) {
    let key_hex = format!("{key:016x}");
    let zone_id = zone.map_or(key_hex.as_str(), |z| z.id.as_str());
    let local = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
    let start_minute = local_minute(start.ts_ms, ctx.p.offset_ms);
    let mut details = json!({
        "zone_id": zone_id,
        "zone_name": zone.and_then(|z| z.name.clone()),
        "banned_hours": zone.map(|z| z.banned_hours.iter().map(ToString::to_string).collect::<Vec<_>>()),
        "local_time": local(start_minute),
    });
    let status = if let Some(end) = end_ms {
        details["exit_local_time"] = json!(local(minute));
        details["duration_s"] = json!((end - start.ts_ms) as f64 / 1000.0);
        AlertStatus::Closed
    } else {
        AlertStatus::Open
    };
    let mut d = ctx.draft(
        AlertKind::RestrictedZone,
        Level::Violation,
        status,
        start,
        details,
    );
    d.end_ms = end_ms;
    // The tag is the zone key, not its id: the id may be unknown after a reload.
    d.tag = &key_hex;
    ctx.push(d);
}
