-- Stockyard trace schema v2 (local-first features).
-- requests.truncated_tokens: estimated prompt tokens dropped to fit the answering provider's
--   context window (`truncate: true`); NULL when nothing was dropped.
-- attempts.hedged: 1 when the attempt was started in parallel by `failover.hedge_after`.
ALTER TABLE requests ADD COLUMN truncated_tokens INTEGER;
ALTER TABLE attempts ADD COLUMN hedged INTEGER NOT NULL DEFAULT 0;

-- /api/traces/spend aggregates a time range: a covering index lets it read only the index
-- (the v1 `requests_by_time` index made it look up every row in the table: 5.8 s at 1M rows).
-- Its leading `created_at` also serves retention pruning, so it replaces requests_by_time.
CREATE INDEX requests_spend ON requests
    (created_at, provider, model, model_requested, local, status, tokens_in, tokens_out, cost_usd);
DROP INDEX requests_by_time;
