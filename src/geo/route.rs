//! Registered routes and the per-route segment index answering "how far is this point
//! from the route, and how far along it".

use ::geo::{Coord, LineString};
use rstar::primitives::{GeomWithData, Line};
use rstar::RTree;

use super::frame::{distance_m, LocalFrame};
use super::grid::{CellGrid, Layout};

/// Cell size of a route's segment grid, metres: a query within this distance of the
/// route is answered from its cell alone (no tree walk). About the corridor width, so
/// on-route fixes take the fast path and only off-route ones walk the R-tree.
const ROUTE_CELL_M: f64 = 150.0;
/// Cap on a route's grid cells (long inter-provincial routes get larger cells).
const ROUTE_MAX_CELLS: usize = 1 << 16;

/// Terminal radius used when neither the route nor `geo.terminal_radius_m` sets one.
pub const DEFAULT_TERMINAL_RADIUS_M: f64 = 150.0;

/// A registered route: every line its buses run (both directions, variants) in
/// lon/lat degrees, and its terminals.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Route {
    /// Route id as assigned to vehicles in the registry (e.g. `BD-01`).
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Corridor half-width for this route, metres; `None` uses the rules' default.
    pub corridor_m: Option<f64>,
    /// The route's lines, x = lon and y = lat in degrees: one part per GTFS shape or
    /// GeoJSON line (no segment joins two parts). A bus is on route near ANY part.
    pub parts: Vec<LineString<f64>>,
    /// Terminals and layover points (first and last stop of each trip), x = lon and
    /// y = lat: within the terminal radius of one a bus counts as on route.
    pub terminals: Vec<Coord<f64>>,
    /// Terminal radius, metres; `None` uses [`DEFAULT_TERMINAL_RADIUS_M`] (or the
    /// `geo.terminal_radius_m` setting, applied by the loader). 0 turns terminals off.
    pub terminal_radius_m: Option<f64>,
}

/// Where a point lies relative to a route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteLocation {
    /// Distance from the point to the nearest segment of the route, metres.
    pub distance_m: f64,
    /// Distance along the nearest part from its first vertex to the point's projection
    /// onto that segment, metres. Where parts share a street (both directions,
    /// variants) the nearest segment, and so the part, may be any of theirs.
    pub progress_m: f64,
    /// Position of the nearest part in [`RouteIndex::parts`].
    pub part: usize,
}

/// A segment in plane metres; `data` is its position in `seg_start_m` / `seg_len_m`.
type Segment = GeomWithData<Line<[f64; 2]>, u32>;

/// One route made ready for many point queries, in a local metric plane: a grid
/// whose cells list every segment within one cell size (the fast path near the
/// route), an R-tree of segments for points farther away, and the cumulative length
/// at each segment start.
#[derive(Debug)]
pub struct RouteIndex {
    id: String,
    name: Option<String>,
    corridor_m: Option<f64>,
    /// The source line in lon/lat degrees, kept for display (maps, exports) only.
    parts: Vec<LineString<f64>>,
    frame: LocalFrame,
    /// Segments as `[ax, ay, bx, by]`, plane metres.
    segs: Vec<[f64; 4]>,
    /// The part each segment belongs to.
    seg_part: Vec<u32>,
    /// Length along its part at each segment start, metres.
    seg_start_m: Vec<f64>,
    seg_len_m: Vec<f64>,
    length_m: f64,
    grid: CellGrid,
    /// Any segment within this plane distance of a point is in the point's cell.
    grid_radius_m: f64,
    tree: RTree<Segment>,
    /// Terminals in lon/lat degrees (display, export) and in plane metres.
    terminals: Vec<Coord<f64>>,
    terminals_xy: Vec<[f64; 2]>,
    terminal_radius_m: f64,
}

impl RouteIndex {
    /// Indexes a route; the error is the reason (the caller adds file/feature context).
    pub(crate) fn build(route: Route) -> Result<Self, String> {
        let coords = || {
            route
                .parts
                .iter()
                .flat_map(|p| p.0.iter())
                .chain(route.terminals.iter())
        };
        let (mut min_x, mut min_y) = (f64::INFINITY, f64::INFINITY);
        let (mut max_x, mut max_y) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
        for c in coords() {
            if !(c.x.is_finite() && c.y.is_finite()) {
                return Err("non-finite coordinate".into());
            }
            min_x = min_x.min(c.x);
            max_x = max_x.max(c.x);
            min_y = min_y.min(c.y);
            max_y = max_y.max(c.y);
        }
        if let Some(c) = route.corridor_m {
            if !(c.is_finite() && c > 0.0) {
                return Err(format!("corridor_m must be a positive number, got {c}"));
            }
        }
        let terminal_radius_m = route.terminal_radius_m.unwrap_or(DEFAULT_TERMINAL_RADIUS_M);
        if !(terminal_radius_m.is_finite() && terminal_radius_m >= 0.0) {
            return Err(format!(
                "terminal_radius_m must be a number >= 0, got {terminal_radius_m}"
            ));
        }
        let frame = LocalFrame::new((min_x + max_x) * 0.5, (min_y + max_y) * 0.5);
        let mut segments = Vec::new();
        let mut seg_part = Vec::new();
        let mut seg_start_m = Vec::new();
        let mut seg_len_m = Vec::new();
        let mut total_m = 0.0;
        // Variants and directions share streets: a segment another part already has
        // (same two vertices, either way) adds no distance answer, only cell entries.
        let mut seen = std::collections::HashSet::new();
        for (pi, part) in route.parts.iter().enumerate() {
            let pi = u32::try_from(pi).map_err(|_| "too many parts")?;
            let mut along_m = 0.0;
            for w in part.0.windows(2) {
                let (a, b) = (w[0], w[1]);
                let len_m = distance_m(a.x, a.y, b.x, b.y);
                // Repeated vertices are common in GTFS shapes; a zero-length segment
                // adds nothing and would make the projection divide by zero.
                if len_m <= 0.0 {
                    continue;
                }
                let key = |c: ::geo::Coord<f64>| (c.x.to_bits(), c.y.to_bits());
                let (ka, kb) = (key(a), key(b));
                if !seen.insert(if ka <= kb { (ka, kb) } else { (kb, ka) }) {
                    along_m += len_m;
                    continue;
                }
                let i = u32::try_from(seg_len_m.len()).map_err(|_| "too many segments")?;
                segments.push(GeomWithData::new(
                    Line::new(frame.to_xy(a.x, a.y), frame.to_xy(b.x, b.y)),
                    i,
                ));
                seg_part.push(pi);
                seg_start_m.push(along_m);
                seg_len_m.push(len_m);
                along_m += len_m;
            }
            total_m += along_m;
        }
        if segments.is_empty() {
            return Err("route has no segment of positive length".into());
        }
        let segs: Vec<[f64; 4]> = segments
            .iter()
            .map(|s| {
                let l = s.geom();
                [l.from[0], l.from[1], l.to[0], l.to[1]]
            })
            .collect();
        let (grid, grid_radius_m) = segment_grid(&segs);
        let terminals_xy = route
            .terminals
            .iter()
            .map(|c| frame.to_xy(c.x, c.y))
            .collect();
        Ok(Self {
            id: route.id,
            name: route.name,
            corridor_m: route.corridor_m,
            parts: route.parts,
            frame,
            segs,
            seg_part,
            seg_start_m,
            seg_len_m,
            length_m: total_m,
            grid,
            grid_radius_m,
            tree: RTree::bulk_load(segments),
            terminals: route.terminals,
            terminals_xy,
            terminal_radius_m,
        })
    }

    /// The route id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Display name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The route's own corridor half-width, metres, if it sets one.
    pub fn corridor_m(&self) -> Option<f64> {
        self.corridor_m
    }

    /// The route's line as loaded, x = lon and y = lat in degrees (one entry per part).
    pub fn parts(&self) -> &[LineString<f64>] {
        &self.parts
    }

    /// Terminals, x = lon and y = lat in degrees.
    pub fn terminals(&self) -> &[Coord<f64>] {
        &self.terminals
    }

    /// Radius around each terminal that counts as on route, metres.
    pub fn terminal_radius_m(&self) -> f64 {
        self.terminal_radius_m
    }

    /// Whether `lon`, `lat` (degrees) is within the terminal radius of a terminal.
    /// A route has a few terminals (two per distinct trip pattern): a linear scan.
    pub fn at_terminal(&self, lon: f64, lat: f64) -> bool {
        let q = self.frame.to_xy(lon, lat);
        let sx = self.frame.x_scale_at(lat);
        let r2 = self.terminal_radius_m * self.terminal_radius_m;
        self.terminals_xy.iter().any(|t| {
            let (dx, dy) = ((t[0] - q[0]) * sx, t[1] - q[1]);
            dx * dx + dy * dy <= r2
        })
    }

    /// Total length of all parts, metres.
    pub fn length_m(&self) -> f64 {
        self.length_m
    }

    /// Number of indexed segments (a segment shared by several parts counts once).
    pub fn segment_count(&self) -> usize {
        self.seg_len_m.len()
    }

    /// Distance (metres) from `lon`, `lat` (degrees) to the route and progress along it.
    ///
    /// Distances are measured with the x scale of the point's own latitude, so long
    /// routes stay metric too. Near the route the point's grid cell holds every
    /// candidate segment; farther away the R-tree finds the nearest one.
    pub fn locate(&self, lon: f64, lat: f64) -> RouteLocation {
        let q = self.frame.to_xy(lon, lat);
        let sx = self.frame.x_scale_at(lat);
        if let Some(items) = self.grid.items_at(q[0], q[1]) {
            let mut best = (f64::INFINITY, 0usize, 0.0);
            for &i in items {
                let (d2, t) = seg_distance2(&self.segs[i as usize], q, sx);
                if d2 < best.0 {
                    best = (d2, i as usize, t);
                }
            }
            // Segments not in the cell are farther than the radius (in the plane;
            // at least radius * min(sx, 1) in metres), so `best` is the nearest.
            let r = self.grid_radius_m * sx.min(1.0);
            if best.0 <= r * r {
                return self.location(best.0.sqrt(), best.1, best.2);
            }
        }
        let Some(seg) = self.tree.nearest_neighbor(&q) else {
            // `build` refuses routes without segments; keep a defined answer anyway.
            return RouteLocation {
                distance_m: f64::INFINITY,
                progress_m: 0.0,
                part: 0,
            };
        };
        let i = seg.data as usize;
        let (d2, t) = seg_distance2(&self.segs[i], q, sx);
        self.location(d2.sqrt(), i, t)
    }

    fn location(&self, distance_m: f64, seg: usize, t: f64) -> RouteLocation {
        RouteLocation {
            distance_m,
            progress_m: self.seg_start_m[seg] + t * self.seg_len_m[seg],
            part: self.seg_part[seg] as usize,
        }
    }
}

/// Squared distance from `q` to segment `s` (plane metres) with x scaled by `sx`,
/// and the position `t` in 0..=1 of the nearest point along the segment.
#[inline]
fn seg_distance2(s: &[f64; 4], q: [f64; 2], sx: f64) -> (f64, f64) {
    let (ax, ay, bx, by) = (s[0] * sx, s[1], s[2] * sx, s[3]);
    let (qx, qy) = (q[0] * sx, q[1]);
    let (dx, dy) = (bx - ax, by - ay);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((qx - ax) * dx + (qy - ay) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (ex, ey) = (qx - ax - t * dx, qy - ay - t * dy);
    (ex * ex + ey * ey, t)
}

/// The grid listing, per cell, every segment within one cell size of the cell.
fn segment_grid(segs: &[[f64; 4]]) -> (CellGrid, f64) {
    let (mut x0, mut y0, mut x1, mut y1) = (
        f64::INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NEG_INFINITY,
    );
    for s in segs {
        x0 = x0.min(s[0]).min(s[2]);
        x1 = x1.max(s[0]).max(s[2]);
        y0 = y0.min(s[1]).min(s[3]);
        y1 = y1.max(s[1]).max(s[3]);
    }
    // Pad by one cell so points just beside the route still land in the grid.
    let pad = ROUTE_CELL_M;
    let layout = Layout::new(
        x0 - pad,
        y0 - pad,
        x1 + pad,
        y1 + pad,
        ROUTE_CELL_M,
        ROUTE_CELL_M,
        ROUTE_MAX_CELLS,
    );
    let r = layout.cell_w();
    let mut pairs = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let (c0, c1) = (
            layout.col(s[0].min(s[2]) - r),
            layout.col(s[0].max(s[2]) + r),
        );
        let (r0, r1) = (
            layout.row(s[1].min(s[3]) - r),
            layout.row(s[1].max(s[3]) + r),
        );
        for row in r0..=r1 {
            for col in c0..=c1 {
                pairs.push((layout.cell(col, row) as u32, i as u32));
            }
        }
    }
    (layout.build(&pairs), r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::M_PER_DEG;

    fn east_west() -> RouteIndex {
        // 0.02° of longitude along 11° N, about 2.18 km, in three vertices.
        RouteIndex::build(Route {
            id: "T".into(),
            name: None,
            corridor_m: None,
            parts: vec![LineString::from(vec![
                (106.70, 11.0),
                (106.71, 11.0),
                (106.72, 11.0),
            ])],
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn distance_north_of_the_line_is_metric() {
        let r = east_west();
        let lat = 11.0 + 90.0 / M_PER_DEG;
        let loc = r.locate(106.705, lat);
        assert!((loc.distance_m - 90.0).abs() < 0.01, "{loc:?}");
        // Halfway along the first segment: 0.005° of lon at 11° N.
        let half = 0.005 * M_PER_DEG * 11f64.to_radians().cos();
        assert!((loc.progress_m - half).abs() < 0.5, "{loc:?}");
    }

    #[test]
    fn beyond_the_end_measures_to_the_end_vertex() {
        let r = east_west();
        let loc = r.locate(106.73, 11.0);
        let d = 0.01 * M_PER_DEG * 11f64.to_radians().cos();
        assert!((loc.distance_m - d).abs() < 0.5, "{loc:?}");
        assert!((loc.progress_m - r.length_m()).abs() < 1e-6);
    }

    #[test]
    fn degenerate_route_is_refused() {
        let e = RouteIndex::build(Route {
            id: "X".into(),
            name: None,
            corridor_m: None,
            parts: vec![LineString::from(vec![(106.7, 11.0), (106.7, 11.0)])],
            ..Default::default()
        });
        assert!(e.is_err());
    }

    #[test]
    fn nearest_of_several_parts_and_progress_along_it() {
        // Two one-way streets 150 m apart, run in opposite directions.
        let gap = 150.0 / M_PER_DEG;
        let r = RouteIndex::build(Route {
            id: "PAIR".into(),
            parts: vec![
                LineString::from(vec![(106.70, 11.0), (106.72, 11.0)]),
                LineString::from(vec![(106.72, 11.0 + gap), (106.70, 11.0 + gap)]),
            ],
            terminals: vec![Coord { x: 106.70, y: 11.0 }],
            ..Default::default()
        })
        .unwrap();
        let south = r.locate(106.705, 11.0 + 10.0 / M_PER_DEG);
        assert_eq!(south.part, 0);
        assert!((south.distance_m - 10.0).abs() < 0.01, "{south:?}");
        let north = r.locate(106.705, 11.0 + gap - 20.0 / M_PER_DEG);
        assert_eq!(north.part, 1);
        assert!((north.distance_m - 20.0).abs() < 0.01, "{north:?}");
        // Along the northern part, which starts at 106.72 E.
        let from_east = 0.015 * M_PER_DEG * 11f64.to_radians().cos();
        assert!((north.progress_m - from_east).abs() < 1.0, "{north:?}");
        assert!((r.length_m() - 2.0 * 0.02 * M_PER_DEG * 11f64.to_radians().cos()).abs() < 1.0);
        // A variant over the same vertices (either way) adds no segment; one over
        // other vertices does.
        let mut with_variant = r.parts().to_vec();
        with_variant.push(LineString::from(vec![(106.72, 11.0), (106.70, 11.0)]));
        with_variant.push(LineString::from(vec![(106.71, 11.0), (106.70, 11.0)]));
        let v = RouteIndex::build(Route {
            id: "PAIR".into(),
            parts: with_variant,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(v.segment_count(), r.segment_count() + 1);
        // The terminal: 140 m west of the first vertex is in, 160 m is not.
        let west = |m: f64| 106.70 - m / (M_PER_DEG * 11f64.to_radians().cos());
        assert!(r.at_terminal(west(140.0), 11.0));
        assert!(!r.at_terminal(west(160.0), 11.0));
    }
}
