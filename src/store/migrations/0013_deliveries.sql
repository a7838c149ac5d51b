-- Deliveries of alerts to the cooperatives' own channels (webhook, email), with a
-- durable outbox per destination and every attempt in the reminder log
-- (Circular 12/2020 art. 5).

-- An alert's revision: 1 when inserted, +1 at every change of what it says (opened ->
-- closed, details, retracted, restored). Marking it published or fanned out is not a
-- change. Idempotency keys are (alert_id, revision): a receiver drops exact repeats
-- and still gets every change.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS revision integer NOT NULL DEFAULT 1;
-- The revision last fanned out into `deliveries`; behind `revision`: waiting.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS fanned_out_revision integer;
-- Alerts stored before deliveries existed are not sent to anyone.
UPDATE alerts SET fanned_out_revision = revision WHERE fanned_out_revision IS NULL;

CREATE OR REPLACE FUNCTION alerts_next_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.status, NEW.level, NEW.end_ts, NEW.severity, NEW.details, NEW.driver_id,
        NEW.retracted_at, NEW.retraction_reason)
       IS DISTINCT FROM
       (OLD.status, OLD.level, OLD.end_ts, OLD.severity, OLD.details, OLD.driver_id,
        OLD.retracted_at, OLD.retraction_reason) THEN
        NEW.revision := OLD.revision + 1;
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS alerts_revision ON alerts;
CREATE TRIGGER alerts_revision BEFORE UPDATE ON alerts
    FOR EACH ROW EXECUTE FUNCTION alerts_next_revision();
CREATE INDEX IF NOT EXISTS alerts_fanout_idx ON alerts (updated_at)
    WHERE fanned_out_revision IS DISTINCT FROM revision;

-- Where a cooperative wants its alerts. `spec` holds the filter and presentation
-- (kinds, levels, band, vehicles, quiet hours, digest, language) as JSON written by
-- fleetwatch. A deleted destination is kept (deleted_at) for the log that names it.
CREATE TABLE IF NOT EXISTS delivery_destinations (
    id                    bigserial   PRIMARY KEY,
    cooperative_id        text        NOT NULL,
    name                  text        NOT NULL,
    channel               text        NOT NULL CHECK (channel IN ('webhook', 'email')),
    target                text        NOT NULL,
    secret                text,
    spec                  jsonb       NOT NULL,
    source                text        NOT NULL CHECK (source IN ('config', 'api')),
    consecutive_failures  integer     NOT NULL DEFAULT 0,
    last_error            text,
    parked_at             timestamptz,
    parked_reason         text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    deleted_at            timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS delivery_destinations_name_idx
    ON delivery_destinations (cooperative_id, name) WHERE deleted_at IS NULL;

-- The outbox: one row per destination and alert revision, sent in id order once due
-- (quiet hours and hourly digests hold info events back).
CREATE TABLE IF NOT EXISTS deliveries (
    id              bigserial   PRIMARY KEY,
    destination_id  bigint      NOT NULL REFERENCES delivery_destinations (id),
    alert_id        text        NOT NULL REFERENCES alerts (alert_id),
    revision        integer     NOT NULL,
    digest          boolean     NOT NULL,
    due_at          timestamptz NOT NULL,
    -- What is sent: the alert as it was at this revision (the alert row moves on).
    payload         jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'delivered', 'cancelled')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_attempt_at timestamptz,
    last_error      text,
    -- A digest's rows share the id of its first row, fixed at its first attempt, so
    -- every retry sends the same set under the same key.
    batch_id        bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (destination_id, alert_id, revision)
);
CREATE INDEX IF NOT EXISTS deliveries_pending_idx ON deliveries (destination_id, id)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_alert_idx ON deliveries (alert_id);
CREATE INDEX IF NOT EXISTS deliveries_created_idx ON deliveries (created_at);

-- The reminder log records every delivery attempt: to whom, which revision, the
-- outcome and its detail (HTTP status, SMTP reply, error).
ALTER TABLE reminder_log ADD COLUMN IF NOT EXISTS destination_id bigint REFERENCES delivery_destinations (id);
ALTER TABLE reminder_log ADD COLUMN IF NOT EXISTS delivery_id bigint REFERENCES deliveries (id);
ALTER TABLE reminder_log ADD COLUMN IF NOT EXISTS target text;
ALTER TABLE reminder_log ADD COLUMN IF NOT EXISTS revision integer;
ALTER TABLE reminder_log ADD COLUMN IF NOT EXISTS attempt integer;
ALTER TABLE reminder_log ADD COLUMN IF NOT EXISTS detail text;
