-- The latest position of each vehicle, kept by the writer with last_fix_ts, so the
-- live view reads one row per vehicle instead of probing the fixes table.
ALTER TABLE vehicles
    ADD COLUMN IF NOT EXISTS last_lat          double precision,
    ADD COLUMN IF NOT EXISTS last_lon          double precision,
    ADD COLUMN IF NOT EXISTS last_speed_kmh    real,
    ADD COLUMN IF NOT EXISTS last_heading_deg  real,
    ADD COLUMN IF NOT EXISTS last_driver_id    text;

UPDATE vehicles v SET last_lat = f.lat, last_lon = f.lon, last_speed_kmh = f.speed_kmh,
                      last_heading_deg = f.heading_deg, last_driver_id = f.driver_id
FROM fixes f
WHERE f.vehicle_id = v.vehicle_id AND f.ts = v.last_fix_ts;
