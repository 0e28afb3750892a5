-- Rollups carry what a summary needs to tell unknown cost from zero cost (the requests whose
-- model has no known price, and their tokens) and the cache's savings. Existing rows get these
-- figures from the events still stored (see `Store::open`); rows of events already deleted by
-- retention keep 0, since nothing is left to count them from.
ALTER TABLE rollups ADD COLUMN unpriced_requests      INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollups ADD COLUMN unpriced_input_tokens  INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollups ADD COLUMN unpriced_output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollups ADD COLUMN cached_input_tokens    INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollups ADD COLUMN cache_savings_usd      REAL    NOT NULL DEFAULT 0;
