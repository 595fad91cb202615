-- Alert history of the watchdog: one row per alert, newest first by (created_at, id).
CREATE TABLE IF NOT EXISTS watchdog.alerts (
    id                uuid        PRIMARY KEY,
    created_at        timestamptz NOT NULL,
    target            text        NOT NULL,  -- '' for test alerts
    target_kind       text,                  -- SERVICE, GATEWAY, DATABASE, DISK, GPU
    kind              text        NOT NULL,  -- DOWN, DEGRADED, RECOVERED, TEST
    status            text,                  -- the target's status when raised
    message           text        NOT NULL,  -- plain one-line text
    text              text        NOT NULL,  -- the Telegram message
    error             text,
    delivery          text        NOT NULL,  -- PENDING, SENT, PARTIAL, FAILED, SUPPRESSED_COOLDOWN, TELEGRAM_DISABLED
    delivery_attempts integer     NOT NULL DEFAULT 0,
    delivery_error    text,
    delivered_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS alerts_created_at_idx ON watchdog.alerts (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS alerts_target_created_at_idx ON watchdog.alerts (target, created_at DESC, id DESC);
