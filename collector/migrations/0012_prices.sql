-- Prices live in the collector and change while it runs (PRODUCT.md, "Where prices are
-- applied"): the table in force is the latest loaded one (none: the one this build ships), an
-- org may have rates of its own per model or a discount on all ('*'), and every repricing of
-- past events is recorded.
CREATE TABLE price_tables (
    id        INTEGER PRIMARY KEY,
    loaded_ms INTEGER NOT NULL,
    source    TEXT    NOT NULL,
    json      TEXT    NOT NULL
);

CREATE TABLE org_rates (
    org_id       INTEGER NOT NULL REFERENCES orgs(id),
    model        TEXT    NOT NULL,
    input        REAL,
    cached_input REAL,
    cache_write  REAL,
    output       REAL,
    discount_pct REAL,
    PRIMARY KEY (org_id, model)
);

-- Bumped by every change above, so that each collector reloads its prices within a second.
CREATE TABLE pricing_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO pricing_generation (id, generation) VALUES (1, 0);

CREATE TABLE repricings (
    id         INTEGER PRIMARY KEY,
    at_ms      INTEGER NOT NULL,
    org_id     INTEGER NOT NULL REFERENCES orgs(id),
    from_ms    INTEGER,
    to_ms      INTEGER,
    events     INTEGER NOT NULL,
    changed    INTEGER NOT NULL,
    before_usd REAL    NOT NULL,
    after_usd  REAL    NOT NULL
);
