//! `stockyard-bench`: Stockyard's overhead benchmark (issue 8; see bench/README.md).
//!
//! In one run it starts a fast mock OpenAI upstream in-process (own tokio runtime), the release
//! `stockyard` binary as a separate process (every feature on), and its own load generator, then
//! alternates direct-to-mock and through-Stockyard runs: closed loop at fixed concurrency levels,
//! open loop at fractions of Stockyard's saturation rate, streams, the cost of a failover hop and
//! of skipping an open circuit, and an RSS leak check. Results go to `<out-dir>/results.md`,
//! `results.json` and `latency.svg`.

mod bare;
mod child;
mod load;
mod mock;
mod report;

use bytes::Bytes;
use child::Stockyard;
use clap::Parser;
use load::{Stats, Target};
use report::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "stockyard-bench",
    about = "Stockyard overhead benchmark: direct-to-mock vs through-Stockyard latency, throughput, streams, failover, RSS"
)]
struct Args {
    /// A few seconds in all: small levels, short runs (CI smoke test).
    #[arg(long)]
    quick: bool,
    /// The stockyard binary (default: `stockyard` next to this binary; build it with
    /// `cargo build --release --bins`).
    #[arg(long)]
    stockyard: Option<PathBuf>,
    /// Output directory for results.md, results.json and latency.svg.
    #[arg(long, default_value = "bench")]
    out_dir: PathBuf,
    /// Closed-loop concurrency levels [default 1,16,64,256; quick 1,4].
    #[arg(long, value_delimiter = ',')]
    levels: Option<Vec<usize>>,
    /// Stream concurrency levels [default 1,16,256; quick 1,4].
    #[arg(long, value_delimiter = ',')]
    stream_levels: Option<Vec<usize>>,
    /// Open-loop rates as fractions of Stockyard's saturation [default 0.25,0.5,0.75; quick 0.5].
    #[arg(long, value_delimiter = ',')]
    rate_fractions: Option<Vec<f64>>,
    /// Open-loop rates in requests/s (instead of fractions).
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<f64>>,
    /// Connections the open-loop generator may use [default 64; quick 8].
    #[arg(long)]
    open_conns: Option<usize>,
    /// Seconds measured per run [default 2; quick 0.25].
    #[arg(long)]
    duration: Option<f64>,
    /// Unmeasured seconds before each run [default 0.5; quick 0.1].
    #[arg(long)]
    warmup: Option<f64>,
    /// Direct/Stockyard alternations per level, merged [default 3; quick 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// Size of the mock's JSON reply in bytes.
    #[arg(long, default_value_t = 1024)]
    reply_bytes: usize,
    /// Content chunks per stream [default 20; quick 5].
    #[arg(long)]
    chunks: Option<usize>,
    /// Gap between stream chunks, µs (tokio timers round up to 1 ms).
    #[arg(long, default_value_t = 1000)]
    chunk_gap_us: u64,
    /// Samples for the failover-hop and open-circuit measurements [default 20000; quick 100].
    #[arg(long)]
    hop_samples: Option<usize>,
    /// Requests in the RSS leak check [default 1000000; quick 300].
    #[arg(long)]
    leak_requests: Option<u64>,
    /// Sample RSS every this many requests [default 100000; quick 100].
    #[arg(long)]
    leak_every: Option<u64>,
    /// Connections for the leak check [default 64; quick 4].
    #[arg(long)]
    leak_concurrency: Option<usize>,
    /// Sections to skip: closed, yardstick (the bare forwarder in the closed loop), open,
    /// streams, hops, leak.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Worker threads of the mock upstream's runtime.
    #[arg(long, default_value_t = 2)]
    mock_threads: usize,
    /// Stockyard's log_level.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Stockyard's traces.enabled (false only to measure what tracing costs).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    traces: bool,
    /// Command prefix for the stockyard process, e.g. "valgrind --tool=callgrind" (its CPU and
    /// RSS are then the wrapper's).
    #[arg(long)]
    wrap: Option<String>,
}

/// Args with the defaults resolved.
#[derive(Debug, Clone, serde::Serialize)]
struct Plan {
    quick: bool,
    levels: Vec<usize>,
    stream_levels: Vec<usize>,
    rate_fractions: Vec<f64>,
    rates: Option<Vec<f64>>,
    open_conns: usize,
    duration_s: f64,
    warmup_s: f64,
    rounds: usize,
    reply_bytes: usize,
    chunks: usize,
    chunk_gap_us: u64,
    hop_samples: usize,
    leak_requests: u64,
    leak_every: u64,
    leak_concurrency: usize,
    skip: Vec<String>,
    client_threads: usize,
    mock_threads: usize,
    log_level: String,
    traces: bool,
    wrap: Vec<String>,
    stockyard: PathBuf,
    out_dir: PathBuf,
}

impl Plan {
    fn from(a: Args) -> Plan {
        let q = a.quick;
        let pick = |quick: usize, full: usize| if q { quick } else { full };
        let stockyard = a.stockyard.unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current exe");
            exe.with_file_name(format!("stockyard{}", std::env::consts::EXE_SUFFIX))
        });
        Plan {
            quick: q,
            levels: a
                .levels
                .unwrap_or_else(|| if q { vec![1, 4] } else { vec![1, 16, 64, 256] }),
            stream_levels: a.stream_levels.unwrap_or_else(|| {
                if q {
                    vec![1, 4]
                } else {
                    vec![1, 16, 256]
                }
            }),
            rate_fractions: a.rate_fractions.unwrap_or_else(|| {
                if q {
                    vec![0.5]
                } else {
                    vec![0.25, 0.5, 0.75]
                }
            }),
            rates: a.rates,
            open_conns: a.open_conns.unwrap_or(pick(8, 64)),
            duration_s: a.duration.unwrap_or(if q { 0.25 } else { 2.0 }),
            warmup_s: a.warmup.unwrap_or(if q { 0.1 } else { 0.5 }),
            rounds: a.rounds.unwrap_or(pick(1, 3)).max(1),
            reply_bytes: a.reply_bytes,
            chunks: a.chunks.unwrap_or(pick(5, 20)).max(1),
            chunk_gap_us: a.chunk_gap_us,
            hop_samples: a.hop_samples.unwrap_or(pick(100, 20_000)).max(1),
            leak_requests: a.leak_requests.unwrap_or(if q { 300 } else { 1_000_000 }),
            leak_every: a.leak_every.unwrap_or(if q { 100 } else { 100_000 }).max(1),
            leak_concurrency: a.leak_concurrency.unwrap_or(pick(4, 64)).max(1),
            skip: a.skip,
            client_threads: a.client_threads.max(1),
            mock_threads: a.mock_threads.max(1),
            log_level: a.log_level,
            traces: a.traces,
            wrap: a
                .wrap
                .map(|w| w.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            stockyard,
            out_dir: a.out_dir,
        }
    }

    fn runs(&self, section: &str) -> bool {
        !self.skip.iter().any(|s| s == section)
    }

    fn dur(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }

    fn warm(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s)
    }

    fn gap(&self) -> Duration {
        Duration::from_micros(self.chunk_gap_us)
    }
}

fn chat_body(stream: bool) -> Bytes {
    let mut v = serde_json::json!({
        "model": mock::MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello to the benchmark."}
        ],
        "max_tokens": 256,
        "temperature": 0.2,
    });
    if stream {
        v["stream"] = true.into();
        v["stream_options"] = serde_json::json!({"include_usage": true});
    }
    Bytes::from(serde_json::to_vec(&v).expect("json"))
}

/// Every feature on: traces to SQLite, breakers, failover, metrics (always on), info logs.
fn main_yaml(log_level: &str, traces: bool, mock_url: &str, port: u16, data: &Path) -> String {
    format!(
        r#"listen: 127.0.0.1:{port}
data_dir: "{data}"
log_level: {log_level}
providers:
  - name: mock
    kind: openai-compatible
    base_url: "{mock_url}"
    priority: 1
failover:
  enabled: true
  circuit_breaker: {{failure_threshold: 3, recovery_timeout: 30s}}
traces:
  enabled: {traces}
  store_bodies: false
"#,
        data = data.display()
    )
}

/// A chain `first → mock` where `first` refuses connections, with aliases `base` (mock only) and
/// `chain` (first, then mock).
fn chain_yaml(
    log_level: &str,
    traces: bool,
    mock_url: &str,
    dead_port: u16,
    threshold: u32,
    port: u16,
    data: &Path,
) -> String {
    format!(
        r#"listen: 127.0.0.1:{port}
data_dir: "{data}"
log_level: {log_level}
providers:
  - name: first
    kind: openai-compatible
    base_url: "http://127.0.0.1:{dead_port}/v1"
    priority: 1
  - name: mock
    kind: openai-compatible
    base_url: "{mock_url}"
    priority: 2
model_alias:
  enabled: true
  aliases:
    base: mock/{model}
    chain: [first/{model}, mock/{model}]
failover:
  enabled: true
  circuit_breaker: {{failure_threshold: {threshold}, recovery_timeout: 1h}}
traces:
  enabled: {traces}
"#,
        data = data.display(),
        model = mock::MODEL,
    )
}

fn alias_body(alias: &str) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "model": alias,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
            "max_tokens": 256,
        }))
        .expect("json"),
    )
}

fn log(msg: impl AsRef<str>) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[stockyard-bench {t:6.1}s] {}", msg.as_ref());
}

/// Scrapes `/metrics` and returns the values of the named samples (first match each).
async fn scrape(addr: std::net::SocketAddr, names: &[&str]) -> Vec<Option<f64>> {
    let text = match load::get(addr, "/metrics").await {
        Ok((200, _, body)) => String::from_utf8_lossy(&body).into_owned(),
        _ => return names.iter().map(|_| None).collect(),
    };
    names
        .iter()
        .map(|n| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == *n).then(|| v.trim().parse::<f64>().ok()).flatten()
            })
        })
        .collect()
}

const OVERHEAD_SUM: &str = "stockyard_proxy_overhead_seconds_sum";
const OVERHEAD_COUNT: &str = "stockyard_proxy_overhead_seconds_count";

/// Mean self-reported overhead between two scrapes, µs.
fn overhead_between(a: &[Option<f64>], b: &[Option<f64>]) -> Option<f64> {
    let (s0, c0, s1, c1) = (
        a.first()?.as_ref()?,
        a.get(1)?.as_ref()?,
        b.first()?.as_ref()?,
        b.get(1)?.as_ref()?,
    );
    let n = c1 - c0;
    (n > 0.0).then(|| (s1 - s0) / n * 1e6)
}

fn per_req_us(cpu_s: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        cpu_s * 1e6 / n as f64
    }
}

fn process(p: &Stockyard, reset_ok: bool, st: &Stats, overhead: Option<f64>) -> Process {
    let m = p.mem();
    let secs = st.window.as_secs_f64();
    Process {
        open_fds: p.open_fds(),
        peak_rss_kb: m.hwm_kb,
        peak_reset: reset_ok,
        rss_kb: m.rss_kb,
        cpu_s: st.cpu_s,
        cpu_pct: if secs > 0.0 {
            st.cpu_s / secs * 100.0
        } else {
            0.0
        },
        cpu_us_per_req: if st.ok > 0 {
            st.cpu_s * 1e6 / st.ok as f64
        } else {
            0.0
        },
        self_reported_overhead_us: overhead,
    }
}

struct Bench {
    plan: Plan,
    rt: tokio::runtime::Runtime,
    mock: mock::Mock,
}

impl Bench {
    /// The bare forwarder (bare.rs): this binary, started the way Stockyard is.
    fn spawn_bare(&self) -> Stockyard {
        let url = self.mock.url();
        let me = std::env::current_exe().unwrap_or_else(|e| fail(&format!("current exe: {e}")));
        let mut p = Stockyard::spawn(&me, "bare", &[], |port, data| {
            main_yaml("info", false, &url, port, data)
        })
        .unwrap_or_else(|e| fail(&e));
        self.rt
            .block_on(p.wait_ready(Duration::from_secs(15)))
            .unwrap_or_else(|e| fail(&e));
        p
    }

    fn spawn_main(&self, name: &str) -> Stockyard {
        let url = self.mock.url();
        let ll = self.plan.log_level.clone();
        let traces = self.plan.traces;
        let mut p = Stockyard::spawn(&self.plan.stockyard, name, &self.plan.wrap, |port, data| {
            main_yaml(&ll, traces, &url, port, data)
        })
        .unwrap_or_else(|e| fail(&e));
        let wait = if self.plan.wrap.is_empty() { 15 } else { 120 };
        self.rt
            .block_on(p.wait_ready(Duration::from_secs(wait)))
            .unwrap_or_else(|e| fail(&e));
        p
    }

    /// Closed-loop runs at one level, alternating direct, Stockyard and (when given) the bare
    /// forwarder `rounds` times, rotating which goes first.
    fn closed_runs(
        &self,
        direct: &Arc<Target>,
        proxy: &Arc<Target>,
        p: &Stockyard,
        bare: Option<(&Arc<Target>, &Stockyard)>,
        conc: usize,
    ) -> (Stats, Stats, Option<Stats>) {
        let (mut d, mut s) = (Stats::default(), Stats::default());
        let mut b = bare.map(|_| Stats::default());
        for round in 0..self.plan.rounds {
            let run = |t: &Arc<Target>, pid: Option<u32>| {
                self.rt.block_on(load::closed(
                    t.clone(),
                    conc,
                    self.plan.warm(),
                    self.plan.dur(),
                    self.plan.gap() / 2,
                    pid,
                ))
            };
            // For direct runs, the CPU of this process (load generator + mock) as a yardstick.
            let me = Some(std::process::id());
            let sides = if b.is_some() { 3 } else { 2 };
            for k in 0..sides {
                match (round + k) % sides {
                    0 => d.merge(&run(direct, me)),
                    1 => s.merge(&run(proxy, Some(p.pid))),
                    _ => {
                        if let (Some((t, bp)), Some(b)) = (bare, b.as_mut()) {
                            b.merge(&run(t, Some(bp.pid)));
                        }
                    }
                }
            }
        }
        (d, s, b)
    }

    /// Open-loop runs at one rate, alternating direct and a proxy (`pid`) `rounds` times.
    fn open_runs(
        &self,
        direct: &Arc<Target>,
        proxy: &Arc<Target>,
        pid: u32,
        rate: f64,
    ) -> (Stats, Stats) {
        let (mut d, mut s) = (Stats::default(), Stats::default());
        for round in 0..self.plan.rounds {
            let run = |t: &Arc<Target>, pid| {
                self.rt.block_on(load::open(
                    t.clone(),
                    rate,
                    self.plan.open_conns,
                    self.plan.warm(),
                    self.plan.dur(),
                    pid,
                ))
            };
            if round % 2 == 0 {
                d.merge(&run(direct, None));
                s.merge(&run(proxy, Some(pid)));
            } else {
                s.merge(&run(proxy, Some(pid)));
                d.merge(&run(direct, None));
            }
        }
        (d, s)
    }
}

fn fail(msg: &str) -> ! {
    log(format!("error: {msg}"));
    std::process::exit(2);
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("serve") {
        bare::main(&argv[2..]);
    }
    let started = Instant::now();
    let plan = Plan::from(Args::parse());
    log("starting");
    if !plan.stockyard.is_file() {
        fail(&format!(
            "no stockyard binary at {}; build it first with `cargo build --release --bins`, or pass --stockyard PATH",
            plan.stockyard.display()
        ));
    }
    if let (Ok(me), Ok(sy)) = (
        std::env::current_exe().and_then(std::fs::metadata),
        std::fs::metadata(&plan.stockyard),
    ) {
        if let (Ok(a), Ok(b)) = (me.modified(), sy.modified()) {
            if a > b + Duration::from_secs(60) && plan.wrap.is_empty() {
                log(format!(
                    "warning: {} is older than this benchmark binary; rebuild with `cargo build --release --bins`",
                    plan.stockyard.display()
                ));
            }
        }
    }
    let machine = machine();
    let mock = mock::Mock::start(&mock::MockOpts {
        reply_bytes: plan.reply_bytes,
        chunks: plan.chunks,
        chunk_gap: plan.gap(),
        threads: plan.mock_threads,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.client_threads)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .expect("client runtime");
    let bench = Bench { plan, rt, mock };
    let plan = &bench.plan;
    log(format!(
        "mock upstream on {}; stockyard binary {}",
        bench.mock.addr,
        plan.stockyard.display()
    ));

    let main_p = bench.spawn_main("main");
    log(format!(
        "stockyard (main) pid {} on {}",
        main_p.pid, main_p.addr
    ));
    let path = "/v1/chat/completions";
    let direct = Target::new(bench.mock.addr, path, chat_body(false), false);
    let proxy = Target::new(main_p.addr, path, chat_body(false), false);
    let direct_s = Target::new(bench.mock.addr, path, chat_body(true), true);
    let proxy_s = Target::new(main_p.addr, path, chat_body(true), true);

    // Sanity: both paths answer, and Stockyard answers from the mock.
    for t in [&direct, &proxy, &direct_s, &proxy_s] {
        match bench.rt.block_on(load::once(t)) {
            Ok((200, h, _)) => {
                if t.addr == main_p.addr
                    && h.get("x-stockyard-provider").is_none_or(|v| v != "mock")
                {
                    fail("Stockyard did not answer from the mock provider");
                }
            }
            Ok((s, _, b)) => fail(&format!(
                "sanity request to {} got HTTP {s}: {}",
                t.addr,
                String::from_utf8_lossy(&b)
            )),
            Err(e) => fail(&format!("sanity request to {}: {e}", t.addr)),
        }
    }

    let mut closed_levels = Vec::new();
    let mut saturation = None;
    // The yardstick (bare.rs): this binary as `serve -c`, on the same generated config.
    let mut bare = if plan.runs("closed") && plan.runs("yardstick") {
        let p = bench.spawn_bare();
        let t = Target::new(p.addr, path, chat_body(false), false);
        log(format!("bare forwarder pid {} on {}", p.pid, p.addr));
        Some((t, p))
    } else {
        None
    };
    if plan.runs("closed") {
        for &c in &plan.levels {
            let reset = main_p.reset_peak();
            let m0 = bench
                .rt
                .block_on(scrape(main_p.addr, &[OVERHEAD_SUM, OVERHEAD_COUNT]));
            let (d, s, b) = bench.closed_runs(
                &direct,
                &proxy,
                &main_p,
                bare.as_ref().map(|(t, p)| (t, p)),
                c,
            );
            let m1 = bench
                .rt
                .block_on(scrape(main_p.addr, &[OVERHEAD_SUM, OVERHEAD_COUNT]));
            let (ds, ss) = (Side::of(&d), Side::of(&s));
            let lvl = ClosedLevel {
                concurrency: c,
                direct_bench_cpu_us_per_req: per_req_us(d.cpu_s, d.ok),
                added_us: Added::of(&ds.latency_us, &ss.latency_us),
                process: process(&main_p, reset, &s, overhead_between(&m0, &m1)),
                direct: ds,
                stockyard: ss,
                bare_cpu_us_per_req: b.as_ref().map(|b| per_req_us(b.cpu_s, b.ok)),
                bare: b.as_ref().map(Side::of),
            };
            log(format!(
                "closed c={c}: direct {:.0} req/s p50 {:.1} µs, stockyard {:.0} req/s p50 {:.1} µs p99 {:.1} µs, errors {}/{}{}",
                lvl.direct.rps, lvl.direct.latency_us.p50, lvl.stockyard.rps,
                lvl.stockyard.latency_us.p50, lvl.stockyard.latency_us.p99,
                lvl.direct.errors, lvl.stockyard.errors,
                lvl.bare.as_ref().map(|b| format!("; bare forwarder {:.0} req/s p50 {:.1} µs", b.rps, b.latency_us.p50)).unwrap_or_default()
            ));
            closed_levels.push(lvl);
        }
        let best = |f: &dyn Fn(&ClosedLevel) -> f64| {
            closed_levels
                .iter()
                .max_by(|a, b| f(a).total_cmp(&f(b)))
                .map(|l| (f(l), l.concurrency))
                .unwrap_or((0.0, 0))
        };
        let (dr, dc) = best(&|l| l.direct.rps);
        let (sr, sc) = best(&|l| l.stockyard.rps);
        let bare_rps = bare
            .as_ref()
            .map(|_| best(&|l| l.bare.as_ref().map_or(0.0, |b| b.rps)).0);
        saturation = Some(Saturation {
            direct_rps: dr,
            direct_concurrency: dc,
            stockyard_rps: sr,
            stockyard_concurrency: sc,
            ratio: if dr > 0.0 { sr / dr } else { 0.0 },
            stockyard_errors: closed_levels.iter().map(|l| l.stockyard.errors).sum(),
            bare_rps,
            bare_ratio: bare_rps.filter(|_| dr > 0.0).map(|b| b / dr),
        });
    }

    let (mut open_levels, mut open_bare) = (Vec::new(), Vec::new());
    if plan.runs("open") {
        let rates: Vec<(Option<f64>, f64)> = match (&plan.rates, &saturation) {
            (Some(r), _) => r.iter().map(|&r| (None, r)).collect(),
            (None, Some(sat)) if sat.stockyard_rps > 0.0 => plan
                .rate_fractions
                .iter()
                .map(|&f| (Some(f), f * sat.stockyard_rps))
                .collect(),
            _ => {
                log("open loop skipped: no saturation measured (give --rates)");
                Vec::new()
            }
        };
        for (fraction, rate) in rates {
            let reset = main_p.reset_peak();
            let m0 = bench
                .rt
                .block_on(scrape(main_p.addr, &[OVERHEAD_SUM, OVERHEAD_COUNT]));
            let (d, s) = bench.open_runs(&direct, &proxy, main_p.pid, rate);
            let m1 = bench
                .rt
                .block_on(scrape(main_p.addr, &[OVERHEAD_SUM, OVERHEAD_COUNT]));
            let (ds, ss) = (Side::of(&d), Side::of(&s));
            let lvl = OpenLevel {
                fraction,
                rate,
                added_us: Added::of(&ds.latency_us, &ss.latency_us),
                process: process(&main_p, reset, &s, overhead_between(&m0, &m1)),
                direct: ds,
                stockyard: ss,
            };
            log(format!(
                "open {rate:.0} req/s: added p50 {:.1} µs p99 {:.1} µs (stockyard p50 {:.1} p99 {:.1}), errors {}/{}",
                lvl.added_us.p50, lvl.added_us.p99, lvl.stockyard.latency_us.p50,
                lvl.stockyard.latency_us.p99, lvl.direct.errors, lvl.stockyard.errors
            ));
            open_levels.push(lvl);
        }
        // The yardstick at the same fractions of its own saturation: what the extra hop alone
        // adds when a proxy is as loaded as Stockyard is above.
        let bare_sat = saturation.as_ref().and_then(|s| s.bare_rps);
        if let (Some((t, p)), Some(br), None) = (&bare, bare_sat, &plan.rates) {
            for &f in plan.rate_fractions.iter().filter(|_| br > 0.0) {
                let rate = f * br;
                let (d, b) = bench.open_runs(&direct, t, p.pid, rate);
                let (ds, bs) = (Side::of(&d), Side::of(&b));
                let lvl = BareOpenLevel {
                    fraction: f,
                    rate,
                    added_us: Added::of(&ds.latency_us, &bs.latency_us),
                    bare_cpu_us_per_req: per_req_us(b.cpu_s, b.ok),
                    direct: ds,
                    bare: bs,
                };
                log(format!(
                    "open {rate:.0} req/s (bare forwarder, {:.0}% of its saturation): added p50 {:.1} µs p99 {:.1} µs, errors {}/{}",
                    f * 100.0, lvl.added_us.p50, lvl.added_us.p99, lvl.direct.errors, lvl.bare.errors
                ));
                open_bare.push(lvl);
            }
        }
    }
    if let Some((_, p)) = bare.take() {
        p.stop();
    }

    let mut stream_levels = Vec::new();
    if plan.runs("streams") {
        for &c in &plan.stream_levels {
            let reset = main_p.reset_peak();
            let (d, s, _) = bench.closed_runs(&direct_s, &proxy_s, &main_p, None, c);
            let (ds, ss) = (StreamSide::of(&d), StreamSide::of(&s));
            let lvl = StreamLevel {
                concurrency: c,
                direct_bench_cpu_us_per_stream: per_req_us(d.cpu_s, d.ok),
                chunks: plan.chunks,
                chunk_gap_us: plan.chunk_gap_us,
                added_ttft_us: Added::of(&ds.ttft_us, &ss.ttft_us),
                added_total_us: Added::of(&ds.total_us, &ss.total_us),
                process: process(&main_p, reset, &s, None),
                direct: ds,
                stockyard: ss,
            };
            log(format!(
                "streams c={c}: added TTFT p50 {:.1} µs, added total p50 {:.1} µs, frames/stream {:.1}/{:.1}, shared-chunk {}/{}, close {}/{}, peak RSS {:.1} MB, errors {}/{}",
                lvl.added_ttft_us.p50, lvl.added_total_us.p50, lvl.direct.frames_per_stream,
                lvl.stockyard.frames_per_stream, lvl.direct.shared_frame_events, lvl.stockyard.shared_frame_events,
                lvl.direct.close_events, lvl.stockyard.close_events,
                lvl.process.peak_rss_kb as f64 / 1024.0, lvl.direct.errors, lvl.stockyard.errors
            ));
            stream_levels.push(lvl);
        }
    }
    let stockyard_log_warnings = main_p.log_warnings(30);
    drop(main_p);

    let (mut failover, mut open_circuit) = (None, None);
    if plan.runs("hops") {
        failover = Some(hop(&bench, false));
        open_circuit = Some(hop(&bench, true));
    }

    let leak = plan.runs("leak").then(|| leak(&bench));

    let mut r = Results {
        schema: "stockyard-bench/1",
        generated_at: now_utc(),
        quick: plan.quick,
        machine,
        settings: serde_json::to_value(plan).unwrap_or_default(),
        closed_loop: closed_levels,
        saturation,
        open_loop: open_levels,
        open_loop_bare: open_bare,
        streams: stream_levels,
        failover,
        open_circuit,
        leak,
        targets: Vec::new(),
        total_errors: 0,
        elapsed_s: 0.0,
        stockyard_log_warnings,
    };
    r.machine.load_avg_at_end = load_avg();
    r.total_errors = total_errors(&r);
    r.targets = targets(&r);
    r.elapsed_s = started.elapsed().as_secs_f64();
    write_out(&plan.out_dir, &r);
    for t in &r.targets {
        log(format!(
            "target {}: {} (goal {}) {}",
            t.name,
            t.measured,
            t.target,
            match t.met {
                Some(true) => "MET",
                Some(false) => "MISSED",
                None if t.measured != "-" => "(no target)",
                None => "not run",
            }
        ));
    }
    log(format!(
        "done in {:.0} s; wrote {}/results.md, results.json, latency.svg",
        r.elapsed_s,
        plan.out_dir.display()
    ));
}

/// The failover hop (`first` refuses connections, its breaker never opens) or the open-circuit
/// skip (`first`'s breaker opened by one failure, recovery 1 h), against `base` in the same process.
fn hop(bench: &Bench, open_circuit: bool) -> Hop {
    let plan = &bench.plan;
    let dead = child::free_port();
    let threshold = if open_circuit { 1 } else { u32::MAX };
    let name = if open_circuit { "circuit" } else { "failover" };
    let url = bench.mock.url();
    let ll = plan.log_level.clone();
    let traces = plan.traces;
    let mut p = Stockyard::spawn(&plan.stockyard, name, &plan.wrap, |port, data| {
        chain_yaml(&ll, traces, &url, dead, threshold, port, data)
    })
    .unwrap_or_else(|e| fail(&e));
    let wait = if plan.wrap.is_empty() { 15 } else { 120 };
    bench
        .rt
        .block_on(p.wait_ready(Duration::from_secs(wait)))
        .unwrap_or_else(|e| fail(&e));
    let path = "/v1/chat/completions";
    let base = Target::new(p.addr, path, alias_body("base"), false);
    let chain = Target::new(p.addr, path, alias_body("chain"), false);
    // The first chain request fails over (and, for the circuit case, opens the breaker).
    let first = bench.rt.block_on(load::once(&chain));
    let hdr = |h: &hyper::HeaderMap, n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut check = match &first {
        Ok((status, h, _)) => serde_json::json!({
            "first_request": {
                "status": status,
                "provider": hdr(h, "x-stockyard-provider"),
                "attempts": hdr(h, "x-stockyard-attempts"),
                "failover": hdr(h, "x-stockyard-failover"),
            }
        }),
        Err(e) => serde_json::json!({"first_request": {"error": e}}),
    };
    let (b, s) = {
        let v = bench.rt.block_on(load::interleaved(
            &[base, chain.clone()],
            plan.hop_samples,
            (plan.hop_samples / 10).clamp(10, 500),
        ));
        let mut it = v.into_iter();
        (it.next().unwrap_or_default(), it.next().unwrap_or_default())
    };
    if let Ok((_, h, _)) = bench.rt.block_on(load::once(&chain)) {
        check["last_request"] = serde_json::json!({
            "provider": hdr(&h, "x-stockyard-provider"),
            "attempts": hdr(&h, "x-stockyard-attempts"),
            "failover": hdr(&h, "x-stockyard-failover"),
        });
    }
    if let Ok((200, _, body)) = bench.rt.block_on(load::get(p.addr, "/api/proxy/breakers")) {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        check["breaker_state"] = v["breakers"]["first"]["state"].clone();
    }
    let (bp, sp) = (Pct::of(&b.latency), Pct::of(&s.latency));
    let h = Hop {
        description: if open_circuit {
            "first provider's circuit open (skipped), then mock; vs mock alone".into()
        } else {
            "first provider refuses the connection, fail over to mock; vs mock alone".into()
        },
        samples: s.ok,
        errors: b.errors + s.errors,
        added_us: Added::of(&bp, &sp),
        baseline_us: bp,
        scenario_us: sp,
        check,
    };
    log(format!(
        "{name}: baseline p50 {:.1} µs, scenario p50 {:.1} µs, added p50 {:.1} µs p90 {:.1} µs",
        h.baseline_us.p50, h.scenario_us.p50, h.added_us.p50, h.added_us.p90
    ));
    p.stop();
    h
}

/// N requests through a fresh Stockyard, RSS sampled every `leak_every`.
fn leak(bench: &Bench) -> Leak {
    let plan = &bench.plan;
    let p = bench.spawn_main("leak");
    let t = Target::new(p.addr, "/v1/chat/completions", chat_body(false), false);
    let mut samples = vec![];
    let mut next = 0u64;
    let every = plan.leak_every;
    let total = plan.leak_requests;
    let pid = p.pid;
    let st = bench
        .rt
        .block_on(load::count_run(t, plan.leak_concurrency, total, |done| {
            while next <= done && next <= total {
                let m = child::read_mem(pid);
                samples.push(LeakSample {
                    requests: next,
                    rss_kb: m.rss_kb,
                    rss_anon_kb: m.rss_anon_kb,
                    rss_file_kb: m.rss_file_kb,
                });
                if next % (every * 5) == 0 || next == total {
                    log(format!(
                        "leak check: {next} requests, RSS {:.1} MB",
                        m.rss_kb as f64 / 1024.0
                    ));
                }
                next += every;
            }
        }));
    // The trace writer commits in groups: wait (up to 5 s) until it has accounted for every
    // request, so the counts are final rather than a snapshot of its last few milliseconds.
    let tr = bench.rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let tr = scrape(
                p.addr,
                &[
                    "stockyard_traces_written_total",
                    "stockyard_traces_dropped_total",
                ],
            )
            .await;
            let seen: f64 = tr.iter().flatten().sum();
            if seen >= total as f64 || Instant::now() >= deadline {
                break tr;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let base = samples
        .iter()
        .find(|s| s.requests >= every)
        .or(samples.first())
        .map(|s| s.rss_kb)
        .unwrap_or(0);
    let last = samples.last().map(|s| s.rss_kb).unwrap_or(0);
    let pct = |v: u64| {
        if base == 0 {
            0.0
        } else {
            (v as f64 - base as f64) / base as f64 * 100.0
        }
    };
    let max_dev = samples
        .iter()
        .filter(|s| s.requests >= every)
        .map(|s| pct(s.rss_kb).abs())
        .fold(0.0, f64::max);
    p.stop();
    Leak {
        requests: total,
        concurrency: plan.leak_concurrency,
        sample_every: every,
        errors: st.errors,
        rps: st.rps(),
        baseline_rss_kb: base,
        final_rss_kb: last,
        growth_pct: pct(last),
        max_deviation_pct: max_dev,
        samples,
        traces_written: tr.first().copied().flatten(),
        traces_dropped: tr.get(1).copied().flatten(),
    }
}

fn total_errors(r: &Results) -> u64 {
    let mut n = 0;
    for l in &r.closed_loop {
        n += l.direct.errors + l.stockyard.errors;
    }
    for l in &r.open_loop {
        n += l.direct.errors + l.stockyard.errors;
    }
    for l in &r.streams {
        n += l.direct.errors + l.stockyard.errors;
    }
    for h in [&r.failover, &r.open_circuit].into_iter().flatten() {
        n += h.errors;
    }
    if let Some(l) = &r.leak {
        n += l.errors;
    }
    n
}

/// The item whose fraction of saturation is nearest 50%.
fn nearest_half<'a, T>(levels: impl Iterator<Item = (f64, &'a T)>) -> Option<&'a T> {
    levels
        .min_by(|(a, _), (b, _)| (a - 0.5).abs().total_cmp(&(b - 0.5).abs()))
        .map(|(_, l)| l)
}

fn targets(r: &Results) -> Vec<Goal> {
    let mut out = Vec::new();
    let mut push = |name: &str, target: &str, measured: String, met: Option<bool>| {
        out.push(Goal {
            name: name.into(),
            target: target.into(),
            measured,
            met,
        })
    };
    // The open-loop level nearest 50% of saturation, and the yardstick's nearest 50% of its
    // own saturation, quoted beside Stockyard's.
    let half = nearest_half(r.open_loop.iter().filter_map(|l| Some((l.fraction?, l))));
    let bare_half = nearest_half(r.open_loop_bare.iter().map(|l| (l.fraction, l)));
    let yardstick = |pick: fn(&Added) -> f64| {
        bare_half
            .map(|b| {
                format!(
                    "; bare forwarder at {:.0}% of its saturation ({:.0} req/s): {:.1} µs",
                    b.fraction * 100.0,
                    b.rate,
                    pick(&b.added_us)
                )
            })
            .unwrap_or_default()
    };
    match half {
        Some(l) => {
            let at = format!(
                " at {:.0} req/s ({:.0}% of saturation)",
                l.rate,
                l.fraction.unwrap_or(0.0) * 100.0
            );
            push(
                "added median latency, non-streaming, 50% of saturation",
                "≤ 100 µs",
                format!("{:.1} µs{at}{}", l.added_us.p50, yardstick(|a| a.p50)),
                Some(l.added_us.p50 <= 100.0),
            );
            push(
                "added p99 latency, non-streaming, 50% of saturation",
                "≤ 1 ms",
                format!("{:.1} µs{at}{}", l.added_us.p99, yardstick(|a| a.p99)),
                Some(l.added_us.p99 <= 1000.0),
            );
        }
        None => {
            push(
                "added median latency, non-streaming, 50% of saturation",
                "≤ 100 µs",
                "-".into(),
                None,
            );
            push(
                "added p99 latency, non-streaming, 50% of saturation",
                "≤ 1 ms",
                "-".into(),
                None,
            );
        }
    }
    match &r.saturation {
        Some(s) => push(
            "saturation through Stockyard vs direct, zero errors",
            "≥ 50%, 0 errors",
            format!(
                "{:.0}% ({:.0} vs {:.0} req/s), {} errors",
                s.ratio * 100.0,
                s.stockyard_rps,
                s.direct_rps,
                s.stockyard_errors
            ),
            Some(s.ratio >= 0.5 && s.stockyard_errors == 0),
        ),
        None => push(
            "saturation through Stockyard vs direct, zero errors",
            "≥ 50%, 0 errors",
            "-".into(),
            None,
        ),
    }
    match r.streams.iter().min_by_key(|l| l.concurrency) {
        Some(l) => {
            push(
                "added time-to-first-token, median",
                "≤ 200 µs",
                format!(
                    "{:.1} µs at {} stream(s)",
                    l.added_ttft_us.p50, l.concurrency
                ),
                Some(l.added_ttft_us.p50 <= 200.0),
            );
            let shared: u64 = r
                .streams
                .iter()
                .map(|l| l.stockyard.shared_frame_events)
                .sum();
            let close: Vec<String> = r
                .streams
                .iter()
                .map(|l| {
                    format!(
                        "{}/{} at {}",
                        l.direct.close_events, l.stockyard.close_events, l.concurrency
                    )
                })
                .collect();
            push(
                "stream chunks never batched",
                "no two content events ever arrive in one read of the client socket",
                format!(
                    "{shared} events shared a chunk; for scheduling jitter, events < gap/2 apart (direct/Stockyard): {}",
                    close.join(", ")
                ),
                // Batching is two events leaving in one write (they then arrive in one read).
                // Events arriving closer than gap/2 but in separate reads are jitter: one event
                // was late (a busy core), not held back to be sent with the next; it is shown
                // for both paths but does not decide the target.
                Some(shared == 0),
            );
        }
        None => {
            push(
                "added time-to-first-token, median",
                "≤ 200 µs",
                "-".into(),
                None,
            );
            push(
                "stream chunks never batched",
                "no content events sharing a chunk",
                "-".into(),
                None,
            );
        }
    }
    match r.streams.iter().max_by_key(|l| l.concurrency) {
        Some(l) => push(
            "peak RSS at the highest stream concurrency",
            "≤ 50 MB at 256 streams",
            format!(
                "{:.1} MB at {} streams",
                l.process.peak_rss_kb as f64 / 1024.0,
                l.concurrency
            ),
            Some(l.process.peak_rss_kb as f64 / 1024.0 <= 50.0),
        ),
        None => push(
            "peak RSS at the highest stream concurrency",
            "≤ 50 MB at 256 streams",
            "-".into(),
            None,
        ),
    }
    match &r.leak {
        Some(l) => push(
            "RSS flat across the leak check",
            "±10% across 1,000,000 requests",
            format!(
                "{:+.1}% ({:.1} → {:.1} MB) across {} requests, largest deviation {:.1}%",
                l.growth_pct,
                l.baseline_rss_kb as f64 / 1024.0,
                l.final_rss_kb as f64 / 1024.0,
                l.requests,
                l.max_deviation_pct
            ),
            Some(l.max_deviation_pct <= 10.0),
        ),
        None => push(
            "RSS flat across the leak check",
            "±10% across 1,000,000 requests",
            "-".into(),
            None,
        ),
    }
    match &r.open_circuit {
        Some(h) => push(
            "cost of skipping an open circuit (median)",
            "≤ 20 µs",
            format!("{:.1} µs (p90 {:.1} µs)", h.added_us.p50, h.added_us.p90),
            Some(h.added_us.p50 <= 20.0),
        ),
        None => push(
            "cost of skipping an open circuit (median)",
            "≤ 20 µs",
            "-".into(),
            None,
        ),
    }
    if let Some(h) = &r.failover {
        push(
            "cost of a failover hop (median; no target)",
            "report",
            format!("{:.1} µs (p90 {:.1} µs)", h.added_us.p50, h.added_us.p90),
            None,
        );
    }
    out
}

fn write_out(dir: &Path, r: &Results) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| fail(&format!("{}: {e}", dir.display())));
    let json = serde_json::to_string_pretty(r).expect("json");
    let files = [
        ("results.json", json + "\n"),
        ("results.md", report::markdown(r)),
        ("latency.svg", report::svg(r)),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    }
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_mb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024;
    Machine {
        cpu_model,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        mem_total_mb,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        load_avg_at_start: load_avg(),
        load_avg_at_end: String::new(),
    }
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (the CLI's civil-time formatting).
fn now_utc() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    format!("{}Z", stockyard::cli::format_time(ms).replacen(' ', "T", 1))
}
