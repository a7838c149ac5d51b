-- The live stream re-reads the alerts acknowledged in the last seconds, once a second.
CREATE INDEX IF NOT EXISTS reminder_log_acks_idx ON reminder_log (at) WHERE status = 'acknowledged';
