//! GTFS schedule model: trips (route, service, shape, direction), their stop times
//! (seconds after the service day's midnight, past 24:00:00 allowed), stops, the
//! services of calendar.txt and calendar_dates.txt, and frequencies.txt. Each trip's
//! stops are projected on its shape (shape_dist_traveled is not needed: its units vary
//! between feeds); a trip without a shape gets one built from its stops. Read with the
//! same tables as [`super::gtfs`], errors naming file and line.

use std::collections::HashMap;
use std::path::Path;

use ::geo::{Coord, LineString};
use chrono::{Datelike, NaiveDate};

use super::error::GeoError;
use super::frame::LocalFrame;
use super::gtfs::{coord, read_shapes, Row, Table};
use super::route::{Route, RouteIndex, RouteLocation};
use crate::domain::FastMap;

/// A stop of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct StopPoint {
    /// `stop_id`.
    pub id: String,
    /// `stop_name`, when given.
    pub name: Option<String>,
    /// Longitude, degrees (`None` for stations and nodes without coordinates).
    pub lon: Option<f64>,
    /// Latitude, degrees.
    pub lat: Option<f64>,
}

/// One stop of a trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopTime {
    /// Position of the stop in [`Schedule::stops`].
    pub stop: u32,
    /// `stop_sequence` as in the feed (need not start at 1 nor be contiguous).
    pub seq: u32,
    /// Scheduled arrival, seconds after the service day's midnight (interpolated by
    /// distance for stops without times).
    pub arrival_s: i32,
    /// Scheduled departure, seconds after the service day's midnight.
    pub departure_s: i32,
    /// Distance of the stop along the trip's shape, metres (projected).
    pub dist_m: f64,
}

/// A headway period of a frequency-based trip: its stop times are a template shifted
/// to start at `start_s`, `start_s + headway_s`, ... before `end_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frequency {
    /// First departure of the period, seconds after midnight.
    pub start_s: i32,
    /// End of the period (no departure at or after it), seconds after midnight.
    pub end_s: i32,
    /// Seconds between departures.
    pub headway_s: i32,
    /// `exact_times = 1`: departures exactly on the headway; 0: about every headway.
    pub exact_times: bool,
}

/// A trip of the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledTrip {
    /// `trip_id`.
    pub id: String,
    /// `route_id`.
    pub route: String,
    /// Position of its service in [`Schedule::services`].
    pub service: u32,
    /// Position of its shape in [`Schedule::shapes`].
    pub shape: u32,
    /// `direction_id` (0 or 1) when given.
    pub direction: Option<u8>,
    /// `trip_headsign` when given.
    pub headsign: Option<String>,
    /// Its stops in `stop_sequence` order.
    pub stop_times: Vec<StopTime>,
    /// Headway periods (frequencies.txt); empty for a trip run once as scheduled.
    pub frequencies: Vec<Frequency>,
}

impl ScheduledTrip {
    /// First scheduled departure, seconds after midnight (of the template for
    /// frequency-based trips).
    pub fn first_departure_s(&self) -> i32 {
        self.stop_times.first().map_or(0, |s| s.departure_s)
    }

    /// Scheduled time at `dist_m` along the shape, seconds after midnight,
    /// interpolated between the stops around it (dwell at a stop counts as there).
    pub fn time_at_s(&self, dist_m: f64) -> f64 {
        let st = &self.stop_times;
        let Some(first) = st.first() else {
            return 0.0;
        };
        if dist_m <= first.dist_m {
            return f64::from(first.departure_s);
        }
        for w in st.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if dist_m <= b.dist_m {
                let span = b.dist_m - a.dist_m;
                let f = if span > 0.0 {
                    (dist_m - a.dist_m) / span
                } else {
                    1.0
                };
                return f64::from(a.departure_s) + f * f64::from(b.arrival_s - a.departure_s);
            }
        }
        f64::from(st[st.len() - 1].arrival_s)
    }
}

/// A service (`service_id`): the local dates its trips run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Service {
    /// `service_id`.
    pub id: String,
    /// Weekdays from calendar.txt, bit 0 = Monday .. bit 6 = Sunday.
    pub weekdays: u8,
    /// calendar.txt date range (inclusive); `None` when the service has no row there.
    pub range: Option<(NaiveDate, NaiveDate)>,
    /// calendar_dates.txt additions (exception_type 1), sorted.
    pub added: Vec<NaiveDate>,
    /// calendar_dates.txt removals (exception_type 2), sorted.
    pub removed: Vec<NaiveDate>,
    /// The feed has neither calendar file: the service runs every day.
    pub always: bool,
}

impl Service {
    /// Whether the service runs on local date `d`.
    pub fn active_on(&self, d: NaiveDate) -> bool {
        if self.removed.binary_search(&d).is_ok() {
            return false;
        }
        if self.always || self.added.binary_search(&d).is_ok() {
            return true;
        }
        self.range.is_some_and(|(a, b)| {
            a <= d && d <= b && self.weekdays & (1 << d.weekday().num_days_from_monday()) != 0
        })
    }
}

/// A trip's line, ready for tracking: its segments in a local plane and the index for
/// a first, global lookup.
#[derive(Debug)]
pub struct TripShape {
    /// `shape_id`, or `stops:<first trip id>` for a shape built from stops.
    pub id: String,
    /// The route it belongs to.
    pub route: String,
    /// Shape indexed as a one-part route named after the route (so an off-route
    /// alert on it keeps the route's id): global lookups and off-route.
    pub index: RouteIndex,
    frame: LocalFrame,
    /// Segments `[ax, ay, bx, by]` in plane metres, in order along the shape.
    segs: Vec<[f64; 4]>,
    /// Distance along the shape at each segment start, metres.
    seg_start_m: Vec<f64>,
    /// Total length, metres.
    pub length_m: f64,
    /// Shortest distance from the first to the second stop of the trips using it,
    /// metres (a match is decided before the bus reaches the second stop).
    pub first_gap_m: f64,
}

/// Where a point is on a [`TripShape`] found by [`TripShape::track`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapeFix {
    /// Distance to the shape, metres.
    pub distance_m: f64,
    /// Distance along the shape, metres.
    pub progress_m: f64,
    /// Segment position (pass it back to the next `track`).
    pub seg: u32,
}

/// How far ahead of the last known position `track` searches first, metres.
const TRACK_AHEAD_M: f64 = 2_000.0;
/// How far behind it (GPS noise, a bus backing up), metres.
const TRACK_BEHIND_M: f64 = 150.0;
/// Moving back along the shape by less than this is GPS noise, metres.
const BACK_NOISE_M: f64 = 20.0;

impl TripShape {
    fn build(
        id: String,
        route: &str,
        line: Vec<Coord<f64>>,
        terminals: Vec<Coord<f64>>,
        terminal_radius_m: Option<f64>,
    ) -> Result<Self, String> {
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for c in &line {
            x0 = x0.min(c.x);
            x1 = x1.max(c.x);
            y0 = y0.min(c.y);
            y1 = y1.max(c.y);
        }
        let frame = LocalFrame::new((x0 + x1) * 0.5, (y0 + y1) * 0.5);
        let mut segs = Vec::with_capacity(line.len());
        let mut seg_start_m = Vec::with_capacity(line.len());
        let mut along = 0.0;
        for w in line.windows(2) {
            let (a, b) = (frame.to_xy(w[0].x, w[0].y), frame.to_xy(w[1].x, w[1].y));
            let len = (b[0] - a[0]).hypot(b[1] - a[1]);
            if len <= 0.0 {
                continue;
            }
            segs.push([a[0], a[1], b[0], b[1]]);
            seg_start_m.push(along);
            along += len;
        }
        let index = RouteIndex::build(Route {
            id: route.to_string(),
            name: Some(id.clone()),
            corridor_m: None,
            parts: vec![LineString(line)],
            terminals,
            terminal_radius_m,
        })?;
        Ok(Self {
            id,
            route: route.to_string(),
            index,
            frame,
            segs,
            seg_start_m,
            length_m: along,
            first_gap_m: f64::INFINITY,
        })
    }

    /// Nearest point to `(lon, lat)` on the segments from `from_seg` on whose start
    /// is at least `from_m` along (a monotone projection for stops); the first segment
    /// within `slack_m` of the nearest distance wins, so a loop's start is not taken
    /// for its end.
    fn project_from(
        &self,
        lon: f64,
        lat: f64,
        from_seg: usize,
        from_m: f64,
        slack_m: f64,
    ) -> ShapeFix {
        let q = self.frame.to_xy(lon, lat);
        let mut cands: Vec<(f64, f64, usize)> = Vec::new();
        let mut best = f64::INFINITY;
        for i in from_seg..self.segs.len() {
            let (d, t) = seg_dist(&self.segs[i], q);
            let len = seg_len(&self.segs[i]);
            let p = (self.seg_start_m[i] + t * len).max(from_m);
            best = best.min(d);
            cands.push((d, p, i));
        }
        cands.into_iter().find(|c| c.0 <= best + slack_m).map_or(
            ShapeFix {
                distance_m: f64::INFINITY,
                progress_m: from_m,
                seg: from_seg as u32,
            },
            |(d, p, i)| ShapeFix {
                distance_m: d,
                progress_m: p,
                seg: i as u32,
            },
        )
    }

    /// Position of `(lon, lat)` near the last one (segment `seg`, `progress_m`
    /// along): the nearest segment between [`TRACK_BEHIND_M`] behind and
    /// [`TRACK_AHEAD_M`] ahead, a position behind the last one counting as farther
    /// (beyond GPS noise), so a shape that comes back along the same street is
    /// followed leg by leg. A few segments per call.
    pub fn track(&self, lon: f64, lat: f64, seg: u32, progress_m: f64) -> ShapeFix {
        let q = self.frame.to_xy(lon, lat);
        let n = self.segs.len();
        let seg = (seg as usize).min(n.saturating_sub(1));
        let here = self.seg_start_m[seg];
        let mut lo = seg;
        while lo > 0 && here - self.seg_start_m[lo - 1] <= TRACK_BEHIND_M {
            lo -= 1;
        }
        let mut best = (f64::INFINITY, f64::INFINITY, 0.0, seg);
        for i in lo..n {
            if self.seg_start_m[i] - progress_m.max(here) > TRACK_AHEAD_M {
                break;
            }
            let (d, t) = seg_dist(&self.segs[i], q);
            let p = self.seg_start_m[i] + t * seg_len(&self.segs[i]);
            let score = d + (progress_m - p - BACK_NOISE_M).max(0.0);
            if score < best.0 {
                best = (score, d, p, i);
            }
        }
        let (_, d, p, i) = best;
        ShapeFix {
            distance_m: d,
            progress_m: p,
            seg: i as u32,
        }
    }

    /// Global lookup on the whole shape (the index's grid): a first position.
    pub fn locate(&self, lon: f64, lat: f64) -> RouteLocation {
        self.index.locate(lon, lat)
    }

    /// The segment at `progress_m` along the shape (to start tracking from there).
    pub fn seg_at(&self, progress_m: f64) -> u32 {
        let i = self.seg_start_m.partition_point(|&s| s <= progress_m);
        i.saturating_sub(1) as u32
    }
}

fn seg_len(s: &[f64; 4]) -> f64 {
    (s[2] - s[0]).hypot(s[3] - s[1])
}

/// Distance from `q` to segment `s` and the position `t` (0..=1) of the nearest point.
fn seg_dist(s: &[f64; 4], q: [f64; 2]) -> (f64, f64) {
    let (dx, dy) = (s[2] - s[0], s[3] - s[1]);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((q[0] - s[0]) * dx + (q[1] - s[1]) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (ex, ey) = (q[0] - s[0] - t * dx, q[1] - s[1] - t * dy);
    ((ex * ex + ey * ey).sqrt(), t)
}

/// The trips of one route, for assignment.
#[derive(Debug, Default, Clone)]
pub struct RouteTrips {
    /// Shapes its trips use.
    pub shapes: Vec<u32>,
    /// Its trips, by first departure.
    pub trips: Vec<u32>,
}

/// A feed's schedule.
#[derive(Debug, Default)]
pub struct Schedule {
    /// Stops in stops.txt order.
    pub stops: Vec<StopPoint>,
    /// Shapes trips use (from shapes.txt, or built from stops), one per route.
    pub shapes: Vec<TripShape>,
    /// Trips sorted by id.
    pub trips: Vec<ScheduledTrip>,
    /// Services sorted by id.
    pub services: Vec<Service>,
    by_route: FastMap<String, RouteTrips>,
    trip_ids: FastMap<String, u32>,
    /// Trips left out, with why.
    pub skipped_trips: Vec<(String, String)>,
}

impl Schedule {
    /// The trips and shapes of `route_id`.
    pub fn route(&self, route_id: &str) -> Option<&RouteTrips> {
        self.by_route.get(route_id)
    }

    /// Route ids with trips, unsorted.
    pub fn route_ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_route.keys().map(String::as_str)
    }

    /// The trip with id `id` and its position.
    pub fn trip(&self, id: &str) -> Option<(u32, &ScheduledTrip)> {
        let &i = self.trip_ids.get(id)?;
        Some((i, &self.trips[i as usize]))
    }

    /// Whether trip `t` runs on service date `d` (local).
    pub fn runs_on(&self, t: &ScheduledTrip, d: NaiveDate) -> bool {
        self.services[t.service as usize].active_on(d)
    }

    /// Trips running on local service date `d`: each trip once, or for a
    /// frequency-based trip once per departure (start of the template, seconds
    /// after midnight). Ordered by trip then departure.
    pub fn departures_on(&self, d: NaiveDate) -> Vec<(u32, i32)> {
        let mut out = Vec::new();
        for (i, t) in self.trips.iter().enumerate() {
            if !self.runs_on(t, d) {
                continue;
            }
            if t.frequencies.is_empty() {
                out.push((i as u32, t.first_departure_s()));
            }
            for f in &t.frequencies {
                let mut s = f.start_s;
                while s < f.end_s {
                    out.push((i as u32, s));
                    s += f.headway_s;
                }
            }
        }
        out
    }

    /// Builds a schedule from parts (synthetic feeds for benchmarks and tests): the
    /// trips' `shape` index into `shapes`, given as (id, route, line).
    pub fn from_parts(
        stops: Vec<StopPoint>,
        shapes: Vec<(String, String, Vec<Coord<f64>>)>,
        services: Vec<Service>,
        mut trips: Vec<ScheduledTrip>,
    ) -> Result<Self, GeoError> {
        let mut built = Vec::with_capacity(shapes.len());
        for (i, (id, route, line)) in shapes.into_iter().enumerate() {
            let ends = vec![line[0], line[line.len() - 1]];
            built.push(
                TripShape::build(id.clone(), &route, line, ends, None).map_err(|reason| {
                    GeoError::Feature {
                        origin: "schedule shapes".into(),
                        index: i,
                        id: Some(id),
                        reason,
                    }
                })?,
            );
        }
        trips.sort_by(|a, b| a.id.cmp(&b.id));
        let mut s = Self {
            stops,
            shapes: built,
            trips,
            services,
            ..Default::default()
        };
        s.index();
        Ok(s)
    }

    fn index(&mut self) {
        self.trip_ids = self
            .trips
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i as u32))
            .collect();
        let mut by_route: FastMap<String, RouteTrips> = Default::default();
        for sh in &mut self.shapes {
            sh.first_gap_m = f64::INFINITY;
        }
        for (i, t) in self.trips.iter().enumerate() {
            if let [a, b, ..] = t.stop_times[..] {
                let sh = &mut self.shapes[t.shape as usize];
                sh.first_gap_m = sh.first_gap_m.min(b.dist_m - a.dist_m);
            }
            let r = by_route.entry(t.route.clone()).or_default();
            r.trips.push(i as u32);
            if !r.shapes.contains(&t.shape) {
                r.shapes.push(t.shape);
            }
        }
        for r in by_route.values_mut() {
            r.trips
                .sort_by_key(|&i| (self.trips[i as usize].first_departure_s(), i));
            r.shapes.sort_unstable();
        }
        self.by_route = by_route;
    }
}

/// Seconds after midnight from `H:MM:SS` or `HH:MM:SS` (hours may pass 24).
fn parse_time(v: &str, what: &str) -> Result<i32, String> {
    let bad = || format!("{what} is not a time H:MM:SS: {v:?}");
    let mut it = v.split(':');
    let (h, m, s) = (it.next(), it.next(), it.next());
    if it.next().is_some() {
        return Err(bad());
    }
    let num = |x: Option<&str>, max: i32| -> Result<i32, String> {
        let x = x
            .filter(|x| !x.is_empty() && x.len() <= 3)
            .ok_or_else(bad)?;
        let n: i32 = x.parse().map_err(|_| bad())?;
        if (0..max).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    Ok(num(h, 200)? * 3600 + num(m, 60)? * 60 + num(s, 61)?)
}

fn parse_date(v: &str, what: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(v, "%Y%m%d")
        .map_err(|_| format!("{what} is not a date YYYYMMDD: {v:?}"))
}

/// One trip while being read.
pub(super) struct RawTrip {
    /// Its line in trips.txt.
    pub(super) line: usize,
    pub(super) route: String,
    service: String,
    pub(super) shape: Option<String>,
    direction: Option<u8>,
    headsign: Option<String>,
    /// (stop_sequence, stop, arrival, departure), sorted at the end.
    pub(super) times: Vec<(u32, u32, Option<i32>, Option<i32>)>,
    frequencies: Vec<Frequency>,
}

/// Reads the schedule of the GTFS feed in `dir`. Stops of a trip are located on its
/// shape by projection in stop order. Trips left out (logged, in
/// [`Schedule::skipped_trips`]): fewer than 2 stop times, a stop without
/// coordinates, no time at the first or last stop, a shapeless trip with fewer than 2
/// distinct stops. `terminal_radius_m` as in `geo.terminal_radius_m`.
pub fn load_schedule(dir: &Path, terminal_radius_m: Option<f64>) -> Result<Schedule, GeoError> {
    build_schedule(dir, read_feed(dir)?, terminal_radius_m)
}

/// A GTFS feed as read from its files, before the schedule (and the routes) are
/// built from it: each file is parsed once for both.
pub(super) struct RawFeed {
    /// stops.txt, in file order.
    pub(super) stops: Vec<StopPoint>,
    /// trips.txt with their stop times and frequencies, by trip id.
    pub(super) trips: HashMap<String, RawTrip>,
    /// calendar.txt and calendar_dates.txt, by service id.
    services: HashMap<String, Service>,
    /// Neither calendar file: every service runs every day.
    always: bool,
    /// shapes.txt points of the shapes trips use.
    pub(super) shape_pts: HashMap<String, std::collections::BTreeMap<u32, Coord<f64>>>,
    /// The first error of trips.txt's service_id (a missing column, an empty field).
    service_error: Option<GeoError>,
}

/// Reads stops, trips, stop times, frequencies, calendars and shapes of the feed in
/// `dir` (errors name file and line).
pub(super) fn read_feed(dir: &Path) -> Result<RawFeed, GeoError> {
    // stops.txt
    let t = Table::open(dir, "stops.txt")?;
    let (sid, sname, slat, slon) = (
        t.col("stop_id")?,
        t.col_opt("stop_name"),
        t.col("stop_lat")?,
        t.col("stop_lon")?,
    );
    let mut stops = Vec::new();
    let mut stop_ids: HashMap<String, u32> = HashMap::new();
    t.for_each(|_, row| {
        let id = row.id(sid, "stop_id")?;
        let at = match (row.opt(Some(slat)), row.opt(Some(slon))) {
            (None, None) => None,
            _ => Some(coord(
                row.number(slat, "stop_lat")?,
                row.number(slon, "stop_lon")?,
            )?),
        };
        let n = stops.len() as u32;
        if stop_ids.insert(id.clone(), n).is_some() {
            return Err(format!("stop_id {id:?} repeats"));
        }
        stops.push(StopPoint {
            id,
            name: row.opt(sname).map(str::to_string),
            lon: at.map(|c| c.x),
            lat: at.map(|c| c.y),
        });
        Ok(())
    })?;

    // trips.txt
    let t = Table::open(dir, "trips.txt")?;
    // A feed without services still has routes: only the schedule needs them, so
    // their first error waits for [`build_schedule`].
    let mut service_error = t.col("service_id").err();
    let (troute, tservice, ttrip, tshape, tdir, thead) = (
        t.col("route_id")?,
        t.col_opt("service_id"),
        t.col("trip_id")?,
        t.col_opt("shape_id"),
        t.col_opt("direction_id"),
        t.col_opt("trip_headsign"),
    );
    let mut raw: HashMap<String, RawTrip> = HashMap::new();
    t.for_each(|line, row| {
        let id = row.id(ttrip, "trip_id")?;
        let direction = match row.opt(tdir) {
            None => None,
            Some("0") => Some(0),
            Some("1") => Some(1),
            Some(v) => return Err(format!("direction_id must be 0 or 1, got {v:?}")),
        };
        let trip = RawTrip {
            line,
            route: row.id(troute, "route_id")?,
            service: match tservice.map(|c| row.id(c, "service_id")) {
                Some(Ok(s)) => s,
                Some(Err(reason)) => {
                    service_error.get_or_insert(GeoError::Gtfs {
                        file: dir.join("trips.txt"),
                        line,
                        reason,
                    });
                    String::new()
                }
                None => String::new(),
            },
            shape: row.opt(tshape).map(str::to_string),
            direction,
            headsign: row.opt(thead).map(str::to_string),
            times: Vec::new(),
            frequencies: Vec::new(),
        };
        if raw.insert(id.clone(), trip).is_some() {
            return Err(format!("trip_id {id:?} repeats"));
        }
        Ok(())
    })?;

    // stop_times.txt
    let t = Table::open(dir, "stop_times.txt")?;
    let (xtrip, xstop, xseq, xarr, xdep) = (
        t.col("trip_id")?,
        t.col_opt("stop_id"),
        t.col("stop_sequence")?,
        t.col_opt("arrival_time"),
        t.col_opt("departure_time"),
    );
    t.for_each(|_, row: &Row<'_>| {
        let trip_id = row.get(xtrip);
        let trip = raw
            .get_mut(trip_id)
            .ok_or_else(|| format!("trip_id {trip_id:?} is not in trips.txt"))?;
        let Some(stop_id) = row.opt(xstop) else {
            return Ok(()); // GTFS-Flex location: no stop to serve.
        };
        let stop = *stop_ids
            .get(stop_id)
            .ok_or_else(|| format!("stop_id {stop_id:?} is not in stops.txt"))?;
        let seq = row.seq(xseq, "stop_sequence")?;
        let arr = row
            .opt(xarr)
            .map(|v| parse_time(v, "arrival_time"))
            .transpose()?;
        let dep = row
            .opt(xdep)
            .map(|v| parse_time(v, "departure_time"))
            .transpose()?;
        if let (Some(a), Some(d)) = (arr, dep) {
            if d < a {
                return Err(format!(
                    "departure_time before arrival_time at stop_sequence {seq}"
                ));
            }
        }
        trip.times.push((seq, stop, arr.or(dep), dep.or(arr)));
        Ok(())
    })?;

    // frequencies.txt (optional)
    if let Some(t) = Table::open_opt(dir, "frequencies.txt")? {
        let (ftrip, fstart, fend, fhead, fexact) = (
            t.col("trip_id")?,
            t.col("start_time")?,
            t.col("end_time")?,
            t.col("headway_secs")?,
            t.col_opt("exact_times"),
        );
        t.for_each(|_, row| {
            let trip_id = row.get(ftrip);
            let trip = raw
                .get_mut(trip_id)
                .ok_or_else(|| format!("trip_id {trip_id:?} is not in trips.txt"))?;
            let start_s = parse_time(row.get(fstart), "start_time")?;
            let end_s = parse_time(row.get(fend), "end_time")?;
            let headway_s = i32::try_from(row.seq(fhead, "headway_secs")?)
                .ok()
                .filter(|&h| h > 0)
                .ok_or("headway_secs must be a positive number of seconds")?;
            if end_s < start_s {
                return Err("end_time before start_time".into());
            }
            let exact_times = match row.opt(fexact) {
                None | Some("0") => false,
                Some("1") => true,
                Some(v) => return Err(format!("exact_times must be 0 or 1, got {v:?}")),
            };
            trip.frequencies.push(Frequency {
                start_s,
                end_s,
                headway_s,
                exact_times,
            });
            Ok(())
        })?;
    }

    // calendar.txt and calendar_dates.txt (each optional; neither: every day).
    let mut services: HashMap<String, Service> = HashMap::new();
    let cal = Table::open_opt(dir, "calendar.txt")?;
    let dates = Table::open_opt(dir, "calendar_dates.txt")?;
    let always = cal.is_none() && dates.is_none();
    if always {
        tracing::warn!(feed = %dir.display(), "GTFS feed has no calendar.txt nor calendar_dates.txt: every service runs every day");
    }
    if let Some(t) = cal {
        let sid = t.col("service_id")?;
        let days = [
            "monday",
            "tuesday",
            "wednesday",
            "thursday",
            "friday",
            "saturday",
            "sunday",
        ]
        .map(|d| t.col(d));
        let mut cols = [0usize; 7];
        for (i, c) in days.into_iter().enumerate() {
            cols[i] = c?;
        }
        let (cstart, cend) = (t.col("start_date")?, t.col("end_date")?);
        t.for_each(|_, row| {
            let id = row.id(sid, "service_id")?;
            let mut weekdays = 0u8;
            for (i, &c) in cols.iter().enumerate() {
                match row.get(c) {
                    "1" => weekdays |= 1 << i,
                    "0" => {}
                    v => return Err(format!("weekday columns must be 0 or 1, got {v:?}")),
                }
            }
            let a = parse_date(row.get(cstart), "start_date")?;
            let b = parse_date(row.get(cend), "end_date")?;
            let s = services.entry(id.clone()).or_insert_with(|| Service {
                id: id.clone(),
                ..Default::default()
            });
            if s.range.is_some() {
                return Err(format!("service_id {id:?} repeats"));
            }
            s.weekdays = weekdays;
            s.range = Some((a, b));
            Ok(())
        })?;
    }
    if let Some(t) = dates {
        let (sid, sdate, sex) = (
            t.col("service_id")?,
            t.col("date")?,
            t.col("exception_type")?,
        );
        t.for_each(|_, row| {
            let id = row.id(sid, "service_id")?;
            let d = parse_date(row.get(sdate), "date")?;
            let s = services.entry(id.clone()).or_insert_with(|| Service {
                id,
                ..Default::default()
            });
            match row.get(sex) {
                "1" => s.added.push(d),
                "2" => s.removed.push(d),
                v => return Err(format!("exception_type must be 1 or 2, got {v:?}")),
            }
            Ok(())
        })?;
    }

    // shapes.txt points of the shapes in use.
    let shape_pts = if raw.values().any(|t| t.shape.is_some()) {
        read_shapes(dir)?
    } else {
        HashMap::new()
    };
    Ok(RawFeed {
        stops,
        trips: raw,
        services,
        always,
        shape_pts,
        service_error,
    })
}

/// Builds the schedule of `raw` (read from `dir`, named in messages).
pub(super) fn build_schedule(
    dir: &Path,
    raw: RawFeed,
    terminal_radius_m: Option<f64>,
) -> Result<Schedule, GeoError> {
    let RawFeed {
        stops,
        trips: mut raw,
        mut services,
        always,
        shape_pts,
        service_error,
    } = raw;
    if let Some(e) = service_error {
        return Err(e);
    }
    // Build: trips sorted by id for a stable order.
    let mut ids: Vec<String> = raw.keys().cloned().collect();
    ids.sort();
    let mut service_ids: Vec<String> = services.keys().cloned().collect();
    for t in raw.values() {
        if !services.contains_key(&t.service) && !service_ids.contains(&t.service) {
            service_ids.push(t.service.clone());
        }
    }
    service_ids.sort();
    service_ids.dedup();
    let service_pos: HashMap<&str, u32> = service_ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i as u32))
        .collect();
    let mut shapes: Vec<TripShape> = Vec::new();
    // (route, shape id or stop pattern) -> shape position.
    let mut shape_key: HashMap<(String, String), u32> = HashMap::new();
    // (shape, stop pattern) -> projected distances.
    let mut projections: HashMap<(u32, Vec<u32>), Vec<f64>> = HashMap::new();
    let mut trips = Vec::with_capacity(ids.len());
    let mut skipped = Vec::new();
    for id in ids {
        let mut t = raw.remove(&id).expect("listed");
        t.times.sort_by_key(|x| x.0);
        if let Some(w) = t.times.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(GeoError::Gtfs {
                file: dir.join("stop_times.txt"),
                line: 0,
                reason: format!("trip {id} repeats stop_sequence {}", w[0].0),
            });
        }
        let pattern: Vec<u32> = t.times.iter().map(|x| x.1).collect();
        let at = |s: u32| {
            let p = &stops[s as usize];
            p.lon.zip(p.lat).map(|(x, y)| Coord { x, y })
        };
        let why = if t.times.len() < 2 {
            Some("fewer than 2 stop times".to_string())
        } else if pattern.iter().any(|&s| at(s).is_none()) {
            Some("a stop of the trip has no coordinates".to_string())
        } else if t.times[0].3.is_none() || t.times[t.times.len() - 1].2.is_none() {
            Some("no time at the first or last stop".to_string())
        } else if t.shape.is_none() && {
            let mut d = pattern.clone();
            d.sort_unstable();
            d.dedup();
            d.len() < 2
        } {
            Some("no shape_id and fewer than 2 distinct stops".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            tracing::warn!(trip_id = %id, feed = %dir.display(), reason = %why, "GTFS trip left out of the schedule");
            skipped.push((id, why));
            continue;
        }
        let key = match &t.shape {
            Some(s) => s.clone(),
            None => format!(
                "stops:{}",
                pattern
                    .iter()
                    .map(|&s| stops[s as usize].id.as_str())
                    .collect::<Vec<_>>()
                    .join(">")
            ),
        };
        let shape = match shape_key.get(&(t.route.clone(), key.clone())) {
            Some(&i) => i,
            None => {
                let line: Vec<Coord<f64>> = match &t.shape {
                    Some(s) => shape_pts
                        .get(s)
                        .ok_or_else(|| GeoError::Gtfs {
                            file: dir.join("trips.txt"),
                            line: 0,
                            reason: format!(
                                "trip {id:?} uses shape_id {s:?}, which shapes.txt does not have"
                            ),
                        })?
                        .values()
                        .copied()
                        .collect(),
                    None => pattern.iter().filter_map(|&s| at(s)).collect(),
                };
                let ends = vec![
                    at(pattern[0]).expect("located"),
                    at(pattern[pattern.len() - 1]).expect("located"),
                ];
                let name = match &t.shape {
                    Some(s) => s.clone(),
                    None => format!("stops:{id}"),
                };
                match TripShape::build(name, &t.route, line, ends, terminal_radius_m) {
                    Ok(s) => {
                        let i = shapes.len() as u32;
                        shapes.push(s);
                        shape_key.insert((t.route.clone(), key), i);
                        i
                    }
                    Err(why) => {
                        let why = format!("shape unusable: {why}");
                        tracing::warn!(trip_id = %id, feed = %dir.display(), reason = %why, "GTFS trip left out of the schedule");
                        skipped.push((id, why));
                        continue;
                    }
                }
            }
        };
        let sh = &shapes[shape as usize];
        let dists = projections
            .entry((shape, pattern.clone()))
            .or_insert_with(|| {
                let (mut seg, mut along) = (0usize, 0.0);
                pattern
                    .iter()
                    .map(|&s| {
                        let c = at(s).expect("located");
                        let f = sh.project_from(c.x, c.y, seg, along, 10.0);
                        seg = f.seg as usize;
                        along = f.progress_m;
                        along
                    })
                    .collect()
            })
            .clone();
        let mut stop_times: Vec<StopTime> = t
            .times
            .iter()
            .zip(&dists)
            .map(|(&(seq, stop, a, d), &dist_m)| StopTime {
                stop,
                seq,
                arrival_s: a.unwrap_or(-1),
                departure_s: d.unwrap_or(-1),
                dist_m,
            })
            .collect();
        interpolate_times(&mut stop_times);
        t.frequencies.sort_by_key(|f| f.start_s);
        trips.push(ScheduledTrip {
            id,
            route: t.route,
            service: service_pos[t.service.as_str()],
            shape,
            direction: t.direction,
            headsign: t.headsign,
            stop_times,
            frequencies: t.frequencies,
        });
    }
    let services = service_ids
        .into_iter()
        .map(|id| {
            let mut s = services.remove(&id).unwrap_or_else(|| {
                if !always {
                    tracing::warn!(service_id = %id, feed = %dir.display(), "service in trips.txt has no calendar entry: its trips never run");
                }
                Service {
                    id: id.clone(),
                    ..Default::default()
                }
            });
            s.always = always;
            s.added.sort();
            s.removed.sort();
            s
        })
        .collect();
    let mut s = Schedule {
        stops,
        shapes,
        trips,
        services,
        skipped_trips: skipped,
        ..Default::default()
    };
    s.index();
    tracing::info!(feed = %dir.display(), trips = s.trips.len(), shapes = s.shapes.len(), services = s.services.len(), skipped = s.skipped_trips.len(), "GTFS schedule loaded");
    Ok(s)
}

/// Fills stops without times (-1) by distance between the timed stops around them.
fn interpolate_times(st: &mut [StopTime]) {
    let mut last = 0usize;
    for i in 1..st.len() {
        if st[i].arrival_s < 0 {
            continue;
        }
        if i > last + 1 {
            let (a, b) = (st[last], st[i]);
            let span = b.dist_m - a.dist_m;
            for x in &mut st[last + 1..i] {
                let f = if span > 0.0 {
                    ((x.dist_m - a.dist_m) / span).clamp(0.0, 1.0)
                } else {
                    0.5
                };
                let v = a.departure_s + (f * f64::from(b.arrival_s - a.departure_s)).round() as i32;
                x.arrival_s = v;
                x.departure_s = v;
            }
        }
        last = i;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;

    fn real(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/gtfs-real")
            .join(name)
    }

    /// Rows of a GTFS file by plain splitting (the fixtures quote nothing).
    pub(crate) fn table(dir: &Path, name: &str) -> Vec<BTreeMap<String, String>> {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let Some(head) = lines.next() else {
            return Vec::new();
        };
        let head: Vec<&str> = head.split(',').collect();
        lines
            .map(|l| {
                head.iter()
                    .zip(l.split(',').chain(std::iter::repeat("")))
                    .map(|(h, v)| (h.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    fn secs(v: &str) -> i32 {
        let p: Vec<i32> = v.split(':').map(|x| x.parse().unwrap()).collect();
        p[0] * 3600 + p[1] * 60 + p[2]
    }

    /// Both real feeds: every trip with its stop count, first and last times, service
    /// and direction as in the files; stops projected in order along the shape and
    /// near it.
    #[test]
    fn real_feeds_schedule() {
        for feed in ["google-sample-feed", "israel-netanya-2126"] {
            let dir = real(feed);
            let s = load_schedule(&dir, None).unwrap();
            let trips = table(&dir, "trips.txt");
            let mut times: BTreeMap<String, BTreeMap<u32, BTreeMap<String, String>>> =
                BTreeMap::new();
            for r in table(&dir, "stop_times.txt") {
                times
                    .entry(r["trip_id"].clone())
                    .or_default()
                    .insert(r["stop_sequence"].parse().unwrap(), r);
            }
            assert_eq!(s.trips.len(), trips.len(), "{feed}");
            assert!(s.skipped_trips.is_empty(), "{feed}: {:?}", s.skipped_trips);
            for r in &trips {
                let (_, t) = s.trip(&r["trip_id"]).unwrap();
                let want = &times[&r["trip_id"]];
                assert_eq!(t.stop_times.len(), want.len(), "{feed} {}", t.id);
                let first = want.values().next().unwrap();
                let last = want.values().last().unwrap();
                assert_eq!(t.first_departure_s(), secs(&first["departure_time"]));
                assert_eq!(
                    t.stop_times.last().unwrap().arrival_s,
                    secs(&last["arrival_time"])
                );
                let seqs: Vec<u32> = t.stop_times.iter().map(|x| x.seq).collect();
                assert_eq!(seqs, want.keys().copied().collect::<Vec<_>>());
                assert_eq!(s.services[t.service as usize].id, r["service_id"]);
                assert_eq!(t.route, r["route_id"]);
                let dir_id = r.get("direction_id").filter(|v| !v.is_empty());
                assert_eq!(t.direction.map(|d| d.to_string()).as_ref(), dir_id);
                let sh = &s.shapes[t.shape as usize];
                let mut prev = -1.0;
                for x in &t.stop_times {
                    assert!(x.dist_m >= prev, "{feed} {}: stops out of order", t.id);
                    prev = x.dist_m;
                    let p = &s.stops[x.stop as usize];
                    let loc = sh.locate(p.lon.unwrap(), p.lat.unwrap());
                    assert!(loc.distance_m < 60.0, "{feed} {} {}", t.id, p.id);
                }
                assert!(prev <= sh.length_m + 1e-6);
            }
        }
    }

    /// calendar.txt (columns in any order) and calendar_dates.txt: the dates each
    /// service runs, counted from the files by hand.
    #[test]
    fn services_run_on_their_dates() {
        for feed in ["google-sample-feed", "israel-netanya-2126"] {
            let dir = real(feed);
            let s = load_schedule(&dir, None).unwrap();
            let removed: BTreeSet<(String, String)> = table(&dir, "calendar_dates.txt")
                .into_iter()
                .filter(|r| r["exception_type"] == "2")
                .map(|r| (r["service_id"].clone(), r["date"].clone()))
                .collect();
            for r in table(&dir, "calendar.txt") {
                let svc = s.services.iter().find(|x| x.id == r["service_id"]).unwrap();
                let a = NaiveDate::parse_from_str(&r["start_date"], "%Y%m%d").unwrap();
                let b = NaiveDate::parse_from_str(&r["end_date"], "%Y%m%d").unwrap();
                let names = [
                    "monday",
                    "tuesday",
                    "wednesday",
                    "thursday",
                    "friday",
                    "saturday",
                    "sunday",
                ];
                let mut d = a.pred_opt().unwrap();
                let end = b.succ_opt().unwrap();
                while d <= end {
                    let wd = names[d.weekday().num_days_from_monday() as usize];
                    let key = (r["service_id"].clone(), d.format("%Y%m%d").to_string());
                    let want = d >= a && d <= b && r[wd] == "1" && !removed.contains(&key);
                    assert_eq!(svc.active_on(d), want, "{feed} {} {d}", svc.id);
                    d = d.succ_opt().unwrap();
                }
            }
        }
        // The sample feed removes FULLW on 2007-06-04 (a Monday).
        let s = load_schedule(&real("google-sample-feed"), None).unwrap();
        let d = NaiveDate::from_ymd_opt(2007, 6, 4).unwrap();
        let fullw = s.services.iter().find(|x| x.id == "FULLW").unwrap();
        assert!(!fullw.active_on(d) && fullw.active_on(d.succ_opt().unwrap()));
    }

    /// frequencies.txt: the departures of a day are the trips without headways plus,
    /// per period, ceil((end - start) / headway), counted from the files.
    #[test]
    fn departures_follow_frequencies() {
        let dir = real("google-sample-feed");
        let s = load_schedule(&dir, None).unwrap();
        let d = NaiveDate::from_ymd_opt(2008, 3, 1).unwrap(); // a Saturday: FULLW and WE
        let mut per_trip: BTreeMap<String, usize> = BTreeMap::new();
        for r in table(&dir, "frequencies.txt") {
            let (a, b, h) = (
                secs(&r["start_time"]),
                secs(&r["end_time"]),
                r["headway_secs"].parse::<i32>().unwrap(),
            );
            *per_trip.entry(r["trip_id"].clone()).or_default() += ((b - a + h - 1) / h) as usize;
        }
        let want: usize = table(&dir, "trips.txt")
            .iter()
            .map(|t| per_trip.get(&t["trip_id"]).copied().unwrap_or(1))
            .sum();
        let got = s.departures_on(d);
        assert_eq!(got.len(), want);
        // Monday 2007-06-04: FULLW removed, WE not a weekday: nothing runs.
        assert!(s
            .departures_on(NaiveDate::from_ymd_opt(2007, 6, 4).unwrap())
            .is_empty());
        let (_, stba) = s.trip("STBA").unwrap();
        assert_eq!(stba.frequencies.len(), 1);
        assert!(!stba.frequencies[0].exact_times);
    }

    struct Feed(PathBuf);
    impl Feed {
        fn new(tag: &str, files: &[(&str, &str)]) -> Self {
            let dir = std::env::temp_dir().join(format!("fw-sched-{tag}-{}", std::process::id()));
            std::fs::remove_dir_all(&dir).ok();
            std::fs::create_dir_all(&dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
            Self(dir)
        }
    }
    impl Drop for Feed {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }

    /// Times past 24:00, missing times interpolated by distance, sequences from 10
    /// with gaps, a loop's first and last stop at one place projected to start and
    /// end, a shapeless trip built from stops, a trip with one stop left out with why,
    /// and bad times named with file and line.
    #[test]
    fn messy_schedule() {
        let files = [
            ("routes.txt", "route_id\nR\n"),
            (
                "trips.txt",
                "route_id,service_id,trip_id,shape_id,direction_id\nR,S,late,L,0\nR,S,built,,1\nR,S,one,,\n",
            ),
            (
                "shapes.txt",
                "shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\nL,10.90,106.70,1\nL,10.90,106.72,2\nL,10.91,106.72,3\nL,10.91,106.70,4\nL,10.90,106.70,5\n",
            ),
            (
                "stops.txt",
                "stop_id,stop_lat,stop_lon\nA,10.90,106.70\nB,10.90,106.72\nC,10.91,106.72\nD,10.91,106.71\n",
            ),
            (
                "stop_times.txt",
                "trip_id,arrival_time,departure_time,stop_id,stop_sequence\n\
                 late,23:50:00,23:50:00,A,10\nlate,,,B,15\nlate,24:10:00,24:12:00,C,40\nlate,25:00:00,25:00:00,A,41\n\
                 built,08:00:00,08:00:00,C,1\nbuilt,08:05:00,08:05:00,D,2\n\
                 one,09:00:00,09:00:00,A,1\n",
            ),
            ("calendar_dates.txt", "service_id,date,exception_type\nS,20261203,1\n"),
        ];
        let feed = Feed::new("messy", &files);
        let s = load_schedule(&feed.0, None).unwrap();
        assert_eq!(s.skipped_trips.len(), 1);
        assert_eq!(s.skipped_trips[0].0, "one");
        let (_, t) = s.trip("late").unwrap();
        let d: Vec<f64> = t.stop_times.iter().map(|x| x.dist_m).collect();
        let sh = &s.shapes[t.shape as usize];
        // A at 0, B at the first corner, C at the second, A again at the very end.
        assert!(d[0] < 1.0 && (d[3] - sh.length_m).abs() < 1.0, "{d:?}");
        let ab = d[1] - d[0];
        let bc = d[2] - d[1];
        // B interpolated between 23:50 and 24:10 by distance.
        let want_b = 23 * 3600 + 50 * 60 + (1200.0 * ab / (ab + bc)).round() as i32;
        assert_eq!(t.stop_times[1].arrival_s, want_b);
        assert_eq!(t.stop_times[2].departure_s, 24 * 3600 + 12 * 60);
        assert_eq!(t.direction, Some(0));
        let (_, b) = s.trip("built").unwrap();
        assert!(s.shapes[b.shape as usize].id.starts_with("stops:"));
        assert!(s.runs_on(t, NaiveDate::from_ymd_opt(2026, 12, 3).unwrap()));
        assert!(!s.runs_on(t, NaiveDate::from_ymd_opt(2026, 12, 4).unwrap()));
        // time_at_s is monotone along the trip.
        assert!(t.time_at_s(d[1]) < t.time_at_s(d[2]) && t.time_at_s(d[2]) < t.time_at_s(d[3]));

        for (text, at) in [
            ("trip_id,arrival_time,departure_time,stop_id,stop_sequence\nlate,23:50,23:50:00,A,1\n", "stop_times.txt:2:"),
            ("trip_id,arrival_time,departure_time,stop_id,stop_sequence\nlate,08:00:00,08:00:00,A,1\nlate,09:00:00,08:59:00,B,2\n", "stop_times.txt:3:"),
        ] {
            let feed = Feed::new("messy-bad", &files);
            std::fs::write(feed.0.join("stop_times.txt"), text).unwrap();
            let e = load_schedule(&feed.0, None).unwrap_err().to_string();
            assert!(e.contains(at), "{e}");
        }
    }

    /// Tracking follows a shape that comes back along its own street leg by leg.
    #[test]
    fn tracking_follows_an_out_and_back_shape() {
        let line = vec![
            Coord {
                x: 106.70,
                y: 10.90,
            },
            Coord {
                x: 106.72,
                y: 10.90,
            },
            Coord {
                x: 106.70,
                y: 10.90,
            },
        ];
        let sh = TripShape::build("X".into(), "R", line, vec![], None).unwrap();
        let mut seg = 0;
        let mut last: f64 = -1.0;
        for i in 0..=40 {
            let f = f64::from(i) / 40.0;
            let x = if f <= 0.5 {
                106.70 + 0.04 * f
            } else {
                106.74 - 0.04 * f
            };
            let fix = sh.track(x, 10.90005, seg, last.max(0.0));
            seg = fix.seg;
            assert!(fix.progress_m > last, "{i}: {} <= {last}", fix.progress_m);
            last = fix.progress_m;
        }
        assert!((last - sh.length_m).abs() < 1.0);
    }
}
