-- The live stream reads the alerts changed in the last seconds, once a second.
CREATE INDEX IF NOT EXISTS alerts_updated_at_idx ON alerts (updated_at);
