-- Mesh identity of the caller (namespace, workload, SPIFFE principal), from filters that know it.
ALTER TABLE events ADD COLUMN namespace TEXT;
ALTER TABLE events ADD COLUMN workload TEXT;
ALTER TABLE events ADD COLUMN principal TEXT;

-- namespace and workload are rollup dimensions kept per hour and day, like team and app. Every
-- event stored so far has neither, so its rows in them are the total's rows under the missing
-- key (''): copied here, so that a breakdown over older ranges still adds up to the total. Rows
-- not yet written (events after rollup_progress) are counted by the new code at the next start;
-- rows already there (written by newer code) stay.
INSERT OR IGNORE INTO rollups (org_id, granularity_ms, bucket_ms, dim, key, requests, errors, input_tokens,
        output_tokens, cost_usd, latency_sum_ms, latency, ttfb)
    SELECT org_id, granularity_ms, bucket_ms, d.dim, '', requests, errors, input_tokens,
        output_tokens, cost_usd, latency_sum_ms, latency, ttfb
    FROM rollups, (SELECT 'namespace' AS dim UNION ALL SELECT 'workload') AS d
    WHERE rollups.dim = 'all' AND granularity_ms IN (3600000, 86400000);
