//! [`GeoIndex`]: routes and zones made ready for per-fix queries.

use ::geo::BoundingRect;

use super::error::GeoError;
use super::frame::M_PER_DEG;
use super::grid::{CellGrid, Layout};
use super::route::{Route, RouteIndex, RouteLocation};
use super::schedule::Schedule;
use super::zone::{Area, Zone, ZoneKey};
use crate::domain::FastMap;

/// Target cell size of the zone grid, metres.
const ZONE_CELL_M: f64 = 250.0;
/// Cap on zone grid cells (a country-wide zone set gets larger cells).
const ZONE_MAX_CELLS: usize = 1 << 20;
/// Flag on a zone grid item: the whole cell is inside the zone, no polygon test.
const INSIDE: u32 = 1 << 31;

/// All routes and zones, indexed. Built once, immutable: share it in an `Arc` and
/// replace it whole on reload.
///
/// Per query the cost does not grow with the number of zones or route vertices:
/// zones sit in a uniform grid (about 250 m cells) whose cells list the zones that
/// cover them entirely (answered without a polygon test) or partly (answered by a
/// banded point-in-polygon test); each route has its own segment grid and R-tree in a
/// local metric plane.
#[derive(Debug)]
pub struct GeoIndex {
    routes: FastMap<String, RouteIndex>,
    zones: Vec<Zone>,
    keys: Vec<ZoneKey>,
    areas: Vec<Area>,
    by_key: FastMap<ZoneKey, u32>,
    grid: Option<CellGrid>,
    /// GTFS schedules (one per feed) and the feed of each route that has trips.
    schedules: Vec<Schedule>,
    route_schedule: FastMap<String, u32>,
}

impl Default for GeoIndex {
    fn default() -> Self {
        Self::empty()
    }
}

impl GeoIndex {
    /// An index without routes or zones.
    pub fn empty() -> Self {
        Self {
            routes: FastMap::default(),
            zones: Vec::new(),
            keys: Vec::new(),
            areas: Vec::new(),
            by_key: FastMap::default(),
            grid: None,
            schedules: Vec::new(),
            route_schedule: FastMap::default(),
        }
    }

    /// Adds the GTFS schedules of the feeds: trips of a route come from the first
    /// feed that has any for it.
    pub fn with_schedules(mut self, schedules: Vec<Schedule>) -> Self {
        for (i, s) in schedules.iter().enumerate() {
            for r in s.route_ids() {
                self.route_schedule.entry(r.to_string()).or_insert(i as u32);
            }
        }
        self.schedules = schedules;
        self
    }

    /// The schedule holding the trips of `route_id`, if any.
    pub fn schedule_for(&self, route_id: &str) -> Option<&Schedule> {
        let &i = self.route_schedule.get(route_id)?;
        self.schedules.get(i as usize)
    }

    /// The schedules, one per GTFS feed.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Indexes `routes` and `zones`; refuses duplicate ids (routes from GeoJSON and
    /// GTFS together included), degenerate routes and zones without area.
    pub fn new(routes: Vec<Route>, zones: Vec<Zone>) -> Result<Self, GeoError> {
        let mut by_id = FastMap::with_capacity_and_hasher(routes.len(), Default::default());
        for (index, route) in routes.into_iter().enumerate() {
            let id = route.id.clone();
            if by_id.contains_key(&id) {
                return Err(GeoError::Duplicate { what: "route", id });
            }
            let built = RouteIndex::build(route).map_err(|reason| GeoError::Feature {
                origin: "routes".into(),
                index,
                id: Some(id.clone()),
                reason,
            })?;
            by_id.insert(id, built);
        }
        let mut keys = Vec::with_capacity(zones.len());
        let mut areas = Vec::with_capacity(zones.len());
        let mut by_key = FastMap::with_capacity_and_hasher(zones.len(), Default::default());
        let mut boxes = Vec::with_capacity(zones.len());
        for (i, zone) in zones.iter().enumerate() {
            let key = ZoneKey::of(&zone.id);
            let idx = u32::try_from(i)
                .ok()
                .filter(|i| i & INSIDE == 0)
                .ok_or_else(|| GeoError::Document {
                    origin: "zones".into(),
                    reason: "too many zones".into(),
                })?;
            if by_key.insert(key, idx).is_some() {
                // Either the same id twice or (vanishingly unlikely) an FNV collision;
                // both would make per-vehicle zone state ambiguous.
                return Err(GeoError::Duplicate {
                    what: "zone",
                    id: zone.id.clone(),
                });
            }
            // Finite and not flat: the grid's cell counts are computed from it.
            let Some(r) = zone.area.bounding_rect().filter(|r| {
                [r.min().x, r.min().y, r.max().x, r.max().y]
                    .iter()
                    .all(|v| v.is_finite())
                    && r.width() > 0.0
                    && r.height() > 0.0
            }) else {
                return Err(GeoError::Feature {
                    origin: "zones".into(),
                    index: i,
                    id: Some(zone.id.clone()),
                    reason: "zone has no area (or a non-finite coordinate)".into(),
                });
            };
            boxes.push([r.min().x, r.min().y, r.max().x, r.max().y]);
            keys.push(key);
            areas.push(Area::new(&zone.area));
        }
        let grid = zone_grid(&boxes, &areas);
        Ok(Self {
            routes: by_id,
            zones,
            keys,
            areas,
            by_key,
            grid,
            schedules: Vec::new(),
            route_schedule: FastMap::default(),
        })
    }

    /// The indexed route with this id.
    pub fn route(&self, id: &str) -> Option<&RouteIndex> {
        self.routes.get(id)
    }

    /// Distance (metres) and progress of `lon`, `lat` (degrees) on route `route_id`;
    /// `None` when the index has no such route.
    pub fn locate_on_route(&self, route_id: &str, lon: f64, lat: f64) -> Option<RouteLocation> {
        self.routes.get(route_id).map(|r| r.locate(lon, lat))
    }

    /// Zones containing `lon`, `lat` (degrees), with their keys, in index order.
    pub fn zones_at(&self, lon: f64, lat: f64) -> impl Iterator<Item = (ZoneKey, &Zone)> + '_ {
        let items = self
            .grid
            .as_ref()
            .and_then(|g| g.items_at(lon, lat))
            .unwrap_or(&[]);
        items
            .iter()
            .filter(move |&&it| it & INSIDE != 0 || self.areas[it as usize].contains(lon, lat))
            .map(|&it| {
                let i = (it & !INSIDE) as usize;
                (self.keys[i], &self.zones[i])
            })
    }

    /// The zone with this key.
    pub fn zone(&self, key: ZoneKey) -> Option<&Zone> {
        self.by_key.get(&key).map(|&i| &self.zones[i as usize])
    }

    /// Every route, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = &RouteIndex> + '_ {
        self.routes.values()
    }

    /// Every zone, in index order (lon/lat degrees).
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// Number of routes.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Number of zones.
    pub fn zone_count(&self) -> usize {
        self.zones.len()
    }
}

/// The zone grid: for each cell, the zones covering it entirely (flagged `INSIDE`)
/// or partly (their edges cross it). `boxes` are `[min_x, min_y, max_x, max_y]`.
fn zone_grid(boxes: &[[f64; 4]], areas: &[Area]) -> Option<CellGrid> {
    let (mut x0, mut y0, mut x1, mut y1) = (
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    );
    for b in boxes {
        x0 = x0.min(b[0]);
        y0 = y0.min(b[1]);
        x1 = x1.max(b[2]);
        y1 = y1.max(b[3]);
    }
    if boxes.is_empty() {
        return None;
    }
    let mid_lat = ((y0 + y1) * 0.5).to_radians();
    let w = ZONE_CELL_M / (M_PER_DEG * mid_lat.cos().max(0.01));
    let h = ZONE_CELL_M / M_PER_DEG;
    let layout = Layout::new(x0, y0, x1, y1, w, h, ZONE_MAX_CELLS);
    // Edges are marked with a small margin so rounding never leaves a crossed cell
    // unmarked (a cell wrongly marked only costs a polygon test).
    let eps = 1e-9;
    let mut pairs = Vec::new();
    for (i, (b, area)) in boxes.iter().zip(areas).enumerate() {
        let (c0, c1) = (layout.col(b[0]), layout.col(b[2]));
        let (r0, r1) = (layout.row(b[1]), layout.row(b[3]));
        let cols = c1 - c0 + 1;
        let mut crossed = vec![false; cols * (r1 - r0 + 1)];
        for e in area.edges() {
            let [ax, ay, bx, by] = *e;
            let (lo, hi) = (ay.min(by) - eps, ay.max(by) + eps);
            for row in layout.row(lo).max(r0)..=layout.row(hi).min(r1) {
                // The part of the edge inside this row's band of latitude.
                let band_lo = lo.max(layout.row_y0(row));
                let band_hi = hi.min(layout.row_y0(row + 1));
                let x_at = |y: f64| {
                    if by == ay {
                        ax
                    } else {
                        ax + (bx - ax) * ((y - ay) / (by - ay)).clamp(0.0, 1.0)
                    }
                };
                let (xa, xb) = if by == ay {
                    (ax.min(bx), ax.max(bx))
                } else {
                    (x_at(band_lo), x_at(band_hi))
                };
                let (xl, xr) = (xa.min(xb) - eps, xa.max(xb) + eps);
                for col in layout.col(xl).max(c0)..=layout.col(xr).min(c1) {
                    crossed[(row - r0) * cols + (col - c0)] = true;
                }
            }
        }
        for row in r0..=r1 {
            for col in c0..=c1 {
                let cell = layout.cell(col, row) as u32;
                if crossed[(row - r0) * cols + (col - c0)] {
                    pairs.push((cell, i as u32));
                } else {
                    let (cx, cy) = layout.centre(col, row);
                    // No edge crosses the cell: its centre decides for all of it.
                    if area.contains(cx, cy) {
                        pairs.push((cell, i as u32 | INSIDE));
                    }
                }
            }
        }
    }
    Some(layout.build(&pairs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::ZoneKind;
    use ::geo::{polygon, LineString, MultiPolygon};

    fn square(id: &str, x0: f64, y0: f64, side: f64) -> Zone {
        Zone {
            id: id.into(),
            name: None,
            kind: ZoneKind::Depot,
            classes: vec![],
            banned_hours: vec![],
            speed_limit_kmh: None,
            area: MultiPolygon(vec![polygon![
                (x: x0, y: y0),
                (x: x0 + side, y: y0),
                (x: x0 + side, y: y0 + side),
                (x: x0, y: y0 + side),
            ]]),
        }
    }

    #[test]
    fn finds_nested_zones_and_not_their_neighbours() {
        let idx = GeoIndex::new(
            vec![],
            vec![
                square("BIG", 106.60, 10.90, 0.10),
                square("SMALL", 106.65, 10.95, 0.01),
                square("FAR", 106.80, 10.90, 0.01),
            ],
        )
        .unwrap();
        let mut ids: Vec<&str> = idx
            .zones_at(106.655, 10.955)
            .map(|(_, z)| z.id.as_str())
            .collect();
        ids.sort();
        assert_eq!(ids, ["BIG", "SMALL"]);
        assert_eq!(idx.zones_at(106.70, 11.05).count(), 0);
        let key = ZoneKey::of("FAR");
        assert_eq!(idx.zone(key).map(|z| z.id.as_str()), Some("FAR"));
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let e = GeoIndex::new(
            vec![],
            vec![square("A", 106.6, 10.9, 0.1), square("A", 106.7, 10.9, 0.1)],
        );
        assert!(matches!(e, Err(GeoError::Duplicate { what: "zone", .. })));
        let r = || Route {
            id: "R".into(),
            name: None,
            corridor_m: None,
            parts: vec![LineString::from(vec![(106.7, 10.9), (106.71, 10.9)])],
            ..Default::default()
        };
        let e = GeoIndex::new(vec![r(), r()], vec![]);
        assert!(matches!(e, Err(GeoError::Duplicate { what: "route", .. })));
    }

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, lo: f64, hi: f64) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
        }
    }

    fn blob(rng: &mut Lcg, id: usize, n: usize, r_deg: f64) -> Zone {
        let (cx, cy) = (rng.next(106.60, 106.80), rng.next(10.85, 11.05));
        let mut ring: Vec<(f64, f64)> = (0..n)
            .map(|k| {
                let a = k as f64 / n as f64 * std::f64::consts::TAU;
                let r = r_deg * rng.next(0.3, 1.2);
                (cx + r * a.cos(), cy + r * a.sin())
            })
            .collect();
        ring.push(ring[0]);
        let hole: Vec<(f64, f64)> = [
            (0.1, 0.1),
            (-0.1, 0.1),
            (-0.1, -0.1),
            (0.1, -0.1),
            (0.1, 0.1),
        ]
        .iter()
        .map(|(x, y)| (cx + x * r_deg, cy + y * r_deg))
        .collect();
        let mut z = square(&format!("B{id}"), 0.0, 0.0, 1.0);
        z.area = MultiPolygon(vec![::geo::Polygon::new(
            LineString::from(ring),
            vec![LineString::from(hole)],
        )]);
        z
    }

    #[test]
    fn zone_grid_agrees_with_testing_every_polygon() {
        let mut rng = Lcg(7);
        let zones: Vec<Zone> = (0..300)
            .map(|i| {
                let (n, r) = match i % 3 {
                    0 => (6, 0.001),
                    1 => (40, 0.01),
                    _ => (700, 0.05),
                };
                blob(&mut rng, i, n, r)
            })
            .collect();
        let idx = GeoIndex::new(vec![], zones.clone()).unwrap();
        let brute: Vec<Area> = zones.iter().map(|z| Area::new(&z.area)).collect();
        for _ in 0..20_000 {
            let (x, y) = (rng.next(106.55, 106.85), rng.next(10.80, 11.10));
            let mut got: Vec<&str> = idx.zones_at(x, y).map(|(_, z)| z.id.as_str()).collect();
            let mut want: Vec<&str> = zones
                .iter()
                .zip(&brute)
                .filter(|(_, a)| a.contains(x, y))
                .map(|(z, _)| z.id.as_str())
                .collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "at {x},{y}");
        }
    }

    #[test]
    fn route_grid_and_tree_agree_with_testing_every_segment() {
        let mut rng = Lcg(11);
        let mut pts = vec![(106.70, 10.95)];
        let mut heading: f64 = 0.0;
        for _ in 0..3000 {
            heading += rng.next(-0.4, 0.4);
            let &(x, y) = pts.last().unwrap();
            pts.push((x + 0.0003 * heading.cos(), y + 0.0003 * heading.sin()));
        }
        let route = Route {
            id: "W".into(),
            name: None,
            corridor_m: None,
            parts: vec![LineString::from(pts.clone())],
            ..Default::default()
        };
        let idx = GeoIndex::new(vec![route], vec![]).unwrap();
        let r = idx.route("W").unwrap();
        for k in 0..5000 {
            // Mostly near the route (grid path), some far (tree path).
            let &(px, py) = &pts[(k * 7) % pts.len()];
            let spread = if k % 5 == 0 { 0.05 } else { 0.001 };
            let (x, y) = (
                px + rng.next(-spread, spread),
                py + rng.next(-spread, spread),
            );
            let got = r.locate(x, y).distance_m;
            let want = pts
                .windows(2)
                .map(|w| {
                    // Brute force in a plane at the query's own latitude.
                    let kx = crate::geo::M_PER_DEG * y.to_radians().cos();
                    let ky = crate::geo::M_PER_DEG;
                    let (ax, ay) = ((w[0].0 - x) * kx, (w[0].1 - y) * ky);
                    let (bx, by) = ((w[1].0 - x) * kx, (w[1].1 - y) * ky);
                    let (dx, dy) = (bx - ax, by - ay);
                    let t = (-(ax * dx + ay * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
                    (ax + t * dx).hypot(ay + t * dy)
                })
                .fold(f64::INFINITY, f64::min);
            assert!(
                (got - want).abs()
                    <= 1e-6 * want.max(1.0) + 0.002 * want * f64::from(u8::from(want > 150.0)),
                "{got} vs {want} at {x},{y}"
            );
        }
    }

    #[test]
    fn degenerate_zones_are_refused() {
        let mut flat = square("FLAT", 106.6, 10.9, 0.1);
        flat.area = MultiPolygon(vec![
            polygon![(x: 106.6, y: 10.9), (x: 106.7, y: 10.9), (x: 106.8, y: 10.9)],
        ]);
        assert!(GeoIndex::new(vec![], vec![flat]).is_err());
        let mut inf = square("INF", 106.6, 10.9, 0.1);
        inf.area = MultiPolygon(vec![
            polygon![(x: 106.6, y: 10.9), (x: f64::INFINITY, y: 10.9), (x: 106.8, y: 11.0)],
        ]);
        assert!(GeoIndex::new(vec![], vec![inf]).is_err());
    }

    #[test]
    fn unknown_route_is_none() {
        assert!(GeoIndex::empty()
            .locate_on_route("NOPE", 106.7, 10.9)
            .is_none());
    }
}
