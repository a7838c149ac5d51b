//! Local metric plane: lon/lat degrees to metres east/north of an origin.
//!
//! An equirectangular projection with the scale of the origin's latitude. Across the
//! few tens of kilometres of a city route the scale error stays far below GPS noise
//! (0.2 % for ±0.5° of latitude at 11° N); callers that need more re-scale x by the
//! query's own latitude (see [`LocalFrame::x_scale_at`]).

/// Metres per degree of latitude (and of longitude at the equator), on a sphere of the
/// IUGG mean Earth radius 6,371,008.8 m.
pub const M_PER_DEG: f64 = 6_371_008.8 * std::f64::consts::PI / 180.0;

/// An equirectangular plane around `(lon0, lat0)`; x east and y north, in metres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalFrame {
    lon0: f64,
    lat0: f64,
    /// Metres per degree of longitude at `lat0`.
    kx: f64,
}

impl LocalFrame {
    /// A plane centred on `lon0`, `lat0` (degrees).
    pub fn new(lon0: f64, lat0: f64) -> Self {
        Self {
            lon0,
            lat0,
            kx: M_PER_DEG * lat0.to_radians().cos(),
        }
    }

    /// Projects lon/lat degrees to `[x, y]` metres.
    #[inline]
    pub fn to_xy(&self, lon: f64, lat: f64) -> [f64; 2] {
        [(lon - self.lon0) * self.kx, (lat - self.lat0) * M_PER_DEG]
    }

    /// Factor turning an x distance of this plane into metres at latitude `lat`
    /// (degrees): `cos(lat) / cos(lat0)`.
    #[inline]
    pub fn x_scale_at(&self, lat: f64) -> f64 {
        lat.to_radians().cos() / self.lat0.to_radians().cos()
    }
}

/// Distance in metres between two nearby lon/lat points (degrees), equirectangular at
/// their mean latitude: good to well under 0.1 % for the few hundred metres between
/// consecutive fixes or route vertices.
#[inline]
pub fn distance_m(lon1: f64, lat1: f64, lon2: f64, lat2: f64) -> f64 {
    let kx = M_PER_DEG * ((lat1 + lat2) * 0.5).to_radians().cos();
    let dx = (lon2 - lon1) * kx;
    let dy = (lat2 - lat1) * M_PER_DEG;
    (dx * dx + dy * dy).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_degree_of_latitude_is_about_111_km() {
        let d = distance_m(106.7, 10.0, 106.7, 11.0);
        assert!((d - 111_195.0).abs() < 1.0, "{d}");
    }

    #[test]
    fn longitude_shrinks_with_latitude() {
        // 0.01° of longitude at 11° N: 1,111.95 m * cos 11° = 1,091.5 m.
        let d = distance_m(106.70, 11.0, 106.71, 11.0);
        assert!((d - 1091.5).abs() < 0.5, "{d}");
        let f = LocalFrame::new(106.70, 11.0);
        let [x, y] = f.to_xy(106.71, 11.0);
        assert!((x - 1091.5).abs() < 0.5 && y.abs() < 1e-9);
    }
}
