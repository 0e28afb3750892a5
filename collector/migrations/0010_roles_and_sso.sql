-- Roles, and users who sign in through the identity provider (SSO).
-- `role`: an admin may change budgets, webhooks and users; a viewer only reads. Users made
-- before roles existed could do everything, so they stay admins.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'viewer'));
-- SHA-256 of the provider's issuer and the user's subject (`sub`): how a returning SSO user is
-- found again. Never a token. SSO users provisioned at their first sign-in have no password
-- (an empty `password_hash`, which no password matches).
ALTER TABLE users ADD COLUMN sso_subject TEXT;
CREATE UNIQUE INDEX users_by_sso_subject ON users (sso_subject) WHERE sso_subject IS NOT NULL;
