//! Embedded, versioned migrations, applied under an advisory lock so several
//! instances starting together do not race. TimescaleDB features when available.

use tokio_postgres::Client;

use super::StoreError;

/// Ordered migrations: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_fixes.sql")),
    (2, include_str!("migrations/0002_rules.sql")),
    (3, include_str!("migrations/0003_api.sql")),
    (4, include_str!("migrations/0004_rollup.sql")),
    (5, include_str!("migrations/0005_live.sql")),
    (6, include_str!("migrations/0006_incidents.sql")),
    (7, include_str!("migrations/0007_recompute.sql")),
    (9, include_str!("migrations/0009_distance_lateness.sql")),
    (10, include_str!("migrations/0010_geo_versions.sql")),
    (11, include_str!("migrations/0011_devices.sql")),
    (12, include_str!("migrations/0012_gateway_devices.sql")),
    (13, include_str!("migrations/0013_deliveries.sql")),
    (14, include_str!("migrations/0014_emitted.sql")),
    (30, include_str!("migrations/0030_driver_state.sql")),
    (31, include_str!("migrations/0031_alerts_updated.sql")),
    (32, include_str!("migrations/0032_ack_index.sql")),
    (40, include_str!("migrations/0040_coords_e7.sql")),
    (50, include_str!("migrations/0050_leadership.sql")),
    (60, include_str!("migrations/0060_transit.sql")),
    (61, include_str!("migrations/0061_live_trip.sql")),
    (65, include_str!("migrations/0065_trip_run_distance.sql")),
];

/// Storage-layout settings applied at migration time.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LayoutConfig {
    /// Use TimescaleDB (hypertable, compression, retention) when the extension is available.
    pub timescaledb: bool,
    /// Fixes older than this many days are deleted (docs/rules.md: at least 1 year; default 400).
    pub retention_days: u32,
    /// TimescaleDB: compress chunks older than this many days.
    pub compress_after_days: u32,
}

impl Default for LayoutConfig {
    fn default() -> Self {
        Self {
            timescaledb: true,
            retention_days: 400,
            compress_after_days: 7,
        }
    }
}

/// Whether the fixes table is a TimescaleDB hypertable after migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Plain PostgreSQL; retention is done by fleetwatch.
    Plain,
    /// TimescaleDB hypertable with compression and retention policies.
    Timescale,
}

/// Applies pending migrations and the storage layout; returns the layout in use.
pub async fn migrate(client: &mut Client, layout: &LayoutConfig) -> Result<Layout, StoreError> {
    const LOCK_KEY: i64 = 0x666c_6565_7477; // "fleetw"
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply(client, layout).await;
    // Unlock even after a failed migration; the session ending would also release it.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    result
}

async fn apply(client: &mut Client, layout: &LayoutConfig) -> Result<Layout, StoreError> {
    // Checked first: CREATE TABLE IF NOT EXISTS on every start makes the server send
    // a NOTICE "already exists" to every command.
    let have_table = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0);
    if !have_table {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
    }
    for (version, sql) in MIGRATIONS {
        let done = client
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .map_err(|source| StoreError::Migration {
                version: *version,
                source,
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "applied migration");
    }
    if layout.timescaledb && timescale_available(client).await? {
        // Without the preload, CREATE EXTENSION ends the session with a FATAL error:
        // check first, and keep the connection usable on the plain layout.
        if !timescale_preloaded(client).await? {
            tracing::warn!(
                "TimescaleDB is installed but not preloaded: using the plain layout. To use \
                 it, add shared_preload_libraries = 'timescaledb' to postgresql.conf and \
                 restart PostgreSQL (the private server does this itself)"
            );
            return Ok(Layout::Plain);
        }
        match timescale_layout(client, layout).await {
            Ok(()) => return Ok(Layout::Timescale),
            Err(e) if client.is_closed() => return Err(e),
            Err(e) => tracing::warn!(error = %e, "TimescaleDB present but unusable; plain layout"),
        }
    }
    Ok(Layout::Plain)
}

/// Whether the extension is already created here, or its library preloaded.
async fn timescale_preloaded(client: &Client) -> Result<bool, StoreError> {
    let created = client
        .query_opt(
            "SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await?
        .is_some();
    let preload: String = client
        .query_one("SHOW shared_preload_libraries", &[])
        .await?
        .get(0);
    Ok(created
        || preload
            .split(',')
            .any(|l| l.trim().trim_matches('"') == "timescaledb"))
}

async fn timescale_available(client: &Client) -> Result<bool, StoreError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await?
        .is_some())
}

async fn timescale_layout(client: &Client, layout: &LayoutConfig) -> Result<(), StoreError> {
    let retention = format!("{} days", layout.retention_days);
    let compress = format!("{} days", layout.compress_after_days);
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        .await?;
    client
        .execute(
            "SELECT create_hypertable('fixes', 'ts', chunk_time_interval => interval '1 day',
                                      if_not_exists => true, migrate_data => true)",
            &[],
        )
        .await?;
    client
        .batch_execute(
            "ALTER TABLE fixes SET (timescaledb.compress,
                 timescaledb.compress_segmentby = 'vehicle_id',
                 timescaledb.compress_orderby = 'ts')",
        )
        .await?;
    client
        .execute(
            "SELECT add_compression_policy('fixes', $1::text::interval, if_not_exists => true)",
            &[&compress],
        )
        .await?;
    client
        .execute(
            "SELECT add_retention_policy('fixes', $1::text::interval, if_not_exists => true)",
            &[&retention],
        )
        .await?;
    Ok(())
}

/// Plain layout: deletes fixes older than the retention, in bounded chunks so the
/// delete never holds long locks. Returns rows deleted.
pub async fn enforce_retention(client: &Client, retention_days: u32) -> Result<u64, StoreError> {
    let days = i32::try_from(retention_days).unwrap_or(i32::MAX);
    let mut total = 0;
    loop {
        let n = client.execute(RETENTION_CHUNK, &[&days]).await?;
        total += n;
        if n < 10_000 {
            return Ok(total);
        }
    }
}

/// One bounded chunk of the plain layout's retention delete.
const RETENTION_CHUNK: &str = "DELETE FROM fixes WHERE ctid IN (
     SELECT ctid FROM fixes WHERE ts < now() - make_interval(days => $1) LIMIT 10000)";

/// [`enforce_retention`], each chunk's delete checked by the failover `fence` before
/// its commit: a leader that lost its lease deletes nothing more.
pub async fn enforce_retention_fenced(
    client: &mut Client,
    retention_days: u32,
    fence: &super::lease::Fence,
) -> Result<u64, StoreError> {
    let days = i32::try_from(retention_days).unwrap_or(i32::MAX);
    let mut total = 0;
    loop {
        let tx = client.transaction().await?;
        let n = tx.execute(RETENTION_CHUNK, &[&days]).await?;
        fence.check(&tx).await?;
        tx.commit().await?;
        total += n;
        if n < 10_000 {
            return Ok(total);
        }
    }
}
