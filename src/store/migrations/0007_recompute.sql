-- Late fixes are applied by recomputing their vehicle in event-time order (issue 13).
-- An alert the recomputation no longer produces is kept, marked retracted: when and
-- why. It is published again (status "retracted") and logged in reminder_log.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS retracted_at timestamptz;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS retraction_reason text;
