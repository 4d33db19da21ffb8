//! Active health probes and model discovery.
//!
//! - **Discovery**: local providers (ollama, lmstudio, any `local: true`) learn the models they
//!   serve from Ollama's `/api/tags` or `<base_url>/models`, at start-up and on every health
//!   probe (every 30 s without a health check). Routing then sends `llama3:8b` to the local provider that has it and skips one that
//!   lacks it (`model_unsupported`) without a round trip.
//! - **Health probes**: with `health_check.interval`, each provider's cheap endpoint is probed on
//!   that interval. A failed probe (connection error, timeout, 5xx) opens the circuit before a
//!   user request hits the dead endpoint; a passing probe of an open circuit closes it early.
//!   Probes are not user traffic: they never reach traces or request counters.
//!
//! One task per probed provider holds only a `Weak` reference, so a config reload (which builds
//! new provider runtimes) ends the old tasks by itself.

use crate::proxy::state::{ProviderRuntime, Runtime};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Longest a probe may take, whatever the interval.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The endpoint answered; `models` when its body was a model list.
    Up {
        models: Option<Vec<String>>,
    },
    Down(String),
}

/// How often a provider without `health_check` refreshes its discovered models.
const DISCOVERY_REFRESH: Duration = Duration::from_secs(30);

/// Whether `p` learns its models by discovery (ollama, lmstudio, explicit `local: true`).
pub fn discovers(p: &ProviderRuntime) -> bool {
    p.cfg.discover
}

/// The URL probed for `p`: `health_check.path` (relative to the host root) if set, Ollama's
/// native `/api/tags` for ollama, else `<base_url>/models`.
pub fn probe_url(p: &ProviderRuntime) -> String {
    let custom = p.cfg.health_check.as_ref().and_then(|h| h.path.as_deref());
    match (custom, p.cfg.kind.info().native_models_path) {
        (Some(path), _) | (None, Some(path)) => {
            format!("{}{}", host_root(&p.cfg.base_url), path)
        }
        (None, None) => p.url("/models"),
    }
}

/// `http://host:port` of an API root such as `http://host:port/v1`.
pub fn host_root(base_url: &str) -> &str {
    let after_scheme = base_url.find("://").map_or(0, |i| i + 3);
    match base_url[after_scheme..].find('/') {
        Some(i) => &base_url[..after_scheme + i],
        None => base_url,
    }
}

/// Model ids in an Ollama `/api/tags` body (`models[].name`) or an OpenAI `/models` body
/// (`data[].id`); None when the body is neither.
pub fn parse_models(body: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let (list, key) = if let Some(l) = v.get("models").and_then(|m| m.as_array()) {
        (l, "name")
    } else {
        (v.get("data")?.as_array()?, "id")
    };
    Some(
        list.iter()
            .filter_map(|m| {
                m.get(key)
                    .or_else(|| m.get("model"))
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
            })
            .collect(),
    )
}

/// A GET to `url` with the provider's auth, API-version and extra headers (probes and model
/// lists).
pub fn get_request(p: &ProviderRuntime, url: &str) -> reqwest::RequestBuilder {
    let mut req = p.client.get(url);
    if let Some((n, v)) = p.auth() {
        req = req.header(n, v);
    }
    if p.cfg.kind.info().wire == crate::providers::Wire::Anthropic {
        req = req.header(
            "anthropic-version",
            crate::providers::openai::ANTHROPIC_VERSION,
        );
    }
    for (name, value) in &p.cfg.headers {
        req = req.header(name, value);
    }
    req
}

/// Probes one provider once.
pub async fn probe(p: &ProviderRuntime) -> Probe {
    let req = get_request(p, &probe_url(p));
    let timeout = p
        .cfg
        .health_check
        .as_ref()
        .map_or(PROBE_TIMEOUT, |h| h.interval.min(PROBE_TIMEOUT));
    let work = async {
        let resp = req.send().await.map_err(|e| {
            crate::providers::openai::transport_error(&e, p.cfg.timeouts.connect).to_string()
        })?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(format!("HTTP {}", status.as_u16()));
        }
        // A 4xx (e.g. 401 on a models list) still proves the endpoint is up.
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok(if status.is_success() {
            parse_models(&body)
        } else {
            None
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Err(_) => Probe::Down(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Probe::Down(e),
        Ok(Ok(models)) => Probe::Up { models },
    }
}

/// Applies a probe result: discovered models, and (for health checks) the circuit.
pub fn apply(p: &ProviderRuntime, result: &Probe, health: bool, now: Instant) {
    match result {
        Probe::Up { models } => {
            if let (Some(models), true) = (models, discovers(p)) {
                p.set_discovered(models.clone());
            }
            if health {
                let open = p.with_breaker(|b| b.snapshot().state) != crate::breaker::State::Closed;
                if open {
                    if let Some(t) = p.with_breaker(|b| b.reset()) {
                        tracing::warn!(provider = %p.name(), from = t.from.as_str(), to = t.to.as_str(), "circuit state changed: health probe passed");
                    }
                }
            }
        }
        Probe::Down(why) => {
            if health {
                if let Some(t) = p.with_breaker(|b| b.trip(now)) {
                    tracing::warn!(provider = %p.name(), from = t.from.as_str(), to = t.to.as_str(), reason = %why, "circuit state changed: health probe failed");
                }
            }
        }
    }
}

/// Longest start-up waits for the first discovery of every local provider.
pub const STARTUP_DISCOVERY_LIMIT: Duration = Duration::from_secs(2);

/// Probes every discovering provider once, concurrently, at most `limit` in all, so the first
/// requests after start-up already route by the discovered models.
pub async fn discover_all(rt: &Runtime, limit: Duration) {
    let probes = rt
        .providers
        .iter()
        .filter(|p| p.cfg.enabled && discovers(p))
        .map(|p| async move {
            let result = probe(p).await;
            apply(p, &result, p.cfg.health_check.is_some(), Instant::now());
        });
    let _ = tokio::time::timeout(limit, futures::future::join_all(probes)).await;
}

/// Starts the discovery and probe tasks for the providers of `rt`. With `probed_now`, the
/// discovering providers were just probed ([`discover_all`]) and wait one interval first.
pub fn spawn(rt: &Runtime, probed_now: bool) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for p in &rt.providers {
        if !p.cfg.enabled {
            continue;
        }
        let interval = p.cfg.health_check.as_ref().map(|h| h.interval);
        if interval.is_none() && !discovers(p) {
            continue;
        }
        let wait_first = probed_now && discovers(p);
        handle.spawn(run(Arc::downgrade(p), interval, wait_first));
    }
}

async fn run(p: Weak<ProviderRuntime>, interval: Option<Duration>, wait_first: bool) {
    // Discovery only: refreshed now and then, so a newly pulled model is found.
    let every = interval.unwrap_or(DISCOVERY_REFRESH);
    if wait_first {
        tokio::time::sleep(every).await;
    }
    loop {
        let Some(provider) = p.upgrade() else {
            return;
        };
        let result = probe(&provider).await;
        if let Probe::Down(why) = &result {
            tracing::debug!(provider = %provider.name(), reason = %why, "probe failed");
        }
        apply(&provider, &result, interval.is_some(), Instant::now());
        drop(provider);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_roots() {
        assert_eq!(
            host_root("http://localhost:11434/v1"),
            "http://localhost:11434"
        );
        assert_eq!(host_root("http://127.0.0.1:9"), "http://127.0.0.1:9");
        assert_eq!(
            host_root("https://api.example.com/openai/v1"),
            "https://api.example.com"
        );
    }

    #[test]
    fn model_lists() {
        let tags = br#"{"models":[{"name":"llama3:8b","model":"llama3:8b"},{"model":"qwen2:7b"}]}"#;
        assert_eq!(
            parse_models(tags),
            Some(vec!["llama3:8b".to_string(), "qwen2:7b".to_string()])
        );
        let openai = br#"{"object":"list","data":[{"id":"a"},{"id":"b"}]}"#;
        assert_eq!(
            parse_models(openai),
            Some(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(parse_models(b"not json"), None);
        assert_eq!(parse_models(br#"{"status":"ok"}"#), None);
    }
}
