-- Stockyard trace schema v2 (local-first features).
-- requests.truncated_tokens: estimated prompt tokens dropped to fit the answering provider's
--   context window (`truncate: true`); NULL when nothing was dropped.
-- attempts.hedged: 1 when the attempt was started in parallel by `failover.hedge_after`.
ALTER TABLE requests ADD COLUMN truncated_tokens INTEGER;
ALTER TABLE attempts ADD COLUMN hedged INTEGER NOT NULL DEFAULT 0;

