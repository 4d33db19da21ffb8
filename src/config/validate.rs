//! Semantic validation: turns a [`RawConfig`] into a [`Config`], reporting every problem at its
//! place in the file (duplicate provider names, unknown kinds, aliases that name unknown
//! providers, bad listen addresses...).

use super::load::{did_you_mean, ConfigError, Env};
use super::schema::{RawAlias, RawConfig, RawProvider, RetryOnEntry};
use super::source::{Pos, SourceMap};
use super::{
    Alias, BreakerConfig, Cache, Config, Failover, HealthCheck, ProviderConfig, RetryOn, Secret,
    Target, Timeouts, Traces,
};
use crate::providers::Kind;
use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_PORT: u16 = 4200;
pub const DEFAULT_MAX_BODY: u64 = 32 * 1024 * 1024;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

struct Ctx<'a> {
    map: &'a SourceMap,
    file: &'a str,
}

/// Where an error points when the source map cannot place its path: on some malformed files
/// yaml-rust2 (the source map) stops early while serde_yaml still parses them (found by the
/// `config` fuzz target), so the error points at the start of the file rather than nowhere.
const UNMAPPED: Pos = Pos { line: 1, col: 1 };

impl Ctx<'_> {
    fn at(&self, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            pos: Some(self.map.value(path).unwrap_or(UNMAPPED)),
            message: message.into(),
        }
    }
    fn at_key(&self, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            pos: Some(self.map.key(path).unwrap_or(UNMAPPED)),
            message: message.into(),
        }
    }
}

pub fn validate(
    raw: RawConfig,
    map: &SourceMap,
    file: &str,
    env: &Env,
) -> Result<Config, ConfigError> {
    let cx = Ctx { map, file };

    // listen / port, with the PORT environment override.
    let mut listen = match (&raw.listen, raw.port) {
        (Some(_), Some(_)) => {
            return Err(cx.at_key("port", "set either `listen` or `port`, not both"));
        }
        (Some(l), None) => parse_listen(l).map_err(|m| cx.at("listen", m))?,
        (None, Some(p)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p),
        (None, None) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
    };
    // STOCKYARD_LISTEN replaces the address (the Docker image sets 0.0.0.0:4200 this way, so a
    // mounted file needs no `listen`); PORT then overrides just the port.
    let listen_env = env.get("STOCKYARD_LISTEN");
    if let Some(l) = &listen_env {
        listen = parse_listen(l.trim()).map_err(|m| ConfigError {
            file: "environment".into(),
            pos: None,
            message: format!("STOCKYARD_LISTEN=`{l}`: {m}"),
        })?;
    }
    if let Some(p) = env.get("PORT") {
        let port: u16 = p.trim().parse().map_err(|_| ConfigError {
            file: "environment".into(),
            pos: None,
            message: format!("PORT=`{p}` is not a port number"),
        })?;
        listen.set_port(port);
    }

    let data_dir = env
        .get("STOCKYARD_DATA_DIR")
        .or(raw.data_dir.clone())
        .unwrap_or_else(|| "~/.stockyard".into());
    let data_dir = expand_home(&data_dir, env);

    let api_keys: Vec<Secret> = raw
        .api_keys
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .map(Secret)
        .collect();
    let admin_key = raw
        .admin_key
        .filter(|k| !k.trim().is_empty())
        .or_else(|| env.get("STOCKYARD_ADMIN_KEY"))
        .map(Secret);

    if let Some(level) = &raw.log_level {
        const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
        if !LEVELS.contains(&level.as_str()) && !level.contains('=') {
            return Err(cx.at(
                "log_level",
                format!(
                    "unknown log_level `{level}`; expected one of: {}",
                    LEVELS.join(", ")
                ),
            ));
        }
    }

    // Providers.
    let provs = raw.providers.unwrap_or_default();
    let map_form = provs.map_form;
    let mut providers = Vec::with_capacity(provs.entries.len());
    let mut seen = HashSet::new();
    for (i, p) in provs.entries.into_iter().enumerate() {
        let path = match (&p.name, map_form) {
            (Some(n), true) => format!("providers.{n}"),
            _ => format!("providers.{i}"),
        };
        let pc = provider(p, &path, &cx)?;
        if !seen.insert(pc.name.clone()) {
            let where_ = if map_form {
                path.clone()
            } else {
                format!("{path}.name")
            };
            return Err(cx.at(&where_, format!("duplicate provider name `{}`", pc.name)));
        }
        providers.push(pc);
    }
    let names: Vec<String> = providers.iter().map(|p| p.name.clone()).collect();

    // Aliases.
    let ma = raw.model_alias.unwrap_or_default();
    let mut aliases = BTreeMap::new();
    for (name, a) in ma.aliases.unwrap_or_default() {
        let apath = format!("model_alias.aliases.{name}");
        let (targets, local_only, tpath) = match a {
            RawAlias::One(t) => (vec![t], false, None),
            RawAlias::Chain(ts) => (ts, false, Some(apath.clone())),
            RawAlias::Long(l) => (
                l.targets,
                l.local_only.unwrap_or(false),
                Some(format!("{apath}.targets")),
            ),
        };
        if targets.is_empty() {
            return Err(cx.at(&apath, format!("alias `{name}` has no targets")));
        }
        let mut parsed = Vec::new();
        for (j, t) in targets.iter().enumerate() {
            let p = tpath
                .as_ref()
                .map(|p| format!("{p}.{j}"))
                .unwrap_or(apath.clone());
            parsed.push(
                parse_target(t, &names).map_err(|m| cx.at(&p, format!("alias `{name}`: {m}")))?,
            );
        }
        aliases.insert(
            name,
            Alias {
                targets: parsed,
                local_only,
            },
        );
    }

    // Failover.
    let fo = raw.failover.unwrap_or_default();
    let order = match &fo.providers {
        Some(list) => {
            let mut order = Vec::new();
            for (j, n) in list.iter().enumerate() {
                let idx = names.iter().position(|x| x == n).ok_or_else(|| {
                    cx.at(
                        &format!("failover.providers.{j}"),
                        unknown_provider_msg(n, &names),
                    )
                })?;
                if order.contains(&idx) {
                    return Err(cx.at(
                        &format!("failover.providers.{j}"),
                        format!("provider `{n}` is listed twice in failover.providers"),
                    ));
                }
                if providers[idx].enabled {
                    order.push(idx);
                }
            }
            order
        }
        None => priority_order(&providers),
    };
    let retry_on = match fo.retry_on {
        None => RetryOn::default(),
        Some(entries) => {
            let mut r = RetryOn {
                statuses: HashSet::new(),
                timeout: false,
                connect: false,
                stream_error: false,
            };
            for e in entries {
                match e {
                    RetryOnEntry::Status(s) => {
                        r.statuses.insert(s);
                    }
                    RetryOnEntry::Timeout => r.timeout = true,
                    RetryOnEntry::Connect => r.connect = true,
                    RetryOnEntry::StreamError => r.stream_error = true,
                }
            }
            r
        }
    };
    let cb = fo.circuit_breaker.unwrap_or_default();
    let breaker = BreakerConfig {
        enabled: cb.enabled.unwrap_or(true),
        failure_threshold: cb.failure_threshold.unwrap_or(3),
        recovery_timeout: cb
            .recovery_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30)),
    };
    if breaker.failure_threshold == 0 {
        return Err(cx.at(
            "failover.circuit_breaker.failure_threshold",
            "failure_threshold must be at least 1",
        ));
    }

    let tr = raw.traces.unwrap_or_default();
    let ca = raw.cache.unwrap_or_default();
    let max_body = raw.max_body_size.map(|b| b.0).unwrap_or(DEFAULT_MAX_BODY);
    if max_body < 1024 {
        return Err(cx.at("max_body_size", "max_body_size must be at least 1KiB"));
    }
    let max_body_size = usize::try_from(max_body)
        .map_err(|_| cx.at("max_body_size", "max_body_size is too large"))?;

    let header_read_timeout = raw
        .header_read_timeout
        .map(|d| d.0)
        .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT);
    if header_read_timeout < Duration::from_millis(100)
        || header_read_timeout > Duration::from_secs(3600)
    {
        return Err(cx.at(
            "header_read_timeout",
            "header_read_timeout must be between 100ms and 1h",
        ));
    }
    let max_in_flight = raw.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if max_in_flight == 0 {
        return Err(cx.at("max_in_flight", "max_in_flight must be at least 1"));
    }

    let local_factor = fo.local_factor.unwrap_or(2.0);
    if !(1.0..=1000.0).contains(&local_factor) {
        return Err(cx.at(
            "failover.local_factor",
            "failover.local_factor must be between 1 and 1000",
        ));
    }

    let config = Config {
        source: file.to_string(),
        listen,
        data_dir,
        log_level: raw.log_level.unwrap_or_else(|| "info".into()),
        log_format: raw.log_format.unwrap_or_default(),
        api_keys,
        admin_key,
        allow_unauthenticated: raw.allow_unauthenticated.unwrap_or(false),
        max_body_size,
        shutdown_grace: raw
            .shutdown_grace
            .map(|d| d.0)
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE),
        header_read_timeout,
        max_in_flight,
        providers,
        aliases_enabled: ma.enabled.unwrap_or(true),
        aliases,
        failover: Failover {
            enabled: fo.enabled.unwrap_or(true),
            strategy: fo.strategy.unwrap_or_default(),
            order,
            hedge_after: fo.hedge_after.map(|d| d.0).unwrap_or(Duration::ZERO),
            local_factor,
            retry_on,
            breaker,
        },
        traces: Traces {
            enabled: tr.enabled.unwrap_or(true),
            store_bodies: tr.store_bodies.unwrap_or(false),
            retention_days: tr.retention_days.unwrap_or(30),
        },
        cache: Cache {
            enabled: ca.enabled.unwrap_or(false),
            mode: ca.mode.unwrap_or_default(),
            ttl: ca.ttl.map(|d| d.0).unwrap_or(Duration::from_secs(3600)),
            max_entries: ca.max_entries.unwrap_or(10_000),
        },
        pricing: raw.pricing.unwrap_or_default(),
    };
    check_listen_safety(&config).map_err(|m| {
        if listen_env.is_some() {
            // The address came from the environment; the fix (api_keys) belongs in the file.
            return ConfigError {
                file: file.to_string(),
                pos: None,
                message: format!("{m} (the address comes from STOCKYARD_LISTEN)"),
            };
        }
        let path = if raw.listen.is_some() {
            "listen"
        } else {
            "port"
        };
        cx.at(path, m)
    })?;
    Ok(config)
}

/// Refuses a non-loopback listener without proxy keys unless explicitly allowed.
pub fn check_listen_safety(c: &Config) -> Result<(), String> {
    if !c.listen.ip().is_loopback() && c.api_keys.is_empty() && !c.allow_unauthenticated {
        return Err(format!(
            "refusing to listen on {} without `api_keys`: anyone who can reach it could spend your provider keys. Set `api_keys: [...]` (clients send one as Bearer), or `allow_unauthenticated: true` if the network is trusted",
            c.listen
        ));
    }
    Ok(())
}

/// Enabled providers by ascending priority, declaration order breaking ties.
pub fn priority_order(providers: &[ProviderConfig]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..providers.len())
        .filter(|&i| providers[i].enabled)
        .collect();
    idx.sort_by_key(|&i| (providers[i].priority, i));
    idx
}

fn unknown_provider_msg(name: &str, names: &[String]) -> String {
    let mut m = format!("unknown provider `{name}`");
    match did_you_mean(name, names.iter().map(String::as_str)) {
        Some(s) => m.push_str(&format!(" (did you mean `{s}`?)")),
        None if names.is_empty() => m.push_str("; no providers are configured"),
        None => m.push_str(&format!("; configured providers: {}", names.join(", "))),
    }
    m
}

/// Parses an alias target. `P/model` pins provider `P` when `P` is a configured provider; a
/// known kind name that is not configured is an error; anything else is a model name that
/// happens to contain a slash (e.g. `meta-llama/Llama-3-70b`).
pub fn parse_target(t: &str, names: &[String]) -> Result<Target, String> {
    let t = t.trim();
    if t.is_empty() {
        return Err("empty target".into());
    }
    if let Some((p, m)) = t.split_once('/') {
        if let Some(idx) = names.iter().position(|n| n == p) {
            if m.is_empty() {
                return Err(format!("target `{t}` names no model after `{p}/`"));
            }
            return Ok(Target {
                provider: Some(idx),
                model: m.to_string(),
            });
        }
        if Kind::parse(p).is_some() {
            return Err(format!(
                "target `{t}` points at {}",
                unknown_provider_msg(p, names)
            ));
        }
    }
    Ok(Target {
        provider: None,
        model: t.to_string(),
    })
}

fn provider(p: RawProvider, path: &str, cx: &Ctx) -> Result<ProviderConfig, ConfigError> {
    let name = p
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| cx.at(path, "provider needs a `name`"))?;
    if name.contains('/') || name.contains(char::is_whitespace) {
        return Err(cx.at(
            &format!("{path}.name"),
            format!("provider name `{name}` must not contain `/` or spaces"),
        ));
    }
    let kind = match &p.kind {
        Some(k) => Kind::parse(k).ok_or_else(|| {
            let mut m = format!("unknown provider kind `{k}`");
            match did_you_mean(k, Kind::all_names()) {
                Some(s) => m.push_str(&format!(" (did you mean `{s}`?)")),
                None => m.push_str(&format!(
                    "; expected one of: {}",
                    Kind::all_names().collect::<Vec<_>>().join(", ")
                )),
            }
            cx.at(&format!("{path}.kind"), m)
        })?,
        None => Kind::parse(&name).ok_or_else(|| {
            cx.at(
                path,
                format!("provider `{name}` needs a `kind` (its name is not a known kind; use `openai-compatible` for vLLM, llama.cpp and the like)"),
            )
        })?,
    };
    let info = kind.info();
    let base_url = match p
        .base_url
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(u) => u.to_string(),
        None if !info.base_url.is_empty() => info.base_url.to_string(),
        None => {
            return Err(cx.at(
                path,
                format!(
                    "provider `{name}` of kind `{}` needs a `base_url`",
                    info.name
                ),
            ))
        }
    };
    let base_url = base_url.trim_end_matches('/').to_string();
    let parsed = reqwest::Url::parse(&base_url).map_err(|e| {
        cx.at(
            &format!("{path}.base_url"),
            format!("invalid base_url `{base_url}`: {e}"),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(cx.at(
            &format!("{path}.base_url"),
            format!("base_url `{base_url}` must start with http:// or https://"),
        ));
    }
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let mut models = Vec::new();
    for (j, m) in p.models.unwrap_or_default().iter().enumerate() {
        models.push(glob::Pattern::new(m).map_err(|e| {
            cx.at(
                &format!("{path}.models.{j}"),
                format!("invalid model glob `{m}`: {e}"),
            )
        })?);
    }
    let mut headers = Vec::new();
    for (k, v) in p.headers.unwrap_or_default() {
        let hp = format!("{path}.headers.{k}");
        let hn = http::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| cx.at_key(&hp, format!("invalid header name `{k}`")))?;
        let hv = http::HeaderValue::from_str(&v)
            .map_err(|_| cx.at(&hp, format!("invalid value for header `{k}`")))?;
        headers.push((hn, hv));
    }
    let local_default = info.local || loopback;
    let t = p.timeouts.unwrap_or_default();
    let timeouts = Timeouts {
        connect: t.connect.map(|d| d.0).unwrap_or(if local_default {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        }),
        first_byte: t
            .first_byte
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(120)),
        idle: t.idle.map(|d| d.0).unwrap_or(Duration::from_secs(60)),
        total: t.total.map(|d| d.0).unwrap_or(Duration::from_secs(600)),
    };
    for (field, d) in [
        ("connect", timeouts.connect),
        ("first_byte", timeouts.first_byte),
        ("idle", timeouts.idle),
        ("total", timeouts.total),
    ] {
        if d.is_zero() {
            return Err(cx.at(
                &format!("{path}.timeouts.{field}"),
                format!("timeouts.{field} must be greater than zero"),
            ));
        }
    }
    if p.max_concurrency == Some(0) {
        return Err(cx.at(
            &format!("{path}.max_concurrency"),
            "max_concurrency must be at least 1 (remove it for no cap)",
        ));
    }
    Ok(ProviderConfig {
        api_key: p
            .api_key
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .map(Secret),
        priority: p.priority.unwrap_or(100),
        models,
        model_map: p.model_map.unwrap_or_default(),
        local: p.local.unwrap_or(local_default),
        discover: info.local || p.local == Some(true),
        enabled: p.enabled.unwrap_or(true),
        context_window: p.context_window,
        truncate: p.truncate.unwrap_or(false),
        max_concurrency: p.max_concurrency,
        retries: p.retries.unwrap_or(0),
        timeouts,
        health_check: p.health_check.and_then(|h| {
            h.interval.map(|i| HealthCheck {
                interval: i.0,
                path: h.path,
            })
        }),
        headers,
        name,
        kind,
        base_url,
    })
}

/// Parses `127.0.0.1:4200`, `0.0.0.0:4200`, `[::1]:4200`, `localhost:4200` or `:4200` (all
/// interfaces).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bad =
        || format!("invalid listen address `{s}`; write e.g. `127.0.0.1:4200` or `0.0.0.0:4200`");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let ip = match host {
        "" | "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => return Err(bad()),
    };
    Ok(SocketAddr::new(ip, port))
}

fn expand_home(p: &str, env: &Env) -> PathBuf {
    match p.strip_prefix("~") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            let home = env.get("HOME").unwrap_or_else(|| ".".into());
            PathBuf::from(format!("{home}{rest}"))
        }
        _ => PathBuf::from(p),
    }
}
