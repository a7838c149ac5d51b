-- Journey data: one row per fix, keyed by (vehicle, event time) so re-delivery is idempotent.
CREATE TABLE IF NOT EXISTS fixes (
    vehicle_id      text             NOT NULL,
    ts              timestamptz      NOT NULL,
    cooperative_id  text             NOT NULL,
    lat             double precision NOT NULL,
    lon             double precision NOT NULL,
    speed_kmh       real             NOT NULL,
    heading_deg     real,
    driver_id       text,
    ignition        boolean,
    satellites      smallint,
    hdop            real,
    odometer_m      double precision,
    flags           smallint         NOT NULL DEFAULT 0,
    received_at     timestamptz      NOT NULL,
    PRIMARY KEY (vehicle_id, ts)
);
-- Time-range scans (retention, reports) on plain PostgreSQL; tiny, and harmless on TimescaleDB.
CREATE INDEX IF NOT EXISTS fixes_ts_brin ON fixes USING brin (ts);

-- Rejected input, kept with its reason. dedup_key = hash(topic, bytes) so a redelivered
-- message does not store its reject twice.
CREATE TABLE IF NOT EXISTS dead_letters (
    id           bigserial   PRIMARY KEY,
    dedup_key    bigint      NOT NULL UNIQUE,
    received_at  timestamptz NOT NULL,
    topic        text        NOT NULL,
    payload      bytea       NOT NULL,
    reason       text        NOT NULL,
    detail       text        NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_reason_idx ON dead_letters (reason, received_at);

-- Registry (from configuration) plus every vehicle ever seen; unregistered ones are listed.
CREATE TABLE IF NOT EXISTS vehicles (
    vehicle_id      text        PRIMARY KEY,
    cooperative_id  text        NOT NULL,
    plate           text,
    class           text,
    route_id        text,
    registered      boolean     NOT NULL DEFAULT false,
    first_seen      timestamptz,
    last_seen       timestamptz,
    last_fix_ts     timestamptz
);
