-- Stockyard schema v3: the response cache (issue 10).
-- requests.cache: 'hit' (answered from the cache, no upstream call), 'miss' (looked up and not
--   found, so an upstream answered), NULL (cache off, bypassed with `x-stockyard-no-cache`, or the
--   request is not cacheable in the configured `cache.mode`).
ALTER TABLE requests ADD COLUMN cache TEXT;

-- One stored answer per key. `key` is the SHA-256 of the caller's scope and the canonical
-- request (src/cache/key.rs); `tenant` is 'anon' or 'k:' + 16 hex digits of the SHA-256 of the
-- key the client presented (never the key). `body` is one chat.completion JSON object, whether the
-- answer was streamed or not. Entries expire at created_at + cache.ttl; beyond cache.max_entries
-- the smallest `last_used` goes first.
CREATE TABLE cache_entries (
    key        BLOB NOT NULL UNIQUE,
    tenant     TEXT NOT NULL,
    provider   TEXT NOT NULL,              -- the provider that produced the answer
    model      TEXT NOT NULL,              -- the model it was asked for
    local      INTEGER NOT NULL DEFAULT 0,
    body       BLOB NOT NULL,
    bytes      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,           -- unix ms
    last_used  INTEGER NOT NULL,           -- unix ms, strictly increasing (LRU order)
    hits       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX cache_by_last_used ON cache_entries (last_used);
CREATE INDEX cache_by_created   ON cache_entries (created_at);
