//! The response cache (`cache:` in the config; issue 10): exact-match answers to chat
//! completion requests, kept in the `cache_entries` table of `<data_dir>/stockyard.db` so they
//! survive a restart, bounded by `max_entries` (least recently used first out) and `ttl`.
//!
//! Nothing here blocks the async runtime or fails a request:
//! * lookups run on the blocking pool ([`tokio::task::spawn_blocking`]) with a small pool of
//!   read-only connections, under a deadline; entries written a moment ago but not yet committed
//!   are answered from an in-memory map first;
//! * writes (new entries, LRU touches, evictions, clears) go through a bounded channel to one
//!   writer thread that owns the write connection and commits in batches, as the trace writer
//!   does;
//! * any failure (database locked or unavailable, an unreadable or corrupted entry, a full queue)
//!   is logged at warn and the request goes on as a miss.

pub mod key;
pub mod replay;

pub use key::{Key, Tenant};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const CHANNEL_CAPACITY: usize = 4096;
const BATCH: usize = 256;
/// Read connections kept for reuse.
const READERS: usize = 4;
/// Answers queued for the writer are held in memory up to this many bytes; beyond, new answers
/// are not cached until the writer catches up.
const MAX_PENDING_BYTES: usize = 64 << 20;
/// A lookup that takes longer than this is a miss.
const LOOKUP_DEADLINE: Duration = Duration::from_millis(500);
/// SQLite's busy wait for a reader (WAL readers rarely wait at all).
const READ_BUSY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("cache lookup took longer than {0:?}")]
    Timeout(Duration),
    #[error("cache lookup task failed: {0}")]
    Task(String),
    #[error("cache writer stopped")]
    WriterGone,
    #[error("cache write queue full")]
    QueueFull,
}

/// Whether a request was answered from the cache (the trace's `cache` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheOutcome {
    Hit,
    Miss,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
        }
    }
}

/// A stored answer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: Key,
    /// [`Tenant::label`]: `anon` or a key-hash prefix.
    pub tenant: String,
    pub provider: String,
    pub model: String,
    pub local: bool,
    /// One `chat.completion` JSON object.
    pub body: Bytes,
    pub created_at: u64,
}

/// Counters since the process started (shown in `/api/proxy/cache`).
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Lookups or writes that failed and were treated as misses / skipped.
    pub errors: AtomicU64,
}

/// The cache as the server holds it: opened lazily (at startup when `cache.enabled`, else the
/// first time it is needed), shared by every request.
pub struct Cache {
    path: PathBuf,
    store: tokio::sync::OnceCell<Option<Arc<Store>>>,
    pub stats: CacheStats,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache kept in the database at `path` (not opened yet).
    pub fn new(path: PathBuf) -> Cache {
        Cache {
            path,
            store: tokio::sync::OnceCell::new(),
            stats: CacheStats::default(),
        }
    }

    /// Opens the store now (blocking; used at startup).
    pub fn open_blocking(&self) {
        let _ = self.store.set(open_logged(&self.path));
    }

    /// The store, opening it on the blocking pool the first time. `None` when the database
    /// cannot be opened (logged once); the cache then acts as always-miss.
    pub async fn store(&self) -> Option<Arc<Store>> {
        self.store
            .get_or_init(|| async {
                let path = self.path.clone();
                tokio::task::spawn_blocking(move || open_logged(&path))
                    .await
                    .unwrap_or(None)
            })
            .await
            .clone()
    }

    /// The store if it is already open.
    pub fn opened(&self) -> Option<Arc<Store>> {
        self.store.get().cloned().flatten()
    }

    /// Looks a key up; every failure is a miss (logged at warn). Counts hits and misses.
    pub async fn lookup(&self, key: Key, ttl: Duration) -> Option<Hit> {
        let found = match self.store().await {
            None => None,
            Some(store) => match store.lookup(key, ttl).await {
                Ok(found) => found,
                Err(e) => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "cache lookup failed; treating it as a miss");
                    None
                }
            },
        };
        let hit = found.and_then(|(entry, store)| {
            match replay::parse_completion(&entry.body) {
                Some(completion) => {
                    let _ = store.send(Msg::Touch(key));
                    Some(Hit { entry, completion })
                }
                None => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key = %key.hex(), "cache entry is not a readable chat completion; removing it and treating it as a miss");
                    store.forget(key);
                    None
                }
            }
        });
        let counter = if hit.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    /// Queues an answer for storage (never blocks; a full queue drops it).
    pub fn put(&self, entry: Entry, ttl: Duration, max_entries: u64) {
        let Some(store) = self.opened() else { return };
        if let Err(e) = store.put(entry, ttl, max_entries) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "cache entry not stored");
        }
    }

    /// Waits until every write queued so far is committed.
    pub async fn flush(&self) {
        if let Some(store) = self.opened() {
            store.flush().await;
        }
    }

    /// `GET /api/proxy/cache`.
    pub async fn stats_json(&self, enabled: bool) -> Result<Value, CacheError> {
        let (entries, bytes) = match self.store().await {
            Some(store) => {
                // Count what was answered a moment ago too.
                let _ = tokio::time::timeout(Duration::from_secs(2), store.flush()).await;
                store.totals().await?
            }
            None => (0, 0),
        };
        Ok(json!({
            "enabled": enabled,
            "entries": entries,
            "bytes": bytes,
            "hits": self.stats.hits.load(Ordering::Relaxed),
            "misses": self.stats.misses.load(Ordering::Relaxed),
            "errors": self.stats.errors.load(Ordering::Relaxed),
        }))
    }

    /// `DELETE /api/proxy/cache`: removes every entry; returns how many there were.
    pub async fn clear(&self) -> Result<u64, CacheError> {
        match self.store().await {
            Some(store) => store.clear().await,
            None => Ok(0),
        }
    }

    /// Commits queued writes and stops the writer thread (blocking; at shutdown).
    pub fn shutdown(&self) {
        if let Some(store) = self.opened() {
            store.shutdown();
        }
    }
}

fn open_logged(path: &Path) -> Option<Arc<Store>> {
    match Store::open(path) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the response cache; every request will be a miss");
            None
        }
    }
}

/// A cache hit: the entry and its body parsed.
#[derive(Debug)]
pub struct Hit {
    pub entry: Entry,
    pub completion: Value,
}

enum Msg {
    Put {
        entry: Arc<Entry>,
        ttl: Duration,
        max_entries: u64,
    },
    Touch(Key),
    Remove(Key),
    Clear(oneshot::Sender<u64>),
    Flush(oneshot::Sender<()>),
    Stop,
}

type Pending = Arc<Mutex<HashMap<Key, Arc<Entry>>>>;

/// The open cache: read connections, the writer thread's queue, and entries queued but not yet
/// committed.
pub struct Store {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    pending: Pending,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Store {
    /// Opens (creating and migrating if needed) the database and starts the writer thread.
    pub fn open(path: &Path) -> rusqlite::Result<Store> {
        let conn = crate::traces::db::open(path)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let pending: Pending = Arc::default();
        let p = pending.clone();
        let handle = std::thread::Builder::new()
            .name("stockyard-cache".into())
            .spawn(move || writer_loop(conn, rx, p))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Store {
            path: path.to_path_buf(),
            readers: Mutex::new(Vec::new()),
            tx: Mutex::new(Some(tx)),
            pending,
            handle: Mutex::new(Some(handle)),
        })
    }

    fn send(&self, msg: Msg) -> Result<(), CacheError> {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Err(CacheError::WriterGone);
        };
        tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CacheError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => CacheError::WriterGone,
        })
    }

    /// Queues an entry for the writer; until it is committed, lookups find it in memory.
    pub fn put(&self, entry: Entry, ttl: Duration, max_entries: u64) -> Result<(), CacheError> {
        let entry = Arc::new(entry);
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let queued: usize = pending.values().map(|e| e.body.len()).sum();
            if queued + entry.body.len() > MAX_PENDING_BYTES {
                return Err(CacheError::QueueFull);
            }
            pending.insert(entry.key, entry.clone());
        }
        let key = entry.key;
        let sent = self.send(Msg::Put {
            entry: entry.clone(),
            ttl,
            max_entries,
        });
        if sent.is_err() {
            remove_pending(&self.pending, &key, &entry);
        }
        sent
    }

    fn forget(&self, key: Key) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let _ = self.send(Msg::Remove(key));
    }

    fn reader(&self) -> rusqlite::Result<Connection> {
        if let Some(c) = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        let c = crate::traces::db::open_reader(&self.path)?;
        c.busy_timeout(READ_BUSY)?;
        Ok(c)
    }

    fn give_back(&self, c: Connection) {
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READERS {
            pool.push(c);
        }
    }

    /// The entry for `key` if it is there and younger than `ttl`.
    async fn lookup(
        self: Arc<Self>,
        key: Key,
        ttl: Duration,
    ) -> Result<Option<(Entry, Arc<Store>)>, CacheError> {
        let now = crate::traces::now_ms();
        let fresh = |created_at: u64| now.saturating_sub(created_at) < ttl.as_millis() as u64;
        let queued = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(e) = queued {
            return Ok(fresh(e.created_at).then(|| ((*e).clone(), self.clone())));
        }
        let store = self.clone();
        let task = tokio::task::spawn_blocking(move || -> rusqlite::Result<Option<Entry>> {
            let conn = store.reader()?;
            let found = read_entry(&conn, key);
            store.give_back(conn);
            found
        });
        let found = match tokio::time::timeout(LOOKUP_DEADLINE, task).await {
            Err(_) => return Err(CacheError::Timeout(LOOKUP_DEADLINE)),
            Ok(Err(e)) => return Err(CacheError::Task(e.to_string())),
            Ok(Ok(r)) => r?,
        };
        Ok(found
            .filter(|e| fresh(e.created_at))
            .map(|e| (e, self.clone())))
    }

    async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.send(Msg::Flush(ack)).is_ok() {
            let _ = done.await;
        }
    }

    async fn clear(&self) -> Result<u64, CacheError> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let (ack, done) = oneshot::channel();
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(CacheError::WriterGone)?;
        // Waits for room: a clear must not be dropped.
        tx.send(Msg::Clear(ack))
            .await
            .map_err(|_| CacheError::WriterGone)?;
        done.await.map_err(|_| CacheError::WriterGone)
    }

    async fn totals(self: Arc<Self>) -> Result<(u64, u64), CacheError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || -> rusqlite::Result<(u64, u64)> {
            let conn = store.reader()?;
            let r = conn.query_row(
                "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM cache_entries",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            );
            store.give_back(conn);
            r
        })
        .await
        .map_err(|e| CacheError::Task(e.to_string()))?
        .map_err(CacheError::from)
    }

    fn shutdown(&self) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.blocking_send(Msg::Stop);
        }
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn read_entry(conn: &Connection, key: Key) -> rusqlite::Result<Option<Entry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT tenant, provider, model, local, body, created_at FROM cache_entries WHERE key = ?1",
    )?;
    stmt.query_row([&key.0[..]], |r| {
        Ok(Entry {
            key,
            tenant: r.get(0)?,
            provider: r.get(1)?,
            model: r.get(2)?,
            local: r.get(3)?,
            body: Bytes::from(r.get::<_, Vec<u8>>(4)?),
            created_at: r.get::<_, i64>(5)? as u64,
        })
    })
    .optional()
}

fn remove_pending(pending: &Pending, key: &Key, entry: &Arc<Entry>) {
    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
    if p.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
        p.remove(key);
    }
}

/// Hands out strictly increasing `last_used` stamps (unix ms when the clock allows), so LRU
/// order is exactly the order the writer saw uses in.
struct Clock(i64);

impl Clock {
    fn next(&mut self) -> i64 {
        self.0 = (crate::traces::now_ms() as i64).max(self.0 + 1);
        self.0
    }
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Msg>, pending: Pending) {
    let start = conn
        .query_row(
            "SELECT COALESCE(MAX(last_used), 0) FROM cache_entries",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0);
    let mut clock = Clock(start);
    let mut stop = false;
    while !stop {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut puts: Vec<Arc<Entry>> = Vec::new();
        let mut flushes = Vec::new();
        let mut clears: Vec<(oneshot::Sender<u64>, u64)> = Vec::new();
        let mut bound: Option<(Duration, u64)> = None;
        let mut failed = 0usize;
        let mut last_error = None;
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for msg in batch {
                // One failing statement (a vanished table, a full disk) costs that message only;
                // acknowledgements and the stop request are never lost.
                let done = match msg {
                    Msg::Put {
                        entry,
                        ttl,
                        max_entries,
                    } => {
                        // Leaves the in-memory map after this batch whether or not it commits.
                        puts.push(entry.clone());
                        bound = Some((ttl, max_entries));
                        write_entry(&tx, &entry, clock.next())
                    }
                    Msg::Touch(key) => tx
                        .prepare_cached(
                            "UPDATE cache_entries SET last_used = ?2, hits = hits + 1 WHERE key = ?1",
                        )
                        .and_then(|mut st| st.execute(params![&key.0[..], clock.next()]))
                        .map(drop),
                    Msg::Remove(key) => tx
                        .prepare_cached("DELETE FROM cache_entries WHERE key = ?1")
                        .and_then(|mut st| st.execute([&key.0[..]]))
                        .map(drop),
                    Msg::Clear(ack) => {
                        let n = tx.execute("DELETE FROM cache_entries", []);
                        clears.push((ack, *n.as_ref().unwrap_or(&0) as u64));
                        n.map(drop)
                    }
                    Msg::Flush(ack) => {
                        flushes.push(ack);
                        Ok(())
                    }
                    Msg::Stop => {
                        stop = true;
                        Ok(())
                    }
                };
                if let Err(e) = done {
                    failed += 1;
                    last_error = Some(e);
                }
            }
            if let Some((ttl, max_entries)) = bound {
                if let Err(e) = evict(&tx, ttl, max_entries) {
                    failed += 1;
                    last_error = Some(e);
                }
            }
            tx.commit()
        })();
        if let Err(e) = &result {
            for (_, n) in clears.iter_mut() {
                *n = 0;
            }
            tracing::warn!(error = %e, "cache write failed; the answers in this batch are not cached");
        } else if let Some(e) = last_error {
            tracing::warn!(error = %e, failed, "cache writes failed; those answers are not cached");
        }
        for e in &puts {
            remove_pending(&pending, &e.key, e);
        }
        for (ack, n) in clears {
            let _ = ack.send(n);
        }
        for ack in flushes {
            let _ = ack.send(());
        }
    }
}

fn write_entry(tx: &rusqlite::Transaction, e: &Entry, last_used: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO cache_entries (key, tenant, provider, model, local, body, bytes, created_at, last_used, hits)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0)
         ON CONFLICT(key) DO UPDATE SET tenant = excluded.tenant, provider = excluded.provider,
           model = excluded.model, local = excluded.local, body = excluded.body,
           bytes = excluded.bytes, created_at = excluded.created_at,
           last_used = excluded.last_used, hits = 0",
    )?
    .execute(params![
        &e.key.0[..],
        e.tenant,
        e.provider,
        e.model,
        e.local,
        &e.body[..],
        e.body.len() as i64,
        e.created_at as i64,
        last_used,
    ])?;
    Ok(())
}

/// Drops expired entries, then the least recently used beyond `max_entries`.
fn evict(tx: &rusqlite::Transaction, ttl: Duration, max_entries: u64) -> rusqlite::Result<()> {
    let cutoff = crate::traces::now_ms().saturating_sub(ttl.as_millis() as u64) as i64;
    let expired = tx
        .prepare_cached("DELETE FROM cache_entries WHERE created_at <= ?1")?
        .execute([cutoff])?;
    let n: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM cache_entries")?
        .query_row([], |r| r.get(0))?;
    let over = n.saturating_sub(i64::try_from(max_entries).unwrap_or(i64::MAX));
    let evicted = if over > 0 {
        tx.prepare_cached(
            "DELETE FROM cache_entries WHERE rowid IN (SELECT rowid FROM cache_entries ORDER BY last_used LIMIT ?1)",
        )?
        .execute([over])?
    } else {
        0
    };
    if expired + evicted > 0 {
        tracing::debug!(expired, evicted, "cache entries evicted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: u8, body: &str) -> Entry {
        Entry {
            key: Key([k; 32]),
            tenant: "anon".into(),
            provider: "p".into(),
            model: "m".into(),
            local: false,
            body: Bytes::from(body.to_string()),
            created_at: crate::traces::now_ms(),
        }
    }

    const BODY: &str = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"x"},"finish_reason":"stop"}]}"#;

    #[tokio::test]
    async fn put_lookup_lru_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("s.db"));
        cache.open_blocking();
        let ttl = Duration::from_secs(60);
        cache.put(entry(1, BODY), ttl, 2);
        // Answered from the pending map before the writer commits.
        assert!(cache.lookup(Key([1; 32]), ttl).await.is_some());
        cache.flush().await;
        cache.put(entry(2, BODY), ttl, 2);
        cache.flush().await;
        assert!(cache.lookup(Key([1; 32]), ttl).await.is_some()); // 1 is now the most recent
        cache.put(entry(3, BODY), ttl, 2);
        cache.flush().await;
        assert!(cache.lookup(Key([2; 32]), ttl).await.is_none(), "2 evicted");
        assert!(cache.lookup(Key([1; 32]), ttl).await.is_some());
        assert!(cache.lookup(Key([3; 32]), ttl).await.is_some());
        assert!(cache.lookup(Key([3; 32]), Duration::ZERO).await.is_none());
        let s = cache.stats_json(true).await.unwrap();
        assert_eq!(s["entries"], 2);
        assert_eq!(cache.clear().await.unwrap(), 2);
        assert!(cache.lookup(Key([1; 32]), ttl).await.is_none());
        cache.put(entry(4, "not json"), ttl, 2);
        cache.flush().await;
        assert!(
            cache.lookup(Key([4; 32]), ttl).await.is_none(),
            "garbage is a miss"
        );
        cache.flush().await;
        assert_eq!(
            cache.stats_json(true).await.unwrap()["entries"],
            0,
            "and removed"
        );
        tokio::task::spawn_blocking(move || cache.shutdown())
            .await
            .unwrap();
    }
}
