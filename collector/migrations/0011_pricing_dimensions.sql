-- What the bill depends on beyond tokens by kind (the collector prices every event from these,
-- so a past event can be priced again): the hour-long part of the cache writes, server-side
-- web searches (billed per use) and the service tier that served the request.
ALTER TABLE events ADD COLUMN cache_write_1h_tokens INTEGER;
ALTER TABLE events ADD COLUMN web_search_requests   INTEGER;
ALTER TABLE events ADD COLUMN service_tier          TEXT;
