-- Events and rollup rows no longer check their org against `orgs` on PostgreSQL. The check was
-- a trigger fired for every row (a lookup of the org, locking it for key share): a tenth of the
-- database's time at ingest. Orgs are never deleted, and an event's org is the one its key
-- authenticated (a batch without one is refused before its statement is made), so the check
-- guarded nothing a statement could break.
-- Dropped on the partitioned table, the key goes from every partition too.
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_org_id_fkey;
ALTER TABLE rollups DROP CONSTRAINT IF EXISTS rollups_org_id_fkey;
