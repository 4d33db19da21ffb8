//! The results: JSON shape, Markdown tables and the SVG latency-vs-load plot.

use crate::load::Stats;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Pct {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Pct {
    pub fn of(h: &Histogram<u64>) -> Pct {
        if h.is_empty() {
            return Pct::default();
        }
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Pct {
            p50: us(0.5),
            p90: us(0.9),
            p99: us(0.99),
            p999: us(0.999),
            max: h.max() as f64 / 1000.0,
            mean: h.mean() / 1000.0,
        }
    }
}

/// Stockyard minus direct at each percentile, in microseconds (noise can make it negative).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Added {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Added {
    pub fn of(direct: &Pct, proxy: &Pct) -> Added {
        Added {
            p50: proxy.p50 - direct.p50,
            p90: proxy.p90 - direct.p90,
            p99: proxy.p99 - direct.p99,
            p999: proxy.p999 - direct.p999,
        }
    }
}

/// One side (direct or through Stockyard) of a non-streaming run.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub latency_us: Pct,
    pub first_error: Option<String>,
    pub error_kinds: std::collections::BTreeMap<String, u64>,
}

impl Side {
    pub fn of(s: &Stats) -> Side {
        Side {
            requests: s.ok,
            errors: s.errors,
            rps: s.rps(),
            latency_us: Pct::of(&s.latency),
            first_error: s.first_error.clone(),
            error_kinds: s.kinds.clone(),
        }
    }
}

/// The Stockyard process during the through-Stockyard runs of one level.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Process {
    /// VmHWM after the level (reset before it when the kernel allows).
    pub peak_rss_kb: u64,
    pub peak_reset: bool,
    /// VmRSS at the end of the level.
    pub rss_kb: u64,
    /// utime + stime during the measurement windows.
    pub cpu_s: f64,
    /// CPU as a percentage of one core over the measurement windows.
    pub cpu_pct: f64,
    pub cpu_us_per_req: f64,
    /// Open file descriptors at the end of the level.
    pub open_fds: u64,
    /// Mean of Stockyard's own `stockyard_proxy_overhead_seconds` over the level, when scraped.
    pub self_reported_overhead_us: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClosedLevel {
    pub concurrency: usize,
    /// CPU of the bench process (load generator + mock) per request in the direct runs: what
    /// both ends of one HTTP exchange cost on this machine, a yardstick for Stockyard's CPU.
    pub direct_bench_cpu_us_per_req: f64,
    pub direct: Side,
    pub stockyard: Side,
    pub added_us: Added,
    pub process: Process,
    /// The yardstick: a bare hyper forwarder (`bare.rs`) on the same path, its CPU per request.
    pub bare: Option<Side>,
    pub bare_cpu_us_per_req: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenLevel {
    /// Fraction of Stockyard's saturation rate (None when the rate was given).
    pub fraction: Option<f64>,
    pub rate: f64,
    pub direct: Side,
    pub stockyard: Side,
    pub added_us: Added,
    pub process: Process,
}

/// The yardstick in the open loop: the bare forwarder at a fraction of its own saturation rate.
#[derive(Debug, Clone, Serialize)]
pub struct BareOpenLevel {
    pub fraction: f64,
    pub rate: f64,
    pub direct: Side,
    pub bare: Side,
    pub added_us: Added,
    pub bare_cpu_us_per_req: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamSide {
    pub streams: u64,
    pub errors: u64,
    pub streams_per_s: f64,
    pub ttft_us: Pct,
    pub total_us: Pct,
    pub frames_per_stream: f64,
    pub content_events_per_stream: f64,
    /// Content events that arrived in the same HTTP chunk as the previous one (coalesced).
    pub shared_frame_events: u64,
    /// Content events that arrived in their own chunk but less than half the mock's gap after the
    /// previous one (delayed in transit or by a busy reader; the direct path shows the noise floor).
    pub close_events: u64,
    pub first_error: Option<String>,
    pub error_kinds: std::collections::BTreeMap<String, u64>,
}

impl StreamSide {
    pub fn of(s: &Stats) -> StreamSide {
        let per = |x: u64| {
            if s.ok == 0 {
                0.0
            } else {
                x as f64 / s.ok as f64
            }
        };
        StreamSide {
            streams: s.ok,
            errors: s.errors,
            streams_per_s: s.rps(),
            ttft_us: Pct::of(&s.ttft),
            total_us: Pct::of(&s.latency),
            frames_per_stream: per(s.frames),
            content_events_per_stream: per(s.events),
            shared_frame_events: s.shared,
            close_events: s.close,
            first_error: s.first_error.clone(),
            error_kinds: s.kinds.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamLevel {
    pub concurrency: usize,
    /// CPU of the bench process (load generator + mock) per stream in the direct runs.
    pub direct_bench_cpu_us_per_stream: f64,
    pub chunks: usize,
    pub chunk_gap_us: u64,
    pub direct: StreamSide,
    pub stockyard: StreamSide,
    pub added_ttft_us: Added,
    pub added_total_us: Added,
    pub process: Process,
}

#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    pub direct_rps: f64,
    pub direct_concurrency: usize,
    pub stockyard_rps: f64,
    pub stockyard_concurrency: usize,
    pub ratio: f64,
    pub stockyard_errors: u64,
    /// The bare forwarder's best closed-loop rate, and it as a fraction of direct.
    pub bare_rps: Option<f64>,
    pub bare_ratio: Option<f64>,
}

/// A chain scenario against its baseline, in the same Stockyard process, interleaved.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub description: String,
    pub samples: u64,
    pub errors: u64,
    pub baseline_us: Pct,
    pub scenario_us: Pct,
    pub added_us: Added,
    /// Headers / breaker state observed when checking the scenario does what it says.
    pub check: serde_json::Value,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct LeakSample {
    pub requests: u64,
    pub rss_kb: u64,
    pub rss_anon_kb: u64,
    pub rss_file_kb: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Leak {
    pub requests: u64,
    pub concurrency: usize,
    pub sample_every: u64,
    pub errors: u64,
    pub rps: f64,
    pub samples: Vec<LeakSample>,
    /// RSS at the first sample after warm-up (the first `sample_every` requests).
    pub baseline_rss_kb: u64,
    pub final_rss_kb: u64,
    /// (final − baseline) / baseline.
    pub growth_pct: f64,
    /// Largest |sample − baseline| / baseline over the samples from the baseline on.
    pub max_deviation_pct: f64,
    pub traces_written: Option<f64>,
    pub traces_dropped: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub name: String,
    pub target: String,
    pub measured: String,
    /// None when the section did not run.
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_total_mb: u64,
    pub kernel: String,
    pub load_avg_at_start: String,
    pub load_avg_at_end: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub schema: &'static str,
    pub generated_at: String,
    pub quick: bool,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub closed_loop: Vec<ClosedLevel>,
    pub saturation: Option<Saturation>,
    pub open_loop: Vec<OpenLevel>,
    /// The bare forwarder in the open loop (with the yardstick, and rates from saturation).
    pub open_loop_bare: Vec<BareOpenLevel>,
    pub streams: Vec<StreamLevel>,
    pub failover: Option<Hop>,
    pub open_circuit: Option<Hop>,
    pub leak: Option<Leak>,
    pub targets: Vec<Goal>,
    pub total_errors: u64,
    pub elapsed_s: f64,
    /// Log lines of the main Stockyard process above INFO (last 30), for diagnosing errors.
    pub stockyard_log_warnings: Vec<String>,
}

fn f1(x: f64) -> String {
    format!("{x:.1}")
}

fn f0(x: f64) -> String {
    format!("{x:.0}")
}

fn mb(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

fn pcts(p: &Pct) -> String {
    format!(
        "{} / {} / {} / {}",
        f1(p.p50),
        f1(p.p90),
        f1(p.p99),
        f1(p.p999)
    )
}

fn added(a: &Added) -> String {
    format!(
        "{} / {} / {} / {}",
        f1(a.p50),
        f1(a.p90),
        f1(a.p99),
        f1(a.p999)
    )
}

fn cpu(p: &Process) -> String {
    format!("{}% ({} µs/req)", f0(p.cpu_pct), f1(p.cpu_us_per_req))
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# Stockyard overhead benchmark\n");
    let _ = writeln!(
        s,
        "Generated {} by `cargo run --release --bin stockyard-bench{}` in {:.0} s.\n",
        r.generated_at,
        if r.quick { " -- --quick" } else { "" },
        r.elapsed_s
    );
    let _ = writeln!(
        s,
        "Machine: {} × {}, {} MiB RAM, Linux {}; load average at start {}, at end {}. Mock upstream, load generator \
         and Stockyard all share these cores. Latencies in µs, as p50 / p90 / p99 / p99.9. Stockyard runs \
         with every feature on: traces to SQLite, circuit breakers, metrics, info-level logs.\n",
        m.cpus, m.cpu_model, m.mem_total_mb, m.kernel, m.load_avg_at_start, m.load_avg_at_end
    );

    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(s, "| target | goal | measured | met |\n|---|---|---|---|");
    for t in &r.targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None if t.measured != "-" => "n/a",
            None => "not run",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            t.name, t.target, t.measured, met
        );
    }

    if !r.closed_loop.is_empty() {
        let _ = writeln!(
            s,
            "\n## Closed loop, non-streaming (~1 KB JSON reply)\n\n\
             | conc. | direct req/s | Stockyard req/s | direct latency | Stockyard latency | added | errors (d/S) | Stockyard peak RSS MB | Stockyard CPU | direct: client + mock CPU µs/req | self-reported overhead µs |\n\
             |---:|---:|---:|---|---|---|---|---:|---|---:|---:|"
        );
        for l in &r.closed_loop {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {}/{} | {} | {} | {} | {} |",
                l.concurrency,
                f0(l.direct.rps),
                f0(l.stockyard.rps),
                pcts(&l.direct.latency_us),
                pcts(&l.stockyard.latency_us),
                added(&l.added_us),
                l.direct.errors,
                l.stockyard.errors,
                mb(l.process.peak_rss_kb),
                cpu(&l.process),
                f1(l.direct_bench_cpu_us_per_req),
                l.process
                    .self_reported_overhead_us
                    .map(f1)
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    if let Some(sat) = &r.saturation {
        let _ = writeln!(
            s,
            "\nSaturation: direct {} req/s (at {} connections), through Stockyard {} req/s (at {}): {:.0}% of direct.",
            f0(sat.direct_rps),
            sat.direct_concurrency,
            f0(sat.stockyard_rps),
            sat.stockyard_concurrency,
            sat.ratio * 100.0
        );
        if let (Some(b), Some(ratio)) = (sat.bare_rps, sat.bare_ratio) {
            let _ = writeln!(
                s,
                "The bare forwarder reached {} req/s: {:.0}% of direct; Stockyard reached {:.0}% of the bare forwarder.",
                f0(b),
                ratio * 100.0,
                if b > 0.0 { sat.stockyard_rps / b * 100.0 } else { 0.0 }
            );
        }
    }
    if r.closed_loop.iter().any(|l| l.bare.is_some()) {
        let _ = writeln!(
            s,
            "\n### Yardstick: a bare forwarder on the same hop\n\n\
             What the extra HTTP hop costs on this machine with nothing else: a hyper server that \
             forwards each request through hyper-util's pooled client and streams the answer back \
             (no parsing, routing, traces or metrics; `src/bin/stockyard-bench/bare.rs`), run \
             interleaved with the rows above.\n\n\
             | conc. | bare req/s | bare latency | bare added | bare CPU µs/req | Stockyard CPU µs/req | Stockyard req/s / bare |\n\
             |---:|---:|---|---|---:|---:|---:|"
        );
        for l in &r.closed_loop {
            let Some(b) = &l.bare else { continue };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.0}% |",
                l.concurrency,
                f0(b.rps),
                pcts(&b.latency_us),
                added(&Added::of(&l.direct.latency_us, &b.latency_us)),
                l.bare_cpu_us_per_req.map(f1).unwrap_or_else(|| "-".into()),
                f1(l.process.cpu_us_per_req),
                if b.rps > 0.0 {
                    l.stockyard.rps / b.rps * 100.0
                } else {
                    0.0
                },
            );
        }
    }

    if !r.open_loop.is_empty() {
        let _ = writeln!(
            s,
            "\n## Open loop (fixed arrival rate; latency from each request's scheduled start)\n\n\
             | rate req/s | of saturation | direct latency | Stockyard latency | added | errors (d/S) | Stockyard peak RSS MB | Stockyard CPU |\n\
             |---:|---:|---|---|---|---|---:|---|"
        );
        for l in &r.open_loop {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {}/{} | {} | {} |",
                f0(l.rate),
                l.fraction
                    .map(|f| format!("{:.0}%", f * 100.0))
                    .unwrap_or_else(|| "-".into()),
                pcts(&l.direct.latency_us),
                pcts(&l.stockyard.latency_us),
                added(&l.added_us),
                l.direct.errors,
                l.stockyard.errors,
                mb(l.process.peak_rss_kb),
                cpu(&l.process),
            );
        }
    }
    if !r.open_loop_bare.is_empty() {
        let _ = writeln!(
            s,
            "\n### Yardstick in the open loop: the bare forwarder at the same fractions of its own saturation\n\n\
             | rate req/s | of its saturation | direct latency | bare forwarder latency | added | errors (d/b) | bare CPU µs/req |\n\
             |---:|---:|---|---|---|---|---:|"
        );
        for l in &r.open_loop_bare {
            let _ = writeln!(
                s,
                "| {} | {:.0}% | {} | {} | {} | {}/{} | {} |",
                f0(l.rate),
                l.fraction * 100.0,
                pcts(&l.direct.latency_us),
                pcts(&l.bare.latency_us),
                added(&l.added_us),
                l.direct.errors,
                l.bare.errors,
                f1(l.bare_cpu_us_per_req),
            );
        }
    }

    if let Some(l) = r.streams.first() {
        let _ = writeln!(
            s,
            "\n## Streams ({} content chunks {} µs apart, then finish + usage + [DONE])\n\n\
             | conc. | streams/s (d/S) | direct TTFT | Stockyard TTFT | added TTFT | added total | frames/stream (d/S) | events sharing a chunk (d/S) | events < gap/2 apart (d/S) | errors (d/S) | Stockyard peak RSS MB | Stockyard CPU |\n\
             |---:|---|---|---|---|---|---|---|---|---|---:|---|",
            l.chunks, l.chunk_gap_us
        );
        for l in &r.streams {
            let _ = writeln!(
                s,
                "| {} | {}/{} | {} | {} | {} | {} | {:.1}/{:.1} | {}/{} | {}/{} | {}/{} | {} | {} |",
                l.concurrency,
                f0(l.direct.streams_per_s),
                f0(l.stockyard.streams_per_s),
                pcts(&l.direct.ttft_us),
                pcts(&l.stockyard.ttft_us),
                added(&l.added_ttft_us),
                added(&l.added_total_us),
                l.direct.frames_per_stream,
                l.stockyard.frames_per_stream,
                l.direct.shared_frame_events,
                l.stockyard.shared_frame_events,
                l.direct.close_events,
                l.stockyard.close_events,
                l.direct.errors,
                l.stockyard.errors,
                mb(l.process.peak_rss_kb),
                cpu(&l.process),
            );
        }
    }

    let hops: Vec<(&str, &Hop)> = [
        ("failover hop", &r.failover),
        ("open circuit skip", &r.open_circuit),
    ]
    .into_iter()
    .filter_map(|(n, h)| h.as_ref().map(|h| (n, h)))
    .collect();
    if !hops.is_empty() {
        let _ = writeln!(
            s,
            "\n## Chain costs (one connection, sequential, interleaved with the baseline in the same process)\n\n\
             | scenario | samples | baseline | scenario | added | errors |\n|---|---:|---|---|---|---:|"
        );
        for (n, h) in hops {
            let _ = writeln!(
                s,
                "| {n}: {} | {} | {} | {} | {} | {} |",
                h.description,
                h.samples,
                pcts(&h.baseline_us),
                pcts(&h.scenario_us),
                added(&h.added_us),
                h.errors
            );
        }
    }

    if let Some(l) = &r.leak {
        let _ = writeln!(
            s,
            "\n## RSS across {} requests ({} connections, fresh process, {} req/s, {} errors)\n\n\
             | requests | RSS MB | anon MB | file MB |\n|---:|---:|---:|---:|",
            l.requests,
            l.concurrency,
            f0(l.rps),
            l.errors
        );
        for x in &l.samples {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                x.requests,
                mb(x.rss_kb),
                mb(x.rss_anon_kb),
                mb(x.rss_file_kb)
            );
        }
        let _ = writeln!(
            s,
            "\nFrom the sample after warm-up ({} MB) to the end ({} MB): {:+.1}%; largest deviation {:.1}%. \
             Traces written {}, dropped {}.",
            mb(l.baseline_rss_kb),
            mb(l.final_rss_kb),
            l.growth_pct,
            l.max_deviation_pct,
            l.traces_written.map(f0).unwrap_or_else(|| "-".into()),
            l.traces_dropped.map(f0).unwrap_or_else(|| "-".into()),
        );
    }
    if r.total_errors > 0 {
        let _ = writeln!(s, "\n## Errors ({} in all)\n", r.total_errors);
        type Kinds = std::collections::BTreeMap<String, u64>;
        // (run, direct side's errors, Stockyard side's errors)
        let runs: Vec<(String, &Kinds, &Kinds)> = r
            .closed_loop
            .iter()
            .map(|l| {
                let run = format!("closed c={}", l.concurrency);
                (run, &l.direct.error_kinds, &l.stockyard.error_kinds)
            })
            .chain(r.open_loop.iter().map(|l| {
                let run = format!("open {:.0} req/s", l.rate);
                (run, &l.direct.error_kinds, &l.stockyard.error_kinds)
            }))
            .chain(r.streams.iter().map(|l| {
                let run = format!("streams c={}", l.concurrency);
                (run, &l.direct.error_kinds, &l.stockyard.error_kinds)
            }))
            .collect();
        let kinds = runs.iter().flat_map(|(run, d, st)| {
            [
                (format!("{run} direct"), *d),
                (format!("{run} Stockyard"), *st),
            ]
        });
        for (run, k) in kinds {
            for (msg, n) in k {
                let _ = writeln!(s, "* {run}: {n} × `{msg}`");
            }
        }
        if !r.stockyard_log_warnings.is_empty() {
            let _ = writeln!(
                s,
                "\nStockyard log lines above INFO (last {}):\n\n```",
                r.stockyard_log_warnings.len()
            );
            for l in &r.stockyard_log_warnings {
                let _ = writeln!(s, "{l}");
            }
            let _ = writeln!(s, "```");
        }
    }
    let _ = writeln!(s, "\n![latency vs load](latency.svg)");
    s
}

// ---------------------------------------------------------------------------------------------
// SVG
// ---------------------------------------------------------------------------------------------

struct Series<'a> {
    label: &'a str,
    color: &'a str,
    dash: bool,
    marker: bool,
    points: Vec<(f64, f64, String)>,
}

/// Latency (log scale) against achieved throughput: p50 and p99 of the closed-loop levels as
/// lines (labelled with their concurrency), open-loop runs as hollow markers.
pub fn svg(r: &Results) -> String {
    let mut series: Vec<Series> = Vec::new();
    let closed = |f: &dyn Fn(&ClosedLevel) -> (f64, f64)| {
        r.closed_loop
            .iter()
            .map(|l| {
                let (x, y) = f(l);
                (x, y, format!("c={}", l.concurrency))
            })
            .collect::<Vec<_>>()
    };
    let open = |f: &dyn Fn(&OpenLevel) -> (f64, f64)| {
        r.open_loop
            .iter()
            .map(|l| {
                let (x, y) = f(l);
                (x, y, String::new())
            })
            .collect::<Vec<_>>()
    };
    series.push(Series {
        label: "direct p50 (closed loop)",
        color: "#1f77b4",
        dash: false,
        marker: false,
        points: closed(&|l| (l.direct.rps, l.direct.latency_us.p50)),
    });
    series.push(Series {
        label: "direct p99",
        color: "#1f77b4",
        dash: true,
        marker: false,
        points: closed(&|l| (l.direct.rps, l.direct.latency_us.p99)),
    });
    series.push(Series {
        label: "Stockyard p50 (closed loop)",
        color: "#d62728",
        dash: false,
        marker: false,
        points: closed(&|l| (l.stockyard.rps, l.stockyard.latency_us.p50)),
    });
    series.push(Series {
        label: "Stockyard p99",
        color: "#d62728",
        dash: true,
        marker: false,
        points: closed(&|l| (l.stockyard.rps, l.stockyard.latency_us.p99)),
    });
    series.push(Series {
        label: "direct p50 / p99 (open loop)",
        color: "#1f77b4",
        dash: false,
        marker: true,
        points: open(&|l| (l.direct.rps, l.direct.latency_us.p50))
            .into_iter()
            .chain(open(&|l| (l.direct.rps, l.direct.latency_us.p99)))
            .collect(),
    });
    series.push(Series {
        label: "Stockyard p50 / p99 (open loop)",
        color: "#d62728",
        dash: false,
        marker: true,
        points: open(&|l| (l.stockyard.rps, l.stockyard.latency_us.p50))
            .into_iter()
            .chain(open(&|l| (l.stockyard.rps, l.stockyard.latency_us.p99)))
            .collect(),
    });

    let (w, h) = (960.0, 560.0);
    let (left, right, top, bottom) = (80.0, 260.0, 40.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| (p.0, p.1)))
        .filter(|p| p.1 > 0.0)
        .collect();
    let xmax = nice_ceil(all.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05);
    let ymin_l = all
        .iter()
        .map(|p| p.1.log10().floor())
        .fold(f64::INFINITY, f64::min)
        .min(2.0);
    let ymax_l = all
        .iter()
        .map(|p| p.1.log10().ceil())
        .fold(f64::NEG_INFINITY, f64::max)
        .max(ymin_l + 1.0);
    let x = |v: f64| left + v / xmax * pw;
    let y = |v: f64| {
        let l = v.max(10f64.powf(ymin_l)).log10();
        top + ph - (l - ymin_l) / (ymax_l - ymin_l) * ph
    };

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">Latency vs load: direct to mock and through Stockyard</text>"#,
        left + pw / 2.0
    );
    // Grid and axes.
    let mut d = ymin_l;
    while d <= ymax_l + 1e-9 {
        for m in [1.0, 2.0, 5.0] {
            let v = 10f64.powf(d) * m;
            if v.log10() > ymax_l + 1e-9 {
                break;
            }
            let yy = y(v);
            let major = m == 1.0;
            let _ = writeln!(
                o,
                r##"<line x1="{left}" y1="{yy:.1}" x2="{}" y2="{yy:.1}" stroke="{}" />"##,
                left + pw,
                if major { "#ccc" } else { "#eee" }
            );
            let _ = writeln!(
                o,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                left - 6.0,
                yy + 4.0,
                fmt_us(v)
            );
        }
        d += 1.0;
    }
    for i in 0..=5 {
        let v = xmax * i as f64 / 5.0;
        let xx = x(v);
        let _ = writeln!(
            o,
            r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{}" stroke="#eee" />"##,
            top + ph
        );
        let _ = writeln!(
            o,
            r#"<text x="{xx:.1}" y="{}" text-anchor="middle">{}</text>"#,
            top + ph + 18.0,
            f0(v)
        );
    }
    let _ = writeln!(
        o,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">throughput (requests/s)</text>"#,
        left + pw / 2.0,
        h - 15.0
    );
    let _ = writeln!(
        o,
        r#"<text transform="translate(20 {}) rotate(-90)" text-anchor="middle">latency (log scale)</text>"#,
        top + ph / 2.0
    );
    // Data.
    for s in &series {
        if s.marker {
            for (px, py, _) in &s.points {
                let _ = writeln!(
                    o,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="5" fill="none" stroke="{}" stroke-width="2"/>"#,
                    x(*px),
                    y(*py),
                    s.color
                );
            }
            continue;
        }
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(px, py, _)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{}/>"#,
            pts.join(" "),
            s.color,
            if s.dash {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            }
        );
        for (px, py, label) in &s.points {
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                x(*px),
                y(*py),
                s.color
            );
            if !s.dash && !label.is_empty() {
                let _ = writeln!(
                    o,
                    r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="{}">{label}</text>"#,
                    x(*px) + 5.0,
                    y(*py) - 5.0,
                    s.color
                );
            }
        }
    }
    // Legend.
    let lx = left + pw + 16.0;
    for (i, s) in series.iter().enumerate() {
        let ly = top + 10.0 + i as f64 * 22.0;
        if s.marker {
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{ly:.1}" r="5" fill="none" stroke="{}" stroke-width="2"/>"#,
                lx + 14.0,
                s.color
            );
        } else {
            let _ = writeln!(
                o,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{}/>"#,
                lx + 28.0,
                s.color,
                if s.dash {
                    r#" stroke-dasharray="6 4""#
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 36.0,
            ly + 4.0,
            s.label
        );
    }
    let _ = writeln!(o, "</svg>");
    o
}

fn fmt_us(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{} s", v / 1_000_000.0)
    } else if v >= 1000.0 {
        format!("{} ms", v / 1000.0)
    } else {
        format!("{v} µs")
    }
}

fn nice_ceil(v: f64) -> f64 {
    let e = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * e >= v {
            return m * e;
        }
    }
    10.0 * e
}
