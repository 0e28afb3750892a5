-- Alerts (PRODUCT.md, "Rules and budgets"): each org's webhooks, the alerts raised, and every
-- delivery attempt with its outcome (see alerts.rs).

CREATE TABLE alert_hooks (
    id            INTEGER PRIMARY KEY,
    org_id        INTEGER NOT NULL REFERENCES orgs(id),
    name          TEXT    NOT NULL,
    url           TEXT    NOT NULL,
    -- Signs each delivery (HMAC-SHA256), so it is kept as given; shown once, at creation.
    secret        TEXT    NOT NULL,
    -- `*` (every kind) or a comma-separated list of kinds.
    kinds         TEXT    NOT NULL DEFAULT '*',
    -- Set only from the CLI (`alert add --allow-private`): the operator lets this hook reach a
    -- private or loopback address.
    allow_private INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

-- One row per alert: the unique dedupe key is what keeps a crossing from being raised, and so
-- sent, twice.
CREATE TABLE alert_events (
    id         INTEGER PRIMARY KEY,
    org_id     INTEGER NOT NULL REFERENCES orgs(id),
    kind       TEXT    NOT NULL,
    dedupe_key TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    created_ms INTEGER NOT NULL,
    -- 1 once its deliveries were made, one per hook that took its kind at that moment.
    fanned_out INTEGER NOT NULL DEFAULT 0,
    UNIQUE (org_id, dedupe_key)
);
CREATE INDEX alert_events_to_fan_out ON alert_events (id) WHERE fanned_out = 0;
CREATE INDEX alert_events_by_org ON alert_events (org_id, id);

-- One row per attempt. A row with `next_attempt_ms` is work to do (`pending`, or `sending` while
-- a worker holds it; if that worker dies, the row is taken again once that time has passed).
CREATE TABLE alert_deliveries (
    id              INTEGER PRIMARY KEY,
    event_id        INTEGER NOT NULL REFERENCES alert_events(id) ON DELETE CASCADE,
    -- Kept when the hook is deleted: the history still says where it went.
    hook_id         INTEGER REFERENCES alert_hooks(id) ON DELETE SET NULL,
    hook_name       TEXT    NOT NULL,
    attempt         INTEGER NOT NULL,
    status_code     INTEGER,
    -- pending, sending, delivered, retrying, failed, refused_destination, hook_deleted
    outcome         TEXT    NOT NULL,
    -- Never a secret or a URL's path or query: the host and what went wrong.
    error           TEXT,
    at_ms           INTEGER NOT NULL,
    next_attempt_ms INTEGER
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_ms)
    WHERE next_attempt_ms IS NOT NULL;
CREATE INDEX alert_deliveries_by_event ON alert_deliveries (event_id);

-- Events the filters reported dropped (`X-Tally-Dropped`), per org and hour.
CREATE TABLE alert_dropped (
    org_id  INTEGER NOT NULL REFERENCES orgs(id),
    hour_ms INTEGER NOT NULL,
    dropped INTEGER NOT NULL,
    PRIMARY KEY (org_id, hour_ms)
) WITHOUT ROWID;
