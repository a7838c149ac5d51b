-- Kilometres in service of a trip run (issue 11, route reports): metres along the
-- trip's shape from where the run started to the furthest point it reached. NULL for
-- runs stored before this column, and for a run carried over from an older checkpoint.
ALTER TABLE trip_runs ADD COLUMN IF NOT EXISTS distance_m double precision;
