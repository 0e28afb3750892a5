-- Rules and budgets (PRODUCT.md, "Rules and budgets"): what acted on each event, each org's
-- budgets, and each budget's spend in each period, kept at ingest in the events' transaction.
ALTER TABLE events ADD COLUMN shadow INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN model_routed TEXT;
-- Few events name a rule: the rules report reads only those.
CREATE INDEX events_by_rule ON events (org_id, ts_ms) WHERE rule IS NOT NULL;

CREATE TABLE budgets (
    id         INTEGER PRIMARY KEY,
    org_id     INTEGER NOT NULL REFERENCES orgs(id),
    name       TEXT    NOT NULL,
    -- A JSON object, field -> exact value or `*` glob; `{}` is the whole org.
    scope      TEXT    NOT NULL,
    period     TEXT    NOT NULL CHECK (period IN ('day', 'week', 'month')),
    limit_usd  REAL    NOT NULL CHECK (limit_usd > 0),
    warn_at    REAL    NOT NULL CHECK (warn_at > 0 AND warn_at <= 1),
    -- `alert`, `block`, `shadow` or `downgrade:<model>`.
    action     TEXT    NOT NULL,
    -- When its counting began (created, or its scope or period changed): filters count their
    -- requests per epoch, so that their counts start again with the collector's.
    epoch      INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

-- Spend per budget and period (the period's start, UTC), added to by every event its scope
-- matches; rebuilt from events when a budget is set or its counters are lost.
CREATE TABLE budget_spend (
    budget_id       INTEGER NOT NULL REFERENCES budgets(id) ON DELETE CASCADE,
    period_start_ms INTEGER NOT NULL,
    spend_usd       REAL    NOT NULL,
    -- Priced requests counted: the mean cost a filter reserves requests in flight at.
    requests        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, period_start_ms)
) WITHOUT ROWID;

-- The same, per filter (the `X-Tally-Filter` id a batch came with): what a filter's own events
-- added, so that it can tell which of its requests the collector has counted (see budgets.rs).
CREATE TABLE budget_filter_spend (
    budget_id       INTEGER NOT NULL REFERENCES budgets(id) ON DELETE CASCADE,
    period_start_ms INTEGER NOT NULL,
    filter_id       TEXT    NOT NULL,
    spend_usd       REAL    NOT NULL,
    -- Every event of the scope but the proxy's refusals, priced or not: what the filter counts
    -- as its requests settled, so that the two counts link exactly.
    requests        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, period_start_ms, filter_id)
) WITHOUT ROWID;

-- Bumped by every change to budgets, so that each collector reloads them within its next
-- ingest transaction.
CREATE TABLE budget_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
);
INSERT INTO budget_generation (id, n) VALUES (1, 0);
CREATE TRIGGER budgets_insert AFTER INSERT ON budgets BEGIN UPDATE budget_generation SET n = n + 1; END;
CREATE TRIGGER budgets_update AFTER UPDATE ON budgets BEGIN UPDATE budget_generation SET n = n + 1; END;
CREATE TRIGGER budgets_delete AFTER DELETE ON budgets BEGIN UPDATE budget_generation SET n = n + 1; END;
