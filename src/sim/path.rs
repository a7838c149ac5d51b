//! Roads for simulated vehicles: WGS84 polylines with cumulative length, and what
//! drivers do on them (speed per section, speed zones, bus stops, traffic lights).
//!
//! Lengths use an equirectangular projection at each segment's mid-latitude: over the
//! tens of kilometres of a fleet's area that is within 0.1 % of the geodesic, and it
//! keeps interpolation a few multiplications per fix.

use geo::{Contains, Point, Polygon};

/// Metres per degree of latitude (mean Earth radius 6,371,008.8 m).
pub(crate) const M_PER_DEG_LAT: f64 = 111_195.08;

/// Metres per degree of longitude at latitude `lat_deg`.
pub(crate) fn m_per_deg_lon(lat_deg: f64) -> f64 {
    M_PER_DEG_LAT * lat_deg.to_radians().cos()
}

/// A polyline in WGS84 degrees (lat/lon order here), with distance along it in metres.
#[derive(Debug, Clone)]
pub(crate) struct Path {
    lat: Vec<f64>,
    lon: Vec<f64>,
    /// `cum_m[i]`: distance from the first vertex to vertex `i`.
    cum_m: Vec<f64>,
    /// `bearing_deg[i]`: bearing of segment `i` (vertex `i` to `i + 1`), clockwise from north.
    bearing_deg: Vec<f64>,
}

impl Path {
    /// Builds a path from `(lat, lon)` vertices; repeated vertices are dropped.
    /// `None` when fewer than two distinct vertices remain.
    pub(crate) fn new(points: &[(f64, f64)]) -> Option<Path> {
        let mut lat = Vec::with_capacity(points.len());
        let mut lon = Vec::with_capacity(points.len());
        let mut cum_m = Vec::with_capacity(points.len());
        let mut bearing_deg = Vec::with_capacity(points.len());
        for &(la, lo) in points {
            if let (Some(&pla), Some(&plo)) = (lat.last(), lon.last()) {
                let (dx, dy) = delta_m(pla, plo, la, lo);
                let d = dx.hypot(dy);
                if d < 0.01 {
                    continue;
                }
                bearing_deg.push(dx.atan2(dy).to_degrees().rem_euclid(360.0));
                cum_m.push(cum_m.last().copied().unwrap_or(0.0) + d);
            } else {
                cum_m.push(0.0);
            }
            lat.push(la);
            lon.push(lo);
        }
        (lat.len() >= 2).then_some(Path {
            lat,
            lon,
            cum_m,
            bearing_deg,
        })
    }

    /// Total length, metres.
    pub(crate) fn length_m(&self) -> f64 {
        *self.cum_m.last().expect("a path has two vertices")
    }

    /// Vertices as `(lat, lon)`.
    pub(crate) fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.lat.iter().copied().zip(self.lon.iter().copied())
    }

    /// The same line driven the other way.
    pub(crate) fn reversed(&self) -> Path {
        let pts: Vec<(f64, f64)> = self
            .points()
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Path::new(&pts).expect("reversing keeps the vertices")
    }

    /// Index of the segment holding distance `s_m`, searching from `hint` (vehicles move
    /// forward, so the search is almost always zero or one step).
    fn segment_at(&self, s_m: f64, hint: usize) -> usize {
        let last = self.bearing_deg.len() - 1;
        let mut i = hint.min(last);
        while i < last && self.cum_m[i + 1] < s_m {
            i += 1;
        }
        while i > 0 && self.cum_m[i] > s_m {
            i -= 1;
        }
        i
    }

    /// Position and travel bearing at distance `s_m` along the path (clamped to its
    /// ends): `(lat, lon, bearing_deg)`. `hint` caches the segment between calls.
    pub(crate) fn point_at(&self, s_m: f64, hint: &mut usize) -> (f64, f64, f64) {
        let i = self.segment_at(s_m, *hint);
        *hint = i;
        let seg_m = self.cum_m[i + 1] - self.cum_m[i];
        let t = ((s_m - self.cum_m[i]) / seg_m).clamp(0.0, 1.0);
        (
            self.lat[i] + (self.lat[i + 1] - self.lat[i]) * t,
            self.lon[i] + (self.lon[i + 1] - self.lon[i]) * t,
            self.bearing_deg[i],
        )
    }

    /// Distance along the path of the vertex nearest to `(lat, lon)`.
    pub(crate) fn nearest_vertex_m(&self, lat: f64, lon: f64) -> f64 {
        let mut best = (f64::INFINITY, 0.0);
        for (i, (la, lo)) in self.points().enumerate() {
            let (dx, dy) = delta_m(lat, lon, la, lo);
            let d = dx.hypot(dy);
            if d < best.0 {
                best = (d, self.cum_m[i]);
            }
        }
        best.1
    }

    /// This path with the stretch `from_m..to_m` replaced by a parallel street
    /// `offset_m` to the right of travel, reached and left over `ramp_m` diagonals:
    /// a bus taking a detour around road works.
    pub(crate) fn with_detour(&self, from_m: f64, to_m: f64, offset_m: f64, ramp_m: f64) -> Path {
        let mut pts: Vec<(f64, f64)> = self
            .points()
            .zip(&self.cum_m)
            .filter(|(_, &c)| c < from_m)
            .map(|(p, _)| p)
            .collect();
        let mut hint = 0;
        let samples = ((to_m - from_m) / 50.0).ceil().max(1.0) as usize;
        for k in 0..=samples {
            let s = from_m + (to_m - from_m) * k as f64 / samples as f64;
            let (la, lo, brg) = self.point_at(s, &mut hint);
            let ramp = ((s - from_m) / ramp_m)
                .min((to_m - s) / ramp_m)
                .clamp(0.0, 1.0);
            let off = offset_m * ramp;
            let b = brg.to_radians();
            // Right of a bearing b: east component cos b, north component -sin b.
            pts.push((
                la - b.sin() * off / M_PER_DEG_LAT,
                lo + b.cos() * off / m_per_deg_lon(la),
            ));
        }
        pts.extend(
            self.points()
                .zip(&self.cum_m)
                .filter(|(_, &c)| c > to_m)
                .map(|(p, _)| p),
        );
        Path::new(&pts).expect("a detour keeps both ends")
    }
}

/// Local east/north offset in metres from `(lat1, lon1)` to `(lat2, lon2)`.
pub(crate) fn delta_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> (f64, f64) {
    let mid = 0.5 * (lat1 + lat2);
    (
        (lon2 - lon1) * m_per_deg_lon(mid),
        (lat2 - lat1) * M_PER_DEG_LAT,
    )
}

/// A polygon with a speed limit (from the zones fixture).
#[derive(Debug, Clone)]
pub(crate) struct SpeedZone {
    /// Polygon in `geo` order (x = lon, y = lat).
    pub polygon: Polygon<f64>,
    pub limit_kmh: f64,
}

/// From where on a road (metres) a section's base speed applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Section {
    pub from_m: f64,
    pub kmh: f64,
}

/// A stretch of a road inside a speed zone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ZoneWindow {
    pub from_m: f64,
    pub to_m: f64,
    pub limit_kmh: f64,
}

/// A path with how it is driven: base speed per section, speed-zone stretches, where
/// buses stop and where traffic lights may stop anyone.
#[derive(Debug, Clone)]
pub(crate) struct Road {
    pub path: Path,
    /// Sorted by `from_m`; the first starts at 0.
    sections: Vec<Section>,
    pub zones: Vec<ZoneWindow>,
    pub stops_m: Vec<f64>,
    pub lights_m: Vec<f64>,
}

/// Bus stops are about this far apart on town routes.
const STOP_SPACING_M: f64 = 800.0;
/// Signalised junctions are about this far apart.
const LIGHT_SPACING_M: f64 = 1_700.0;

impl Road {
    /// A road along `path`. `breakpoints` are `(lat, lon, kmh)`: from the vertex nearest
    /// to each point on, the base speed is `kmh` (before the first, the first's).
    pub(crate) fn new(path: Path, breakpoints: &[(f64, f64, f64)], zones: &[SpeedZone]) -> Road {
        let mut sections: Vec<Section> = breakpoints
            .iter()
            .map(|&(lat, lon, kmh)| Section {
                from_m: path.nearest_vertex_m(lat, lon),
                kmh,
            })
            .collect();
        sections.sort_by(|a, b| a.from_m.total_cmp(&b.from_m));
        match sections.first_mut() {
            Some(first) => first.from_m = 0.0,
            None => sections.push(Section {
                from_m: 0.0,
                kmh: 40.0,
            }),
        }
        Road::assemble(path, sections, zones)
    }

    fn assemble(path: Path, sections: Vec<Section>, zones: &[SpeedZone]) -> Road {
        let length_m = path.length_m();
        let zones = zone_windows(&path, zones);
        let stops_m = spaced(length_m, STOP_SPACING_M, 0.0, 250.0);
        let lights_m: Vec<f64> = spaced(length_m, LIGHT_SPACING_M, 600.0, 300.0)
            .into_iter()
            .filter(|l| stops_m.iter().all(|s| (s - l).abs() > 120.0))
            .collect();
        Road {
            path,
            sections,
            zones,
            stops_m,
            lights_m,
        }
    }

    /// The same road driven the other way: sections mirrored, stops on the other side.
    pub(crate) fn reversed(&self, zones: &[SpeedZone]) -> Road {
        let length_m = self.path.length_m();
        let mut sections: Vec<Section> = self
            .sections
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let end = self.sections.get(i + 1).map_or(length_m, |n| n.from_m);
                Section {
                    from_m: length_m - end,
                    kmh: s.kmh,
                }
            })
            .collect();
        sections.sort_by(|a, b| a.from_m.total_cmp(&b.from_m));
        sections[0].from_m = 0.0;
        Road::assemble(self.path.reversed(), sections, zones)
    }

    /// Length, metres.
    pub(crate) fn length_m(&self) -> f64 {
        self.path.length_m()
    }

    /// Base speed at `s_m`; `hint` caches the section index.
    pub(crate) fn section_kmh(&self, s_m: f64, hint: &mut usize) -> f64 {
        let last = self.sections.len() - 1;
        let mut i = (*hint).min(last);
        while i < last && self.sections[i + 1].from_m <= s_m {
            i += 1;
        }
        while i > 0 && self.sections[i].from_m > s_m {
            i -= 1;
        }
        *hint = i;
        self.sections[i].kmh
    }

    /// The speed-zone stretch holding `s_m`, if any.
    pub(crate) fn zone_at(&self, s_m: f64) -> Option<&ZoneWindow> {
        self.zones
            .iter()
            .find(|z| (z.from_m..z.to_m).contains(&s_m))
    }
}

/// Positions every `spacing_m` (with a fixed ±15 % irregularity, so stops do not look
/// machine-placed), starting at `first_m`, at least `margin_m` from either end.
fn spaced(length_m: f64, spacing_m: f64, first_m: f64, margin_m: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut k = 0u32;
    loop {
        let wobble = f64::from((k * 7919) % 31) / 30.0 - 0.5; // -0.5..=0.5
        let s = first_m + spacing_m * (f64::from(k) + 0.3 * wobble);
        k += 1;
        if s > length_m - margin_m {
            return out;
        }
        if s >= margin_m {
            out.push(s);
        }
    }
}

/// Stretches of `path` inside each speed zone, sampled every 10 m.
fn zone_windows(path: &Path, zones: &[SpeedZone]) -> Vec<ZoneWindow> {
    const STEP_M: f64 = 10.0;
    let mut out = Vec::new();
    let n = (path.length_m() / STEP_M).ceil() as usize;
    for zone in zones {
        let mut open: Option<f64> = None;
        let mut hint = 0;
        for k in 0..=n {
            let s = (k as f64 * STEP_M).min(path.length_m());
            let (lat, lon, _) = path.point_at(s, &mut hint);
            let inside = zone.polygon.contains(&Point::new(lon, lat));
            match (inside, open) {
                (true, None) => open = Some(s),
                (false, Some(from_m)) => {
                    out.push(ZoneWindow {
                        from_m,
                        to_m: s,
                        limit_kmh: zone.limit_kmh,
                    });
                    open = None;
                }
                _ => {}
            }
        }
        if let Some(from_m) = open {
            out.push(ZoneWindow {
                from_m,
                to_m: path.length_m(),
                limit_kmh: zone.limit_kmh,
            });
        }
    }
    out.sort_by(|a, b| a.from_m.total_cmp(&b.from_m));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Path {
        // About 1.1 km due north, then 1.1 km due east.
        Path::new(&[(10.90, 106.70), (10.91, 106.70), (10.91, 106.71)]).unwrap()
    }

    #[test]
    fn length_and_interpolation() {
        let p = line();
        assert!(
            (p.length_m() - (1_111.95 + 1_092.0)).abs() < 5.0,
            "{}",
            p.length_m()
        );
        let mut hint = 0;
        let (lat, lon, brg) = p.point_at(555.975, &mut hint);
        assert!((lat - 10.905).abs() < 1e-7, "{lat}");
        assert!(lon == 106.70 && brg.abs() < 1e-9, "{lon} {brg}");
        let (_, _, brg) = p.point_at(1_500.0, &mut hint);
        assert!((brg - 90.0).abs() < 1e-6, "{brg}");
        // Going back along the path still finds the right segment.
        let (lat, _, _) = p.point_at(0.0, &mut hint);
        assert_eq!(lat, 10.90);
    }

    #[test]
    fn reversed_has_same_length_and_opposite_bearing() {
        let p = line();
        let r = p.reversed();
        assert!((p.length_m() - r.length_m()).abs() < 1e-6);
        let mut hint = 0;
        assert!((r.point_at(10.0, &mut hint).2 - 270.0).abs() < 1e-6);
    }

    #[test]
    fn detour_goes_right_of_travel() {
        let p = Path::new(&[(10.90, 106.70), (10.95, 106.70)]).unwrap();
        let d = p.with_detour(1_000.0, 3_000.0, 400.0, 200.0);
        let mut hint = 0;
        let (_, lon, _) = d.point_at(d.length_m() / 2.0, &mut hint);
        let east_m = (lon - 106.70) * m_per_deg_lon(10.92);
        assert!((east_m - 400.0).abs() < 1.0, "{east_m}");
    }

    #[test]
    fn sections_mirror_on_reversal() {
        let p = Path::new(&[(10.90, 106.70), (10.91, 106.70), (10.92, 106.70)]).unwrap();
        let road = Road::new(p, &[(10.90, 106.70, 30.0), (10.91, 106.70, 60.0)], &[]);
        let back = road.reversed(&[]);
        let mut h = 0;
        assert_eq!(road.section_kmh(100.0, &mut h), 30.0);
        assert_eq!(road.section_kmh(2_000.0, &mut h), 60.0);
        let mut h = 0;
        assert_eq!(back.section_kmh(100.0, &mut h), 60.0);
        assert_eq!(back.section_kmh(2_000.0, &mut h), 30.0);
    }
}
