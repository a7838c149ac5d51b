-- Scheduled (GTFS) trips as buses ran them, and their stop events (issue 11). Keyed
-- so that a recomputation of a vehicle upserts what it states again; what it no
-- longer gives is deleted by the reconciliation (src/store/recompute.rs).
CREATE TABLE IF NOT EXISTS trip_runs (
    vehicle_id      text        NOT NULL,
    start_ts        timestamptz NOT NULL,
    end_ts          timestamptz NOT NULL,
    cooperative_id  text,
    trip_id         text        NOT NULL,
    route_id        text        NOT NULL,
    service_date    date        NOT NULL,
    scheduled_start timestamptz NOT NULL,
    confidence      smallint    NOT NULL,
    completed       boolean     NOT NULL,
    stops_served    smallint    NOT NULL,
    stops_skipped   smallint    NOT NULL,
    stops_total     smallint    NOT NULL,
    last_delay_s    integer,
    PRIMARY KEY (vehicle_id, start_ts)
);
CREATE INDEX IF NOT EXISTS trip_runs_coop_date ON trip_runs (cooperative_id, service_date);
CREATE INDEX IF NOT EXISTS trip_runs_route_date ON trip_runs (route_id, service_date);

CREATE TABLE IF NOT EXISTS stop_events (
    vehicle_id          text        NOT NULL,
    trip_id             text        NOT NULL,
    scheduled_arrival   timestamptz NOT NULL,
    stop_sequence       integer     NOT NULL,
    cooperative_id      text,
    service_date        date        NOT NULL,
    stop_id             text        NOT NULL,
    observed_ts         timestamptz NOT NULL,
    scheduled_departure timestamptz NOT NULL,
    arrival_ts          timestamptz,
    departure_ts        timestamptz,
    dwell_s             double precision,
    deviation_s         integer,
    skipped             boolean     NOT NULL,
    PRIMARY KEY (vehicle_id, trip_id, scheduled_arrival, stop_sequence)
);
CREATE INDEX IF NOT EXISTS stop_events_vehicle_observed ON stop_events (vehicle_id, observed_ts);
CREATE INDEX IF NOT EXISTS stop_events_coop_date ON stop_events (cooperative_id, service_date);
