-- Stockyard trace schema v1: one row per client request, one per candidate considered.
-- Trace ids are `tr_` + 11 hex digits of creation time in ms + random, so they sort by time:
-- newest-first pages walk the primary key backwards with `id < :before`.
CREATE TABLE requests (
    id              TEXT PRIMARY KEY,
    created_at      INTEGER NOT NULL,          -- unix ms
    model_requested TEXT NOT NULL,
    provider        TEXT,                      -- the provider that answered (NULL if none did)
    model           TEXT,                      -- the model it was asked for
    stream          INTEGER NOT NULL DEFAULT 0,
    status          TEXT NOT NULL,             -- ok | error | client_closed
    http_status     INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0, -- upstream calls made
    failover        INTEGER NOT NULL DEFAULT 0,
    local           INTEGER NOT NULL DEFAULT 0,
    latency_ms      INTEGER,
    ttft_ms         INTEGER,
    tokens_in       INTEGER,
    tokens_out      INTEGER,
    cost_usd        REAL,
    error           TEXT,
    request_body    TEXT,                      -- only with traces.store_bodies
    response_body   TEXT
) WITHOUT ROWID;

CREATE INDEX requests_by_provider ON requests (provider, id);
CREATE INDEX requests_by_model    ON requests (model_requested, id);
CREATE INDEX requests_by_status   ON requests (status, id);
CREATE INDEX requests_failover    ON requests (id) WHERE failover = 1;
CREATE INDEX requests_by_time     ON requests (created_at);

CREATE TABLE attempts (
    request_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    provider    TEXT NOT NULL,
    model       TEXT NOT NULL,
    outcome     TEXT NOT NULL,                 -- ok | failed | skipped
    reason      TEXT,
    http_status INTEGER,
    latency_ms  INTEGER,
    PRIMARY KEY (request_id, seq)
) WITHOUT ROWID;
