-- Distance is a result of the fixes: the distance of a vehicle (and of a driver) in a
-- local day is the path length of its accepted fixes in that day, in event-time order,
-- whether or not a trip has closed and whatever order the fixes arrived in
-- (src/store/rollup.rs). And data timeliness: how late the fixes flagged `late` were.
--
-- The path: consecutive fixes of a vehicle by ts, jump-flagged fixes (flags & 1) not
-- being points of it (so the segments to and from a jump are left out and the path
-- goes straight past it, as the rules do). Each segment is rounded to whole
-- millimetres, then shared between the local days it spans in proportion to time
-- (fw_share_mm): sums of integers, exact in any order, so the writer's incremental
-- roll-ups, a rebuild and the raw-table report agree to the millimetre.

-- Length of the straight segment between two fixes, whole millimetres: the
-- equirectangular distance at the mean latitude of src/geo/frame.rs (mean Earth radius
-- 6,371,008.8 m). Immutable operators only, so the planner inlines it.
CREATE OR REPLACE FUNCTION fw_distance_mm(lat1 float8, lon1 float8, lat2 float8, lon2 float8)
    RETURNS int8 LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT round(sqrt(
              ((lon2 - lon1) * (6371008.8 * pi() / 180) * cos(radians((lat1 + lat2) * 0.5))) ^ 2
            + ((lat2 - lat1) * (6371008.8 * pi() / 180)) ^ 2) * 1000)::int8 $$;

-- The part of segment [a, b] of length len_mm travelled by time t (a <= t <= b),
-- rounded to whole millimetres: share(b) - share(a) = len_mm, and the shares of
-- consecutive intervals telescope, so splitting a segment anywhere loses nothing.
CREATE OR REPLACE FUNCTION fw_share_mm(len_mm int8, a timestamptz, b timestamptz, t timestamptz)
    RETURNS int8 LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT round(len_mm * extract(epoch FROM t - a) / extract(epoch FROM b - a))::int8 $$;

-- The instant local day `day` starts at offset_s seconds east of UTC.
CREATE OR REPLACE FUNCTION fw_day_start(day date, offset_s integer) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (day::timestamp - make_interval(secs => offset_s)) AT TIME ZONE 'UTC' $$;

-- Segment [a, b] of len_mm split at every local midnight it crosses, in proportion to
-- time: one row per local day with a non-zero share. Almost every segment lies in one
-- day (first branch); one crossing midnight is split (second).
CREATE OR REPLACE FUNCTION fw_day_shares(a timestamptz, b timestamptz, len_mm int8, offset_s integer)
    RETURNS TABLE (day date, share_mm int8) LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT fw_local_day(a, offset_s), len_mm
    WHERE fw_local_day(a, offset_s) = fw_local_day(b, offset_s) AND len_mm <> 0
    UNION ALL
    SELECT d, s FROM (
        SELECT d, fw_share_mm(len_mm, a, b, LEAST(b, fw_day_start(d + 1, offset_s)))
                - fw_share_mm(len_mm, a, b, GREATEST(a, fw_day_start(d, offset_s))) AS s
        FROM (SELECT fw_local_day(a, offset_s) + k AS d
              FROM generate_series(0, fw_local_day(b, offset_s) - fw_local_day(a, offset_s)) AS k) AS days
        WHERE fw_local_day(a, offset_s) <> fw_local_day(b, offset_s)
    ) AS x WHERE s <> 0
    $$;

-- Driver distance beside the driving-time violations (segments by the driver of their
-- earlier fix, as driving time is counted).
ALTER TABLE rollup_daily_driver ADD COLUMN IF NOT EXISTS distance_mm bigint NOT NULL DEFAULT 0;

-- Lateness (received_at - ts) of the fixes flagged `late`, in fixed buckets: bucket 0
-- is under 1 s, bucket k >= 1 is [2^((k-1)/8), 2^(k/8)) seconds (9 % wide), so
-- percentiles over any set of days come from the roll-ups, to one bucket.
CREATE OR REPLACE FUNCTION fw_late_bucket(late interval) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE WHEN extract(epoch FROM late) < 1 THEN 0
                      ELSE LEAST(1 + floor(ln(extract(epoch FROM late)::float8) * 8 / ln(2::float8)), 32767)
                 END::smallint $$;

-- Late fixes per vehicle, local day (of their ts) and lateness bucket.
CREATE TABLE IF NOT EXISTS rollup_late (
    vehicle_id  text     NOT NULL,
    day         date     NOT NULL,
    bucket      smallint NOT NULL,
    fixes       bigint   NOT NULL,
    PRIMARY KEY (vehicle_id, day, bucket)
);

-- distance_mm used to be the distance of the trips starting in the day: forget the
-- plan so the next start rebuilds every roll-up from the raw tables (rollup::ensure).
DELETE FROM rollup_meta;
