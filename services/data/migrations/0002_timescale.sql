-- depends: 0001_initial
-- Make data.candles a TimescaleDB hypertable when the extension can be installed on this server.
-- Without TimescaleDB (the embedded server) this is a no-op and candles stay a plain table with
-- primary key (symbol, timeframe, time). A server that lists the extension but cannot load it
-- (not in shared_preload_libraries, no privilege) is treated the same way, with a NOTICE.
-- No percent signs in migrations: yoyo hands psycopg an empty parameter dict.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            PERFORM create_hypertable(
                'data.candles', 'time',
                chunk_time_interval => interval '30 days',
                if_not_exists => TRUE,
                migrate_data => TRUE
            );
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE USING MESSAGE = 'TimescaleDB not usable, data.candles stays a plain table: ' || SQLERRM;
        END;
    END IF;
END;
$$;
