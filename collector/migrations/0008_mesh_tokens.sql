-- Mesh ingest tokens: a filter serving several orgs sends with one of these instead of an org
-- key, each event naming its org. Stored only as SHA-256 hashes (hex), like org keys. A token
-- may send for the orgs granted in token_orgs, or for every enabled org (all_orgs).
CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    token_hash  TEXT    NOT NULL UNIQUE,
    all_orgs    INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    revoked_ms  INTEGER
);

CREATE TABLE token_orgs (
    token_id INTEGER NOT NULL REFERENCES tokens(id),
    org_id   INTEGER NOT NULL REFERENCES orgs(id),
    PRIMARY KEY (token_id, org_id)
) WITHOUT ROWID;

-- Bumped by every change to orgs, tokens or grants, whoever makes it (the CLI is another
-- process): a running collector reads this one row to know when its cached /v1/controls
-- answers are stale, instead of reading every key.
CREATE TABLE auth_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  INTEGER NOT NULL
);
INSERT INTO auth_generation (id, n) VALUES (1, 0);

CREATE TRIGGER orgs_insert AFTER INSERT ON orgs BEGIN UPDATE auth_generation SET n = n + 1; END;
CREATE TRIGGER orgs_update AFTER UPDATE ON orgs BEGIN UPDATE auth_generation SET n = n + 1; END;
CREATE TRIGGER orgs_delete AFTER DELETE ON orgs BEGIN UPDATE auth_generation SET n = n + 1; END;
CREATE TRIGGER tokens_insert AFTER INSERT ON tokens BEGIN UPDATE auth_generation SET n = n + 1; END;
CREATE TRIGGER tokens_update AFTER UPDATE ON tokens BEGIN UPDATE auth_generation SET n = n + 1; END;
CREATE TRIGGER tokens_delete AFTER DELETE ON tokens BEGIN UPDATE auth_generation SET n = n + 1; END;
CREATE TRIGGER token_orgs_insert AFTER INSERT ON token_orgs
    BEGIN UPDATE auth_generation SET n = n + 1; END;
CREATE TRIGGER token_orgs_delete AFTER DELETE ON token_orgs
    BEGIN UPDATE auth_generation SET n = n + 1; END;
