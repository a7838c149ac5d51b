//! GTFS loader: a route is every shape its trips use (both directions, variants), and
//! its terminals are the first and last stop of each trip. A trip without a shape gets
//! one built from its stops in `stop_sequence` order. Reads `routes.txt`, `trips.txt`,
//! `stops.txt`, `stop_times.txt` and (when trips use shapes) `shapes.txt`, with the
//! `csv` crate: UTF-8 BOM, quoted fields with commas, CRLF and surrounding spaces are
//! accepted; `shape_dist_traveled` is not needed. Errors name the file and line.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::geo::{Coord, LineString};
use csv::StringRecord;

use super::error::GeoError;
use super::route::Route;
use super::schedule::{build_schedule, read_feed, RawFeed, Schedule};

/// One GTFS file being read: its path, bytes and header.
pub(super) struct Table {
    file: PathBuf,
    reader: csv::Reader<Cursor<Arc<[u8]>>>,
    header: StringRecord,
    lines: Lines,
}

/// Line numbers from byte offsets (the `csv` crate's own line count is off by one
/// after CRLF line ends, and a record's byte offset may point at the preceding line
/// end), counted forward as the rows are read.
struct Lines {
    data: Arc<[u8]>,
    byte: usize,
    line: usize,
}

impl Lines {
    fn at(&mut self, byte: u64) -> usize {
        // A record's position may point at the line end before it.
        let mut byte = (byte as usize).min(self.data.len());
        while matches!(self.data.get(byte), Some(b'\r' | b'\n')) {
            byte += 1;
        }
        if byte < self.byte {
            self.byte = 0;
            self.line = 1;
        }
        self.line += self.data[self.byte..byte]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        self.byte = byte;
        self.line
    }
}

impl Table {
    /// Opens `name` in `dir`; `Ok(None)` when the file does not exist.
    pub(super) fn open_opt(dir: &Path, name: &str) -> Result<Option<Self>, GeoError> {
        let file = dir.join(name);
        let data: Arc<[u8]> = match std::fs::read(&file) {
            Ok(d) => d.into(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(GeoError::Io { path: file, source }),
        };
        let mut lines = Lines {
            data: data.clone(),
            byte: 0,
            line: 1,
        };
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(Cursor::new(data));
        let header = match reader.headers() {
            Ok(h) => h.clone(),
            Err(e) => return Err(csv_err(&file, &mut lines, &e)),
        };
        if header.iter().all(str::is_empty) {
            return Err(GeoError::Gtfs {
                file,
                line: 0,
                reason: "empty file (no header row)".into(),
            });
        }
        Ok(Some(Self {
            file,
            reader,
            header,
            lines,
        }))
    }

    pub(super) fn open(dir: &Path, name: &str) -> Result<Self, GeoError> {
        Self::open_opt(dir, name)?.ok_or_else(|| {
            let path = dir.join(name);
            GeoError::Io {
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "required GTFS file"),
                path,
            }
        })
    }

    pub(super) fn col_opt(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    pub(super) fn col(&self, name: &str) -> Result<usize, GeoError> {
        self.col_opt(name)
            .ok_or_else(|| self.err(1, format!("missing column {name}")))
    }

    fn err(&self, line: usize, reason: String) -> GeoError {
        GeoError::Gtfs {
            file: self.file.clone(),
            line,
            reason,
        }
    }

    /// Calls `f` with each data row and its line number (blank lines skipped). A row
    /// longer than the header is refused unless the extra fields are empty (trailing
    /// commas are a common export quirk).
    pub(super) fn for_each(
        mut self,
        mut f: impl FnMut(usize, &Row<'_>) -> Result<(), String>,
    ) -> Result<(), GeoError> {
        let width = self.header.len();
        let mut rec = StringRecord::new();
        loop {
            match self.reader.read_record(&mut rec) {
                Ok(false) => return Ok(()),
                Ok(true) => {}
                Err(e) => return Err(csv_err(&self.file, &mut self.lines, &e)),
            }
            let line = rec.position().map_or(0, |p| self.lines.at(p.byte()));
            if rec.iter().all(str::is_empty) {
                continue;
            }
            if rec.len() > width && rec.iter().skip(width).any(|v| !v.is_empty()) {
                return Err(self.err(line, format!("{} fields, header has {width}", rec.len())));
            }
            f(line, &Row(&rec)).map_err(|reason| self.err(line, reason))?;
        }
    }
}

/// A data row; missing trailing fields read as empty.
pub(super) struct Row<'a>(&'a StringRecord);

impl Row<'_> {
    pub(super) fn get(&self, i: usize) -> &str {
        self.0.get(i).unwrap_or("")
    }

    pub(super) fn opt(&self, i: Option<usize>) -> Option<&str> {
        i.map(|i| self.get(i)).filter(|s| !s.is_empty())
    }

    /// A required id field.
    pub(super) fn id(&self, i: usize, what: &str) -> Result<String, String> {
        match self.get(i) {
            "" => Err(format!("empty {what}")),
            s => Ok(s.to_string()),
        }
    }

    pub(super) fn number(&self, i: usize, what: &str) -> Result<f64, String> {
        let v = self.get(i);
        v.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("{what} is not a number: {v:?}"))
    }

    pub(super) fn seq(&self, i: usize, what: &str) -> Result<u32, String> {
        let v = self.get(i);
        v.parse()
            .map_err(|_| format!("{what} is not a non-negative integer: {v:?}"))
    }
}

fn csv_err(file: &Path, lines: &mut Lines, e: &csv::Error) -> GeoError {
    GeoError::Gtfs {
        file: file.to_path_buf(),
        line: e.position().map_or(0, |p| lines.at(p.byte())),
        reason: match e.kind() {
            csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".into(),
            _ => e.to_string(),
        },
    }
}

/// The points of every shape in shapes.txt, by shape_pt_sequence (gaps fine; a
/// repeated sequence is an error naming file and line).
pub(super) fn read_shapes(
    dir: &Path,
) -> Result<HashMap<String, BTreeMap<u32, Coord<f64>>>, GeoError> {
    let mut shapes: HashMap<String, BTreeMap<u32, Coord<f64>>> = HashMap::new();
    let t = Table::open(dir, "shapes.txt")?;
    let (sid, slat, slon, sseq) = (
        t.col("shape_id")?,
        t.col("shape_pt_lat")?,
        t.col("shape_pt_lon")?,
        t.col("shape_pt_sequence")?,
    );
    t.for_each(|_, row| {
        let id = row.id(sid, "shape_id")?;
        let c = coord(
            row.number(slat, "shape_pt_lat")?,
            row.number(slon, "shape_pt_lon")?,
        )?;
        let seq = row.seq(sseq, "shape_pt_sequence")?;
        if shapes
            .entry(id.clone())
            .or_default()
            .insert(seq, c)
            .is_some()
        {
            return Err(format!("shape {id} repeats shape_pt_sequence {seq}"));
        }
        Ok(())
    })?;
    Ok(shapes)
}

pub(super) fn coord(lat: f64, lon: f64) -> Result<Coord<f64>, String> {
    if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon) {
        Ok(Coord { x: lon, y: lat })
    } else {
        Err(format!("coordinates out of range: {lat}, {lon}"))
    }
}

/// A trip as read from trips.txt.
struct Trip {
    route: String,
    shape: Option<String>,
    /// First and last `(stop_sequence, stop)` seen in stop_times.txt.
    ends: Option<((u32, u32), (u32, u32))>,
    /// Its stops, only for trips without a shape.
    stops: Option<BTreeMap<u32, u32>>,
}

/// What a feed held, for the log and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtfsSummary {
    /// Routes loaded.
    pub routes: usize,
    /// Trips read.
    pub trips: usize,
    /// Distinct shapes from shapes.txt in use.
    pub shapes: usize,
    /// Shapes built from stops, for trips without a shape (one per stop pattern).
    pub built_shapes: usize,
    /// Trips left out (no usable shape and fewer than 2 located stops), with why.
    pub skipped_trips: Vec<(String, String)>,
}

/// Reads the routes of the GTFS feed in directory `dir`, sorted by route id. Routes
/// with no usable trip are skipped (logged): they cannot be checked.
pub fn load_routes_gtfs(dir: &Path) -> Result<Vec<Route>, GeoError> {
    load_gtfs(dir).map(|(routes, _)| routes)
}

/// [`load_routes_gtfs`] with a summary of what was read.
pub fn load_gtfs(dir: &Path) -> Result<(Vec<Route>, GtfsSummary), GeoError> {
    let names = route_names(dir)?;
    let raw = read_feed(dir)?;
    routes_of(dir, &names, &raw)
}

/// The routes, their summary and the schedule of the feed in `dir`, each file parsed
/// once for both. `terminal_radius_m` as in [`super::load_schedule`].
pub fn load_feed(
    dir: &Path,
    terminal_radius_m: Option<f64>,
) -> Result<(Vec<Route>, GtfsSummary, Schedule), GeoError> {
    let names = route_names(dir)?;
    let raw = read_feed(dir)?;
    let (routes, summary) = routes_of(dir, &names, &raw)?;
    let schedule = build_schedule(dir, raw, terminal_radius_m)?;
    Ok((routes, summary, schedule))
}

/// routes.txt: id -> display name.
fn route_names(dir: &Path) -> Result<BTreeMap<String, Option<String>>, GeoError> {
    // routes.txt: id -> display name, in file order.
    let t = Table::open(dir, "routes.txt")?;
    let (rid, short, long) = (
        t.col("route_id")?,
        t.col_opt("route_short_name"),
        t.col_opt("route_long_name"),
    );
    let mut names: BTreeMap<String, Option<String>> = BTreeMap::new();
    t.for_each(|_, row| {
        let id = row.id(rid, "route_id")?;
        let name = match (row.opt(short), row.opt(long)) {
            (Some(s), Some(l)) => Some(format!("{s} {l}")),
            (s, l) => s.or(l).map(str::to_string),
        };
        if names.insert(id.clone(), name).is_some() {
            return Err(format!("route_id {id:?} repeats"));
        }
        Ok(())
    })?;
    Ok(names)
}

/// The routes of a feed read into `raw` (from `dir`, named in messages).
fn routes_of(
    dir: &Path,
    names: &BTreeMap<String, Option<String>>,
    raw: &RawFeed,
) -> Result<(Vec<Route>, GtfsSummary), GeoError> {
    let trips_file = dir.join("trips.txt");
    // The first offending row in file order, as a reader would meet it.
    if let Some(t) = raw
        .trips
        .values()
        .filter(|t| !names.contains_key(&t.route))
        .min_by_key(|t| t.line)
    {
        return Err(GeoError::Gtfs {
            file: trips_file,
            line: t.line,
            reason: format!("trip's route_id {:?} is not in routes.txt", t.route),
        });
    }
    let mut trips: BTreeMap<String, Trip> = BTreeMap::new();
    for (id, t) in &raw.trips {
        if let Some(s) = &t.shape {
            if !raw.shape_pts.contains_key(s) {
                return Err(GeoError::Gtfs {
                    file: trips_file,
                    line: t.line,
                    reason: format!(
                        "trip {id:?} uses shape_id {s:?}, which shapes.txt does not have"
                    ),
                });
            }
        }
        let mut trip = Trip {
            route: t.route.clone(),
            shape: t.shape.clone(),
            ends: None,
            stops: t.shape.is_none().then(BTreeMap::new),
        };
        for &(seq, stop, _, _) in &t.times {
            let here = (seq, stop);
            let e = trip.ends.get_or_insert((here, here));
            e.0 = e.0.min(here);
            e.1 = e.1.max(here);
            if let Some(stops) = &mut trip.stops {
                if stops.insert(seq, stop).is_some() {
                    return Err(GeoError::Gtfs {
                        file: dir.join("stop_times.txt"),
                        line: 0,
                        reason: format!("trip {id} repeats stop_sequence {seq}"),
                    });
                }
            }
        }
        trips.insert(id.clone(), trip);
    }
    let shapes = &raw.shape_pts;
    let stop_names: Vec<&str> = raw.stops.iter().map(|s| s.id.as_str()).collect();
    let stop_at: Vec<Option<Coord<f64>>> = raw
        .stops
        .iter()
        .map(|s| s.lon.zip(s.lat).map(|(x, y)| Coord { x, y }))
        .collect();

    // Per route: its shapes, the stop patterns of its shapeless trips, its terminals.
    #[derive(Default)]
    struct Acc<'a> {
        shapes: BTreeSet<&'a str>,
        patterns: BTreeMap<Vec<u32>, ()>,
        terminals: BTreeSet<u32>,
    }
    let mut acc: BTreeMap<&str, Acc<'_>> = BTreeMap::new();
    let mut summary = GtfsSummary {
        trips: trips.len(),
        ..Default::default()
    };
    for (id, trip) in &trips {
        let located = |s: u32| stop_at[s as usize].is_some();
        let pattern: Option<Vec<u32>> =
            trip.stops.as_ref().map(|st| st.values().copied().collect());
        if let Some(p) = &pattern {
            let why = if p.iter().any(|&s| !located(s)) {
                Some("a stop of the trip has no coordinates".to_string())
            } else if p.iter().collect::<BTreeSet<_>>().len() < 2 {
                Some("no shape_id and fewer than 2 distinct stops in stop_times.txt".into())
            } else {
                None
            };
            if let Some(why) = why {
                tracing::warn!(trip_id = %id, feed = %dir.display(), reason = %why, "GTFS trip skipped");
                summary.skipped_trips.push((id.clone(), why));
                continue;
            }
        }
        let a = acc.entry(trip.route.as_str()).or_default();
        match (&trip.shape, pattern) {
            (Some(s), _) => {
                a.shapes.insert(s.as_str());
            }
            (None, Some(p)) => {
                a.patterns.insert(p, ());
            }
            (None, None) => unreachable!("shapeless trips keep their stops"),
        }
        if let Some((first, last)) = trip.ends {
            for s in [first.1, last.1] {
                if located(s) {
                    a.terminals.insert(s);
                }
            }
        }
    }
    let mut shapes_used: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for (id, name) in names {
        let Some(a) = acc.get(id.as_str()) else {
            tracing::warn!(route_id = %id, feed = %dir.display(), "GTFS route has no usable trip; skipped");
            continue;
        };
        let mut parts = Vec::new();
        for s in &a.shapes {
            let pts: Vec<Coord<f64>> = shapes[*s].values().copied().collect();
            // One point (or one repeated) draws nothing; the route keeps its other lines.
            if pts.windows(2).all(|w| w[0] == w[1]) {
                tracing::warn!(shape_id = %s, route_id = %id, feed = %dir.display(), "GTFS shape has fewer than 2 distinct points; left out");
                continue;
            }
            shapes_used.insert(s);
            parts.push(LineString(pts));
        }
        for p in a.patterns.keys() {
            summary.built_shapes += 1;
            parts.push(LineString(
                p.iter().filter_map(|&s| stop_at[s as usize]).collect(),
            ));
        }
        if parts.is_empty() {
            tracing::warn!(route_id = %id, feed = %dir.display(), "GTFS route has no drawable shape; skipped");
            continue;
        }
        // Stop ids order the terminals, so the result never depends on file order.
        let mut terminals: Vec<(&str, Coord<f64>)> = a
            .terminals
            .iter()
            .filter_map(|&s| Some((stop_names[s as usize], stop_at[s as usize]?)))
            .collect();
        terminals.sort_by(|x, y| x.0.cmp(y.0));
        out.push(Route {
            id: id.clone(),
            name: name.clone(),
            corridor_m: None,
            parts,
            terminals: terminals.into_iter().map(|(_, c)| c).collect(),
            terminal_radius_m: None,
        });
    }
    summary.routes = out.len();
    summary.shapes = shapes_used.len();
    tracing::info!(
        feed = %dir.display(),
        routes = summary.routes,
        trips = summary.trips,
        shapes = summary.shapes,
        built_shapes = summary.built_shapes,
        skipped_trips = summary.skipped_trips.len(),
        "GTFS feed loaded"
    );
    Ok((out, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gtfs")
    }

    /// A feed directory under the temp dir, removed on drop.
    struct Feed(PathBuf);

    impl Feed {
        fn new(tag: &str, files: &[(&str, &str)]) -> Self {
            let dir = std::env::temp_dir().join(format!("fw-gtfs-{tag}-{}", std::process::id()));
            std::fs::remove_dir_all(&dir).ok();
            std::fs::create_dir_all(&dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
            Self(dir)
        }
        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.join(name), text).unwrap();
        }
    }

    impl Drop for Feed {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }

    /// Parsing once gives what the routes and the schedule read separately give.
    #[test]
    fn one_parse_gives_the_same_routes_and_schedule() {
        let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gtfs-real");
        for dir in [
            fixture(),
            real.join("google-sample-feed"),
            real.join("israel-netanya-2126"),
        ] {
            let (routes, summary, schedule) = load_feed(&dir, Some(150.0)).unwrap();
            assert_eq!((routes, summary), load_gtfs(&dir).unwrap(), "{dir:?}");
            let alone = super::super::load_schedule(&dir, Some(150.0)).unwrap();
            assert_eq!(schedule.stops, alone.stops, "{dir:?}");
            assert_eq!(schedule.trips, alone.trips, "{dir:?}");
            assert_eq!(schedule.services, alone.services, "{dir:?}");
            assert_eq!(schedule.skipped_trips, alone.skipped_trips, "{dir:?}");
            assert_eq!(schedule.shapes.len(), alone.shapes.len(), "{dir:?}");
            assert!(!schedule.trips.is_empty(), "{dir:?}");
        }
    }

    #[test]
    fn loads_the_fixture_feed_with_every_shape() {
        let (routes, sum) = load_gtfs(&fixture()).unwrap();
        let ids: Vec<&str> = routes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["BD-GTFS-01", "BD-GTFS-02"]);
        // BD-GTFS-01 has a full shape and a short-turn shape: both are the route.
        let sizes: Vec<usize> = routes[0].parts.iter().map(|p| p.0.len()).collect();
        assert_eq!(sizes, [9, 5]);
        // Its trips start at S-TDM and end at S-DIAN or S-HOSP (short turn).
        assert_eq!(routes[0].terminals.len(), 3);
        // The loop starts and ends at one stop.
        assert_eq!(routes[1].terminals.len(), 1);
        assert!(routes[0]
            .name
            .as_deref()
            .unwrap_or("")
            .contains("Thu Dau Mot"));
        assert_eq!((sum.trips, sum.shapes, sum.built_shapes), (4, 3, 0));
    }

    /// BOM, CRLF, quoted fields with commas and quotes, colons and spaces in ids,
    /// stop_sequence from 5 with gaps, no shape_dist_traveled, trailing commas, a trip
    /// without a shape (built from its stops) and one that cannot be built.
    #[test]
    fn messy_feed_loads() {
        let feed = Feed::new(
            "messy",
            &[
                (
                    "routes.txt",
                    "\u{feff}route_id,route_short_name,route_long_name,route_type\r\n\
                     \"agency:R 1\",01,\"Ben Thanh, Suoi Tien \"\"express\"\"\",3\r\n\
                     R2,,Loop,3\r\n",
                ),
                (
                    "trips.txt",
                    "\u{feff}route_id,service_id,trip_id,shape_id\r\n\
                     agency:R 1,WD,t:1,sh:out\r\n\
                     agency:R 1,WD,t:2,sh:back\r\n\
                     agency:R 1,WD,t:3,\r\n\
                     R2,WD,t:4,\r\n\
                     R2,WD,t:5\r\n",
                ),
                (
                    "shapes.txt",
                    "shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\r\n\
                     sh:out,10.90,106.70,10\r\n\
                     sh:out,10.90,106.72,30\r\n\
                     sh:out,10.90,106.71,20\r\n\
                     sh:back,10.901,106.72,0\r\n\
                     sh:back,10.901,106.70,7\r\n",
                ),
                (
                    "stops.txt",
                    "stop_id,stop_name,stop_lat,stop_lon,location_type,parent_station\r\n\
                     A,\"Stop A, north\",10.90,106.70,0,STN\r\n\
                     B,Stop B,10.90,106.72,0,\r\n\
                     C,Stop C,10.95,106.75,0,\r\n\
                     STN,Station,,,1,\r\n",
                ),
                (
                    "stop_times.txt",
                    "trip_id,arrival_time,departure_time,stop_id,stop_sequence,\r\n\
                     t:1,06:00:00,06:00:00,A,5,\r\n\
                     t:1,06:10:00,06:10:00,B,12,\r\n\
                     t:2,07:00:00,07:00:00,B,5,\r\n\
                     t:2,07:10:00,07:10:00,A,40,\r\n\
                     t:3,08:10:00,08:10:00,C,20,\r\n\
                     t:3,08:00:00,08:00:00,A,3,\r\n\
                     \r\n\
                     t:4,09:00:00,09:00:00,C,1,\r\n",
                ),
            ],
        );
        let (routes, sum) = load_gtfs(&feed.0).unwrap();
        assert_eq!(routes.len(), 1, "{routes:?}");
        let r = &routes[0];
        assert_eq!(r.id, "agency:R 1");
        assert_eq!(
            r.name.as_deref(),
            Some("01 Ben Thanh, Suoi Tien \"express\"")
        );
        // Two shapes by sequence (not file order) and one built from t:3's stops,
        // ordered by stop_sequence (A at 3 before C at 20).
        assert_eq!(r.parts.len(), 3);
        let xs: Vec<f64> = r.parts[0].0.iter().map(|c| c.x).collect();
        assert_eq!(xs, [106.72, 106.70]); // sh:back sorts first
        let xs: Vec<f64> = r.parts[1].0.iter().map(|c| c.x).collect();
        assert_eq!(xs, [106.70, 106.71, 106.72]);
        assert_eq!(
            r.parts[2].0,
            [
                Coord {
                    x: 106.70,
                    y: 10.90
                },
                Coord {
                    x: 106.75,
                    y: 10.95
                }
            ]
        );
        // Terminals A, B, C.
        assert_eq!(r.terminals.len(), 3);
        assert_eq!((sum.shapes, sum.built_shapes), (2, 1));
        let skipped: Vec<&str> = sum.skipped_trips.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(skipped, ["t:4", "t:5"]);
    }

    #[test]
    fn a_one_point_shape_is_left_out_not_fatal() {
        let feed = Feed::new(
            "onepoint",
            &[
                ("routes.txt", "route_id\nR1\nR2\n"),
                ("trips.txt", "route_id,trip_id,shape_id\nR1,T1,S1\nR1,T2,S2\nR2,T3,S2\n"),
                (
                    "shapes.txt",
                    "shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\nS1,10.9,106.7,1\nS1,10.9,106.8,2\nS2,10.9,106.7,1\n",
                ),
                ("stops.txt", "stop_id,stop_lat,stop_lon\nA,10.9,106.7\n"),
                ("stop_times.txt", "trip_id,stop_id,stop_sequence\nT1,A,1\n"),
            ],
        );
        let (routes, sum) = load_gtfs(&feed.0).unwrap();
        let ids: Vec<&str> = routes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["R1"]);
        assert_eq!((routes[0].parts.len(), sum.shapes), (1, 1));
        crate::geo::GeoIndex::new(routes, vec![]).unwrap();
    }

    #[test]
    fn broken_feeds_name_file_and_line() {
        let good = [
            ("routes.txt", "route_id\nR1\n"),
            ("trips.txt", "route_id,trip_id,shape_id\nR1,T1,S1\n"),
            (
                "shapes.txt",
                "shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\nS1,10.9,106.7,1\nS1,10.9,106.8,2\n",
            ),
            ("stops.txt", "stop_id,stop_lat,stop_lon\nA,10.9,106.7\n"),
            ("stop_times.txt", "trip_id,stop_id,stop_sequence\nT1,A,1\n"),
        ];
        let feed = Feed::new("broken", &good);
        assert_eq!(load_routes_gtfs(&feed.0).unwrap().len(), 1);
        let cases = [
            (
                "shapes.txt",
                "shape_id,shape_pt_lat,shape_pt_lon\nS1,10.9,106.7\n",
                "shapes.txt:1:",
                "shape_pt_sequence",
            ),
            (
                "shapes.txt",
                "shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\r\nS1,10.9,106.7,1\r\nS1,north,106.8,2\r\n",
                "shapes.txt:3:",
                "shape_pt_lat",
            ),
            (
                "shapes.txt",
                "shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\nS1,10.9,106.7,1\nS1,10.9,106.8,1\n",
                "shapes.txt:3:",
                "repeats",
            ),
            (
                "stop_times.txt",
                "trip_id,stop_id,stop_sequence\nT1,A,1\n\"T1\",NOPE,2\n",
                "stop_times.txt:3:",
                "NOPE",
            ),
            (
                "stop_times.txt",
                "trip_id,stop_id,stop_sequence\nT1,A,1\nT9,A,2\n",
                "stop_times.txt:3:",
                "T9",
            ),
            (
                "trips.txt",
                "route_id,trip_id,shape_id\nR1,T1,S1\nR7,T2,S1\n",
                "trips.txt:3:",
                "R7",
            ),
            (
                "trips.txt",
                "route_id,trip_id,shape_id\nR1,T1,S1,extra\n",
                "trips.txt:2:",
                "4 fields",
            ),
            (
                "stops.txt",
                "stop_id,stop_lat,stop_lon\nA,10.9,206.7\n",
                "stops.txt:2:",
                "out of range",
            ),
            ("routes.txt", "", "routes.txt:0:", "empty"),
            (
                "trips.txt",
                "route_id,trip_id,shape_id\nR1,T1,S9\n",
                "trips.txt",
                "S9",
            ),
        ];
        for (file, text, at, what) in cases {
            let feed = Feed::new("broken", &good);
            feed.write(file, text);
            let e = load_routes_gtfs(&feed.0).unwrap_err().to_string();
            assert!(e.contains(at) && e.contains(what), "{file}: {e}");
        }
        let e = load_routes_gtfs(Path::new("/nonexistent/feed")).unwrap_err();
        assert!(matches!(e, GeoError::Io { .. }), "{e}");
        assert!(e.to_string().contains("routes.txt"), "{e}");
    }
    /// The real feeds under fixtures/gtfs-real: every trip's shape (or the shape built
    /// from its stops) and its first and last stop are in its route, the counts taken
    /// from the files by plain splitting (those feeds quote nothing).
    #[test]
    fn real_feeds_index_every_trip() {
        use crate::geo::schedule::tests::table;
        use std::collections::BTreeMap as Map;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gtfs-real");
        let mut feeds: Vec<PathBuf> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        feeds.sort();
        assert!(feeds.len() >= 2, "{feeds:?}");
        for dir in feeds {
            let trips = table(&dir, "trips.txt");
            let stops: Map<String, (f64, f64)> = table(&dir, "stops.txt")
                .into_iter()
                .map(|r| {
                    let lat: f64 = r["stop_lat"].parse().unwrap();
                    let lon: f64 = r["stop_lon"].parse().unwrap();
                    (r["stop_id"].clone(), (lon, lat))
                })
                .collect();
            let mut points: Map<String, usize> = Map::new();
            for r in table(&dir, "shapes.txt") {
                *points.entry(r["shape_id"].clone()).or_default() += 1;
            }
            let mut times: Map<String, Map<u32, String>> = Map::new();
            for r in table(&dir, "stop_times.txt") {
                let seq: u32 = r["stop_sequence"].parse().unwrap();
                times
                    .entry(r["trip_id"].clone())
                    .or_default()
                    .insert(seq, r["stop_id"].clone());
            }
            // Per route: distinct shapes and stop patterns, and terminals.
            // Route id -> (shape ids, stop patterns of shapeless trips, terminal stops).
            type Want = (BTreeSet<String>, BTreeSet<Vec<String>>, BTreeSet<String>);
            let mut want: Map<String, Want> = Map::new();
            for t in &trips {
                let e = want.entry(t["route_id"].clone()).or_default();
                let seq = &times[&t["trip_id"]];
                match t.get("shape_id").filter(|s| !s.is_empty()) {
                    Some(s) => {
                        e.0.insert(s.clone());
                    }
                    None => {
                        e.1.insert(seq.values().cloned().collect());
                    }
                }
                e.2.insert(seq.values().next().unwrap().clone());
                e.2.insert(seq.values().last().unwrap().clone());
            }
            let (routes, sum) = load_gtfs(&dir).unwrap();
            let name = dir.display();
            assert_eq!(sum.trips, trips.len(), "{name}");
            assert!(
                sum.skipped_trips.is_empty(),
                "{name}: {:?}",
                sum.skipped_trips
            );
            let ids: Vec<&String> = want.keys().collect();
            let got: Vec<&String> = routes.iter().map(|r| &r.id).collect();
            assert_eq!(got, ids, "{name}");
            let index = crate::geo::GeoIndex::new(routes.clone(), vec![]).unwrap();
            for r in &routes {
                let (shapes, patterns, ends) = &want[&r.id];
                let mut sizes: Vec<usize> = r.parts.iter().map(|p| p.0.len()).collect();
                let mut expected: Vec<usize> = shapes
                    .iter()
                    .map(|s| points[s])
                    .chain(patterns.iter().map(Vec::len))
                    .collect();
                sizes.sort();
                expected.sort();
                assert_eq!(sizes, expected, "{name} {}", r.id);
                assert_eq!(r.terminals.len(), ends.len(), "{name} {}", r.id);
                let ri = index.route(&r.id).unwrap();
                for t in trips.iter().filter(|t| t["route_id"] == r.id) {
                    let seq = &times[&t["trip_id"]];
                    for (k, stop) in seq.values().enumerate() {
                        let (lon, lat) = stops[stop];
                        // Stops sit beside the street the shape follows.
                        let d = ri.locate(lon, lat).distance_m;
                        assert!(d < 60.0, "{name} {} stop {stop}: {d} m", r.id);
                        if k == 0 || k == seq.len() - 1 {
                            assert!(ri.at_terminal(lon, lat), "{name} {} {stop}", r.id);
                        }
                    }
                }
            }
        }
    }
}
