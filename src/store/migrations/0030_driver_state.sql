-- Live driving-time state, kept by the writer in the batch's transaction from what
-- the rules report after each vehicle's newest fix (the API reads only these).

-- Per driver (card logged in): the state after their newest fix on any vehicle.
CREATE TABLE IF NOT EXISTS driver_state (
    driver_id          text PRIMARY KEY,
    vehicle_id         text NOT NULL,
    since_ts           timestamptz,
    as_of_ts           timestamptz NOT NULL,
    moving             boolean NOT NULL,
    continuous_s       double precision NOT NULL,
    last_drive_end_ts  timestamptz,
    day                date NOT NULL,
    daily_s            double precision NOT NULL,
    weekly_s           double precision NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Which cooperatives' vehicles a driver drove: a cooperative token sees those drivers.
CREATE TABLE IF NOT EXISTS driver_cooperatives (
    driver_id       text NOT NULL,
    cooperative_id  text NOT NULL,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (driver_id, cooperative_id)
);

-- Per vehicle: the same figures for whoever drives it (or the vehicle's own without
-- a driver card), and whether it is inside its route's corridor.
ALTER TABLE vehicles
    ADD COLUMN IF NOT EXISTS live_as_of_ts           timestamptz,
    ADD COLUMN IF NOT EXISTS live_driver_id          text,
    ADD COLUMN IF NOT EXISTS live_driver_since_ts    timestamptz,
    ADD COLUMN IF NOT EXISTS live_moving             boolean,
    ADD COLUMN IF NOT EXISTS live_continuous_s       double precision,
    ADD COLUMN IF NOT EXISTS live_last_drive_end_ts  timestamptz,
    ADD COLUMN IF NOT EXISTS live_day                date,
    ADD COLUMN IF NOT EXISTS live_daily_s            double precision,
    ADD COLUMN IF NOT EXISTS live_weekly_s           double precision,
    ADD COLUMN IF NOT EXISTS live_on_route           boolean;
