-- depends: 0001_initial
-- Make data.candles a TimescaleDB hypertable when the extension can be installed on this server.
-- Without TimescaleDB (the embedded server) this is a no-op and candles stay a plain table with
-- primary key (symbol, timeframe, time). A server that lists the extension but cannot load it
-- (not in shared_preload_libraries, no privilege) is treated the same way, with a NOTICE. The preload
-- is checked first: without it TimescaleDB's CREATE EXTENSION ends the session, which no exception
-- handler can catch (tests/data/test_data_timescale.py runs both cases on a real TimescaleDB).
-- No percent signs in migrations: yoyo hands psycopg an empty parameter dict.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
       AND NOT 'timescaledb' = ANY (
           string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ',')
       ) THEN
        RAISE NOTICE 'TimescaleDB is installed but not in shared_preload_libraries: data.candles stays a plain table';
        RETURN;
    END IF;
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
END;
$$;
