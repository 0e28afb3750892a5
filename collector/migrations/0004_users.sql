-- People who sign in to the dashboard: one org each. Passwords are argon2id PHC strings.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    org_id        INTEGER NOT NULL REFERENCES orgs(id),
    email         TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_ms    INTEGER NOT NULL
);

-- Dashboard sessions: the cookie's token is stored as its SHA-256 only, with the session's
-- CSRF token and its expiry.
CREATE TABLE sessions (
    token_hash TEXT    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    csrf       TEXT    NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;
