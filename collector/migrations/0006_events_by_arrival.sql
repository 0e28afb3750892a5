-- Events in a rowid table, in the order they arrive, with (org_id, request_id) kept unique by a
-- separate index. Keyed by request id, the table put each new event's whole row (about 400
-- bytes) at a random place when ids are random (UUIDv4, from older filters or other clients):
-- every event of a batch dirtied its own table page, and each page went to the WAL at commit.
-- Now rows append, and only the small index entries land at random.
--
-- `seq` numbers events in arrival order and is never reused (AUTOINCREMENT), so that
-- rollup_progress can say which events the rollups already count: rollups are written about
-- once a second, and at start the collector counts the events stored after that point.
CREATE TABLE events_v6 (
    seq                    INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id                 INTEGER NOT NULL REFERENCES orgs(id),
    request_id             TEXT    NOT NULL,
    ts_ms                  INTEGER NOT NULL,
    timestamp              TEXT    NOT NULL,
    provider               TEXT    NOT NULL,
    api                    TEXT    NOT NULL,
    endpoint               TEXT    NOT NULL,
    model_requested        TEXT,
    model_actual           TEXT,
    status                 INTEGER,
    streaming              INTEGER NOT NULL,
    latency_ms             REAL    NOT NULL,
    ttfb_ms                REAL,
    input_tokens           INTEGER,
    output_tokens          INTEGER,
    cached_input_tokens    INTEGER,
    cache_write_tokens     INTEGER,
    reasoning_tokens       INTEGER,
    token_source           TEXT,
    cost_usd               REAL,
    error_category         TEXT,
    error_source           TEXT,
    team                   TEXT,
    app                    TEXT,
    feature                TEXT,
    task                   TEXT,
    session_id             TEXT,
    user                   TEXT,
    rule                   TEXT,
    routed                 INTEGER NOT NULL,
    received_ms            INTEGER NOT NULL,
    measured_output_tokens INTEGER,
    UNIQUE (org_id, request_id)
);

INSERT INTO events_v6 (org_id, request_id, ts_ms, timestamp, provider, api, endpoint,
        model_requested, model_actual, status, streaming, latency_ms, ttfb_ms, input_tokens,
        output_tokens, cached_input_tokens, cache_write_tokens, reasoning_tokens, token_source,
        cost_usd, error_category, error_source, team, app, feature, task, session_id, user, rule,
        routed, received_ms, measured_output_tokens)
    SELECT org_id, request_id, ts_ms, timestamp, provider, api, endpoint, model_requested,
        model_actual, status, streaming, latency_ms, ttfb_ms, input_tokens, output_tokens,
        cached_input_tokens, cache_write_tokens, reasoning_tokens, token_source, cost_usd,
        error_category, error_source, team, app, feature, task, session_id, user, rule, routed,
        received_ms, measured_output_tokens
    FROM events ORDER BY received_ms, ts_ms;

DROP TABLE events;
ALTER TABLE events_v6 RENAME TO events;
CREATE INDEX events_by_time ON events (org_id, ts_ms DESC);

-- The rollups count every event up to this seq (all of them, at this migration).
CREATE TABLE rollup_progress (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    events_seq INTEGER NOT NULL
);
INSERT INTO rollup_progress (id, events_seq) SELECT 1, coalesce(max(seq), 0) FROM events;
