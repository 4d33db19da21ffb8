//! Stockyard: a self-hosted, OpenAI-compatible LLM proxy with model-aware routing, failover
//! (streams included) and per-provider circuit breakers.
//!
//! A request's story, folder by folder: [`config`] (what the operator wrote) → [`proxy`]
//! (auth, body) → [`routing`] (aliases, natural provider, chain) → [`breaker`] (admission) →
//! [`providers`] (wire formats) → [`proxy::stream`] / [`sse`] (relay) → [`admin`] (visibility).

pub mod admin;
pub mod breaker;
pub mod cache;
pub mod cli;
pub mod config;
pub mod error;
/// Property checks for the fuzz targets in `fuzz/` and `tests/fuzz_corpus.rs`.
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod providers;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod service;
pub mod sse;
pub mod traces;
pub mod workers;
