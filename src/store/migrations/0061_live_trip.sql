-- The scheduled trip a bus runs at its newest fix (issue 11): the run is stored in
-- trip_runs only once it ends, the live list, the map and GTFS-realtime need it now.
ALTER TABLE vehicles
    ADD COLUMN IF NOT EXISTS live_trip_id            text,
    ADD COLUMN IF NOT EXISTS live_trip_route_id      text,
    ADD COLUMN IF NOT EXISTS live_trip_service_date  date,
    ADD COLUMN IF NOT EXISTS live_trip_start_ts      timestamptz,
    ADD COLUMN IF NOT EXISTS live_trip_direction     smallint,
    ADD COLUMN IF NOT EXISTS live_trip_headsign      text,
    ADD COLUMN IF NOT EXISTS live_next_stop_id       text,
    ADD COLUMN IF NOT EXISTS live_next_stop_sequence integer,
    ADD COLUMN IF NOT EXISTS live_next_stop_name     text,
    ADD COLUMN IF NOT EXISTS live_delay_s            integer,
    ADD COLUMN IF NOT EXISTS live_trip_confidence    smallint;
