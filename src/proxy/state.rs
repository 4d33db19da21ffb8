//! Live state shared by every request: the config, and per provider its HTTP client, circuit
//! breaker, in-flight count and stats. Request handlers take an `Arc<Runtime>` snapshot at the
//! start, so a reload never changes a request mid-flight.

use crate::breaker::{Admit, Breaker, Transition};
use crate::config::{Config, ProviderConfig, Secret};
use crate::providers::{Auth, Kind, KINDS};
use http::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Counters shown in `/api/proxy/providers`.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    /// EWMA of time to first byte, in microseconds (0 = no sample yet).
    pub ewma_us: AtomicU64,
}

impl Stats {
    pub fn record_ttfb(&self, us: u64) {
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { (old * 4 + us) / 5 };
        self.ewma_us.store(new, Ordering::Relaxed);
    }
}

pub struct ProviderRuntime {
    pub cfg: ProviderConfig,
    /// For health probes and model lists.
    pub client: reqwest::Client,
    /// For proxied requests.
    pub upstream: crate::providers::transport::Upstream,
    /// Breaker, in-flight count and stats are shared with the runtime a reload replaces, so
    /// requests still finishing on the old config keep counting against the same provider.
    pub breaker: Arc<Mutex<Breaker>>,
    pub in_flight: Arc<AtomicUsize>,
    pub stats: Arc<Stats>,
    /// Models the provider reported serving (discovery), when known.
    discovered: RwLock<Option<Arc<Vec<String>>>>,
    /// The auth header for the configured key, built once (marked sensitive).
    auth: Option<(HeaderName, HeaderValue)>,
    /// The request paths' full URLs, parsed once ([`UPSTREAM_PATHS`]).
    endpoints: Vec<(&'static str, http::Uri)>,
}

/// Paths the proxy sends requests to; their URLs are parsed once per provider instead of once
/// per request.
pub const UPSTREAM_PATHS: &[&str] = &["/chat/completions", "/messages", "/embeddings", "/models"];

impl std::fmt::Debug for ProviderRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRuntime")
            .field("name", &self.cfg.name)
            .field("kind", &self.cfg.kind)
            .finish_non_exhaustive()
    }
}

/// Builds the auth header for `key` in the provider kind's style.
pub fn auth_header(kind: Kind, key: &str) -> Option<(HeaderName, HeaderValue)> {
    let (name, value) = match kind.info().auth {
        Auth::Bearer => (http::header::AUTHORIZATION, format!("Bearer {key}")),
        Auth::ApiKeyHeader => (HeaderName::from_static("api-key"), key.to_string()),
        Auth::XApiKey => (HeaderName::from_static("x-api-key"), key.to_string()),
    };
    let mut v = HeaderValue::from_str(&value).ok()?;
    v.set_sensitive(true);
    Some((name, v))
}

impl ProviderRuntime {
    pub fn new(cfg: ProviderConfig, breaker: Breaker) -> ProviderRuntime {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeouts.connect)
            .tcp_nodelay(true)
            // A 3xx from a provider is an upstream error: never follow it (the key would go along).
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .user_agent(concat!("stockyard/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let auth = cfg
            .api_key
            .as_ref()
            .and_then(|k| auth_header(cfg.kind, k.expose()));
        let endpoints = UPSTREAM_PATHS
            .iter()
            .filter_map(|path| {
                format!("{}{}", cfg.base_url, path)
                    .parse::<http::Uri>()
                    .ok()
                    .map(|u| (*path, u))
            })
            .collect();
        ProviderRuntime {
            upstream: crate::providers::transport::Upstream::new(cfg.timeouts.connect),
            endpoints,
            cfg,
            client,
            breaker: Arc::new(Mutex::new(breaker)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            stats: Arc::new(Stats::default()),
            discovered: RwLock::new(None),
            auth,
        }
    }

    /// The models this provider reported serving, if it was asked and answered.
    pub fn discovered(&self) -> Option<Arc<Vec<String>>> {
        self.discovered
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_discovered(&self, models: Vec<String>) {
        let mut g = self.discovered.write().unwrap_or_else(|e| e.into_inner());
        if g.as_deref() != Some(&models) {
            tracing::info!(provider = %self.cfg.name, models = models.len(), "discovered models");
            *g = Some(Arc::new(models));
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.cfg.base_url, path)
    }

    /// The parsed URL of `path` under the base URL: the one parsed at start-up for the usual
    /// paths, or parsed now. `None` when the base URL does not make a valid URL.
    pub fn endpoint(&self, path: &str) -> Option<http::Uri> {
        match self.endpoints.iter().find(|(p, _)| *p == path) {
            Some((_, u)) => Some(u.clone()),
            None => self.url(path).parse().ok(),
        }
    }

    /// The keys an upstream must not hand on: the configured one and the client's own (BYOK).
    pub fn secrets<'a>(&'a self, byok: Option<&'a str>) -> Vec<&'a str> {
        let configured = self.cfg.api_key.as_ref().map(|k| k.expose());
        configured.into_iter().chain(byok).collect()
    }

    pub fn auth(&self) -> Option<&(HeaderName, HeaderValue)> {
        self.auth.as_ref()
    }

    /// Runs `f` on the breaker; never panics on a poisoned lock (the state is plain data).
    pub fn with_breaker<T>(&self, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut g = self.breaker.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// Takes a concurrency slot if the provider is under its cap.
    pub fn try_acquire_slot(&self) -> bool {
        match self.cfg.max_concurrency {
            None => {
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                true
            }
            Some(max) => self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
        }
    }
}

/// Admission to one provider for one attempt: a concurrency slot and the breaker's verdict.
/// Dropping it without a verdict (client gone) frees the slot and any half-open probe.
pub struct Permit {
    provider: Arc<ProviderRuntime>,
    probe: bool,
    done: bool,
}

impl Permit {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn success(mut self) -> Option<Transition> {
        self.done = true;
        let probe = self.probe;
        self.provider.with_breaker(|b| b.on_success(probe))
    }

    pub fn failure(mut self, now: Instant) -> Option<Transition> {
        self.done = true;
        let probe = self.probe;
        self.provider.with_breaker(|b| b.on_failure(probe, now))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.provider.in_flight.fetch_sub(1, Ordering::AcqRel);
        if !self.done {
            let probe = self.probe;
            self.provider.with_breaker(|b| b.on_abandon(probe));
        }
    }
}

/// Why admission was refused.
pub enum Refused {
    CircuitOpen { retry_at: Instant },
    Overloaded,
}

pub fn admit(p: &Arc<ProviderRuntime>, now: Instant) -> Result<Permit, Refused> {
    if !p.try_acquire_slot() {
        return Err(Refused::Overloaded);
    }
    let (verdict, transition) = p.with_breaker(|b| b.admit(now));
    if let Some(t) = transition {
        tracing::warn!(provider = %p.name(), from = t.from.as_str(), to = t.to.as_str(), "circuit state changed");
    }
    match verdict {
        Admit::No { retry_at } => {
            p.in_flight.fetch_sub(1, Ordering::AcqRel);
            Err(Refused::CircuitOpen { retry_at })
        }
        a => Ok(Permit {
            provider: p.clone(),
            probe: a.is_probe(),
            done: false,
        }),
    }
}

/// Everything derived from one config.
#[derive(Debug)]
pub struct Runtime {
    pub config: Arc<Config>,
    /// Same order as `config.providers`.
    pub providers: Vec<Arc<ProviderRuntime>>,
    /// Where a bring-your-own key of each kind goes: the first configured provider of that kind,
    /// else a provider with the kind's default base URL.
    pub byok: HashMap<Kind, Arc<ProviderRuntime>>,
    /// Some provider learns its models by discovery.
    discovery: bool,
}

impl Runtime {
    /// Builds the runtime; providers whose name exists in `previous` share its breaker, in-flight
    /// count and stats (hot reload), and its HTTP client when the connect timeout is unchanged.
    pub fn new(config: Config, previous: Option<&Runtime>) -> Runtime {
        let breaker_cfg = config.failover.breaker;
        let providers: Vec<Arc<ProviderRuntime>> = config
            .providers
            .iter()
            .map(|pc| {
                let old = previous.and_then(|r| r.providers.iter().find(|p| p.cfg.name == pc.name));
                let mut rt = ProviderRuntime::new(pc.clone(), Breaker::new(breaker_cfg));
                if let Some(o) = old {
                    if o.cfg.base_url == pc.base_url {
                        rt.discovered = RwLock::new(o.discovered());
                    }
                    rt.breaker = o.breaker.clone();
                    rt.in_flight = o.in_flight.clone();
                    rt.stats = o.stats.clone();
                    if o.cfg.timeouts.connect == pc.timeouts.connect {
                        rt.client = o.client.clone();
                    }
                    rt.with_breaker(|b| b.set_config(breaker_cfg));
                }
                Arc::new(rt)
            })
            .collect();
        let mut byok = HashMap::new();
        for info in KINDS {
            if Kind::for_key_shape_kinds().contains(&info.kind) {
                let p = match providers.iter().find(|p| p.cfg.kind == info.kind) {
                    Some(p) => p.clone(),
                    None => Arc::new(ProviderRuntime::new(
                        default_provider(info.kind, &config),
                        Breaker::new(breaker_cfg),
                    )),
                };
                byok.insert(info.kind, p);
            }
        }
        let discovery = providers.iter().any(|p| crate::health::discovers(p));
        Runtime {
            config: Arc::new(config),
            providers,
            byok,
            discovery,
        }
    }

    /// The chain for a model now: the routing plan with discovered models, ordered by the
    /// configured strategy.
    pub fn plan(&self, model: &str, opts: &crate::routing::RouteOptions) -> crate::routing::Route {
        let mut route = crate::routing::plan_live(&self.config, &self.live(), model, opts);
        if self.config.failover.strategy == crate::config::Strategy::Latency {
            let now = std::time::Instant::now();
            let health: Vec<crate::routing::Health> = self
                .providers
                .iter()
                .map(|p| {
                    let snap = p.with_breaker(|b| b.snapshot());
                    crate::routing::Health {
                        ewma_us: p.stats.ewma_us.load(Ordering::Relaxed),
                        failures: snap.failures,
                        open: snap.state == crate::breaker::State::Open
                            && snap.retry_at.is_some_and(|t| t > now),
                    }
                })
                .collect();
            crate::routing::order_by_latency(
                &mut route,
                &self.config,
                &health,
                self.config.failover.local_factor,
            );
        }
        route
    }

    /// What routing needs to know from the live providers.
    pub fn live(&self) -> crate::routing::Live {
        if !self.discovery {
            return crate::routing::Live::default();
        }
        crate::routing::Live {
            discovered: self.providers.iter().map(|p| p.discovered()).collect(),
        }
    }
}

fn default_provider(kind: Kind, config: &Config) -> ProviderConfig {
    let info = kind.info();
    ProviderConfig {
        name: info.name.to_string(),
        kind,
        base_url: info.base_url.to_string(),
        api_key: None::<Secret>,
        priority: 1000,
        models: vec![],
        model_map: Default::default(),
        local: false,
        discover: false,
        enabled: true,
        context_window: None,
        truncate: false,
        max_concurrency: None,
        retries: 0,
        timeouts: crate::config::Timeouts {
            connect: std::time::Duration::from_secs(5),
            first_byte: std::time::Duration::from_secs(120),
            idle: std::time::Duration::from_secs(60),
            total: std::time::Duration::from_secs(600),
        },
        health_check: None,
        headers: config
            .providers
            .iter()
            .find(|p| p.kind == kind)
            .map(|p| p.headers.clone())
            .unwrap_or_default(),
    }
}

/// The shared application state; `runtime()` is a cheap snapshot.
#[derive(Debug)]
pub struct AppState {
    runtime: RwLock<Arc<Runtime>>,
    pub started: Instant,
    pub traces: crate::traces::TraceSink,
    /// The trace database, for admin queries (None when traces are off).
    pub db_path: Option<std::path::PathBuf>,
    /// The response cache (in `<data_dir>/stockyard.db`, opened when first needed).
    pub cache: crate::cache::Cache,
}

impl AppState {
    pub fn new(
        config: Config,
        traces: crate::traces::TraceSink,
        db_path: Option<std::path::PathBuf>,
    ) -> Arc<AppState> {
        let cache = crate::cache::Cache::new(config.data_dir.join("stockyard.db"));
        let rt = Arc::new(Runtime::new(config, None));
        Arc::new(AppState {
            runtime: RwLock::new(rt),
            started: Instant::now(),
            traces,
            db_path,
            cache,
        })
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swaps in a new config, keeping breaker state of providers that still exist.
    pub fn replace_config(&self, config: Config) {
        let mut g = self.runtime.write().unwrap_or_else(|e| e.into_inner());
        let next = Arc::new(Runtime::new(config, Some(&g)));
        crate::health::spawn(&next, false);
        *g = next;
    }
}
