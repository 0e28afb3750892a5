-- Aggregates kept up to date at ingest, per minute and per hour, for the total ('all') and for each
-- dimension (feature, model, provider, team, app, task, user, provider_model, and error: the
-- category/source pair of failed requests). Summaries and time series read
-- these, never the raw events, so they stay fast at tens of millions of events. Latency and TTFB
-- percentiles come from mergeable DDSketches (1 % relative error) stored as blobs.
CREATE TABLE rollups (
    org_id         INTEGER NOT NULL REFERENCES orgs(id),
    granularity_ms INTEGER NOT NULL,
    bucket_ms      INTEGER NOT NULL,
    dim            TEXT    NOT NULL,
    key            TEXT    NOT NULL,
    requests       INTEGER NOT NULL,
    errors         INTEGER NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    cost_usd       REAL    NOT NULL,
    latency_sum_ms REAL    NOT NULL,
    latency        BLOB    NOT NULL,
    ttfb           BLOB    NOT NULL,
    PRIMARY KEY (org_id, granularity_ms, dim, key, bucket_ms)
) WITHOUT ROWID;

CREATE INDEX rollups_by_time ON rollups (org_id, granularity_ms, dim, bucket_ms);
