//! Daily roll-ups for compliance reports: one `rollup_daily` row per (vehicle, local
//! day) and `rollup_daily_driver` rows per driver, kept by the writer in the same
//! transaction as the rows they summarise.
//!
//! Idempotent under redelivery: fixes, trips and data gaps are insert-only, so only
//! the rows an insert really adds (`RETURNING`) are added to the roll-up; alerts are
//! upserted and change until they close (end, severity band, `counted`), so the days
//! an upsert touched are recomputed from `alerts`.
//!
//! Distance is the path length of a vehicle's accepted fixes in event-time order
//! (migration 9 defines the path, the split at local midnight and the rounding), kept
//! incrementally whatever order the fixes arrive in: each inserted fix adds its
//! segments to the stored fixes before and after it, and removes the segment between
//! those two that it splits ([`fixes_insert_sql`]). Segments are attributed to the
//! driver of their earlier fix.
//!
//! The local day is taken at a fixed offset (`rules.utc_offset`) recorded in
//! `rollup_meta` by [`ensure`]; the writer and the reports read it from there, so they
//! always agree with the rows that exist. A changed offset rebuilds everything.

use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use tokio_postgres::{Client, GenericClient, Transaction};

use super::migrate::Layout;
use super::StoreError;
use crate::domain::time::UtcOffset;

/// How the roll-ups are kept, as recorded in `rollup_meta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Offset of the local day from UTC, seconds east.
    pub offset_s: i32,
    /// The writer keeps the fix columns of `rollup_daily` (false: a TimescaleDB
    /// continuous aggregate did, before 2026-12-04; `ensure` rebuilds such roll-ups).
    pub fixes: bool,
}

/// The roll-ups' plan, or `None` when they were never built (reports then read the
/// raw tables, the writer leaves the roll-ups alone).
pub async fn plan(client: &impl GenericClient) -> Result<Option<Plan>, StoreError> {
    let row = client
        .query_opt("SELECT utc_offset_s, fixes_source FROM rollup_meta", &[])
        .await?;
    Ok(row.map(|r| Plan {
        offset_s: r.get(0),
        fixes: r.get::<_, &str>(1) == "table",
    }))
}

/// Local calendar day of `ts` at `offset_s` seconds east of UTC.
pub fn local_day(ts: DateTime<Utc>, offset_s: i32) -> NaiveDate {
    (ts + TimeDelta::seconds(i64::from(offset_s))).date_naive()
}

/// The instant local day `day` starts at `offset_s` seconds east of UTC.
pub fn day_start(day: NaiveDate, offset_s: i32) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
        - TimeDelta::seconds(i64::from(offset_s))
}

/// Builds the roll-ups if they were never built, or rebuilds them when the offset
/// or the layout changed; returns whether it (re)built. Call after migrating and
/// before the writer starts.
pub async fn ensure(
    client: &mut Client,
    offset: UtcOffset,
    layout: Layout,
) -> Result<bool, StoreError> {
    let current = plan(&*client).await?;
    if current
        == Some(Plan {
            offset_s: offset.seconds(),
            fixes: true,
        })
    {
        return Ok(false);
    }
    if layout == Layout::Timescale {
        drop_timescale_cagg(client).await?;
    }
    tracing::info!(utc_offset = %offset, ?current, "building the daily roll-ups from the stored data");
    let started = std::time::Instant::now();
    rebuild(client, offset, true).await?;
    tracing::info!(
        elapsed_s = started.elapsed().as_secs_f64(),
        "daily roll-ups built"
    );
    Ok(true)
}

/// Recomputes every roll-up from the raw tables in one transaction and records the
/// plan. For a changed offset, and for rows written to the raw tables by anything
/// but the writer. Fix counts of days whose fixes retention already deleted are lost.
pub async fn rebuild(
    client: &mut Client,
    offset: UtcOffset,
    fixes_in_table: bool,
) -> Result<(), StoreError> {
    let off = offset.seconds();
    let tx = client.transaction().await?;
    // Writers wait for the rebuild instead of adding to rows it is about to replace.
    tx.batch_execute(
        "LOCK TABLE rollup_daily, rollup_daily_driver, rollup_late IN EXCLUSIVE MODE;
         DELETE FROM rollup_daily; DELETE FROM rollup_daily_driver; DELETE FROM rollup_late;",
    )
    .await?;
    if fixes_in_table {
        tx.execute(&*FIXES_FROM_FIXES, &[&off]).await?;
        tx.batch_execute(
            "CREATE OR REPLACE VIEW rollup_fixes_daily AS
                 SELECT vehicle_id, day, fixes, first_fix_ts, last_fix_ts FROM rollup_daily",
        )
        .await?;
    }
    tx.execute(&*DISTANCE_FROM_FIXES, &[&off]).await?;
    tx.execute(LATE_FROM_FIXES, &[&off]).await?;
    tx.execute(
        &format!(
            "{} {}",
            "WITH src AS (SELECT * FROM trips)",
            trips_sql("src", "$1")
        ),
        &[&off],
    )
    .await?;
    tx.execute(
        &format!(
            "{} {}",
            "WITH src AS (SELECT * FROM data_gaps)",
            gaps_sql("src", "$1")
        ),
        &[&off],
    )
    .await?;
    let keys = tx
        .query(
            "SELECT DISTINCT vehicle_id, fw_local_day(start_ts, $1) FROM alerts",
            &[&off],
        )
        .await?;
    let vehicles: Vec<String> = keys.iter().map(|r| r.get(0)).collect();
    let days: Vec<NaiveDate> = keys.iter().map(|r| r.get(1)).collect();
    refresh_alert_days(&tx, off, &vehicles, &days, true).await?;
    tx.execute(
        "INSERT INTO rollup_meta (singleton, utc_offset_s, fixes_source, built_at)
         VALUES (true, $1, $2, now())
         ON CONFLICT (singleton) DO UPDATE SET utc_offset_s = EXCLUDED.utc_offset_s,
             fixes_source = EXCLUDED.fixes_source, built_at = now()",
        &[&off, &if fixes_in_table { "table" } else { "cagg" }],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Fix columns of `rollup_daily` from the whole `fixes` table ($1: offset, s).
static FIXES_FROM_FIXES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH src AS (SELECT vehicle_id, cooperative_id, ts FROM fixes) {}",
        fixes_sql("src", "$1")
    )
});

/// Distance of the whole `fixes` table into `rollup_daily` and `rollup_daily_driver`
/// ($1: offset, s).
static DISTANCE_FROM_FIXES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH wl AS (
             SELECT vehicle_id, lag(ts) OVER w AS a_ts, ts AS b_ts,
                    fw_distance_e7_mm(lag(lat_e7) OVER w, lag(lon_e7) OVER w, lat_e7, lon_e7) AS len_mm,
                    lag(driver_id) OVER w AS driver_id, cooperative_id, 1 AS sign
             FROM fixes WHERE {NOT_JUMP}
             WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts)),
         seg AS (SELECT * FROM wl WHERE a_ts IS NOT NULL),
         {}
         SELECT count(*) FROM dd",
        distance_ctes("$1", false)
    )
});

/// Late fixes of the whole `fixes` table into `rollup_late` ($1: offset, s).
const LATE_FROM_FIXES: &str = "INSERT INTO rollup_late (vehicle_id, day, bucket, fixes)
     SELECT vehicle_id, fw_local_day(ts, $1), fw_late_bucket(received_at - ts), count(*)
     FROM fixes WHERE flags & 16 <> 0 GROUP BY 1, 2, 3";

/// SQL condition: a fix that is a point of the path (not flagged as a jump).
pub const NOT_JUMP: &str = "flags & 1 = 0";

/// CTEs adding the segments of CTE `seg` (vehicle_id, a_ts, b_ts, len_mm, driver_id,
/// cooperative_id, sign ±1) to the distance of `rollup_daily` and
/// `rollup_daily_driver`, split into local days (`off`: placeholder of the offset).
/// With `fx`, also the fix counts of CTE `fx` (vehicle_id, day, cooperative_id, fixes,
/// first_fix_ts, last_fix_ts), to the same rows: one statement must not upsert a row
/// twice. Defines `piece` and `dd` (distance per vehicle and day).
fn distance_ctes(off: &str, fx: bool) -> String {
    let (cols, from, set) = if fx {
        (
            "COALESCE(f.fixes, 0), f.first_fix_ts, f.last_fix_ts, COALESCE(f.cooperative_id, d.coop)",
            "fx f FULL JOIN dd d USING (vehicle_id, day)",
            "fixes = r.fixes + EXCLUDED.fixes,
             first_fix_ts = LEAST(r.first_fix_ts, EXCLUDED.first_fix_ts),
             last_fix_ts = GREATEST(r.last_fix_ts, EXCLUDED.last_fix_ts),",
        )
    } else {
        (
            "0, NULL::timestamptz, NULL::timestamptz, d.coop",
            "dd d",
            "",
        )
    };
    format!(
        "piece AS (
             SELECT g.vehicle_id, s.day, g.driver_id, g.cooperative_id, g.sign * s.share_mm AS mm
             FROM seg g CROSS JOIN LATERAL fw_day_shares(g.a_ts, g.b_ts, g.len_mm, {off}::int4) s),
         dd AS (SELECT vehicle_id, day, min(cooperative_id) AS coop, sum(mm)::int8 AS mm
                FROM piece GROUP BY 1, 2),
         drv AS (
             INSERT INTO rollup_daily_driver AS r (vehicle_id, day, driver_id, distance_mm)
             SELECT vehicle_id, day, driver_id, sum(mm)::int8 FROM piece
             WHERE driver_id IS NOT NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
             ON CONFLICT (vehicle_id, day, driver_id) DO UPDATE SET
                 distance_mm = r.distance_mm + EXCLUDED.distance_mm),
         up AS (
             INSERT INTO rollup_daily AS r (vehicle_id, day, fixes, first_fix_ts, last_fix_ts,
                                            cooperative_id, distance_mm)
             SELECT vehicle_id, day, {cols}, COALESCE(d.mm, 0)
             FROM {from} ORDER BY 1, 2
             ON CONFLICT (vehicle_id, day) DO UPDATE SET {set}
                 distance_mm = r.distance_mm + EXCLUDED.distance_mm,
                 cooperative_id = COALESCE(r.cooperative_id, EXCLUDED.cooperative_id))"
    )
}

/// The fix insert `insert` (`INSERT INTO fixes … RETURNING vehicle_id,
/// cooperative_id, ts, lat, lon, driver_id, flags, received_at`) with its roll-ups
/// ($1: offset, s): the fix columns of `rollup_daily` when `fixes`, and always the
/// distance and the late fixes. Returns one row: fixes inserted.
///
/// Distance: every CTE reads `fixes` as it was before the insert, so each new fix
/// (not a jump) finds its stored neighbours `p` (before) and `q` (after): one probe
/// of the primary key per vehicle for its newest stored point (a fix after it has
/// that as `p` and no `q`), two per fix older than that. The path among the new fixes and those neighbours gains
/// each segment with a new end and loses each `p`–`q` segment new fixes now split
/// (new fixes between the same two stored ones share `p` and `q`). Correct as long as
/// no other transaction inserts fixes of the same vehicles meanwhile: the writer locks
/// the vehicles' rows first.
pub(crate) fn fixes_insert_sql(insert: &str, fixes: bool) -> String {
    let fx = if fixes {
        "fx AS (SELECT vehicle_id, fw_local_day(ts, $1::int4) AS day,
                       min(cooperative_id) AS cooperative_id, count(*) AS fixes,
                       min(ts) AS first_fix_ts, max(ts) AS last_fix_ts
                FROM ins GROUP BY 1, 2),"
    } else {
        ""
    };
    let probe = |name: &str, dir: &str, order: &str| {
        format!(
            "LEFT JOIN LATERAL (SELECT ts, lat_e7, lon_e7, driver_id, cooperative_id FROM fixes f
                 WHERE f.vehicle_id = n.vehicle_id AND f.ts {dir} n.ts AND f.{NOT_JUMP}
                 ORDER BY f.ts {order} LIMIT 1) {name} ON true"
        )
    };
    format!(
        "WITH ins AS ({insert}),
         np AS (SELECT vehicle_id, cooperative_id, ts, lat_e7, lon_e7, driver_id FROM ins WHERE {NOT_JUMP}),
         last AS (
             SELECT v.vehicle_id, l.ts, l.lat_e7, l.lon_e7, l.driver_id, l.cooperative_id
             FROM (SELECT DISTINCT vehicle_id FROM np) v {}),
         nb AS (
             SELECT n.vehicle_id, p.ts AS p_ts, p.lat_e7 AS p_lat_e7, p.lon_e7 AS p_lon_e7,
                    p.driver_id AS p_driver, p.cooperative_id AS p_coop,
                    q.ts AS q_ts, q.lat_e7 AS q_lat_e7, q.lon_e7 AS q_lon_e7,
                    q.driver_id AS q_driver, q.cooperative_id AS q_coop
             FROM (SELECT n.* FROM np n JOIN last l USING (vehicle_id) WHERE n.ts < l.ts) n {} {}
             UNION ALL
             SELECT n.vehicle_id, l.ts, l.lat_e7, l.lon_e7, l.driver_id, l.cooperative_id,
                    NULL, NULL, NULL, NULL, NULL
             FROM np n JOIN last l USING (vehicle_id) WHERE l.ts IS NULL OR n.ts > l.ts),
         pt AS (
             SELECT vehicle_id, ts, lat_e7, lon_e7, driver_id, cooperative_id, true AS is_new FROM np
             UNION SELECT vehicle_id, p_ts, p_lat_e7, p_lon_e7, p_driver, p_coop, false FROM nb
                   WHERE p_ts IS NOT NULL
             UNION SELECT vehicle_id, q_ts, q_lat_e7, q_lon_e7, q_driver, q_coop, false FROM nb
                   WHERE q_ts IS NOT NULL),
         seg AS (
             SELECT vehicle_id, a_ts, b_ts, fw_distance_e7_mm(a_lat_e7, a_lon_e7, b_lat_e7, b_lon_e7) AS len_mm,
                    driver_id, cooperative_id, 1 AS sign
             FROM (SELECT vehicle_id, lag(ts) OVER w AS a_ts, ts AS b_ts,
                          lag(lat_e7) OVER w AS a_lat_e7, lag(lon_e7) OVER w AS a_lon_e7,
                          lat_e7 AS b_lat_e7, lon_e7 AS b_lon_e7, lag(driver_id) OVER w AS driver_id,
                          cooperative_id, lag(is_new) OVER w AS a_new, is_new AS b_new
                   FROM pt WINDOW w AS (PARTITION BY vehicle_id ORDER BY ts)) s
             WHERE a_ts IS NOT NULL AND (a_new OR b_new)
             UNION ALL
             SELECT DISTINCT vehicle_id, p_ts, q_ts, fw_distance_e7_mm(p_lat_e7, p_lon_e7, q_lat_e7, q_lon_e7),
                    p_driver, q_coop, -1
             FROM nb WHERE p_ts IS NOT NULL AND q_ts IS NOT NULL),
         late AS (
             INSERT INTO rollup_late AS r (vehicle_id, day, bucket, fixes)
             SELECT vehicle_id, fw_local_day(ts, $1::int4), fw_late_bucket(received_at - ts), count(*)
             FROM ins WHERE flags & 16 <> 0 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
             ON CONFLICT (vehicle_id, day, bucket) DO UPDATE SET fixes = r.fixes + EXCLUDED.fixes),
         {fx}
         {}
         SELECT count(*) FROM ins",
        // The newest stored point of each vehicle: a new fix after it (the live case)
        // has it before and nothing after, without probing per fix.
        "LEFT JOIN LATERAL (SELECT ts, lat_e7, lon_e7, driver_id, cooperative_id FROM fixes f
             WHERE f.vehicle_id = v.vehicle_id AND f.flags & 1 = 0
             ORDER BY f.ts DESC LIMIT 1) l ON true",
        probe("p", "<", "DESC"),
        probe("q", ">", "ASC"),
        distance_ctes("$1", fixes)
    )
}

/// A data gap's duration in whole microseconds (SQL over a row of `data_gaps`).
pub const GAP_US: &str = "(extract(epoch FROM end_ts - start_ts) * 1000000)::int8";

/// Adds the fixes of CTE `src` (vehicle_id, cooperative_id, ts) to the roll-up;
/// `off` is the placeholder of the offset in seconds.
pub(crate) fn fixes_sql(src: &str, off: &str) -> String {
    format!(
        "INSERT INTO rollup_daily AS r (vehicle_id, day, cooperative_id, fixes, first_fix_ts, last_fix_ts)
         SELECT vehicle_id, fw_local_day(ts, {off}::int4), min(cooperative_id), count(*), min(ts), max(ts)
         FROM {src} GROUP BY 1, 2 ORDER BY 1, 2
         ON CONFLICT (vehicle_id, day) DO UPDATE SET
             fixes = r.fixes + EXCLUDED.fixes,
             first_fix_ts = LEAST(r.first_fix_ts, EXCLUDED.first_fix_ts),
             last_fix_ts = GREATEST(r.last_fix_ts, EXCLUDED.last_fix_ts),
             cooperative_id = COALESCE(r.cooperative_id, EXCLUDED.cooperative_id)"
    )
}

/// Adds the trips of CTE `src` (vehicle_id, cooperative_id, start_ts). Only their
/// number: the distance comes from the fixes, closed trip or not.
pub(crate) fn trips_sql(src: &str, off: &str) -> String {
    format!(
        "INSERT INTO rollup_daily AS r (vehicle_id, day, cooperative_id, trips)
         SELECT vehicle_id, fw_local_day(start_ts, {off}::int4), min(cooperative_id), count(*)
         FROM {src} GROUP BY 1, 2 ORDER BY 1, 2
         ON CONFLICT (vehicle_id, day) DO UPDATE SET
             trips = r.trips + EXCLUDED.trips,
             cooperative_id = COALESCE(r.cooperative_id, EXCLUDED.cooperative_id)"
    )
}

/// Adds the data gaps of CTE `src` (vehicle_id, cooperative_id, start_ts, end_ts).
pub(crate) fn gaps_sql(src: &str, off: &str) -> String {
    format!(
        "INSERT INTO rollup_daily AS r (vehicle_id, day, cooperative_id, data_gaps, data_gap_us, last_gap_end_ts)
         SELECT vehicle_id, fw_local_day(start_ts, {off}::int4), min(cooperative_id), count(*),
                sum({GAP_US})::int8, max(end_ts)
         FROM {src} GROUP BY 1, 2 ORDER BY 1, 2
         ON CONFLICT (vehicle_id, day) DO UPDATE SET
             data_gaps = r.data_gaps + EXCLUDED.data_gaps,
             data_gap_us = r.data_gap_us + EXCLUDED.data_gap_us,
             last_gap_end_ts = GREATEST(r.last_gap_end_ts, EXCLUDED.last_gap_end_ts),
             cooperative_id = COALESCE(r.cooperative_id, EXCLUDED.cooperative_id)"
    )
}

/// Recomputes the trip and data-gap columns of the given (vehicle, local day) keys from
/// `trips` and `data_gaps`: after a recomputation changed or deleted some of them.
pub(crate) async fn refresh_trip_gap_days(
    tx: &Transaction<'_>,
    offset_s: i32,
    vehicles: &[String],
    days: &[NaiveDate],
) -> Result<(), StoreError> {
    if vehicles.is_empty() {
        return Ok(());
    }
    tx.execute(
        &format!(
            "WITH k AS (
               SELECT DISTINCT vehicle_id, day,
                 to_timestamp(((day - date '1970-01-01') * 86400 - $3::int4)::float8) AS lo,
                 to_timestamp(((day - date '1970-01-01' + 1) * 86400 - $3::int4)::float8) AS hi
               FROM unnest($1::text[], $2::date[]) AS u(vehicle_id, day)),
             c AS (
               SELECT k.vehicle_id, k.day,
                 (SELECT count(*) FROM trips t WHERE t.vehicle_id = k.vehicle_id
                    AND t.start_ts >= k.lo AND t.start_ts < k.hi) AS trips,
                 g.n, g.us, g.last
               FROM k, LATERAL (
                 SELECT count(*) AS n, COALESCE(sum({GAP_US}), 0)::int8 AS us, max(end_ts) AS last
                 FROM data_gaps d WHERE d.vehicle_id = k.vehicle_id
                   AND d.start_ts >= k.lo AND d.start_ts < k.hi) g)
             INSERT INTO rollup_daily AS r (vehicle_id, day, cooperative_id, trips, data_gaps,
                                            data_gap_us, last_gap_end_ts)
             SELECT c.vehicle_id, c.day, v.cooperative_id, c.trips, c.n, c.us, c.last
             FROM c LEFT JOIN vehicles v USING (vehicle_id) ORDER BY 1, 2
             ON CONFLICT (vehicle_id, day) DO UPDATE SET
                 trips = EXCLUDED.trips, data_gaps = EXCLUDED.data_gaps,
                 data_gap_us = EXCLUDED.data_gap_us, last_gap_end_ts = EXCLUDED.last_gap_end_ts,
                 cooperative_id = COALESCE(r.cooperative_id, EXCLUDED.cooperative_id)"
        ),
        &[&vehicles, &days, &offset_s],
    )
    .await?;
    Ok(())
}

/// Recomputes the alert counts of the given (vehicle, local day) keys from `alerts`,
/// and with `drivers` their per-driver driving-time rows.
pub(crate) async fn refresh_alert_days(
    tx: &Transaction<'_>,
    offset_s: i32,
    vehicles: &[String],
    days: &[NaiveDate],
    drivers: bool,
) -> Result<(), StoreError> {
    if vehicles.is_empty() {
        return Ok(());
    }
    tx.execute(
        "WITH k AS (SELECT * FROM unnest($1::text[], $2::date[]) AS k(vehicle_id, day)),
         a AS (
           SELECT k.vehicle_id, k.day,
             count(*) FILTER (WHERE x.kind = 'overspeed' AND x.level = 'violation' AND x.counted) AS os,
             count(*) FILTER (WHERE x.kind = 'overspeed' AND x.level = 'violation' AND x.counted AND x.severity = 1) AS b1,
             count(*) FILTER (WHERE x.kind = 'overspeed' AND x.level = 'violation' AND x.counted AND x.severity = 2) AS b2,
             count(*) FILTER (WHERE x.kind = 'overspeed' AND x.level = 'violation' AND x.counted AND x.severity = 3) AS b3,
             count(*) FILTER (WHERE x.kind = 'overspeed' AND x.level = 'violation' AND x.counted AND x.severity = 4) AS b4,
             count(*) FILTER (WHERE x.kind = 'overspeed' AND x.level = 'violation' AND NOT x.counted) AS os_not,
             count(*) FILTER (WHERE x.kind = 'continuous_driving' AND x.level = 'violation') AS cont,
             count(*) FILTER (WHERE x.kind = 'daily_driving' AND x.level = 'violation') AS daily,
             count(*) FILTER (WHERE x.kind = 'weekly_driving' AND x.level = 'violation') AS weekly,
             count(*) FILTER (WHERE x.kind = 'off_route' AND x.level = 'violation') AS off_route,
             count(*) FILTER (WHERE x.kind = 'restricted_zone' AND x.level = 'violation') AS zone,
             count(*) FILTER (WHERE x.kind = 'no_signal') AS no_signal
           FROM k LEFT JOIN LATERAL (
             SELECT kind, level, severity, COALESCE((details->>'counted')::boolean, true) AS counted
             FROM alerts
             WHERE vehicle_id = k.vehicle_id AND retracted_at IS NULL
               AND start_ts >= to_timestamp(((k.day - date '1970-01-01') * 86400 - $3::int4)::float8)
               AND start_ts < to_timestamp(((k.day - date '1970-01-01' + 1) * 86400 - $3::int4)::float8)
           ) x ON true
           GROUP BY k.vehicle_id, k.day)
         INSERT INTO rollup_daily AS r (vehicle_id, day, cooperative_id, overspeed_counted,
             overspeed_band1, overspeed_band2, overspeed_band3, overspeed_band4,
             overspeed_not_counted, continuous_driving_violations, daily_driving_violations,
             weekly_driving_violations, off_route_violations, restricted_zone_violations, no_signal)
         SELECT a.vehicle_id, a.day, v.cooperative_id, os, b1, b2, b3, b4, os_not, cont, daily,
                weekly, off_route, zone, no_signal
         FROM a LEFT JOIN vehicles v USING (vehicle_id) ORDER BY 1, 2
         ON CONFLICT (vehicle_id, day) DO UPDATE SET
             overspeed_counted = EXCLUDED.overspeed_counted,
             overspeed_band1 = EXCLUDED.overspeed_band1, overspeed_band2 = EXCLUDED.overspeed_band2,
             overspeed_band3 = EXCLUDED.overspeed_band3, overspeed_band4 = EXCLUDED.overspeed_band4,
             overspeed_not_counted = EXCLUDED.overspeed_not_counted,
             continuous_driving_violations = EXCLUDED.continuous_driving_violations,
             daily_driving_violations = EXCLUDED.daily_driving_violations,
             weekly_driving_violations = EXCLUDED.weekly_driving_violations,
             off_route_violations = EXCLUDED.off_route_violations,
             restricted_zone_violations = EXCLUDED.restricted_zone_violations,
             no_signal = EXCLUDED.no_signal,
             cooperative_id = COALESCE(r.cooperative_id, EXCLUDED.cooperative_id)",
        &[&vehicles, &days, &offset_s],
    )
    .await?;
    if !drivers {
        return Ok(());
    }
    // The rows also hold the drivers' distance: counts not found again are zeroed, or
    // the row deleted when it has no distance (the zeroing, the deletion and the upsert
    // touch different rows of one statement).
    tx.execute(
        "WITH k AS (SELECT DISTINCT * FROM unnest($1::text[], $2::date[]) AS u(vehicle_id, day)),
         n AS (
           SELECT k.vehicle_id, k.day, x.driver_id,
             count(*) FILTER (WHERE x.kind = 'continuous_driving') AS cont,
             count(*) FILTER (WHERE x.kind = 'daily_driving') AS daily,
             count(*) FILTER (WHERE x.kind = 'weekly_driving') AS weekly
           FROM k
           JOIN alerts x ON x.vehicle_id = k.vehicle_id
             AND x.start_ts >= to_timestamp(((k.day - date '1970-01-01') * 86400 - $3::int4)::float8)
             AND x.start_ts < to_timestamp(((k.day - date '1970-01-01' + 1) * 86400 - $3::int4)::float8)
           WHERE x.driver_id IS NOT NULL AND x.level = 'violation' AND x.retracted_at IS NULL
             AND x.kind IN ('continuous_driving', 'daily_driving', 'weekly_driving')
           GROUP BY 1, 2, 3),
         gone AS (
           SELECT d.vehicle_id, d.day, d.driver_id, d.distance_mm FROM rollup_daily_driver d
           JOIN k ON d.vehicle_id = k.vehicle_id AND d.day = k.day
           WHERE (d.continuous_driving_violations, d.daily_driving_violations,
                  d.weekly_driving_violations) <> (0, 0, 0)
             AND NOT EXISTS (SELECT 1 FROM n WHERE n.vehicle_id = d.vehicle_id
                             AND n.day = d.day AND n.driver_id = d.driver_id)),
         zeroed AS (
           UPDATE rollup_daily_driver d SET continuous_driving_violations = 0,
               daily_driving_violations = 0, weekly_driving_violations = 0
           FROM gone g WHERE g.distance_mm <> 0 AND (d.vehicle_id, d.day, d.driver_id)
                                                   = (g.vehicle_id, g.day, g.driver_id)),
         deleted AS (
           DELETE FROM rollup_daily_driver d USING gone g
           WHERE g.distance_mm = 0 AND (d.vehicle_id, d.day, d.driver_id)
                                       = (g.vehicle_id, g.day, g.driver_id))
         INSERT INTO rollup_daily_driver AS r (vehicle_id, day, driver_id,
             continuous_driving_violations, daily_driving_violations, weekly_driving_violations)
         SELECT * FROM n ORDER BY 1, 2, 3
         ON CONFLICT (vehicle_id, day, driver_id) DO UPDATE SET
             continuous_driving_violations = EXCLUDED.continuous_driving_violations,
             daily_driving_violations = EXCLUDED.daily_driving_violations,
             weekly_driving_violations = EXCLUDED.weekly_driving_violations",
        &[&vehicles, &days, &offset_s],
    )
    .await?;
    Ok(())
}

/// Drops the TimescaleDB continuous aggregate versions before 2026-12-04 kept the fix
/// counts in (with the view over it): the writer keeps them in `rollup_daily` on both
/// layouts now. The real-time aggregate re-read every fix not yet materialised on each
/// report (all of them after a backlog, up to two hours of the fleet's fixes between
/// hourly refreshes): 1.6–2.0 s for a month of 50 vehicles where the table takes 15 ms
/// for 500 (BENCHMARKS.md "Compliance reports").
async fn drop_timescale_cagg(client: &mut Client) -> Result<(), StoreError> {
    // Not inside a transaction, as TimescaleDB requires for continuous aggregates.
    client
        .batch_execute("DROP MATERIALIZED VIEW IF EXISTS fixes_daily_cagg CASCADE")
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_days_at_utc_plus_7() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let off = 7 * 3600;
        assert_eq!(
            local_day(at("2026-10-31T16:59:59Z"), off),
            NaiveDate::from_ymd_opt(2026, 10, 31).unwrap()
        );
        assert_eq!(
            local_day(at("2026-10-31T17:00:00Z"), off),
            NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
        );
        let d = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        assert_eq!(day_start(d, off), at("2026-10-31T17:00:00Z"));
        assert_eq!(day_start(d, -3600), at("2026-11-01T01:00:00Z"));
    }
}
