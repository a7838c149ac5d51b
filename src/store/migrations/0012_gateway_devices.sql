-- The devices the gateway has heard (GET /api/v1/devices), kept across restarts: a
-- JT/T 808 terminal gives its model only when it registers, and authenticates without
-- registering again after a restart.
CREATE TABLE IF NOT EXISTS gateway_devices (
    protocol         text        NOT NULL,
    device_id        text        NOT NULL,
    vehicle_id       text,
    cooperative_id   text,
    status           text        NOT NULL,
    remote           text        NOT NULL,
    last_connection  timestamptz NOT NULL,
    last_frame       timestamptz,
    connections      bigint      NOT NULL DEFAULT 0,
    frames           bigint      NOT NULL DEFAULT 0,
    positions        bigint      NOT NULL DEFAULT 0,
    model            text,
    firmware         text,
    PRIMARY KEY (protocol, device_id)
);
CREATE INDEX IF NOT EXISTS gateway_devices_coop_idx ON gateway_devices (cooperative_id);
