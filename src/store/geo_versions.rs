//! The geography (routes and zones) the service ran with, recorded at every start and
//! reload that changes it, so that `replay --rules` can use the geography the stored
//! alerts were made with even when the files have changed or are gone.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Client;

use super::StoreError;
use crate::geo::{self, GeoConfig, GeoError, GeoIndex};

/// A recorded geography.
#[derive(Debug)]
pub struct GeoVersion {
    /// Row id.
    pub id: i64,
    /// When the service loaded it.
    pub loaded_at: DateTime<Utc>,
    /// Hash of its routes and zones ([`content_hash`]).
    pub content_hash: String,
    /// The `[geo]` settings it was loaded from.
    pub sources: Value,
    /// The routes and zones.
    pub index: GeoIndex,
}

/// Why a recorded geography is unusable.
#[derive(Debug, thiserror::Error)]
pub enum GeoVersionError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored GeoJSON does not load.
    #[error("recorded geography {id}: {source}")]
    Geo {
        /// Row id.
        id: i64,
        /// What failed.
        source: GeoError,
    },
}

impl From<tokio_postgres::Error> for GeoVersionError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Store(e.into())
    }
}

/// Canonical GeoJSON of `g`'s routes and zones.
fn documents(g: &GeoIndex) -> (Value, Value) {
    (geo::routes_to_geojson(g), geo::zones_to_geojson(g))
}

/// A stable hash of `g`'s routes and zones (64-bit FNV-1a of their canonical GeoJSON,
/// hex): the same geography from other files or sources has the same hash.
pub fn content_hash(g: &GeoIndex) -> String {
    let (routes, zones) = documents(g);
    let h = super::fnv1a64(&[routes.to_string().as_bytes(), zones.to_string().as_bytes()]);
    format!("{h:016x}")
}

/// Records `g` (loaded from `sources`) unless the newest recorded geography is the
/// same; returns the id of the row now in effect.
pub async fn record(client: &Client, g: &GeoIndex, sources: &GeoConfig) -> Result<i64, StoreError> {
    let hash = content_hash(g);
    let sources = serde_json::to_value(sources).unwrap_or(Value::Null);
    let newest = client
        .query_opt(
            "SELECT id, content_hash, sources FROM geo_versions ORDER BY loaded_at DESC, id DESC LIMIT 1",
            &[],
        )
        .await?;
    if let Some(r) = newest {
        if r.get::<_, String>(1) == hash && r.get::<_, Value>(2) == sources {
            return Ok(r.get(0));
        }
    }
    let (routes, zones) = documents(g);
    let row = client
        .query_one(
            "INSERT INTO geo_versions (content_hash, sources, route_count, zone_count, routes, zones)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            &[
                &hash,
                &sources,
                &(g.route_count() as i32),
                &(g.zone_count() as i32),
                &routes,
                &zones,
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// The geography in effect at `at` (the newest loaded at or before it); `None` when
/// nothing was recorded by then.
pub async fn in_effect(
    client: &Client,
    at: DateTime<Utc>,
) -> Result<Option<GeoVersion>, GeoVersionError> {
    let row = client
        .query_opt(
            "SELECT id, loaded_at, content_hash, sources, routes, zones FROM geo_versions
             WHERE loaded_at <= $1 ORDER BY loaded_at DESC, id DESC LIMIT 1",
            &[&at],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let id: i64 = r.get(0);
    let load = || -> Result<GeoIndex, GeoError> {
        let origin = format!("recorded geography {id}");
        let routes = geo::parse_routes_geojson(&r.get::<_, Value>(4).to_string(), &origin)?;
        let zones = geo::parse_zones_geojson(&r.get::<_, Value>(5).to_string(), &origin)?;
        GeoIndex::new(routes, zones)
    };
    let index = load().map_err(|source| GeoVersionError::Geo { id, source })?;
    Ok(Some(GeoVersion {
        id,
        loaded_at: r.get(1),
        content_hash: r.get(2),
        sources: r.get(3),
        index,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_geojson_reads_back_to_the_same_geography() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let g = GeoConfig {
            routes: vec![root.join("fixtures/demo/routes.geojson")],
            gtfs: vec![root.join("fixtures/gtfs")],
            zones: vec![root.join("fixtures/demo/zones.geojson")],
            ..Default::default()
        }
        .load()
        .unwrap();
        let (routes, zones) = documents(&g);
        let back = GeoIndex::new(
            geo::parse_routes_geojson(&routes.to_string(), "r").unwrap(),
            geo::parse_zones_geojson(&zones.to_string(), "z").unwrap(),
        )
        .unwrap();
        assert_eq!(back.route_count(), g.route_count());
        assert_eq!(back.zones(), g.zones());
        assert_eq!(content_hash(&back), content_hash(&g));
        let demo = GeoConfig {
            demo: true,
            ..Default::default()
        }
        .load()
        .unwrap();
        assert_ne!(content_hash(&demo), content_hash(&g));
        assert_ne!(content_hash(&GeoIndex::empty()), content_hash(&g));
    }
}
