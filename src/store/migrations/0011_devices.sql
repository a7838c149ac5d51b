-- The GPS device fitted to each vehicle (IMEI, JT/T 808 terminal phone number,
-- OsmAnd app id): the device gateway maps a device's frames to its vehicle. A device
-- is fitted to one registered vehicle at a time.
ALTER TABLE vehicles ADD COLUMN IF NOT EXISTS device_id text;
CREATE UNIQUE INDEX IF NOT EXISTS vehicles_device_idx ON vehicles (device_id)
    WHERE registered AND device_id IS NOT NULL;
