//! GTFS-realtime feeds of the live fleet: vehicle positions (with the trip each bus
//! runs) and trip updates (observed stop times, and the current delay carried forward
//! to the stops ahead). Protobuf (`application/x-protobuf`) or, with `?format=json`,
//! the same messages as JSON for people.

pub mod proto;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use prost::Message;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::AppState;
use crate::domain::live::LiveTrip;
use crate::geo::Schedule;
use proto::trip_update::stop_time_update::ScheduleRelationship as StopRel;
use proto::trip_update::{StopTimeEvent, StopTimeUpdate};
use proto::vehicle_position::VehicleStopStatus;

/// Default age of the newest position of a vehicle in the feeds, seconds.
pub const DEFAULT_MAX_AGE_S: i64 = 1_800;
/// Largest `max_age_s`.
pub const MAX_MAX_AGE_S: i64 = 86_400;

/// A vehicle of the feeds: its newest position and the trip it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RtVehicle {
    /// Vehicle id.
    pub vehicle_id: String,
    /// Registration plate.
    pub plate: Option<String>,
    /// Time of the newest fix.
    pub ts: DateTime<Utc>,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Speed, km/h.
    pub speed_kmh: Option<f32>,
    /// Heading, degrees clockwise from North.
    pub heading_deg: Option<f32>,
    /// The scheduled trip it runs.
    pub trip: Option<LiveTrip>,
}

/// A stop of the running trip already resolved (a stored stop event).
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedStop {
    /// `stop_sequence`.
    pub stop_sequence: u32,
    /// `stop_id`.
    pub stop_id: String,
    /// Observed arrival.
    pub arrival: Option<DateTime<Utc>>,
    /// Observed departure.
    pub departure: Option<DateTime<Utc>>,
    /// Scheduled arrival.
    pub scheduled_arrival: DateTime<Utc>,
    /// Scheduled departure.
    pub scheduled_departure: DateTime<Utc>,
    /// Passed without stopping.
    pub skipped: bool,
}

fn header(now: DateTime<Utc>) -> proto::FeedHeader {
    proto::FeedHeader {
        gtfs_realtime_version: "2.0".into(),
        incrementality: Some(proto::Incrementality::FullDataset as i32),
        timestamp: Some(now.timestamp().max(0) as u64),
    }
}

/// `HH:MM:SS` local, hours past 24 for a run after midnight of its service date.
fn start_time(t: &LiveTrip, utc_offset_s: i32) -> String {
    let midnight = t.service_date.and_hms_opt(0, 0, 0).unwrap_or_default();
    let local = t.scheduled_start.naive_utc() + chrono::Duration::seconds(i64::from(utc_offset_s));
    let s = (local - midnight).num_seconds().max(0);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn descriptor(t: &LiveTrip, utc_offset_s: i32) -> proto::TripDescriptor {
    proto::TripDescriptor {
        trip_id: Some(t.trip_id.clone()),
        route_id: Some(t.route_id.clone()),
        direction_id: t.direction.map(u32::from),
        start_time: Some(start_time(t, utc_offset_s)),
        start_date: Some(t.service_date.format("%Y%m%d").to_string()),
        schedule_relationship: Some(proto::trip_descriptor::ScheduleRelationship::Scheduled as i32),
    }
}

fn vehicle_descriptor(v: &RtVehicle) -> proto::VehicleDescriptor {
    proto::VehicleDescriptor {
        id: Some(v.vehicle_id.clone()),
        label: v.plate.clone(),
        license_plate: v.plate.clone(),
    }
}

/// The vehicle-positions feed of `vehicles` at `now` (local time `utc_offset_s` east
/// of UTC for the trips' start times).
pub fn vehicle_positions(
    vehicles: &[RtVehicle],
    now: DateTime<Utc>,
    utc_offset_s: i32,
) -> proto::FeedMessage {
    let entity = vehicles
        .iter()
        .map(|v| {
            let trip = v.trip.as_ref();
            // Standing (under 3 km/h, as the live list) is at the stop when the bus is
            // there; the rules' next stop is the one it has not yet left.
            let stopped = v
                .speed_kmh
                .is_some_and(|k| k <= super::vehicles::MOVING_KMH);
            let status = trip.and_then(|t| t.next_stop_sequence).map(|_| {
                if stopped {
                    VehicleStopStatus::StoppedAt
                } else {
                    VehicleStopStatus::InTransitTo
                }
            });
            proto::FeedEntity {
                id: v.vehicle_id.clone(),
                is_deleted: None,
                trip_update: None,
                vehicle: Some(proto::VehiclePosition {
                    trip: trip.map(|t| descriptor(t, utc_offset_s)),
                    vehicle: Some(vehicle_descriptor(v)),
                    position: Some(proto::Position {
                        latitude: v.lat as f32,
                        longitude: v.lon as f32,
                        bearing: v.heading_deg,
                        odometer: None,
                        speed: v.speed_kmh.map(|k| k / 3.6),
                    }),
                    current_stop_sequence: trip.and_then(|t| t.next_stop_sequence),
                    stop_id: trip.and_then(|t| t.next_stop_id.clone()),
                    current_status: status.map(|s| s as i32),
                    timestamp: Some(v.ts.timestamp().max(0) as u64),
                }),
            }
        })
        .collect();
    proto::FeedMessage {
        header: header(now),
        entity,
    }
}

fn event(at: DateTime<Utc>, scheduled: DateTime<Utc>, uncertainty: i32) -> StopTimeEvent {
    StopTimeEvent {
        delay: Some((at - scheduled).num_seconds() as i32),
        time: Some(at.timestamp()),
        uncertainty: Some(uncertainty),
    }
}

/// The trip update of `v`'s running trip: the stops resolved (`observed`, from stop
/// events) as observed, the stops ahead at their scheduled time plus the current
/// delay. `None` when `v` runs no trip of `sched`.
pub fn trip_update(
    v: &RtVehicle,
    sched: &Schedule,
    observed: &[ObservedStop],
    utc_offset_s: i32,
) -> Option<proto::FeedEntity> {
    let t = v.trip.as_ref()?;
    let (_, st) = sched.trip(&t.trip_id)?;
    let first = st.first_departure_s();
    // The run's times: the template's, moved to this run's scheduled start.
    let at = |secs: i32| t.scheduled_start + chrono::Duration::seconds(i64::from(secs - first));
    let next_seq = t.next_stop_sequence.unwrap_or(u32::MAX);
    let mut updates = Vec::with_capacity(st.stop_times.len());
    for s in &st.stop_times {
        let stop_id = sched.stops.get(s.stop as usize).map(|p| p.id.clone());
        if s.seq < next_seq {
            let Some(o) = observed.iter().find(|o| o.stop_sequence == s.seq) else {
                continue;
            };
            updates.push(StopTimeUpdate {
                stop_sequence: Some(s.seq),
                stop_id: Some(o.stop_id.clone()),
                arrival: o.arrival.map(|a| event(a, o.scheduled_arrival, 0)),
                departure: o.departure.map(|d| event(d, o.scheduled_departure, 0)),
                schedule_relationship: Some(if o.skipped {
                    StopRel::Skipped
                } else {
                    StopRel::Scheduled
                } as i32),
            });
            continue;
        }
        let delay = i64::from(t.delay_s.unwrap_or(0));
        let predict = |secs: i32| {
            let sch = at(secs);
            event(sch + chrono::Duration::seconds(delay), sch, 60)
        };
        updates.push(StopTimeUpdate {
            stop_sequence: Some(s.seq),
            stop_id,
            arrival: Some(predict(s.arrival_s)),
            departure: Some(predict(s.departure_s)),
            schedule_relationship: Some(StopRel::Scheduled as i32),
        });
    }
    Some(proto::FeedEntity {
        id: format!("{}:{}", v.vehicle_id, t.trip_id),
        is_deleted: None,
        trip_update: Some(proto::TripUpdate {
            trip: descriptor(t, utc_offset_s),
            vehicle: Some(vehicle_descriptor(v)),
            stop_time_update: updates,
            timestamp: Some(v.ts.timestamp().max(0) as u64),
            delay: t.delay_s,
        }),
        vehicle: None,
    })
}

/// Query of both feeds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// `protobuf` (default) or `json`.
    pub format: Option<String>,
    /// Vehicles whose newest fix is at most this old, seconds (default 1,800).
    pub max_age_s: Option<i64>,
}

impl FeedQuery {
    fn json(&self) -> ApiResult<bool> {
        match self.format.as_deref() {
            None | Some("protobuf") | Some("pb") => Ok(false),
            Some("json") => Ok(true),
            Some(_) => Err(ApiError::bad("format must be protobuf or json")),
        }
    }

    fn max_age_s(&self) -> ApiResult<i64> {
        let a = self.max_age_s.unwrap_or(DEFAULT_MAX_AGE_S);
        if !(1..=MAX_MAX_AGE_S).contains(&a) {
            return Err(ApiError::bad(format!(
                "max_age_s must be between 1 and {MAX_MAX_AGE_S}"
            )));
        }
        Ok(a)
    }
}

/// The vehicles of `scope` with a fix in the last `max_age_s`, by id.
async fn recent(
    db: &tokio_postgres::Client,
    scope: Option<&str>,
    max_age_s: i64,
) -> Result<Vec<RtVehicle>, tokio_postgres::Error> {
    let since = Utc::now() - chrono::Duration::seconds(max_age_s);
    let rows = db
        .query(
            "SELECT vehicle_id, plate, last_fix_ts, last_lat, last_lon, last_speed_kmh,
                    last_heading_deg, live_trip_id, live_trip_route_id, live_trip_service_date,
                    live_trip_start_ts, live_trip_direction, live_trip_headsign,
                    live_next_stop_id, live_next_stop_sequence, live_next_stop_name,
                    live_delay_s, live_trip_confidence
             FROM vehicles
             WHERE ($1::text IS NULL OR cooperative_id = $1)
               AND last_fix_ts >= $2 AND last_lat IS NOT NULL AND last_lon IS NOT NULL
             ORDER BY vehicle_id COLLATE \"C\"",
            &[&scope, &since],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| RtVehicle {
            vehicle_id: r.get(0),
            plate: r.get(1),
            ts: r.get(2),
            lat: r.get(3),
            lon: r.get(4),
            speed_kmh: r.get(5),
            heading_deg: r.get(6),
            trip: super::vehicles::live_trip_at(r, 7),
        })
        .collect())
}

fn respond(msg: &proto::FeedMessage, json: bool) -> Response {
    if json {
        return axum::Json(feed_json(msg)).into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        msg.encode_to_vec(),
    )
        .into_response()
}

/// `GET /api/v1/gtfs-rt/vehicle-positions`.
pub async fn vehicle_positions_feed(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let (json, age) = (q.json()?, q.max_age_s()?);
    let db = s.db.get().await?;
    let vehicles = recent(&db, caller.scope(), age).await?;
    let msg = vehicle_positions(&vehicles, Utc::now(), s.settings.rules.utc_offset.seconds());
    Ok(respond(&msg, json))
}

/// `GET /api/v1/gtfs-rt/trip-updates`.
pub async fn trip_updates_feed(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let (json, age) = (q.json()?, q.max_age_s()?);
    let db = s.db.get().await?;
    let running: Vec<RtVehicle> = recent(&db, caller.scope(), age)
        .await?
        .into_iter()
        .filter(|v| v.trip.is_some())
        .collect();
    let ids: Vec<&str> = running.iter().map(|v| v.vehicle_id.as_str()).collect();
    let trips: Vec<&str> = running
        .iter()
        .filter_map(|v| v.trip.as_ref().map(|t| t.trip_id.as_str()))
        .collect();
    let dates: Vec<NaiveDate> = running
        .iter()
        .filter_map(|v| v.trip.as_ref().map(|t| t.service_date))
        .collect();
    let starts: Vec<DateTime<Utc>> = running
        .iter()
        .filter_map(|v| v.trip.as_ref().map(|t| t.scheduled_start))
        .collect();
    // The stop events of each running run (a run's start bounds its stops: an earlier
    // run of the same frequency-based trip that day has earlier ones).
    let rows = db
        .query(
            "SELECT e.vehicle_id, e.stop_sequence, e.stop_id, e.arrival_ts, e.departure_ts,
                    e.scheduled_arrival, e.scheduled_departure, e.skipped
             FROM unnest($1::text[], $2::text[], $3::date[], $4::timestamptz[])
                  AS r(vehicle, trip, day, start)
             JOIN stop_events e ON e.vehicle_id = r.vehicle AND e.trip_id = r.trip
                               AND e.service_date = r.day
                               AND e.scheduled_departure >= r.start
             ORDER BY e.vehicle_id, e.stop_sequence",
            &[&ids, &trips, &dates, &starts],
        )
        .await?;
    let mut by_vehicle: std::collections::HashMap<String, Vec<ObservedStop>> = Default::default();
    for r in &rows {
        by_vehicle.entry(r.get(0)).or_default().push(ObservedStop {
            stop_sequence: r.get::<_, i32>(1).max(0) as u32,
            stop_id: r.get(2),
            arrival: r.get(3),
            departure: r.get(4),
            scheduled_arrival: r.get(5),
            scheduled_departure: r.get(6),
            skipped: r.get(7),
        });
    }
    let geo = s.geo.borrow().clone();
    let offset = s.settings.rules.utc_offset.seconds();
    let entity = running
        .iter()
        .filter_map(|v| {
            let t = v.trip.as_ref()?;
            let sched = geo.schedule_for(&t.route_id)?;
            let seen = by_vehicle.get(&v.vehicle_id).map_or(&[][..], |o| &o[..]);
            trip_update(v, sched, seen, offset)
        })
        .collect();
    let msg = proto::FeedMessage {
        header: header(Utc::now()),
        entity,
    };
    Ok(respond(&msg, json))
}

fn opt<T: serde::Serialize>(m: &mut serde_json::Map<String, Value>, k: &str, v: Option<T>) {
    if let Some(v) = v {
        m.insert(k.into(), json!(v));
    }
}

fn descriptor_json(t: &proto::TripDescriptor) -> Value {
    let mut m = serde_json::Map::new();
    opt(&mut m, "trip_id", t.trip_id.as_ref());
    opt(&mut m, "route_id", t.route_id.as_ref());
    opt(&mut m, "direction_id", t.direction_id);
    opt(&mut m, "start_time", t.start_time.as_ref());
    opt(&mut m, "start_date", t.start_date.as_ref());
    opt(
        &mut m,
        "schedule_relationship",
        t.schedule_relationship
            .and_then(|r| proto::trip_descriptor::ScheduleRelationship::try_from(r).ok())
            .map(|r| r.as_str_name()),
    );
    Value::Object(m)
}

fn vehicle_json(v: &proto::VehicleDescriptor) -> Value {
    let mut m = serde_json::Map::new();
    opt(&mut m, "id", v.id.as_ref());
    opt(&mut m, "label", v.label.as_ref());
    opt(&mut m, "license_plate", v.license_plate.as_ref());
    Value::Object(m)
}

fn event_json(e: &StopTimeEvent) -> Value {
    let mut m = serde_json::Map::new();
    opt(&mut m, "delay", e.delay);
    opt(&mut m, "time", e.time);
    opt(&mut m, "uncertainty", e.uncertainty);
    Value::Object(m)
}

/// The feed as JSON: the messages' field names, enums by name, as the protobuf JSON
/// mapping of the official tools (with snake_case names) gives them.
pub fn feed_json(msg: &proto::FeedMessage) -> Value {
    let h = &msg.header;
    let entity: Vec<Value> = msg
        .entity
        .iter()
        .map(|e| {
            let mut m = serde_json::Map::new();
            m.insert("id".into(), json!(e.id));
            if let Some(v) = &e.vehicle {
                let mut p = serde_json::Map::new();
                opt(&mut p, "trip", v.trip.as_ref().map(descriptor_json));
                opt(&mut p, "vehicle", v.vehicle.as_ref().map(vehicle_json));
                opt(
                    &mut p,
                    "position",
                    v.position.as_ref().map(|pos| {
                        let mut q = serde_json::Map::new();
                        q.insert("latitude".into(), json!(pos.latitude));
                        q.insert("longitude".into(), json!(pos.longitude));
                        opt(&mut q, "bearing", pos.bearing);
                        opt(&mut q, "speed", pos.speed);
                        Value::Object(q)
                    }),
                );
                opt(&mut p, "current_stop_sequence", v.current_stop_sequence);
                opt(&mut p, "stop_id", v.stop_id.as_ref());
                opt(
                    &mut p,
                    "current_status",
                    v.current_status
                        .and_then(|s| VehicleStopStatus::try_from(s).ok())
                        .map(|s| s.as_str_name()),
                );
                opt(&mut p, "timestamp", v.timestamp);
                m.insert("vehicle".into(), Value::Object(p));
            }
            if let Some(u) = &e.trip_update {
                let mut p = serde_json::Map::new();
                p.insert("trip".into(), descriptor_json(&u.trip));
                opt(&mut p, "vehicle", u.vehicle.as_ref().map(vehicle_json));
                let stus: Vec<Value> = u
                    .stop_time_update
                    .iter()
                    .map(|s| {
                        let mut q = serde_json::Map::new();
                        opt(&mut q, "stop_sequence", s.stop_sequence);
                        opt(&mut q, "stop_id", s.stop_id.as_ref());
                        opt(&mut q, "arrival", s.arrival.as_ref().map(event_json));
                        opt(&mut q, "departure", s.departure.as_ref().map(event_json));
                        opt(
                            &mut q,
                            "schedule_relationship",
                            s.schedule_relationship
                                .and_then(|r| StopRel::try_from(r).ok())
                                .map(|r| r.as_str_name()),
                        );
                        Value::Object(q)
                    })
                    .collect();
                p.insert("stop_time_update".into(), json!(stus));
                opt(&mut p, "timestamp", u.timestamp);
                opt(&mut p, "delay", u.delay);
                m.insert("trip_update".into(), Value::Object(p));
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "header": {
            "gtfs_realtime_version": h.gtfs_realtime_version,
            "incrementality": h.incrementality
                .and_then(|i| proto::Incrementality::try_from(i).ok())
                .map(|i| i.as_str_name()),
            "timestamp": h.timestamp,
        },
        "entity": entity,
    })
}
