-- Coordinates as integers of 1e-7 degree (about 1 cm, finer than any device reports):
-- exact at device resolution, and delta-of-delta compressed to a few bits per fix on
-- TimescaleDB, where a double's mantissa does not compress (BENCHMARKS.md "Storage per
-- fix"). Readers take lat_e7 / 1e7::float8, the same double as the domain's Fix holds.
--
-- On TimescaleDB the column types of a hypertable with compression enabled cannot
-- change: the compressed chunks are decompressed, compression is turned off, the
-- columns converted (every chunk rewritten), then the same chunks compressed again.
-- This rewrites the whole table in one transaction: on a large database, plan for
-- the time and for the uncompressed size in free disk while it runs.
DO $$
DECLARE
    hyper boolean := false;
    compressed regclass[] := '{}';
    ch regclass;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                       WHERE hypertable_name = 'fixes' AND hypertable_schema = current_schema())
            INTO hyper;
    END IF;
    IF hyper THEN
        SELECT coalesce(array_agg(format('%I.%I', chunk_schema, chunk_name)::regclass), '{}')
            INTO compressed
            FROM timescaledb_information.chunks
            WHERE hypertable_name = 'fixes' AND hypertable_schema = current_schema()
              AND is_compressed;
        FOREACH ch IN ARRAY compressed LOOP
            PERFORM decompress_chunk(ch);
        END LOOP;
        -- Re-added by the layout step at every start (src/store/migrate.rs).
        PERFORM remove_compression_policy('fixes', if_exists => true);
        ALTER TABLE fixes SET (timescaledb.compress = false);
    END IF;
    ALTER TABLE fixes
        ALTER COLUMN lat TYPE integer USING round(lat * 1e7)::integer,
        ALTER COLUMN lon TYPE integer USING round(lon * 1e7)::integer;
    ALTER TABLE fixes RENAME COLUMN lat TO lat_e7;
    ALTER TABLE fixes RENAME COLUMN lon TO lon_e7;
    IF hyper THEN
        ALTER TABLE fixes SET (timescaledb.compress,
            timescaledb.compress_segmentby = 'vehicle_id',
            timescaledb.compress_orderby = 'ts');
        FOREACH ch IN ARRAY compressed LOOP
            PERFORM compress_chunk(ch);
        END LOOP;
    END IF;
END $$;

-- fw_distance_mm of two fixes' stored coordinates (1e-7 degree): the same doubles the
-- rules saw, so the same millimetres.
CREATE OR REPLACE FUNCTION fw_distance_e7_mm(lat1 int4, lon1 int4, lat2 int4, lon2 int4)
    RETURNS int8 LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT fw_distance_mm(lat1 / 1e7::float8, lon1 / 1e7::float8,
                                lat2 / 1e7::float8, lon2 / 1e7::float8) $$;

-- Coordinates of stored fixes off the 1e-7 grid (GT06's 1/1,800,000 minute) moved by
-- under 0.5e-7 degree, and with them distances by a millimetre here and there: the
-- next start rebuilds every roll-up from the raw tables (rollup::ensure), so roll-ups
-- and raw-table reports agree again.
DELETE FROM rollup_meta;
