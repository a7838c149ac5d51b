//! Zones: depots, terminals, ports, restricted areas and speed zones, and a fast
//! point-in-polygon test for them.

use std::fmt;

use ::geo::{BoundingRect, MultiPolygon};

use crate::domain::VehicleClass;

/// What a zone is for; decides which rule looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZoneKind {
    /// A cooperative's depot: enter/exit events.
    Depot,
    /// A bus or coach terminal: enter/exit events.
    Terminal,
    /// A port or inland container depot (ICD): enter/exit events.
    Port,
    /// An area banned to some classes at some hours: violations.
    Restricted,
    /// An area with its own speed limit.
    SpeedZone,
}

impl ZoneKind {
    /// Parses the GeoJSON `kind` property (`port` also accepts `icd`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "depot" => Self::Depot,
            "terminal" => Self::Terminal,
            "port" | "icd" => Self::Port,
            "restricted" => Self::Restricted,
            "speed_zone" => Self::SpeedZone,
            _ => return None,
        })
    }

    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Depot => "depot",
            Self::Terminal => "terminal",
            Self::Port => "port",
            Self::Restricted => "restricted",
            Self::SpeedZone => "speed_zone",
        }
    }

    /// Entering and leaving zones of this kind are reported as geofence events.
    pub fn has_events(self) -> bool {
        matches!(self, Self::Depot | Self::Terminal | Self::Port)
    }
}

/// A range of local time of day, `from` inclusive to `to` exclusive, in minutes after
/// local midnight; wraps midnight when `from > to`; `from == to` is the whole day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    from_min: u16,
    to_min: u16,
}

impl TimeRange {
    /// Parses `"HH:MM"` bounds (`"24:00"` allowed as an end).
    pub fn parse(from: &str, to: &str) -> Result<Self, String> {
        fn minutes(s: &str) -> Option<u16> {
            let (h, m) = s.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        }
        let f = minutes(from).filter(|&m| m < 1440);
        let t = minutes(to);
        match (f, t) {
            (Some(from_min), Some(to_min)) => Ok(Self { from_min, to_min }),
            _ => Err(format!(
                "bad time range {from:?}..{to:?}, expected \"HH:MM\""
            )),
        }
    }

    /// Whether `minute_of_day` (0..1440, local) falls in the range.
    pub fn contains(&self, minute_of_day: u16) -> bool {
        let (f, t) = (self.from_min, self.to_min % 1440);
        match f.cmp(&t) {
            std::cmp::Ordering::Less => (f..t).contains(&minute_of_day),
            std::cmp::Ordering::Greater => minute_of_day >= f || minute_of_day < t,
            // "00:00"-"24:00" or any from == to: all day.
            std::cmp::Ordering::Equal => true,
        }
    }
}

impl fmt::Display for TimeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.from_min / 60,
            self.from_min % 60,
            self.to_min / 60,
            self.to_min % 60
        )
    }
}

/// A zone as loaded from GeoJSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Unique id.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// What the zone is for.
    pub kind: ZoneKind,
    /// Vehicle classes concerned; empty means all.
    pub classes: Vec<VehicleClass>,
    /// Local hours when the classes concerned may not be inside (restricted zones).
    pub banned_hours: Vec<TimeRange>,
    /// Speed limit inside, km/h, for the classes concerned.
    pub speed_limit_kmh: Option<f64>,
    /// The area, x = lon and y = lat in degrees.
    pub area: MultiPolygon<f64>,
}

impl Zone {
    /// Whether the zone concerns a vehicle of `class` (`None`: unregistered vehicle,
    /// concerned only by zones for all classes).
    pub fn applies_to(&self, class: Option<VehicleClass>) -> bool {
        self.classes.is_empty() || class.is_some_and(|c| self.classes.contains(&c))
    }

    /// Whether `minute_of_day` (local) is inside one of the banned ranges.
    pub fn banned_at(&self, minute_of_day: u16) -> bool {
        self.banned_hours.iter().any(|r| r.contains(minute_of_day))
    }
}

/// A stable key for a zone id (64-bit FNV-1a of the id): per-vehicle state refers to
/// zones by key so it survives an index reload without strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZoneKey(pub u64);

impl ZoneKey {
    /// The key of a zone id.
    pub fn of(id: &str) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self(h)
    }
}

/// Point-in-polygon over all rings of a zone (even-odd rule), in degrees.
///
/// Small zones test every edge; larger ones bucket their edges into horizontal bands
/// so a query tests only the edges of one band, keeping a city-boundary polygon of
/// thousands of vertices as cheap as a depot rectangle. A point exactly on an edge may
/// be reported either way.
#[derive(Debug)]
pub(crate) struct Area {
    /// Edges as `[ax, ay, bx, by]`.
    edges: Vec<[f64; 4]>,
    bands: Option<Bands>,
}

#[derive(Debug)]
struct Bands {
    y0: f64,
    inv_h: f64,
    /// CSR layout: band `i` holds `items[starts[i]..starts[i + 1]]`.
    starts: Vec<u32>,
    items: Vec<u32>,
}

/// Below this many edges a linear scan beats the band lookup.
const LINEAR_MAX_EDGES: usize = 32;

impl Area {
    /// Builds the edge list (and bands) of a multipolygon.
    pub(crate) fn new(mp: &MultiPolygon<f64>) -> Self {
        let mut edges = Vec::new();
        for poly in &mp.0 {
            for ring in std::iter::once(poly.exterior()).chain(poly.interiors()) {
                for w in ring.0.windows(2) {
                    if w[0] != w[1] {
                        edges.push([w[0].x, w[0].y, w[1].x, w[1].y]);
                    }
                }
            }
        }
        let bands = match mp.bounding_rect() {
            Some(r) if edges.len() > LINEAR_MAX_EDGES && r.height() > 0.0 => {
                Some(Bands::new(&edges, r.min().y, r.height()))
            }
            _ => None,
        };
        Self { edges, bands }
    }

    /// Edges as `[ax, ay, bx, by]`, degrees.
    pub(crate) fn edges(&self) -> &[[f64; 4]] {
        &self.edges
    }

    /// Whether the point (degrees) is inside.
    #[inline]
    pub(crate) fn contains(&self, x: f64, y: f64) -> bool {
        let mut inside = false;
        let mut test = |e: &[f64; 4]| {
            let [ax, ay, bx, by] = *e;
            if (ay > y) != (by > y) && x < (bx - ax) * (y - ay) / (by - ay) + ax {
                inside = !inside;
            }
        };
        match &self.bands {
            None => self.edges.iter().for_each(&mut test),
            Some(b) => {
                let Some(band) = b.band_of(y) else {
                    return false;
                };
                let (s, e) = (b.starts[band] as usize, b.starts[band + 1] as usize);
                for &i in &b.items[s..e] {
                    test(&self.edges[i as usize]);
                }
            }
        }
        inside
    }
}

impl Bands {
    fn new(edges: &[[f64; 4]], y0: f64, height: f64) -> Self {
        let n = (edges.len() / 2).clamp(1, 4096);
        let inv_h = n as f64 / height;
        let range = |e: &[f64; 4]| {
            let (lo, hi) = (e[1].min(e[3]), e[1].max(e[3]));
            let clamp = |v: f64| (((v - y0) * inv_h).floor().max(0.0) as usize).min(n - 1);
            (clamp(lo), clamp(hi))
        };
        let mut counts = vec![0u32; n + 1];
        for e in edges {
            let (a, b) = range(e);
            for c in &mut counts[a..=b] {
                *c += 1;
            }
        }
        let mut starts = vec![0u32; n + 1];
        for i in 0..n {
            starts[i + 1] = starts[i] + counts[i];
        }
        let mut fill = starts.clone();
        let mut items = vec![0u32; starts[n] as usize];
        for (idx, e) in edges.iter().enumerate() {
            let (a, b) = range(e);
            for f in &mut fill[a..=b] {
                items[*f as usize] = idx as u32;
                *f += 1;
            }
        }
        Self {
            y0,
            inv_h,
            starts,
            items,
        }
    }

    fn band_of(&self, y: f64) -> Option<usize> {
        let n = self.starts.len() - 1;
        let b = (y - self.y0) * self.inv_h;
        if !(0.0..=n as f64).contains(&b) {
            return None;
        }
        Some((b as usize).min(n - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::geo::{Contains, Coord, LineString, Point, Polygon};

    fn star(n: usize, cx: f64, cy: f64) -> Polygon<f64> {
        // A spiky star with a hole: exercises many edges and the even-odd rule.
        let ring = |r_out: f64, r_in: f64| -> LineString<f64> {
            let mut pts: Vec<Coord<f64>> = (0..n)
                .map(|i| {
                    let a = i as f64 / n as f64 * std::f64::consts::TAU;
                    let r = if i % 2 == 0 { r_out } else { r_in };
                    Coord {
                        x: cx + r * a.cos(),
                        y: cy + r * a.sin(),
                    }
                })
                .collect();
            pts.push(pts[0]);
            LineString(pts)
        };
        Polygon::new(ring(0.05, 0.03), vec![ring(0.01, 0.008)])
    }

    #[test]
    fn banded_and_linear_agree_with_geo_contains() {
        for n in [8usize, 400] {
            let poly = star(n, 106.7, 10.95);
            let area = Area::new(&MultiPolygon(vec![poly.clone()]));
            assert_eq!(area.bands.is_some(), n > LINEAR_MAX_EDGES);
            let mut seed = 12345u64;
            for _ in 0..5000 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let x = 106.64 + (seed >> 11) as f64 / (1u64 << 53) as f64 * 0.12;
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let y = 10.89 + (seed >> 11) as f64 / (1u64 << 53) as f64 * 0.12;
                assert_eq!(
                    area.contains(x, y),
                    poly.contains(&Point::new(x, y)),
                    "n={n} at {x},{y}"
                );
            }
        }
    }

    #[test]
    fn time_ranges_plain_and_wrapping() {
        let day = TimeRange::parse("06:00", "22:00").unwrap();
        assert!(!day.contains(5 * 60 + 59));
        assert!(day.contains(6 * 60));
        assert!(day.contains(21 * 60 + 59));
        assert!(!day.contains(22 * 60));
        let night = TimeRange::parse("22:00", "06:00").unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && !night.contains(12 * 60));
        assert!(TimeRange::parse("00:00", "24:00").unwrap().contains(1439));
        assert!(TimeRange::parse("25:00", "06:00").is_err());
        assert!(TimeRange::parse("6h", "07:00").is_err());
        assert_eq!(day.to_string(), "06:00-22:00");
    }

    #[test]
    fn zone_key_is_fnv1a() {
        // FNV-1a 64 test vector: "a" -> af63dc4c8601ec8c.
        assert_eq!(ZoneKey::of("a").0, 0xaf63_dc4c_8601_ec8c);
    }
}
