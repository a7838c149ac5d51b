-- Daily roll-ups for compliance reports: one row per (vehicle, local day), kept by the
-- writer in the same transaction as the rows it summarises (src/store/rollup.rs).
-- A report reads these for the whole local days of its range and the raw tables only
-- for partial days at its edges.

-- Local calendar day of `ts` at a fixed offset east of UTC (seconds), whatever the
-- session's TimeZone. Built of immutable operators only, so the planner inlines it (a
-- function call per fix would cost the writer).
CREATE OR REPLACE FUNCTION fw_local_day(ts timestamptz, offset_s integer) RETURNS date
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT ((ts AT TIME ZONE 'UTC') + make_interval(secs => offset_s))::date $$;

CREATE TABLE IF NOT EXISTS rollup_daily (
    vehicle_id                    text             NOT NULL,
    -- Local calendar day (offset in rollup_meta).
    day                           date             NOT NULL,
    -- Cooperative when the rows were written (reports select by the registry's).
    cooperative_id                text,
    -- Fixes stored with ts in the day (redelivered duplicates not counted), the first
    -- and last of them. Not kept here when a TimescaleDB continuous aggregate does it.
    fixes                         bigint           NOT NULL DEFAULT 0,
    first_fix_ts                  timestamptz,
    last_fix_ts                   timestamptz,
    -- Trips starting in the day, their distance in millimetres (integers: sums are
    -- exact in any order, so roll-ups and raw tables give the same report).
    trips                         bigint           NOT NULL DEFAULT 0,
    distance_mm                   bigint           NOT NULL DEFAULT 0,
    -- Alerts starting in the day, by what reports count (recomputed from `alerts`
    -- whenever one of them changes: severity, `counted` and end change until closed).
    overspeed_counted             bigint           NOT NULL DEFAULT 0,
    overspeed_band1               bigint           NOT NULL DEFAULT 0,
    overspeed_band2               bigint           NOT NULL DEFAULT 0,
    overspeed_band3               bigint           NOT NULL DEFAULT 0,
    overspeed_band4               bigint           NOT NULL DEFAULT 0,
    overspeed_not_counted         bigint           NOT NULL DEFAULT 0,
    continuous_driving_violations bigint           NOT NULL DEFAULT 0,
    daily_driving_violations      bigint           NOT NULL DEFAULT 0,
    weekly_driving_violations     bigint           NOT NULL DEFAULT 0,
    off_route_violations          bigint           NOT NULL DEFAULT 0,
    restricted_zone_violations    bigint           NOT NULL DEFAULT 0,
    no_signal                     bigint           NOT NULL DEFAULT 0,
    -- Data gaps starting in the day: count, total duration in microseconds, latest
    -- end (for the active time of data completeness, which runs to the end of the last gap).
    data_gaps                     bigint           NOT NULL DEFAULT 0,
    data_gap_us                   bigint           NOT NULL DEFAULT 0,
    last_gap_end_ts               timestamptz,
    PRIMARY KEY (vehicle_id, day)
-- Every batch updates today's row of each vehicle in it: room on the page keeps those
-- updates HOT (no index entry per update).
) WITH (fillfactor = 50);

-- Driving-time violations per driver (alerts with a driver), per vehicle and local day.
CREATE TABLE IF NOT EXISTS rollup_daily_driver (
    vehicle_id                    text    NOT NULL,
    day                           date    NOT NULL,
    driver_id                     text    NOT NULL,
    continuous_driving_violations bigint  NOT NULL DEFAULT 0,
    daily_driving_violations      bigint  NOT NULL DEFAULT 0,
    weekly_driving_violations     bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (vehicle_id, day, driver_id)
);

-- What the roll-ups were built with. No row: not built yet, reports read raw tables.
-- fixes_source: 'table' (rollup_daily's fix columns) or 'cagg' (TimescaleDB).
CREATE TABLE IF NOT EXISTS rollup_meta (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    utc_offset_s  integer     NOT NULL,
    fixes_source  text        NOT NULL CHECK (fixes_source IN ('table', 'cagg')),
    built_at      timestamptz NOT NULL DEFAULT now()
);

-- The fix columns, wherever they are kept (replaced by a view over the continuous
-- aggregate under TimescaleDB).
CREATE OR REPLACE VIEW rollup_fixes_daily AS
    SELECT vehicle_id, day, fixes, first_fix_ts, last_fix_ts FROM rollup_daily;
