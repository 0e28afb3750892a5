-- The caller's W3C trace context of each event (PRODUCT.md, "The event"): identifiers only, so
-- that an exported span is a child of the span of the request that made the call.
ALTER TABLE events ADD COLUMN trace_id TEXT;
ALTER TABLE events ADD COLUMN span_id TEXT;
