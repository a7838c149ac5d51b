-- The geography (routes and zones) the service ran with: one row each time it starts
-- or reloads with routes or zones that differ from the previous row's, so that
-- `replay --rules` can use the geography the stored alerts were made with.
CREATE TABLE IF NOT EXISTS geo_versions (
    id            bigserial   PRIMARY KEY,
    loaded_at     timestamptz NOT NULL DEFAULT now(),
    content_hash  text        NOT NULL,
    sources       jsonb       NOT NULL,
    route_count   int         NOT NULL,
    zone_count    int         NOT NULL,
    routes        jsonb       NOT NULL,
    zones         jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS geo_versions_loaded_idx ON geo_versions (loaded_at);
