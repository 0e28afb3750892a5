-- Orgs own keys and events. Keys are stored only as SHA-256 hashes (hex): they are 238-bit
-- random secrets, so a fast hash is safe and lookups stay an index probe.
CREATE TABLE orgs (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    key_hash    TEXT    NOT NULL UNIQUE,
    created_ms  INTEGER NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0
);

-- One row per metered request. No column can hold content, keys or bodies.
CREATE TABLE events (
    org_id              INTEGER NOT NULL REFERENCES orgs(id),
    request_id          TEXT    NOT NULL,
    ts_ms               INTEGER NOT NULL,
    timestamp           TEXT    NOT NULL,
    provider            TEXT    NOT NULL,
    api                 TEXT    NOT NULL,
    endpoint            TEXT    NOT NULL,
    model_requested     TEXT,
    model_actual        TEXT,
    status              INTEGER,
    streaming           INTEGER NOT NULL,
    latency_ms          REAL    NOT NULL,
    ttfb_ms             REAL,
    input_tokens        INTEGER,
    output_tokens       INTEGER,
    cached_input_tokens INTEGER,
    cache_write_tokens  INTEGER,
    reasoning_tokens    INTEGER,
    token_source        TEXT,
    cost_usd            REAL,
    error_category      TEXT,
    error_source        TEXT,
    team                TEXT,
    app                 TEXT,
    feature             TEXT,
    task                TEXT,
    session_id          TEXT,
    user                TEXT,
    rule                TEXT,
    routed              INTEGER NOT NULL,
    received_ms         INTEGER NOT NULL,
    PRIMARY KEY (org_id, request_id)
) WITHOUT ROWID;

CREATE INDEX events_by_time ON events (org_id, ts_ms DESC);
