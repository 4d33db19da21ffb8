//! Request traces in SQLite, written off the request path: handlers push a finished
//! [`TraceRecord`] into a bounded channel (never blocking, never touching SQLite); one writer
//! thread drains it in batched transactions. A full channel or a failing disk drops the trace,
//! counts it and logs once per interval; requests are never affected.

pub mod db;
pub mod pricing;
pub mod query;

use crate::proxy::attempt::AttemptRecord;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const CHANNEL_CAPACITY: usize = 16_384;
const BATCH: usize = 512;
/// The writer commits at most once per this interval unless a batch fills, a flush is asked for
/// or the writer stops (group commit).
const GROUP_WAIT: Duration = Duration::from_millis(10);
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceStatus {
    Ok,
    Error,
    ClientClosed,
}

impl TraceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceStatus::Ok => "ok",
            TraceStatus::Error => "error",
            TraceStatus::ClientClosed => "client_closed",
        }
    }
}

/// One client request, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct TraceRecord {
    pub id: String,
    pub created_at: u64,
    pub model_requested: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub stream: bool,
    pub status: TraceStatus,
    pub http_status: Option<u16>,
    /// Upstream calls made.
    pub tries: u32,
    pub failover: bool,
    pub local: bool,
    pub latency_ms: u64,
    pub ttft_ms: Option<u64>,
    pub tokens_in: Option<u64>,
    pub tokens_out: Option<u64>,
    pub cost_usd: Option<f64>,
    pub error: Option<String>,
    /// Estimated prompt tokens dropped to fit the answering provider's context window.
    pub truncated_tokens: Option<u64>,
    /// Whether the response cache answered (`hit`) or was looked up in vain (`miss`); `None`
    /// when it was not consulted.
    pub cache: Option<crate::cache::CacheOutcome>,
    pub request_body: Option<String>,
    pub response_body: Option<String>,
    pub attempts: Vec<AttemptRecord>,
    /// Time spent in Stockyard excluding upstream time (metrics only, not stored).
    #[serde(skip)]
    pub overhead_us: Option<u64>,
}

impl TraceRecord {
    pub fn new(id: String, model_requested: &str, stream: bool) -> TraceRecord {
        TraceRecord {
            created_at: id_time_ms(&id).unwrap_or_else(now_ms),
            id,
            model_requested: model_requested.to_string(),
            provider: None,
            model: None,
            stream,
            status: TraceStatus::Error,
            http_status: None,
            tries: 0,
            failover: false,
            local: false,
            latency_ms: 0,
            ttft_ms: None,
            tokens_in: None,
            tokens_out: None,
            cost_usd: None,
            error: None,
            truncated_tokens: None,
            cache: None,
            request_body: None,
            response_body: None,
            attempts: Vec::new(),
            overhead_us: None,
        }
    }
}

/// The creation time encoded in a trace id (`tr_` + 11 hex digits of ms).
pub fn id_time_ms(id: &str) -> Option<u64> {
    u64::from_str_radix(id.get(3..14)?, 16).ok()
}

/// A new time-sortable trace id.
pub fn new_trace_id() -> String {
    use rand::Rng;
    format!(
        "tr_{:011x}{:012x}",
        now_ms(),
        rand::thread_rng().gen::<u64>() & 0xffff_ffff_ffff
    )
}

/// Counters the writer and the sink share (exposed in metrics and the admin API).
#[derive(Debug, Default)]
pub struct TraceStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    last_drop_log: Mutex<Option<Instant>>,
}

impl TraceStats {
    fn drop_one(&self, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        self.log_drops(n, why);
    }

    fn log_drops(&self, total: u64, why: &str) {
        let mut last = self.last_drop_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= DROP_LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(dropped_total = total, reason = why, "traces dropped");
        }
    }
}

/// Where handlers send finished traces. Cloning is cheap; sending never blocks.
#[derive(Clone, Debug)]
pub struct TraceSink {
    tx: Option<mpsc::Sender<Msg>>,
    /// Traces are wanted; with no writer (the database could not be opened) each is a drop.
    enabled: bool,
    pub stats: Arc<TraceStats>,
    pub store_bodies: bool,
    /// Every finished request is also counted here.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set when shutdown cuts the requests still running after `shutdown_grace`: their traces
    /// say so instead of blaming the client.
    cut_by_shutdown: Arc<AtomicBool>,
}

impl TraceSink {
    /// A sink that stores nothing (`traces.enabled: false`).
    pub fn disabled() -> TraceSink {
        TraceSink {
            tx: None,
            enabled: false,
            stats: Arc::new(TraceStats::default()),
            store_bodies: false,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            cut_by_shutdown: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A sink whose database is unavailable: every trace is counted as dropped.
    pub fn broken() -> TraceSink {
        TraceSink {
            enabled: true,
            ..TraceSink::disabled()
        }
    }

    /// From now on, requests that end without finishing were cut by shutdown.
    pub fn mark_cut_by_shutdown(&self) {
        self.cut_by_shutdown.store(true, Ordering::SeqCst);
    }

    /// Records a finished request: metrics at once; the trace row and the request's log line
    /// from the writer thread, so neither the formatting nor the `write(2)` of the log line is
    /// on the request path. When the record cannot be queued, the line is logged here.
    pub fn send(&self, rec: TraceRecord) {
        self.metrics.record(&rec);
        let Some(tx) = &self.tx else {
            crate::logging::request_finished(&rec);
            if self.enabled {
                self.stats.drop_one("trace database unavailable");
            }
            return;
        };
        if let Err(e) = tx.try_send(Msg::Record(Box::new(rec))) {
            let (why, rec) = match e {
                mpsc::error::TrySendError::Full(m) => ("trace queue full", m),
                mpsc::error::TrySendError::Closed(m) => ("trace writer stopped", m),
            };
            if let Msg::Record(r) = rec {
                crate::logging::request_finished(&r);
            }
            self.stats.drop_one(why);
        }
    }
}

/// The background writer; [`TraceWriter::shutdown`] flushes what is queued.
pub struct TraceWriter {
    pub sink: TraceSink,
    pub path: PathBuf,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl TraceWriter {
    /// Opens the database (migrating it) and starts the writer thread.
    pub fn start(path: PathBuf, store_bodies: bool) -> rusqlite::Result<TraceWriter> {
        let conn = db::open(&path)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let stats = Arc::new(TraceStats::default());
        let st = stats.clone();
        let handle = std::thread::Builder::new()
            .name("stockyard-traces".into())
            .spawn(move || writer_loop(conn, rx, st))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(TraceWriter {
            sink: TraceSink {
                tx: Some(tx),
                enabled: true,
                stats,
                store_bodies,
                metrics: Arc::new(crate::metrics::Metrics::new()),
                cut_by_shutdown: Arc::new(AtomicBool::new(false)),
            },
            path,
            handle: Some(handle),
        })
    }

    /// Starts the retention task: prunes traces older than `days` now and every hour.
    pub fn spawn_retention(&self, days: u32) -> Option<tokio::task::JoinHandle<()>> {
        if days == 0 {
            return None;
        }
        let tx = self.sink.tx.clone()?;
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let cutoff = now_ms().saturating_sub(u64::from(days) * 86_400_000);
                if tx.send(Msg::Prune(cutoff)).await.is_err() {
                    return;
                }
            }
        }))
    }

    /// Waits until every trace queued before this call is written.
    pub async fn flush(&self) {
        let (ack, done) = tokio::sync::oneshot::channel();
        if let Some(tx) = &self.sink.tx {
            if tx.send(Msg::Flush(ack)).await.is_ok() {
                let _ = done.await;
            }
        }
    }

    /// Writes everything queued so far, then stops the writer thread (blocking).
    pub fn shutdown(mut self) {
        if let Some(tx) = self.sink.tx.take() {
            let _ = tx.blocking_send(Msg::Stop);
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What the writer thread receives.
#[derive(Debug)]
pub enum Msg {
    Record(Box<TraceRecord>),
    /// Acknowledge once everything before this message is written.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Delete traces created before this unix-ms time, in small batches.
    Prune(u64),
    Stop,
}

fn writer_loop(
    mut conn: rusqlite::Connection,
    mut rx: mpsc::Receiver<Msg>,
    stats: Arc<TraceStats>,
) {
    let mut batch: Vec<TraceRecord> = Vec::with_capacity(BATCH);
    let mut acks = Vec::new();
    let mut stop = false;
    // The per-request log lines of a batch (and anything else logged here) go out in one
    // write, after its commit.
    crate::logging::batch_begin();
    let mut last_commit = Instant::now()
        .checked_sub(GROUP_WAIT)
        .unwrap_or_else(Instant::now);
    while !stop {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(r) => {
                    crate::logging::request_finished(&r);
                    batch.push(*r);
                }
                Msg::Flush(ack) => acks.push(ack),
                Msg::Prune(cutoff) => {
                    if !batch.is_empty() {
                        write_batch(&mut conn, &batch, &stats, &rx);
                        batch.clear();
                    }
                    match prune(&mut conn, cutoff) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "pruned old traces"),
                        Err(e) => tracing::warn!(error = %e, "pruning traces failed"),
                    }
                }
                Msg::Stop => {
                    stop = true;
                    break;
                }
            }
            if batch.len() >= BATCH {
                break;
            }
            next = rx.try_recv().ok();
            // Group commit: under load, one transaction per GROUP_WAIT instead of one per
            // request. A commit is most of a trace's cost (WAL frames, locks, checksums); the
            // records wait a few milliseconds more, off the request path. Flushes and
            // shutdown commit at once.
            if next.is_none() && !stop && acks.is_empty() && !batch.is_empty() {
                let since = last_commit.elapsed();
                if since < GROUP_WAIT {
                    std::thread::sleep(GROUP_WAIT - since);
                    next = rx.try_recv().ok();
                }
            }
        }
        if !batch.is_empty() {
            last_commit = Instant::now();
            write_batch(&mut conn, &batch, &stats, &rx);
            batch.clear();
        }
        crate::logging::batch_flush();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Writes one group commit. While the queue is short the writer steps aside every few rows
/// (`sched_yield`): a commit is ~1 ms of CPU at 8k requests/s, and the connection workers,
/// woken onto this thread's core meanwhile, used to wait behind it: at one connection the added
/// p99 was 400-500 µs with traces on and 70-115 µs with them off; stepping aside brought it to
/// 160-215 µs (bench/profile.md, fifth pass). When the writer is behind (more than a batch
/// queued) it writes flat out, so a saturated proxy does not fill the queue and drop traces.
fn write_batch(
    conn: &mut rusqlite::Connection,
    batch: &[TraceRecord],
    stats: &TraceStats,
    rx: &mpsc::Receiver<Msg>,
) {
    let pace = || {
        if rx.len() < BATCH {
            std::thread::yield_now();
        }
    };
    match insert_batch(conn, batch, pace) {
        Ok(()) => {
            stats
                .written
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            let n = stats
                .dropped
                .fetch_add(batch.len() as u64, Ordering::Relaxed)
                + batch.len() as u64;
            stats.log_drops(n, &format!("database error: {e}"));
        }
    }
}

const PRUNE_BATCH: usize = 1000;

/// Deletes traces older than `cutoff_ms` in transactions of at most [`PRUNE_BATCH`] requests, so
/// the writer never holds the database for long. Returns the number of requests deleted.
pub fn prune(conn: &mut rusqlite::Connection, cutoff_ms: u64) -> rusqlite::Result<usize> {
    let mut total = 0;
    loop {
        let tx = conn.transaction()?;
        let ids: Vec<String> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM requests WHERE created_at < ?1 ORDER BY created_at LIMIT ?2",
            )?;
            let rows = stmt.query_map(
                rusqlite::params![cutoff_ms as i64, PRUNE_BATCH as i64],
                |r| r.get(0),
            )?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        {
            let mut del_a = tx.prepare_cached("DELETE FROM attempts WHERE request_id = ?1")?;
            let mut del_r = tx.prepare_cached("DELETE FROM requests WHERE id = ?1")?;
            for id in &ids {
                del_a.execute([id])?;
                del_r.execute([id])?;
            }
        }
        tx.commit()?;
        total += ids.len();
        if ids.len() < PRUNE_BATCH {
            return Ok(total);
        }
    }
}

/// Rows the writer inserts between two chances for other threads to run (see [`write_batch`]).
const PACE_ROWS: usize = 8;

/// Inserts `batch` in one transaction, calling `pace` after every [`PACE_ROWS`] requests.
pub fn insert_batch(
    conn: &mut rusqlite::Connection,
    batch: &[TraceRecord],
    mut pace: impl FnMut(),
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut req = tx.prepare_cached(
            "INSERT OR REPLACE INTO requests (id, created_at, model_requested, provider, model, stream, status, http_status, attempts, failover, local, latency_ms, ttft_ms, tokens_in, tokens_out, cost_usd, error, request_body, response_body, truncated_tokens, cache)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        )?;
        let mut att = tx.prepare_cached(
            "INSERT OR REPLACE INTO attempts (request_id, seq, provider, model, outcome, reason, http_status, latency_ms, hedged)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for (i, r) in batch.iter().enumerate() {
            if i % PACE_ROWS == PACE_ROWS - 1 {
                pace();
            }
            req.execute(rusqlite::params![
                r.id,
                r.created_at as i64,
                r.model_requested,
                r.provider,
                r.model,
                r.stream,
                r.status.as_str(),
                r.http_status,
                r.tries,
                r.failover,
                r.local,
                r.latency_ms as i64,
                r.ttft_ms.map(|v| v as i64),
                r.tokens_in.map(|v| v as i64),
                r.tokens_out.map(|v| v as i64),
                r.cost_usd,
                r.error,
                r.request_body,
                r.response_body,
                r.truncated_tokens.map(|v| v as i64),
                r.cache.map(|c| c.as_str()),
            ])?;
            for (seq, a) in r.attempts.iter().enumerate() {
                att.execute(rusqlite::params![
                    r.id,
                    seq as i64,
                    a.provider,
                    a.model,
                    a.outcome.as_str(),
                    a.reason,
                    a.http_status,
                    a.latency_ms as i64,
                    a.hedged,
                ])?;
            }
        }
    }
    tx.commit()
}

/// A trace under construction for one request. Finish it with [`PendingTrace::finish`]; if it is
/// dropped unfinished (the client went away), it is recorded as `client_closed`.
pub struct PendingTrace {
    rec: Option<TraceRecord>,
    /// Attempts so far; filled in place by the attempt loop.
    pub attempts: Vec<AttemptRecord>,
    sink: TraceSink,
    started: Instant,
}

impl PendingTrace {
    pub fn new(sink: TraceSink, rec: TraceRecord) -> PendingTrace {
        PendingTrace {
            rec: Some(rec),
            attempts: Vec::new(),
            sink,
            started: Instant::now(),
        }
    }

    pub fn id(&self) -> &str {
        self.rec.as_ref().map(|r| r.id.as_str()).unwrap_or("")
    }

    /// The model the client asked for.
    pub fn model_requested(&self) -> &str {
        self.rec
            .as_ref()
            .map(|r| r.model_requested.as_str())
            .unwrap_or("")
    }

    pub fn store_bodies(&self) -> bool {
        self.sink.store_bodies
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Edits the record in place.
    pub fn update(&mut self, f: impl FnOnce(&mut TraceRecord)) {
        if let Some(r) = self.rec.as_mut() {
            f(r);
        }
    }

    /// Records the trace with its final status.
    pub fn finish(mut self, status: TraceStatus) {
        self.send(status);
    }

    fn send(&mut self, status: TraceStatus) {
        if let Some(mut rec) = self.rec.take() {
            let cut = status == TraceStatus::ClientClosed
                && self.sink.cut_by_shutdown.load(Ordering::SeqCst);
            let status = if cut { TraceStatus::Error } else { status };
            rec.status = status;
            rec.latency_ms = self.started.elapsed().as_millis() as u64;
            if cut {
                rec.error = Some(
                    "stockyard shut down before the request finished (shutdown_grace ran out)"
                        .into(),
                );
            } else if status == TraceStatus::ClientClosed && rec.error.is_none() {
                rec.error = Some("client closed the connection".into());
            }
            rec.attempts = std::mem::take(&mut self.attempts);
            self.sink.send(rec);
        }
    }
}

impl Drop for PendingTrace {
    fn drop(&mut self) {
        self.send(TraceStatus::ClientClosed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, created_at: u64) -> TraceRecord {
        let mut r = TraceRecord::new(id.to_string(), "m", false);
        r.created_at = created_at;
        r.attempts.push(AttemptRecord {
            provider: "p".into(),
            model: "m".into(),
            outcome: crate::proxy::attempt::AttemptOutcome::Ok,
            reason: None,
            http_status: Some(200),
            latency_ms: 1,
            hedged: false,
        });
        r
    }

    #[test]
    fn prune_deletes_old_rows_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = db::open(&dir.path().join("t.db")).unwrap();
        let old: Vec<TraceRecord> = (0..2500)
            .map(|i| rec(&format!("tr_old{i:05}"), 1000 + i))
            .collect();
        // The writer gets its chance to step aside every PACE_ROWS rows, and every row lands.
        let mut paced = 0;
        insert_batch(&mut conn, &old, || paced += 1).unwrap();
        assert_eq!(paced, 2500 / PACE_ROWS);
        insert_batch(&mut conn, &[rec("tr_new", 10_000_000)], || {}).unwrap();
        assert_eq!(prune(&mut conn, 1_000_000).unwrap(), 2500);
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM requests", [], |r| r.get(0))
            .unwrap();
        let a: i64 = conn
            .query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get(0))
            .unwrap();
        assert_eq!((n, a), (1, 1));
    }

    #[test]
    fn a_full_disk_drops_traces_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db::open(&dir.path().join("t.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
        // Cap the database at its current size: every insert now fails with SQLITE_FULL.
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages).unwrap();
        let stats = Arc::new(TraceStats::default());
        let (tx, rx) = mpsc::channel(16);
        let st = stats.clone();
        let h = std::thread::spawn(move || writer_loop(conn, rx, st));
        for i in 0..5 {
            let mut r = rec(&format!("tr_{i:020}"), 1);
            r.request_body = Some("x".repeat(64 * 1024)); // needs new pages
            tx.blocking_send(Msg::Record(Box::new(r))).unwrap();
        }
        tx.blocking_send(Msg::Stop).unwrap();
        h.join().unwrap();
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 5);
        assert_eq!(stats.written.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn migrations_upgrade_an_older_database_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // A database from before the schema_version table existed at all.
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE unrelated (x INTEGER); INSERT INTO unrelated VALUES (7);",
            )
            .unwrap();
        }
        let conn = db::open(&path).unwrap();
        assert_eq!(
            db::version(&conn).unwrap(),
            db::MIGRATIONS.last().unwrap().0
        );
        let x: i64 = conn
            .query_row("SELECT x FROM unrelated", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, 7, "existing data kept");
        drop(conn);
        // Re-opening applies nothing twice.
        let conn = db::open(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, db::MIGRATIONS.len() as i64);
    }
}
