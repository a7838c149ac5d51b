-- Event time of the fix whose processing emitted an alert's stored version (issue 13).
-- A recomputation from a snapshot reconciles every alert emitted at or after the
-- snapshot, including those of an episode that began before it (a continuous-driving
-- warning of a run already under way). Rows from before this column count from their
-- start, as before.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS emitted_ts timestamptz;
