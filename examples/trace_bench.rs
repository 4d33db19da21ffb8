//! Trace storage benchmark: writer throughput, admin query latency at 1M rows, and pruning.
//!
//! ```text
//! cargo run --release --example trace_bench -- [--rows 1000000] [--db PATH]
//!     [--writer-rows 200000] [--runs 21]
//! ```
//!
//! 1. Insert throughput on fresh databases, `--writer-rows` traces each: through the writer
//!    thread with `sink.send` as fast as possible (the channel drops when full; the drops are
//!    reported), through the writer with backpressure (the sender waits while the queue is
//!    nearly full, so nothing is dropped), and `insert_batch` called directly in batches of 512.
//! 2. Fills the database to `--rows` traces with `insert_batch` in large transactions.
//! 3. Times the admin queries (median of `--runs` runs, warm cache, an `open_reader`
//!    connection) and prints the `EXPLAIN QUERY PLAN` of the SQL each one actually ran
//!    (captured with `sqlite3_trace_v2`).
//! 4. Times pruning one day of the oldest traces.
//! 5. Prints Markdown tables.
//!
//! Without `--db` everything lives in a temporary directory that is removed at the end; with
//! `--db` the filled database is kept there (the path must not exist yet).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::Connection;
use std::ffi::{c_int, c_uint, c_void, CStr};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;
use stockyard::proxy::attempt::{AttemptOutcome, AttemptRecord};
use stockyard::traces::query::{self, TraceFilter};
use stockyard::traces::{self, db, TraceRecord, TraceStatus, TraceWriter, CHANNEL_CAPACITY};

const DAY_MS: u64 = 86_400_000;
const SPAN_DAYS: u64 = 30;
const SEED: u64 = 0x570c_1a2d;
const DIRECT_BATCH: usize = 512;
const FILL_BATCH: usize = 50_000;
/// Queries slower than this at 1M rows are flagged.
const SLOW_MS: f64 = 50.0;

struct Args {
    rows: u64,
    db: Option<PathBuf>,
    writer_rows: u64,
    runs: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        rows: 1_000_000,
        db: None,
        writer_rows: 200_000,
        runs: 21,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--rows" => a.rows = value().parse().unwrap_or_else(|_| usage("bad --rows")),
            "--db" => a.db = Some(PathBuf::from(value())),
            "--writer-rows" => {
                a.writer_rows = value()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --writer-rows"))
            }
            "--runs" => a.runs = value().parse().unwrap_or_else(|_| usage("bad --runs")),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    a.rows = a.rows.max(1);
    a.writer_rows = a.writer_rows.clamp(1, a.rows);
    a.runs = a.runs.max(1);
    a
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("error: {msg}");
    }
    eprintln!("usage: trace_bench [--rows 1000000] [--db PATH] [--writer-rows 200000] [--runs 21]");
    std::process::exit(2)
}

// ---------------------------------------------------------------------------------------------
// Realistic synthetic traces.

/// (model requested, primary (provider, model), backup (provider, model), weight, $/1M in, $/1M out)
type Route = (
    &'static str,
    (&'static str, &'static str),
    (&'static str, &'static str),
    u32,
    f64,
    f64,
);

const ROUTES: &[Route] = &[
    (
        "gpt-4o-mini",
        ("openai", "gpt-4o-mini"),
        ("azure", "gpt-4o-mini"),
        30,
        0.15,
        0.6,
    ),
    (
        "gpt-4o",
        ("openai", "gpt-4o"),
        ("azure", "gpt-4o"),
        15,
        2.5,
        10.0,
    ),
    (
        "claude-sonnet-4",
        ("anthropic", "claude-sonnet-4-20250514"),
        ("bedrock", "anthropic.claude-sonnet-4"),
        20,
        3.0,
        15.0,
    ),
    (
        "llama-3.3-70b",
        ("groq", "llama-3.3-70b-versatile"),
        ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
        15,
        0.59,
        0.79,
    ),
    (
        "qwen2.5-coder",
        ("ollama", "qwen2.5-coder:7b"),
        ("groq", "qwen-2.5-coder-32b"),
        12,
        0.0,
        0.0,
    ),
    (
        "mistral-small",
        ("mistral", "mistral-small-latest"),
        ("together", "mistralai/Mistral-Small-24B"),
        8,
        0.1,
        0.3,
    ),
];

const FAIL_REASONS: &[(&str, Option<u16>)] = &[
    ("http_error", Some(503)),
    ("quota_exhausted", Some(429)),
    ("http_error", Some(502)),
    ("first_byte_timeout", None),
    ("connect_error", None),
];

/// Generates traces in time order, spread evenly (with jitter) over the last 30 days.
struct Gen {
    rng: StdRng,
    i: u64,
    n: u64,
    start_ms: u64,
    total_weight: u32,
}

impl Gen {
    fn new(n: u64, now_ms: u64) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(SEED),
            i: 0,
            n,
            start_ms: now_ms - SPAN_DAYS * DAY_MS,
            total_weight: ROUTES.iter().map(|r| r.3).sum(),
        }
    }

    fn take(&mut self, k: u64) -> Vec<TraceRecord> {
        (0..k).map(|_| self.next_record()).collect()
    }

    fn next_record(&mut self) -> TraceRecord {
        let span = SPAN_DAYS * DAY_MS;
        let step = (span / self.n).max(1);
        let t = self.start_ms + self.i * span / self.n + self.rng.gen_range(0..step);
        self.i += 1;
        let rng = &mut self.rng;
        // Same shape as `traces::new_trace_id`, at time `t`.
        let id = format!("tr_{t:011x}{:012x}", rng.gen::<u64>() & 0xffff_ffff_ffff);

        let mut w = rng.gen_range(0..self.total_weight);
        let route = ROUTES
            .iter()
            .find(|r| {
                if w < r.3 {
                    true
                } else {
                    w -= r.3;
                    false
                }
            })
            .unwrap_or(&ROUTES[0]);
        let (requested, primary, backup, _, price_in, price_out) = *route;

        let stream = rng.gen_bool(0.6);
        let mut r = TraceRecord::new(id, requested, stream);
        debug_assert_eq!(r.created_at, t);
        let tokens_in = rng.gen_range(20..4000u64);
        let tokens_out = rng.gen_range(5..1200u64);
        let latency = rng.gen_range(150..6000u64);
        let ok_attempt = |p: (&str, &str), latency_ms| AttemptRecord {
            provider: p.0.into(),
            model: p.1.into(),
            outcome: AttemptOutcome::Ok,
            reason: None,
            http_status: Some(200),
            latency_ms,
            hedged: false,
        };
        let failed_attempt = |p: (&str, &str), rng: &mut StdRng| {
            let (reason, status) = FAIL_REASONS[rng.gen_range(0..FAIL_REASONS.len())];
            AttemptRecord {
                provider: p.0.into(),
                model: p.1.into(),
                outcome: AttemptOutcome::Failed,
                reason: Some(reason.into()),
                http_status: status,
                latency_ms: rng.gen_range(20..3000),
                hedged: false,
            }
        };
        let answered = |r: &mut TraceRecord, p: (&str, &str)| {
            r.status = TraceStatus::Ok;
            r.http_status = Some(200);
            r.provider = Some(p.0.into());
            r.model = Some(p.1.into());
            r.local = p.0 == "ollama";
            r.tokens_in = Some(tokens_in);
            r.tokens_out = Some(tokens_out);
            r.cost_usd =
                Some((tokens_in as f64 * price_in + tokens_out as f64 * price_out) / 1_000_000.0);
            if stream {
                r.ttft_ms = Some(latency / 4);
            }
        };

        let roll: f64 = rng.gen();
        if roll < 0.05 {
            // Every candidate failed: error, after failing over.
            let a0 = failed_attempt(primary, rng);
            let a1 = failed_attempt(backup, rng);
            r.status = TraceStatus::Error;
            r.http_status = Some(502);
            r.error = Some(format!(
                "all providers failed: {} {}; {} {}",
                a0.provider,
                a0.reason.as_deref().unwrap_or(""),
                a1.provider,
                a1.reason.as_deref().unwrap_or("")
            ));
            r.failover = true;
            r.tries = 2;
            r.attempts = vec![a0, a1];
        } else if roll < 0.10 {
            // Primary failed, backup answered.
            let a0 = failed_attempt(primary, rng);
            answered(&mut r, backup);
            r.failover = true;
            r.tries = 2;
            r.attempts = vec![a0, ok_attempt(backup, latency)];
        } else if roll < 0.11 {
            // The client went away mid-stream.
            r.status = TraceStatus::ClientClosed;
            r.error = Some("client closed the connection".into());
            r.provider = Some(primary.0.into());
            r.model = Some(primary.1.into());
            r.tries = 1;
            r.attempts = vec![
                AttemptRecord {
                    provider: backup.0.into(),
                    model: backup.1.into(),
                    outcome: AttemptOutcome::Skipped,
                    reason: Some("not_local".into()),
                    http_status: None,
                    latency_ms: 0,
                    hedged: false,
                },
                AttemptRecord {
                    provider: primary.0.into(),
                    model: primary.1.into(),
                    outcome: AttemptOutcome::Failed,
                    reason: Some("client_closed".into()),
                    http_status: None,
                    latency_ms: latency,
                    hedged: false,
                },
            ];
        } else {
            // The common case: a candidate skipped up front (no failover), the primary answered.
            answered(&mut r, primary);
            r.tries = 1;
            r.attempts = vec![
                AttemptRecord {
                    provider: backup.0.into(),
                    model: backup.1.into(),
                    outcome: AttemptOutcome::Skipped,
                    reason: Some("model_unsupported".into()),
                    http_status: None,
                    latency_ms: 0,
                    hedged: false,
                },
                ok_attempt(primary, latency),
            ];
        }
        r.latency_ms = latency;
        r
    }
}

// ---------------------------------------------------------------------------------------------
// Insert throughput.

struct InsertResult {
    name: String,
    rows: u64,
    secs: f64,
    written: u64,
    dropped: u64,
}

impl InsertResult {
    fn rate(&self) -> f64 {
        self.written as f64 / self.secs
    }
}

/// Pushes every record through `sink.send` as fast as possible (no waiting), then flushes.
fn writer_firehose(
    path: &Path,
    recs: Vec<TraceRecord>,
    rt: &tokio::runtime::Runtime,
) -> InsertResult {
    let n = recs.len() as u64;
    let w = TraceWriter::start(path.to_path_buf(), false).expect("start writer");
    let t0 = Instant::now();
    for r in recs {
        w.sink.send(r);
    }
    rt.block_on(w.flush());
    let secs = t0.elapsed().as_secs_f64();
    let stats = w.sink.stats.clone();
    w.shutdown();
    InsertResult {
        name: "writer thread, `sink.send` firehose (drops when full)".into(),
        rows: n,
        secs,
        written: stats.written.load(Ordering::Relaxed),
        dropped: stats.dropped.load(Ordering::Relaxed),
    }
}

/// Pushes every record through `sink.send`, waiting while the queue is nearly full (queued =
/// sent - written - dropped), so the writer thread is the bottleneck and nothing is dropped.
fn writer_backpressure(
    path: &Path,
    recs: Vec<TraceRecord>,
    rt: &tokio::runtime::Runtime,
) -> InsertResult {
    let n = recs.len() as u64;
    let w = TraceWriter::start(path.to_path_buf(), false).expect("start writer");
    let stats = w.sink.stats.clone();
    let high_water = (CHANNEL_CAPACITY - 1024) as u64;
    let t0 = Instant::now();
    for (sent, r) in (0u64..).zip(recs) {
        while sent - stats.written.load(Ordering::Relaxed) - stats.dropped.load(Ordering::Relaxed)
            >= high_water
        {
            std::thread::yield_now();
        }
        w.sink.send(r);
    }
    rt.block_on(w.flush());
    let secs = t0.elapsed().as_secs_f64();
    w.shutdown();
    InsertResult {
        name: "writer thread, `sink.send` with backpressure".into(),
        rows: n,
        secs,
        written: stats.written.load(Ordering::Relaxed),
        dropped: stats.dropped.load(Ordering::Relaxed),
    }
}

/// Calls `insert_batch` directly from this thread, `batch` traces per transaction.
fn direct(name: &str, conn: &mut Connection, recs: &[TraceRecord], batch: usize) -> InsertResult {
    let t0 = Instant::now();
    for chunk in recs.chunks(batch) {
        traces::insert_batch(conn, chunk, || {}).expect("insert_batch");
    }
    InsertResult {
        name: name.into(),
        rows: recs.len() as u64,
        secs: t0.elapsed().as_secs_f64(),
        written: recs.len() as u64,
        dropped: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Capturing the SQL a function runs, and its query plan.

struct Captured(Vec<String>);

unsafe extern "C" fn on_trace(
    mask: c_uint,
    ctx: *mut c_void,
    p: *mut c_void,
    _x: *mut c_void,
) -> c_int {
    if mask == rusqlite::ffi::SQLITE_TRACE_STMT as c_uint {
        // SAFETY: `ctx` is the `Captured` installed by `capture_sql`, alive while the trace is
        // installed; for SQLITE_TRACE_STMT `p` is the statement being run.
        unsafe {
            let out = &mut *(ctx as *mut Captured);
            let sql = rusqlite::ffi::sqlite3_expanded_sql(p as *mut rusqlite::ffi::sqlite3_stmt);
            if !sql.is_null() {
                out.0
                    .push(CStr::from_ptr(sql).to_string_lossy().into_owned());
                rusqlite::ffi::sqlite3_free(sql as *mut c_void);
            }
        }
    }
    0
}

/// Runs `f` with statement tracing on `conn`, returning the SQL it ran (parameters expanded).
/// Takes the raw handle so `f` may borrow the connection mutably.
fn capture_sql<T>(db: *mut rusqlite::ffi::sqlite3, f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let mut cap = Captured(Vec::new());
    // SAFETY: `db` is an open connection owned by the caller for the whole call; the callback
    // only touches `cap`, which outlives the trace (removed below before `cap` is dropped), and
    // `f` runs on this thread.
    unsafe {
        rusqlite::ffi::sqlite3_trace_v2(
            db,
            rusqlite::ffi::SQLITE_TRACE_STMT as c_uint,
            Some(on_trace),
            &mut cap as *mut Captured as *mut c_void,
        );
    }
    let out = f();
    // SAFETY: removes the callback installed above.
    unsafe {
        rusqlite::ffi::sqlite3_trace_v2(db, 0, None, std::ptr::null_mut());
    }
    (out, cap.0)
}

/// `EXPLAIN QUERY PLAN` lines, indented by depth.
fn query_plan(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("explain");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(3)?,
            ))
        })
        .expect("explain rows");
    let mut depth: Vec<(i64, usize)> = Vec::new();
    let mut out = Vec::new();
    for row in rows {
        let (id, parent, detail) = row.expect("plan row");
        let d = depth
            .iter()
            .find(|(i, _)| *i == parent)
            .map(|(_, d)| d + 1)
            .unwrap_or(0);
        depth.push((id, d));
        out.push(format!("{}{detail}", "  ".repeat(d)));
    }
    out
}

/// A short verdict on a plan: which index it uses, and whether it scans or sorts.
fn plan_summary(plan: &[String]) -> String {
    let req: Vec<&str> = plan
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.contains(" requests") || l.contains(" attempts"))
        .collect();
    let mut s = req.join("; ");
    if plan.iter().any(|l| l.contains("TEMP B-TREE")) {
        let temp: Vec<&str> = plan
            .iter()
            .map(|l| l.trim())
            .filter(|l| l.contains("TEMP B-TREE"))
            .collect();
        s.push_str("; ");
        s.push_str(&temp.join("; "));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Timing.

struct Timing {
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
}

fn time_it<T>(runs: usize, mut f: impl FnMut() -> T) -> Timing {
    for _ in 0..3 {
        black_box(f()); // warm the page cache and the statement cache
    }
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let median_ms = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Timing {
        median_ms,
        min_ms: v[0],
        max_ms: v[v.len() - 1],
    }
}

struct QueryResult {
    name: String,
    timing: Timing,
    rows: usize,
    sql: Vec<String>,
    plans: Vec<Vec<String>>,
}

fn bench_query(
    conn: &Connection,
    runs: usize,
    name: &str,
    mut f: impl FnMut(&Connection) -> usize,
) -> QueryResult {
    // SAFETY: `conn` stays open for the whole capture.
    let (rows, sql) = capture_sql(unsafe { conn.handle() }, || f(conn));
    let plans = sql.iter().map(|s| query_plan(conn, s)).collect();
    let timing = time_it(runs, || f(conn));
    QueryResult {
        name: name.into(),
        timing,
        rows,
        sql,
        plans,
    }
}

fn list_len(conn: &Connection, f: &TraceFilter) -> usize {
    query::list(conn, f).expect("list").len()
}

fn file_size(path: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    [path.to_path_buf(), wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

fn fmt_rate(r: f64) -> String {
    let r = r.round() as u64;
    let s = r.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn main() {
    let args = parse_args();
    let tmp = tempfile::Builder::new()
        .prefix("trace_bench")
        .tempdir()
        .expect("tempdir");
    let db_path = match &args.db {
        Some(p) => {
            if p.exists() {
                usage(&format!("{} already exists; give a new path", p.display()));
            }
            p.clone()
        }
        None => tmp.path().join("traces.db"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let now = traces::now_ms();
    let w_rows = args.writer_rows;

    eprintln!(
        "SQLite {}; {} rows into {}; writer phases {} rows each",
        rusqlite::version(),
        args.rows,
        db_path.display(),
        w_rows
    );

    // 1. Insert throughput, each phase on a fresh database, the same `w_rows` traces.
    let mut inserts = Vec::new();
    {
        let recs = Gen::new(args.rows, now).take(w_rows);
        let p = tmp.path().join("firehose.db");
        eprintln!("writer firehose...");
        inserts.push(writer_firehose(&p, recs, &rt));
        std::fs::remove_file(&p).ok();
    }
    {
        let recs = Gen::new(args.rows, now).take(w_rows);
        let p = tmp.path().join("direct.db");
        let mut conn = db::open(&p).expect("open");
        eprintln!("direct insert_batch x{DIRECT_BATCH}...");
        inserts.push(direct(
            &format!("`insert_batch` direct, {DIRECT_BATCH} per transaction, one thread"),
            &mut conn,
            &recs,
            DIRECT_BATCH,
        ));
        drop(conn);
        std::fs::remove_file(&p).ok();
    }
    // The backpressure run writes the oldest `w_rows` traces of the real database.
    let mut gen = Gen::new(args.rows, now);
    {
        let recs = gen.take(w_rows);
        eprintln!("writer with backpressure...");
        inserts.push(writer_backpressure(&db_path, recs, &rt));
    }

    // 2. Fill to `rows` in large transactions.
    let mut conn = db::open(&db_path).expect("open");
    {
        eprintln!("filling to {} rows...", args.rows);
        let t0 = Instant::now();
        let mut left = args.rows - w_rows;
        let mut secs = 0.0;
        let filled = left;
        while left > 0 {
            let k = left.min(FILL_BATCH as u64);
            let recs = gen.take(k);
            let t = Instant::now();
            traces::insert_batch(&mut conn, &recs, || {}).expect("fill");
            secs += t.elapsed().as_secs_f64();
            left -= k;
        }
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
        eprintln!("filled in {:.1}s", t0.elapsed().as_secs_f64());
        if filled > 0 {
            inserts.push(InsertResult {
                name: format!(
                    "fill: `insert_batch` direct, {FILL_BATCH} per transaction (excl. generation)"
                ),
                rows: filled,
                secs,
                written: filled,
                dropped: 0,
            });
        }
    }
    let n_requests = count(&conn, "requests");
    let n_attempts = count(&conn, "attempts");
    let size_mb = file_size(&db_path) as f64 / 1e6;

    // 3. Admin queries on a reader connection.
    let reader = db::open_reader(&db_path).expect("open_reader");
    eprintln!("timing queries...");
    let page1 = query::list(
        &reader,
        &TraceFilter {
            limit: Some(50),
            ..Default::default()
        },
    )
    .expect("list");
    let cursor = page1
        .last()
        .and_then(|v| v["id"].as_str())
        .unwrap_or("tr_")
        .to_string();
    let mid_ms = now - SPAN_DAYS * DAY_MS / 2;
    let deep_cursor = format!("tr_{mid_ms:011x}{:012x}", 0);
    let some_id: String = reader
        .query_row(
            "SELECT id FROM requests WHERE id < ?1 ORDER BY id DESC LIMIT 1",
            [&deep_cursor],
            |r| r.get(0),
        )
        .expect("an id");

    let page = |f: TraceFilter| move |c: &Connection| list_len(c, &f);
    let base = || TraceFilter {
        limit: Some(50),
        ..Default::default()
    };
    let runs = args.runs;
    let results = vec![
        bench_query(&reader, runs, "newest page (limit 50)", page(base())),
        bench_query(
            &reader,
            runs,
            "next page (`before` = last id of page 1)",
            page(TraceFilter {
                before: Some(cursor.clone()),
                ..base()
            }),
        ),
        bench_query(
            &reader,
            runs,
            "deep page (`before` = 15 days ago)",
            page(TraceFilter {
                before: Some(deep_cursor.clone()),
                ..base()
            }),
        ),
        bench_query(
            &reader,
            runs,
            "failover only",
            page(TraceFilter {
                failover: Some(true),
                ..base()
            }),
        ),
        bench_query(
            &reader,
            runs,
            "failover only, next page",
            page(TraceFilter {
                failover: Some(true),
                before: Some(cursor.clone()),
                ..base()
            }),
        ),
        bench_query(
            &reader,
            runs,
            "provider = groq",
            page(TraceFilter {
                provider: Some("groq".into()),
                ..base()
            }),
        ),
        bench_query(
            &reader,
            runs,
            "provider = groq, next page",
            page(TraceFilter {
                provider: Some("groq".into()),
                before: Some(cursor.clone()),
                ..base()
            }),
        ),
        bench_query(
            &reader,
            runs,
            "model = claude-sonnet-4",
            page(TraceFilter {
                model: Some("claude-sonnet-4".into()),
                ..base()
            }),
        ),
        bench_query(
            &reader,
            runs,
            "status = error",
            page(TraceFilter {
                status: Some("error".into()),
                ..base()
            }),
        ),
        bench_query(
            &reader,
            runs,
            "provider = mistral AND status = client_closed (combined)",
            page(TraceFilter {
                provider: Some("mistral".into()),
                status: Some("client_closed".into()),
                ..base()
            }),
        ),
        bench_query(&reader, runs, "get one trace + attempts", |c| {
            usize::from(query::get(c, &some_id).expect("get").is_some())
        }),
        bench_query(&reader, runs, "spend, last 24h", |c| {
            let v = query::spend(c, now - DAY_MS).expect("spend");
            v["totals"]["requests"].as_u64().unwrap_or(0) as usize
        }),
        bench_query(&reader, runs, "spend, last 30d", |c| {
            let v = query::spend(c, now - SPAN_DAYS * DAY_MS).expect("spend");
            v["totals"]["requests"].as_u64().unwrap_or(0) as usize
        }),
    ];
    drop(reader);

    // 4. Prune one day of the oldest traces, as the writer does (same connection settings).
    let oldest: i64 = conn
        .query_row("SELECT MIN(created_at) FROM requests", [], |r| r.get(0))
        .expect("oldest");
    let cutoff = oldest as u64 + DAY_MS;
    // A no-op prune (nothing is that old) to capture its SQL.
    // SAFETY: `conn` stays open for the whole capture.
    let handle = unsafe { conn.handle() };
    let (_, prune_sql) = capture_sql(handle, || traces::prune(&mut conn, 0).expect("prune"));
    let mut prune_plans: Vec<(String, Vec<String>)> = Vec::new();
    for s in &prune_sql {
        let generic = s.split(" WHERE ").next().unwrap_or(s);
        if !prune_plans
            .iter()
            .any(|(p, _)| p.split(" WHERE ").next() == Some(generic))
        {
            prune_plans.push((s.clone(), query_plan(&conn, s)));
        }
    }
    eprintln!("pruning one day...");
    let t0 = Instant::now();
    let deleted = traces::prune(&mut conn, cutoff).expect("prune");
    let prune_time = t0.elapsed();
    let after = count(&conn, "requests");
    drop(conn);

    // 5. Report.
    let slow: Vec<&QueryResult> = results
        .iter()
        .filter(|r| r.timing.median_ms > SLOW_MS)
        .collect();
    println!("\n## Stockyard trace storage benchmark\n");
    println!(
        "SQLite {} (bundled), WAL, synchronous=NORMAL, default page cache. Database: {} requests, \
         {} attempts, {:.0} MB. Queries: median of {} runs after 3 warm-up runs on one \
         `open_reader` connection; no ANALYZE (as in production).\n",
        rusqlite::version(),
        n_requests,
        n_attempts,
        size_mb,
        runs
    );
    println!("### Inserts\n");
    println!("| Path | Traces offered | Written | Dropped | Time (s) | Traces/s written |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &inserts {
        println!(
            "| {} | {} | {} | {} | {:.2} | {} |",
            r.name,
            r.rows,
            r.written,
            r.dropped,
            r.secs,
            fmt_rate(r.rate())
        );
    }
    println!("\n### Admin queries at {n_requests} rows\n");
    println!("| Query | Median ms | Min ms | Max ms | Rows | Plan |");
    println!("|---|---:|---:|---:|---:|---|");
    for r in &results {
        let plan = r
            .plans
            .iter()
            .map(|p| plan_summary(p))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "| {}{} | {:.3} | {:.3} | {:.3} | {} | {} |",
            r.name,
            if r.timing.median_ms > SLOW_MS {
                " **(slow)**"
            } else {
                ""
            },
            r.timing.median_ms,
            r.timing.min_ms,
            r.timing.max_ms,
            r.rows,
            plan.replace('|', "\\|")
        );
    }
    println!("\n### Prune\n");
    println!("| Operation | Deleted | Time (ms) | Requests/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| prune 1 day of oldest traces (batches of 1000) | {} | {:.1} | {} |",
        deleted,
        prune_time.as_secs_f64() * 1000.0,
        fmt_rate(deleted as f64 / prune_time.as_secs_f64().max(1e-9))
    );
    println!("\n{n_requests} requests before, {after} after.");

    println!("\n### Query plans\n");
    for r in &results {
        println!("**{}**\n", r.name);
        println!("```");
        for (sql, plan) in r.sql.iter().zip(&r.plans) {
            println!("{sql}");
            for l in plan {
                println!("  {l}");
            }
        }
        println!("```\n");
    }
    println!("**prune**\n\n```");
    for (sql, plan) in &prune_plans {
        println!("{sql}");
        for l in plan {
            println!("  {l}");
        }
    }
    println!("```");
    if slow.is_empty() {
        println!("\nNo query over {SLOW_MS} ms.");
    } else {
        println!("\nOver {SLOW_MS} ms:");
        for r in &slow {
            println!("- {} ({:.1} ms)", r.name, r.timing.median_ms);
        }
    }
}
