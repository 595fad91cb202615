-- Data service schema: symbols, strategies, candles (+ per-series coverage), sync jobs, query logs, events.
-- Applied by yoyo (services/data/storage.py: migrate); its bookkeeping tables live in schema "data" too.

CREATE SCHEMA IF NOT EXISTS data;

CREATE TABLE data.symbols (
    symbol       text PRIMARY KEY,
    display_name text NOT NULL DEFAULT '',
    asset_class  text,
    active       boolean NOT NULL DEFAULT true,
    description  text NOT NULL DEFAULT '',
    source       text NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE data.strategies (
    strategy_id  text PRIMARY KEY,
    display_name text NOT NULL DEFAULT '',
    description  text NOT NULL DEFAULT '',
    symbols      text[] NOT NULL DEFAULT '{}',
    timeframe    text,
    parameters   jsonb NOT NULL DEFAULT '{}',
    active       boolean NOT NULL DEFAULT true,
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now()
);

-- One OHLCV bar; "time" is the bar's open time. Becomes a hypertable when TimescaleDB exists (0002).
CREATE TABLE data.candles (
    symbol    text NOT NULL REFERENCES data.symbols (symbol),
    timeframe text NOT NULL,
    time      timestamptz NOT NULL,
    open      double precision NOT NULL,
    high      double precision NOT NULL,
    low       double precision NOT NULL,
    close     double precision NOT NULL,
    volume    double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (symbol, timeframe, time)
);

-- Coverage per series, maintained by every candle write in the same transaction.
CREATE TABLE data.series (
    symbol     text NOT NULL REFERENCES data.symbols (symbol),
    timeframe  text NOT NULL,
    count      bigint NOT NULL,
    first_time timestamptz NOT NULL,
    last_time  timestamptz NOT NULL,
    PRIMARY KEY (symbol, timeframe)
);

-- Bundled sample data sets imported so far (so a restart does not re-add a sample the user removed).
CREATE TABLE data.sample_imports (
    symbol      text NOT NULL,
    timeframe   text NOT NULL,
    package     text NOT NULL,
    candles     bigint NOT NULL,
    import_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, timeframe)
);

CREATE TABLE data.sync_jobs (
    job_id           text PRIMARY KEY,
    state            text NOT NULL,
    symbols          text[] NOT NULL,
    timeframe        text NOT NULL,
    full_sync        boolean NOT NULL DEFAULT false,
    candles_upserted bigint NOT NULL DEFAULT 0,
    symbols_done     integer NOT NULL DEFAULT 0,
    symbols_failed   integer NOT NULL DEFAULT 0,
    error            text NOT NULL DEFAULT '',
    results          jsonb NOT NULL DEFAULT '[]',
    create_time      timestamptz NOT NULL DEFAULT now(),
    start_time       timestamptz,
    end_time         timestamptz
);
CREATE INDEX sync_jobs_create_time ON data.sync_jobs (create_time DESC, job_id DESC);

CREATE TABLE data.query_logs (
    query_log_id bigserial PRIMARY KEY,
    method       text NOT NULL,
    short_method text NOT NULL,
    parameters   text NOT NULL DEFAULT '',
    duration_ms  double precision NOT NULL,
    rows         bigint NOT NULL DEFAULT 0,
    code         text NOT NULL,
    create_time  timestamptz NOT NULL
);
CREATE INDEX query_logs_short_method ON data.query_logs (short_method, query_log_id DESC);

-- The event stream. Writers take an advisory lock before inserting (see events.py) so ids become
-- visible in increasing order; the trigger fans every row out with NOTIFY at commit.
CREATE TABLE data.events (
    event_id    bigserial PRIMARY KEY,
    type        text NOT NULL,
    symbol      text NOT NULL DEFAULT '',
    timeframe   text,
    create_time timestamptz NOT NULL DEFAULT now(),
    details     jsonb
);
CREATE INDEX events_symbol ON data.events (symbol, event_id);

CREATE FUNCTION data.notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'kitrading_data_events',
        json_build_object('id', NEW.event_id, 'type', NEW.type, 'symbol', NEW.symbol)::text
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify AFTER INSERT ON data.events
    FOR EACH ROW EXECUTE FUNCTION data.notify_event();
