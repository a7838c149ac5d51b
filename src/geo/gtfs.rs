//! GTFS loader: a route's line is the shape of its trips (the longest when its trips
//! use several shapes). Reads `routes.txt`, `trips.txt` and `shapes.txt`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ::geo::{Coord, LineString};

use super::error::GeoError;
use super::frame::distance_m;
use super::route::Route;

/// Reads the routes of the GTFS feed in directory `dir`, sorted by route id. Routes
/// whose trips have no shape are skipped (logged): they cannot be checked.
pub fn load_routes_gtfs(dir: &Path) -> Result<Vec<Route>, GeoError> {
    let routes = Table::read(&dir.join("routes.txt"))?;
    let trips = Table::read(&dir.join("trips.txt"))?;
    let shapes = Table::read(&dir.join("shapes.txt"))?;

    // shape_id -> points ordered by shape_pt_sequence.
    let (sid, slat, slon, sseq) = (
        shapes.col("shape_id")?,
        shapes.col("shape_pt_lat")?,
        shapes.col("shape_pt_lon")?,
        shapes.col("shape_pt_sequence")?,
    );
    let mut points: HashMap<&str, BTreeMap<u32, Coord<f64>>> = HashMap::new();
    for (line, row) in shapes.rows() {
        let num = |i: usize, what: &str| -> Result<f64, GeoError> {
            row[i]
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| shapes.err(line, format!("{what} is not a number: {:?}", row[i])))
        };
        let (lat, lon) = (num(slat, "shape_pt_lat")?, num(slon, "shape_pt_lon")?);
        if !((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)) {
            return Err(shapes.err(line, format!("coordinates out of range: {lat}, {lon}")));
        }
        let seq: u32 = row[sseq].trim().parse().map_err(|_| {
            shapes.err(
                line,
                format!("shape_pt_sequence is not an integer: {:?}", row[sseq]),
            )
        })?;
        if points
            .entry(row[sid].as_str())
            .or_default()
            .insert(seq, Coord { x: lon, y: lat })
            .is_some()
        {
            return Err(shapes.err(line, format!("shape {} repeats sequence {seq}", row[sid])));
        }
    }
    let lines: HashMap<&str, (LineString<f64>, f64)> = points
        .into_iter()
        .map(|(id, pts)| {
            let ls = LineString(pts.into_values().collect());
            let len: f64 =
                ls.0.windows(2)
                    .map(|w| distance_m(w[0].x, w[0].y, w[1].x, w[1].y))
                    .sum();
            (id, (ls, len))
        })
        .collect();

    // route_id -> the longest shape among its trips.
    let (troute, tshape) = (trips.col("route_id")?, trips.col_opt("shape_id"));
    let mut best: HashMap<&str, &str> = HashMap::new();
    for (line, row) in trips.rows() {
        let Some(shape) = tshape.map(|i| row[i].as_str()).filter(|s| !s.is_empty()) else {
            continue;
        };
        let Some((_, len)) = lines.get(shape) else {
            return Err(trips.err(line, format!("trip uses unknown shape_id {shape:?}")));
        };
        let entry = best.entry(row[troute].as_str()).or_insert(shape);
        // Ties go to the smaller shape id so the result never depends on file order.
        let (_, cur) = &lines[*entry];
        if *len > *cur || (*len == *cur && shape < *entry) {
            *entry = shape;
        }
    }

    let (rid, short, long) = (
        routes.col("route_id")?,
        routes.col_opt("route_short_name"),
        routes.col_opt("route_long_name"),
    );
    let mut out = Vec::new();
    for (line, row) in routes.rows() {
        let id = row[rid].trim();
        if id.is_empty() {
            return Err(routes.err(line, "empty route_id".into()));
        }
        let Some(shape) = best.get(id) else {
            tracing::warn!(route_id = id, feed = %dir.display(), "GTFS route has no shaped trip; skipped");
            continue;
        };
        let pick = |c: Option<usize>| c.map(|i| row[i].trim()).filter(|s| !s.is_empty());
        let name = match (pick(short), pick(long)) {
            (Some(s), Some(l)) => Some(format!("{s} {l}")),
            (s, l) => s.or(l).map(str::to_string),
        };
        out.push(Route {
            id: id.to_string(),
            name,
            corridor_m: None,
            parts: vec![lines[shape].0.clone()],
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// A CSV file with a header row (RFC 4180: quotes, doubled quotes, CRLF, BOM).
struct Table {
    file: PathBuf,
    header: Vec<String>,
    /// (line number of the row's start, fields), padded to the header's width.
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    fn read(file: &Path) -> Result<Self, GeoError> {
        let text = std::fs::read_to_string(file).map_err(|source| GeoError::Io {
            path: file.to_path_buf(),
            source,
        })?;
        let mut records = parse_csv(text.strip_prefix('\u{feff}').unwrap_or(&text)).into_iter();
        let err = |line, reason: String| GeoError::Gtfs {
            file: file.to_path_buf(),
            line,
            reason,
        };
        let (_, header) = records.next().ok_or_else(|| err(0, "empty file".into()))?;
        let header: Vec<String> = header.into_iter().map(|h| h.trim().to_string()).collect();
        let mut rows = Vec::new();
        for (line, mut rec) in records {
            if rec.len() == 1 && rec[0].trim().is_empty() {
                continue;
            }
            if rec.len() > header.len() {
                return Err(err(
                    line,
                    format!("{} fields, header has {}", rec.len(), header.len()),
                ));
            }
            rec.resize(header.len(), String::new());
            rows.push((line, rec));
        }
        Ok(Self {
            file: file.to_path_buf(),
            header,
            rows,
        })
    }

    fn col_opt(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    fn col(&self, name: &str) -> Result<usize, GeoError> {
        self.col_opt(name)
            .ok_or_else(|| self.err(1, format!("missing column {name}")))
    }

    fn rows(&self) -> impl Iterator<Item = (usize, &Vec<String>)> {
        self.rows.iter().map(|(l, r)| (*l, r))
    }

    fn err(&self, line: usize, reason: String) -> GeoError {
        GeoError::Gtfs {
            file: self.file.clone(),
            line,
            reason,
        }
    }
}

/// Splits CSV text into records of fields, each with the line number it starts on.
fn parse_csv(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut rec = Vec::new();
    let mut field = String::new();
    let (mut line, mut start_line) = (1usize, 1usize);
    let mut in_quotes = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (in_quotes, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => in_quotes = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            (false, '"') => in_quotes = true,
            (false, ',') => rec.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                rec.push(std::mem::take(&mut field));
                out.push((start_line, std::mem::take(&mut rec)));
                line += 1;
                start_line = line;
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !rec.is_empty() {
        rec.push(field);
        out.push((start_line, rec));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gtfs")
    }

    #[test]
    fn csv_handles_quotes_crlf_and_blank_lines() {
        let recs = parse_csv("a,b,c\r\n1,\"x, \"\"y\"\"\",3\r\n\r\n4,5\n");
        assert_eq!(recs[0].1, ["a", "b", "c"]);
        assert_eq!(recs[1].1, ["1", "x, \"y\"", "3"]);
        assert_eq!(recs[1].0, 2);
        assert_eq!(recs[3].1, ["4", "5"]);
    }

    #[test]
    fn loads_the_fixture_feed_with_the_longest_shape() {
        let routes = load_routes_gtfs(&fixture()).unwrap();
        let ids: Vec<&str> = routes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["BD-GTFS-01", "BD-GTFS-02"]);
        // BD-GTFS-01 has a full shape and a short-turn shape: the full one wins.
        assert_eq!(routes[0].parts[0].0.len(), 9);
        assert!(routes[0]
            .name
            .as_deref()
            .unwrap_or("")
            .contains("Thu Dau Mot"));
    }

    #[test]
    fn missing_file_and_column_are_reported_with_the_path() {
        let e = load_routes_gtfs(Path::new("/nonexistent/feed")).unwrap_err();
        assert!(matches!(e, GeoError::Io { .. }), "{e}");
        let dir = std::env::temp_dir().join(format!("fw-gtfs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("routes.txt"), "route_id\nR1\n").unwrap();
        std::fs::write(
            dir.join("trips.txt"),
            "route_id,trip_id,shape_id\nR1,T1,S1\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("shapes.txt"),
            "shape_id,shape_pt_lat,shape_pt_lon\nS1,10.9,106.7\n",
        )
        .unwrap();
        let e = load_routes_gtfs(&dir).unwrap_err().to_string();
        assert!(
            e.contains("shapes.txt") && e.contains("shape_pt_sequence"),
            "{e}"
        );
        std::fs::write(
            dir.join("shapes.txt"),
            "shape_id,shape_pt_lat,shape_pt_lon,shape_pt_sequence\nS1,10.9,106.7,1\nS1,north,106.8,2\n",
        )
        .unwrap();
        let e = load_routes_gtfs(&dir).unwrap_err().to_string();
        assert!(e.contains(":3:") && e.contains("shape_pt_lat"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
