//! Configuration: the file schema ([`schema`]), loading with `${VAR}` expansion and precise
//! `file:line:col` errors ([`load`]), validation into the typed runtime [`Config`]
//! ([`validate`]), and the built-in default and starter file ([`defaults`]).

pub mod defaults;
pub mod load;
pub mod schema;
pub mod source;
pub mod units;
pub mod validate;

pub use load::{load, load_file, ConfigError, Env};
pub use schema::{CacheMode, LogFormat, RawPrice, Strategy};

use crate::providers::Kind;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A secret string (API key) whose `Debug` never prints the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The validated configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, or `<built-in>`.
    pub source: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub log_level: String,
    pub log_format: LogFormat,
    pub api_keys: Vec<Secret>,
    pub admin_key: Option<Secret>,
    pub allow_unauthenticated: bool,
    pub max_body_size: usize,
    /// How long SIGTERM/SIGINT waits for in-flight requests and streams before cutting them.
    pub shutdown_grace: Duration,
    /// A client connection must deliver a complete request head within this long (also how
    /// long an idle keep-alive connection is kept, and how long a new connection may stay
    /// silent before its first request).
    pub header_read_timeout: Duration,
    /// Proxy requests (`/v1/*`) in flight at once, streams included; more are shed with 503.
    pub max_in_flight: usize,
    /// Providers in declaration order; [`Config::chain_order`] says the failover order.
    pub providers: Vec<ProviderConfig>,
    pub aliases_enabled: bool,
    pub aliases: BTreeMap<String, Alias>,
    pub failover: Failover,
    pub traces: Traces,
    pub cache: Cache,
    pub pricing: BTreeMap<String, RawPrice>,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: Kind,
    /// The API root without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub priority: i64,
    /// Globs of models this provider serves; empty means any.
    pub models: Vec<glob::Pattern>,
    pub model_map: BTreeMap<String, String>,
    pub local: bool,
    /// Learns its models from the provider itself: local kinds and explicit `local: true`.
    pub discover: bool,
    pub enabled: bool,
    pub context_window: Option<u64>,
    pub truncate: bool,
    pub max_concurrency: Option<usize>,
    pub retries: u32,
    pub timeouts: Timeouts,
    pub health_check: Option<HealthCheck>,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl ProviderConfig {
    /// Whether this provider's `models` list admits `model` (an empty list admits all).
    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|p| p.matches(model))
    }

    /// Whether the provider explicitly lists `model` (used for the natural-provider rule).
    pub fn lists(&self, model: &str) -> bool {
        self.models.iter().any(|p| p.matches(model))
    }

    /// The model name to send to this provider for a requested `model`.
    pub fn map_model<'a>(&'a self, model: &'a str) -> &'a str {
        self.model_map
            .get(model)
            .map(String::as_str)
            .unwrap_or(model)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub path: Option<String>,
}

/// One alias target: a model, optionally pinned to a provider (index into `Config::providers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub provider: Option<usize>,
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub targets: Vec<Target>,
    pub local_only: bool,
}

#[derive(Debug, Clone)]
pub struct Failover {
    pub enabled: bool,
    pub strategy: Strategy,
    /// Provider indices in failover order (explicit `failover.providers`, else by priority).
    pub order: Vec<usize>,
    pub hedge_after: Duration,
    /// `strategy: latency`: a healthy local provider stays first while its latency is within
    /// this factor of the fastest provider's.
    pub local_factor: f64,
    pub retry_on: RetryOn,
    pub breaker: BreakerConfig,
}

/// The retryable set from `failover.retry_on`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryOn {
    pub statuses: HashSet<u16>,
    pub timeout: bool,
    pub connect: bool,
    pub stream_error: bool,
}

impl Default for RetryOn {
    fn default() -> Self {
        RetryOn {
            statuses: [408, 409, 429, 500, 502, 503, 504, 529]
                .into_iter()
                .collect(),
            timeout: true,
            connect: true,
            stream_error: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub enabled: bool,
    pub failure_threshold: u32,
    pub recovery_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failure_threshold: 3,
            recovery_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Traces {
    pub enabled: bool,
    pub store_bodies: bool,
    pub retention_days: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Cache {
    pub enabled: bool,
    pub mode: CacheMode,
    pub ttl: Duration,
    pub max_entries: u64,
}

impl Config {
    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }

    pub fn is_loopback_listen(&self) -> bool {
        self.listen.ip().is_loopback()
    }
}
