-- Users under the team filter: pair rollup rows `team:user` (rollup::USER_FILTERS), counted at
-- ingest from this version on, and here for the events the rollups already count
-- (store::migrate_postgres).
--
-- A collector from before this version would go on writing events and rollup rows without
-- them, so only collectors at this version or later may write those tables: each sets
-- `tally.schema_version` on its connections, and a statement from any other fails. During a
-- rolling upgrade the replicas not yet upgraded fail their ingest, the filters send those
-- batches again (to an upgraded replica, through the load balancer), and the events they had
-- stored but not yet counted are counted by whichever replica takes their name over (a
-- restart, or the recovery of a stopped replica's events). A later version that changes what
-- is counted raises the number here.
CREATE FUNCTION tally_writer_is_current() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(nullif(current_setting('tally.schema_version', true), ''), '0')::bigint < 3 THEN
        RAISE EXCEPTION 'this collector is older than the database''s schema (version 3): upgrade it'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_writer_is_current BEFORE INSERT OR UPDATE OR DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION tally_writer_is_current();
CREATE TRIGGER rollups_writer_is_current BEFORE INSERT OR UPDATE OR DELETE ON rollups
    FOR EACH STATEMENT EXECUTE FUNCTION tally_writer_is_current();
CREATE TRIGGER rollup_progress_writer_is_current BEFORE INSERT OR UPDATE OR DELETE ON rollup_progress
    FOR EACH STATEMENT EXECUTE FUNCTION tally_writer_is_current();
