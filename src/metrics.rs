//! Prometheus metrics (`GET /metrics`), encoded by the `prometheus-client` crate. Request-level
//! metrics are recorded once per request, when its trace completes; provider gauges (circuit
//! state, in-flight) are read from live state at scrape time.

use crate::proxy::attempt::AttemptOutcome;
use crate::proxy::state::Runtime;
use crate::traces::{TraceRecord, TraceStats};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReqLabels {
    pub provider: String,
    pub model: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    pub from: String,
    pub to: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub provider: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub provider: String,
    pub status: String,
    pub reason: String,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ]
    .into_iter()
}

fn overhead_buckets() -> impl Iterator<Item = f64> {
    [
        10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3,
    ]
    .into_iter()
}

pub struct Metrics {
    registry: Registry,
    requests: Family<ReqLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    failovers: Family<FailoverLabels, Counter>,
    upstream_latency: Family<ProviderLabels, Histogram>,
    ttft: Family<ProviderLabels, Histogram>,
    overhead: Histogram,
    prompt_tokens: Family<ModelLabels, Counter>,
    completion_tokens: Family<ModelLabels, Counter>,
    cost: Family<ModelLabels, Counter<f64, AtomicU64>>,
    circuit: Family<ProviderLabels, Gauge>,
    in_flight: Family<ProviderLabels, Gauge>,
    traces_dropped: Counter,
    traces_written: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    /// Proxy requests refused because `max_in_flight` were already running.
    pub shed: Counter,
    /// Last values copied from [`TraceStats`] (the counters only move forward).
    seen: Mutex<(u64, u64)>,
    /// Handles for the common path, by provider then model ([`OkPath`]).
    ok_paths: RwLock<HashMap<String, HashMap<String, Arc<OkPath>>>>,
}

/// The series a request answered by its first attempt touches, resolved once per (provider,
/// model): recording such a request then clones no label strings and hashes no label sets (it
/// was ~6 k instructions per request, six `get_or_create` calls). Series that not every request
/// touches are resolved on first use, so `/metrics` lists exactly what it did before.
struct OkPath {
    requests: Counter,
    attempt: Counter,
    latency: Histogram,
    ttft: OnceLock<Histogram>,
    prompt: OnceLock<Counter>,
    completion: OnceLock<Counter>,
    cost: OnceLock<Counter<f64, AtomicU64>>,
}

/// More (provider, model) pairs than this are recorded the slow way (label sets made per
/// request), so an unbounded set of model names cannot grow the cache without bound.
const OK_PATHS_MAX: usize = 4096;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("stockyard");
        let requests = Family::<ReqLabels, Counter>::default();
        registry.register(
            "requests",
            "Client requests by answering provider, model and outcome",
            requests.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "attempts",
            "Upstream attempts and skips by provider, outcome and reason",
            attempts.clone(),
        );
        let failovers = Family::<FailoverLabels, Counter>::default();
        registry.register(
            "failovers",
            "Failovers from one provider to the next, by reason",
            failovers.clone(),
        );
        let upstream_latency = Family::<ProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "upstream_latency_seconds",
            "Duration of upstream attempts",
            upstream_latency.clone(),
        );
        let ttft = Family::<ProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "time_to_first_byte_seconds",
            "Time to the first upstream byte (to first content for streams)",
            ttft.clone(),
        );
        let overhead = Histogram::new(overhead_buckets());
        registry.register(
            "proxy_overhead_seconds",
            "Time spent in Stockyard itself, excluding upstream time",
            overhead.clone(),
        );
        let prompt_tokens = Family::<ModelLabels, Counter>::default();
        registry.register(
            "prompt_tokens",
            "Prompt tokens reported by upstreams",
            prompt_tokens.clone(),
        );
        let completion_tokens = Family::<ModelLabels, Counter>::default();
        registry.register(
            "completion_tokens",
            "Completion tokens reported by upstreams",
            completion_tokens.clone(),
        );
        let cost = Family::<ModelLabels, Counter<f64, AtomicU64>>::default();
        registry.register("cost_usd", "Estimated spend in USD", cost.clone());
        let circuit = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "circuit_state",
            "Circuit state per provider: 0 closed, 1 half open, 2 open",
            circuit.clone(),
        );
        let in_flight = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "in_flight",
            "Requests in flight per provider",
            in_flight.clone(),
        );
        let traces_dropped = Counter::default();
        registry.register(
            "traces_dropped",
            "Traces lost (queue full or database failure)",
            traces_dropped.clone(),
        );
        let traces_written = Counter::default();
        registry.register(
            "traces_written",
            "Traces written to SQLite",
            traces_written.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "cache_hits",
            "Chat completions answered from the response cache",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "cache_misses",
            "Cacheable chat completions not found in the response cache",
            cache_misses.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "requests_shed",
            "Proxy requests refused with 503 because max_in_flight requests were running",
            shed.clone(),
        );
        Metrics {
            registry,
            requests,
            attempts,
            failovers,
            upstream_latency,
            ttft,
            overhead,
            prompt_tokens,
            completion_tokens,
            cost,
            circuit,
            in_flight,
            traces_dropped,
            traces_written,
            cache_hits,
            cache_misses,
            shed,
            seen: Mutex::new((0, 0)),
            ok_paths: RwLock::new(HashMap::new()),
        }
    }

    /// The [`OkPath`] handles for `provider` and `model`, made on first use; `None` when the
    /// cache is full.
    fn ok_path(&self, provider: &str, model: &str) -> Option<Arc<OkPath>> {
        {
            let paths = self.ok_paths.read().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = paths.get(provider).and_then(|m| m.get(model)) {
                return Some(h.clone());
            }
            if paths.values().map(HashMap::len).sum::<usize>() >= OK_PATHS_MAX {
                return None;
            }
        }
        let h = Arc::new(OkPath {
            requests: self
                .requests
                .get_or_create(&ReqLabels {
                    provider: provider.to_string(),
                    model: model.to_string(),
                    status: "ok".into(),
                })
                .clone(),
            attempt: self
                .attempts
                .get_or_create(&AttemptLabels {
                    provider: provider.to_string(),
                    status: AttemptOutcome::Ok.as_str().into(),
                    reason: String::new(),
                })
                .clone(),
            latency: self
                .upstream_latency
                .get_or_create(&ProviderLabels {
                    provider: provider.to_string(),
                })
                .clone(),
            ttft: OnceLock::new(),
            prompt: OnceLock::new(),
            completion: OnceLock::new(),
            cost: OnceLock::new(),
        });
        let mut paths = self.ok_paths.write().unwrap_or_else(|e| e.into_inner());
        Some(
            paths
                .entry(provider.to_string())
                .or_default()
                .entry(model.to_string())
                .or_insert(h)
                .clone(),
        )
    }

    /// Records the rest of a request answered by its first attempt through its [`OkPath`]; false when it is
    /// not such a request (or the cache is full) and the general path must record it.
    fn record_ok_path(&self, r: &TraceRecord) -> bool {
        let (Some(p), [a]) = (r.provider.as_deref(), r.attempts.as_slice()) else {
            return false;
        };
        if r.status != crate::traces::TraceStatus::Ok
            || a.outcome != AttemptOutcome::Ok
            || a.reason.is_some()
            || a.provider != p
            || r.cache == Some(crate::cache::CacheOutcome::Hit)
        {
            return false;
        }
        let model = r.model.as_deref().unwrap_or(&r.model_requested);
        let Some(h) = self.ok_path(p, model) else {
            return false;
        };
        let ml = || ModelLabels {
            provider: p.to_string(),
            model: model.to_string(),
        };
        h.requests.inc();
        h.attempt.inc();
        if let Some(t) = r.ttft_ms {
            h.ttft
                .get_or_init(|| {
                    self.ttft
                        .get_or_create(&ProviderLabels {
                            provider: p.to_string(),
                        })
                        .clone()
                })
                .observe(t as f64 / 1000.0);
        }
        h.latency.observe(r.latency_ms as f64 / 1000.0);
        if let Some(n) = r.tokens_in {
            h.prompt
                .get_or_init(|| self.prompt_tokens.get_or_create(&ml()).clone())
                .inc_by(n);
        }
        if let Some(n) = r.tokens_out {
            h.completion
                .get_or_init(|| self.completion_tokens.get_or_create(&ml()).clone())
                .inc_by(n);
        }
        if let Some(c) = r.cost_usd {
            h.cost
                .get_or_init(|| self.cost.get_or_create(&ml()).clone())
                .inc_by(c);
        }
        true
    }

    /// Records one finished request.
    pub fn record(&self, r: &TraceRecord) {
        self.record_common(r);
        if !self.record_ok_path(r) {
            self.record_general(r);
        }
    }

    /// What every request records, whichever path records the rest: cache outcome, overhead.
    fn record_common(&self, r: &TraceRecord) {
        match r.cache {
            Some(crate::cache::CacheOutcome::Hit) => {
                self.cache_hits.inc();
            }
            Some(crate::cache::CacheOutcome::Miss) => {
                self.cache_misses.inc();
            }
            None => {}
        }
        if let Some(us) = r.overhead_us {
            self.overhead.observe(us as f64 / 1e6);
        }
    }

    /// Records the rest of any request, making each label set it touches.
    fn record_general(&self, r: &TraceRecord) {
        let provider = r.provider.clone().unwrap_or_else(|| "none".into());
        let model = r.model.clone().unwrap_or_else(|| r.model_requested.clone());
        self.requests
            .get_or_create(&ReqLabels {
                provider: provider.clone(),
                model: model.clone(),
                status: r.status.as_str().into(),
            })
            .inc();
        for (i, a) in r.attempts.iter().enumerate() {
            let reason = a.reason.clone().unwrap_or_default();
            self.attempts
                .get_or_create(&AttemptLabels {
                    provider: a.provider.clone(),
                    status: a.outcome.as_str().into(),
                    reason: reason.clone(),
                })
                .inc();
            if a.outcome == AttemptOutcome::Failed {
                self.upstream_latency
                    .get_or_create(&ProviderLabels {
                        provider: a.provider.clone(),
                    })
                    .observe(a.latency_ms as f64 / 1000.0);
            }
            let static_skip = matches!(reason.as_str(), "model_unsupported" | "not_local");
            if a.outcome != AttemptOutcome::Ok && !static_skip && i + 1 < r.attempts.len() {
                self.failovers
                    .get_or_create(&FailoverLabels {
                        from: a.provider.clone(),
                        to: provider.clone(),
                        reason,
                    })
                    .inc();
            }
        }
        // A cache hit made no upstream call: no latency, token or cost samples for the provider.
        let upstream = r.cache != Some(crate::cache::CacheOutcome::Hit);
        if let Some(p) = r.provider.as_ref().filter(|_| upstream) {
            let labels = ProviderLabels {
                provider: p.clone(),
            };
            if let Some(t) = r.ttft_ms {
                self.ttft.get_or_create(&labels).observe(t as f64 / 1000.0);
            }
            if r.status.as_str() != "client_closed" {
                self.upstream_latency
                    .get_or_create(&labels)
                    .observe(r.latency_ms as f64 / 1000.0);
            }
            let ml = ModelLabels {
                provider: p.clone(),
                model: model.clone(),
            };
            if let Some(n) = r.tokens_in {
                self.prompt_tokens.get_or_create(&ml).inc_by(n);
            }
            if let Some(n) = r.tokens_out {
                self.completion_tokens.get_or_create(&ml).inc_by(n);
            }
            if let Some(c) = r.cost_usd {
                self.cost.get_or_create(&ml).inc_by(c);
            }
        }
    }

    /// The Prometheus text exposition, with provider gauges read from `rt`.
    pub fn encode(&self, rt: &Runtime, traces: &TraceStats) -> String {
        for p in &rt.providers {
            let labels = ProviderLabels {
                provider: p.cfg.name.clone(),
            };
            let state = p.with_breaker(|b| b.snapshot().state);
            self.circuit.get_or_create(&labels).set(match state {
                crate::breaker::State::Closed => 0,
                crate::breaker::State::HalfOpen => 1,
                crate::breaker::State::Open => 2,
            });
            self.in_flight
                .get_or_create(&labels)
                .set(p.in_flight.load(Ordering::Relaxed) as i64);
        }
        if let Ok(mut seen) = self.seen.lock() {
            let dropped = traces.dropped.load(Ordering::Relaxed);
            let written = traces.written.load(Ordering::Relaxed);
            self.traces_dropped.inc_by(dropped.saturating_sub(seen.0));
            self.traces_written.inc_by(written.saturating_sub(seen.1));
            *seen = (dropped.max(seen.0), written.max(seen.1));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::attempt::AttemptRecord;
    use crate::traces::TraceStatus;

    fn attempt(provider: &str, outcome: AttemptOutcome, reason: Option<&str>) -> AttemptRecord {
        AttemptRecord {
            provider: provider.into(),
            model: "up".into(),
            outcome,
            reason: reason.map(str::to_string),
            http_status: Some(200),
            latency_ms: 12,
            hedged: false,
        }
    }

    fn records() -> Vec<TraceRecord> {
        let mut out = Vec::new();
        for (i, model) in ["m1", "m2", "m1"].iter().enumerate() {
            let mut r = TraceRecord::new(format!("tr_{i}"), model, i == 1);
            r.provider = Some("a".into());
            r.model = Some(format!("{model}-up"));
            r.status = TraceStatus::Ok;
            r.latency_ms = 30 + i as u64;
            r.ttft_ms = (i == 1).then_some(7);
            r.tokens_in = (i != 2).then_some(10);
            r.tokens_out = Some(20);
            r.cost_usd = (i == 0).then_some(0.25);
            r.overhead_us = Some(40);
            r.cache = (i == 2).then_some(crate::cache::CacheOutcome::Miss);
            r.attempts.push(attempt("a", AttemptOutcome::Ok, None));
            out.push(r);
        }
        // A failover, a cache hit, a client that went away, an error.
        let mut f = TraceRecord::new("tr_f".into(), "m1", false);
        f.provider = Some("b".into());
        f.status = TraceStatus::Ok;
        f.attempts
            .push(attempt("a", AttemptOutcome::Failed, Some("http_error")));
        f.attempts.push(attempt("b", AttemptOutcome::Ok, None));
        out.push(f);
        let mut h = TraceRecord::new("tr_h".into(), "m1", false);
        h.provider = Some("a".into());
        h.status = TraceStatus::Ok;
        h.cache = Some(crate::cache::CacheOutcome::Hit);
        out.push(h);
        let mut c = TraceRecord::new("tr_c".into(), "m1", true);
        c.provider = Some("a".into());
        c.status = TraceStatus::ClientClosed;
        c.attempts.push(attempt("a", AttemptOutcome::Ok, None));
        out.push(c);
        let mut e = TraceRecord::new("tr_e".into(), "m9", false);
        e.status = TraceStatus::Error;
        e.attempts
            .push(attempt("a", AttemptOutcome::Failed, Some("connect_error")));
        out.push(e);
        out
    }

    fn text(m: &Metrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry).unwrap();
        out
    }

    /// The exposition's lines, sorted: series within a family come in hash-map order.
    fn lines(m: &Metrics) -> Vec<String> {
        let mut l: Vec<String> = text(m).lines().map(str::to_string).collect();
        l.sort();
        l
    }

    #[test]
    fn the_common_path_records_exactly_what_the_general_path_does() {
        let (fast, general) = (Metrics::new(), Metrics::new());
        for _ in 0..3 {
            for r in records() {
                fast.record(&r);
                general.record_common(&r);
                general.record_general(&r);
            }
        }
        assert_eq!(lines(&fast), lines(&general));
        // The common path was taken (two (provider, model) pairs cached), and the series it
        // resolves lazily only exist once a request needed them.
        let paths = fast.ok_paths.read().unwrap();
        assert_eq!(paths.values().map(HashMap::len).sum::<usize>(), 2);
        let t = text(&fast);
        assert!(
            t.contains(r#"stockyard_cost_usd_total{provider="a",model="m1-up"}"#),
            "{t}"
        );
        assert!(
            !t.contains(r#"stockyard_cost_usd_total{provider="a",model="m2-up"}"#),
            "{t}"
        );
    }
}
