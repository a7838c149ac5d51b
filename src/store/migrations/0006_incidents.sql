-- Ingest incidents: events where data may have been lost outside fleetwatch (a broker
-- that came back without fleetwatch's session). Shown in reports beside data gaps.
CREATE TABLE IF NOT EXISTS ingest_incidents (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL,
    kind        text NOT NULL,
    broker      text NOT NULL,
    connection  text NOT NULL,
    detail      text NOT NULL
);
CREATE INDEX IF NOT EXISTS ingest_incidents_at_idx ON ingest_incidents (at);
