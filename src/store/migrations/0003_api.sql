-- HTTP API: bearer tokens, stored only as SHA-256 of the token (hex); the token itself
-- is shown once when created. A cooperative token is bound to its cooperative.
CREATE TABLE IF NOT EXISTS api_tokens (
    token_sha256    text        PRIMARY KEY CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    role            text        NOT NULL CHECK (role IN ('cooperative', 'regulator', 'admin')),
    cooperative_id  text,
    label           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((role = 'cooperative') = (cooperative_id IS NOT NULL))
);

-- Live positions list each vehicle's open alerts without scanning closed ones.
CREATE INDEX IF NOT EXISTS alerts_open_idx ON alerts (vehicle_id) WHERE status = 'open';
-- The regulator's alert list across cooperatives, newest first.
CREATE INDEX IF NOT EXISTS alerts_start_idx ON alerts (start_ts);
