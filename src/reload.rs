//! Hot reload (SIGHUP and `POST /api/proxy/reload`): re-read the config from where it was loaded
//! at startup, validate it exactly as `stockyard check` does, and swap it in. An invalid file
//! changes nothing. Providers that keep their name keep their breaker, in-flight count and stats
//! ([`crate::proxy::state::Runtime::new`]); requests already running finish on the snapshot they
//! took. Settings fixed at startup (listen address, data_dir, traces, logging) keep their running
//! values and are reported as needing a restart.

use crate::config::validate::check_listen_safety;
use crate::config::{defaults, load_file, Config, ConfigError, Env};
use crate::notify::Notifier;
use crate::proxy::state::AppState;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the config comes from: the file found at startup, or the built-in default.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub env: Env,
}

impl ConfigSource {
    /// The source a loaded config names in `Config::source`, with the process environment.
    pub fn of(config: &Config) -> ConfigSource {
        ConfigSource {
            path: (config.source != "<built-in>").then(|| PathBuf::from(&config.source)),
            env: Env::process(),
        }
    }

    pub fn load(&self) -> Result<Config, ConfigError> {
        match &self.path {
            Some(p) => load_file(p, &self.env),
            None => defaults::builtin(&self.env),
        }
    }
}

/// What a successful reload changed.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub reloaded: bool,
    pub source: String,
    pub providers: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub aliases: usize,
    /// Settings that changed in the file but only take effect after a restart.
    pub restart_required: Vec<&'static str>,
}

/// Reloads the config of one running server; reloads never overlap.
#[derive(Debug)]
pub struct Reloader {
    source: ConfigSource,
    state: Arc<AppState>,
    /// The address the server is actually bound to (the listen-safety rule is checked on it).
    bound: SocketAddr,
    notifier: Option<Arc<Notifier>>,
    lock: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        source: ConfigSource,
        state: Arc<AppState>,
        bound: SocketAddr,
        notifier: Option<Arc<Notifier>>,
    ) -> Reloader {
        Reloader {
            source,
            state,
            bound,
            notifier,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Re-reads, validates and applies the config; `why` names the trigger in the logs.
    pub async fn reload(&self, why: &str) -> Result<ReloadReport, ConfigError> {
        let _guard = self.lock.lock().await;
        if let Some(n) = &self.notifier {
            n.reloading();
        }
        let source = self.source.clone();
        let loaded = tokio::task::spawn_blocking(move || source.load())
            .await
            .unwrap_or_else(|e| {
                Err(ConfigError {
                    file: "reload".into(),
                    pos: None,
                    message: format!("reload task failed: {e}"),
                })
            });
        let result = loaded.and_then(|next| self.apply(next));
        match &result {
            Ok(r) => tracing::info!(
                trigger = why,
                source = %r.source,
                providers = ?r.providers,
                added = ?r.added,
                removed = ?r.removed,
                restart_required = ?r.restart_required,
                "config reloaded"
            ),
            Err(e) => tracing::error!(
                trigger = why,
                error = %redact_values(&e.to_string()),
                "config reload rejected; the running config stays"
            ),
        }
        if let Some(n) = &self.notifier {
            n.send("READY=1");
        }
        result
    }

    fn apply(&self, mut next: Config) -> Result<ReloadReport, ConfigError> {
        let old = self.state.runtime();
        let prev = &old.config;
        let mut restart_required = Vec::new();
        if next.listen != prev.listen {
            restart_required.push("listen");
        }
        if next.data_dir != prev.data_dir {
            restart_required.push("data_dir");
        }
        if next.traces.enabled != prev.traces.enabled
            || next.traces.store_bodies != prev.traces.store_bodies
            || next.traces.retention_days != prev.traces.retention_days
        {
            restart_required.push("traces");
        }
        if next.log_level != prev.log_level {
            restart_required.push("log_level");
        }
        if next.log_format != prev.log_format {
            restart_required.push("log_format");
        }
        // What stays as it was started is shown as it really is.
        next.listen = prev.listen;
        next.data_dir = prev.data_dir.clone();
        next.traces = prev.traces;
        next.log_level = prev.log_level.clone();
        next.log_format = prev.log_format;
        // The socket is already bound: the api_keys rule applies to it, not to the file's address.
        let mut bound = next.clone();
        bound.listen = self.bound;
        check_listen_safety(&bound).map_err(|m| ConfigError {
            file: next.source.clone(),
            pos: None,
            message: format!("{m} (the running server is bound to {})", self.bound),
        })?;

        let names =
            |c: &Config| -> Vec<String> { c.providers.iter().map(|p| p.name.clone()).collect() };
        let (before, after) = (names(prev), names(&next));
        let report = ReloadReport {
            reloaded: true,
            source: next.source.clone(),
            added: after
                .iter()
                .filter(|n| !before.contains(n))
                .cloned()
                .collect(),
            removed: before
                .iter()
                .filter(|n| !after.contains(n))
                .cloned()
                .collect(),
            providers: after,
            aliases: next.aliases.len(),
            restart_required,
        };
        self.state.replace_config(next);
        Ok(report)
    }
}

/// A config error for the logs: YAML type errors quote the offending value (`invalid type:
/// string "sk-..."`), which may be a key; the log gets `string "***"` instead. The API answer and
/// `stockyard check` show the full text to the operator who asked.
pub fn redact_values(msg: &str) -> String {
    const MARK: &str = "string \"";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(MARK) {
        out.push_str(&rest[..i + MARK.len()]);
        let after = &rest[i + MARK.len()..];
        match after.find('"') {
            Some(end) => {
                out.push_str("***\"");
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("***");
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::redact_values;

    #[test]
    fn values_are_redacted_for_the_log() {
        assert_eq!(
            redact_values(
                "f.yaml:1:11: api_keys: invalid type: string \"sk-secret\", expected a sequence"
            ),
            "f.yaml:1:11: api_keys: invalid type: string \"***\", expected a sequence"
        );
        let plain = "f.yaml:3:5: providers[0]: unknown key `priorty` (did you mean `priority`?)";
        assert_eq!(redact_values(plain), plain);
        assert_eq!(redact_values("string \"open"), "string \"***");
    }
}
