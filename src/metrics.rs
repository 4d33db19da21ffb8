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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
}

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
        }
    }

    /// Records one finished request.
    pub fn record(&self, r: &TraceRecord) {
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
        match r.cache {
            Some(crate::cache::CacheOutcome::Hit) => {
                self.cache_hits.inc();
            }
            Some(crate::cache::CacheOutcome::Miss) => {
                self.cache_misses.inc();
            }
            None => {}
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
        if let Some(us) = r.overhead_us {
            self.overhead.observe(us as f64 / 1e6);
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
