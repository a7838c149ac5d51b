-- Alerts of the compliance rules. alert_id is derived from (vehicle or driver, kind,
-- start) so re-processing the same fixes updates a row instead of adding one.
-- published_at NULL = waiting in the outbox to be published to MQTT.
CREATE TABLE IF NOT EXISTS alerts (
    alert_id        text             PRIMARY KEY,
    vehicle_id      text             NOT NULL,
    cooperative_id  text,
    driver_id       text,
    kind            text             NOT NULL,
    level           text             NOT NULL,
    status          text             NOT NULL,
    severity        smallint,
    start_ts        timestamptz      NOT NULL,
    end_ts          timestamptz,
    lat             double precision NOT NULL,
    lon             double precision NOT NULL,
    details         jsonb            NOT NULL,
    created_at      timestamptz      NOT NULL DEFAULT now(),
    updated_at      timestamptz      NOT NULL DEFAULT now(),
    published_at    timestamptz
);
CREATE INDEX IF NOT EXISTS alerts_vehicle_idx ON alerts (vehicle_id, start_ts);
CREATE INDEX IF NOT EXISTS alerts_coop_idx ON alerts (cooperative_id, start_ts);
CREATE INDEX IF NOT EXISTS alerts_outbox_idx ON alerts (updated_at) WHERE published_at IS NULL;

-- The cooperative's log of reminders (Circular 12/2020 art. 5): every publication of
-- an alert, and later every acknowledgement by a person.
CREATE TABLE IF NOT EXISTS reminder_log (
    id        bigserial   PRIMARY KEY,
    alert_id  text        NOT NULL REFERENCES alerts (alert_id),
    at        timestamptz NOT NULL DEFAULT now(),
    channel   text        NOT NULL,
    status    text        NOT NULL,
    actor     text,
    note      text
);
CREATE INDEX IF NOT EXISTS reminder_log_alert_idx ON reminder_log (alert_id, at);

-- Per-vehicle rule state, written in the same transaction as the fixes it reflects,
-- so a restart resumes exactly where the committed data ends.
-- watermark: newest fix time the state has seen; a restart replays stored fixes
-- after it (less the reorder window) so nothing committed is missed by the rules.
CREATE TABLE IF NOT EXISTS rule_state (
    vehicle_id  text        PRIMARY KEY,
    state       jsonb       NOT NULL,
    watermark   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Data completeness: gaps between consecutive fixes above the sending cadence.
CREATE TABLE IF NOT EXISTS data_gaps (
    vehicle_id      text        NOT NULL,
    start_ts        timestamptz NOT NULL,
    end_ts          timestamptz NOT NULL,
    cooperative_id  text,
    details         jsonb       NOT NULL,
    PRIMARY KEY (vehicle_id, start_ts)
);

-- Trips between stops, for reports.
CREATE TABLE IF NOT EXISTS trips (
    vehicle_id      text             NOT NULL,
    start_ts        timestamptz      NOT NULL,
    end_ts          timestamptz      NOT NULL,
    cooperative_id  text,
    driver_id       text,
    distance_m      double precision NOT NULL,
    max_speed_kmh   double precision NOT NULL,
    PRIMARY KEY (vehicle_id, start_ts)
);
