//! The cache key: SHA-256 over a canonical form of the request, scoped to the caller.
//!
//! Canonical form: the request JSON without the fields that do not change the answer (`stream`,
//! `stream_options`, `user`) and with `model` replaced by the model after alias resolution,
//! written with object keys sorted, no whitespace, and numbers normalised (`0`, `0.0` and `-0.0`
//! are the same number). Field order and whitespace therefore never matter. It is wrapped
//! together with the tenant (a hash of the proxy key the client used, or `anon`) and the
//! local-only flag, so one tenant never reads another's entries and a local-only request never
//! receives an answer a cloud provider produced for a request that was allowed to leave.

use crate::config::{CacheMode, Config};
use crate::proxy::auth::{presented_token, ClientAuth};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Request fields left out of the key: they change how the answer is delivered, not what it is.
pub const EXCLUDED_FIELDS: &[&str] = &["model", "stream", "stream_options", "user"];

/// A cache key (SHA-256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Who the entry belongs to: `anon` without a key, else `k:` and the first 16 hex digits of the
/// SHA-256 of the key the client presented (a proxy key, or a bring-your-own provider key). The
/// key itself is never stored; the full hash goes into [`Key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Full SHA-256 of the presented key (empty for `anon`).
    hash: Vec<u8>,
    /// What is stored in the `tenant` column.
    pub label: String,
}

impl Tenant {
    pub fn of(auth: &ClientAuth, headers: &http::HeaderMap) -> Tenant {
        let token = match auth {
            ClientAuth::Open => None,
            ClientAuth::ProxyKey => presented_token(headers),
            ClientAuth::Byok { key, .. } => Some(key.as_str()),
        };
        match token {
            None => Tenant {
                hash: Vec::new(),
                label: "anon".into(),
            },
            Some(t) => {
                let hash = Sha256::digest(t.as_bytes()).to_vec();
                let label = format!("k:{}", &hex(&hash)[..16]);
                Tenant { hash, label }
            }
        }
    }
}

/// The model a request is cached under: for an alias, its first target as written
/// (`provider/model` when pinned), otherwise the requested name. This is stable (it does not move
/// with breaker state, discovery or the latency strategy), and an alias and a direct request for
/// its target share entries.
pub fn resolved_model(cfg: &Config, requested: &str) -> String {
    match cfg
        .aliases
        .get(requested)
        .filter(|_| cfg.aliases_enabled)
        .and_then(|a| a.targets.first())
    {
        Some(t) => match t.provider.and_then(|i| cfg.providers.get(i)) {
            Some(p) => format!("{}/{}", p.name, t.model),
            None => t.model.clone(),
        },
        None => requested.to_string(),
    }
}

/// Whether the cache mode lets this request be cached: `all` caches everything; `deterministic`
/// only `temperature: 0` with `n` absent, null or 1.
pub fn cacheable(req: &Map<String, Value>, mode: CacheMode) -> bool {
    match mode {
        CacheMode::All => true,
        CacheMode::Deterministic => {
            let temp_zero = req
                .get("temperature")
                .and_then(Value::as_f64)
                .is_some_and(|t| t == 0.0);
            let n_one = match req.get("n") {
                None | Some(Value::Null) => true,
                Some(v) => v.as_f64() == Some(1.0),
            };
            temp_zero && n_one
        }
    }
}

/// The key of a request (`req` is the parsed body, `model` the resolved model).
pub fn key(req: &Map<String, Value>, model: &str, local_only: bool, tenant: &Tenant) -> Key {
    let mut out = String::with_capacity(256);
    out.push_str("stockyard-cache-v1{\"local_only\":");
    out.push_str(if local_only { "true" } else { "false" });
    out.push_str(",\"model\":");
    write_string(&mut out, model);
    out.push_str(",\"request\":{");
    let mut keys: Vec<&String> = req
        .keys()
        .filter(|k| !EXCLUDED_FIELDS.contains(&k.as_str()))
        .collect();
    keys.sort();
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(&mut out, k);
        out.push(':');
        if let Some(v) = req.get(*k) {
            canonical(v, &mut out);
        }
    }
    out.push_str("}}");
    let mut h = Sha256::new();
    h.update((tenant.hash.len() as u64).to_le_bytes());
    h.update(&tenant.hash);
    h.update(out.as_bytes());
    Key(h.finalize().into())
}

/// Canonical JSON text of a value: sorted object keys, no whitespace, normalised numbers.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    canonical(v, &mut out);
    out
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k);
                out.push(':');
                if let Some(x) = m.get(*k) {
                    canonical(x, out);
                }
            }
            out.push('}');
        }
    }
}

/// Integers as integers; a float with no fractional part (within the exactly representable
/// range) as the integer it equals, so `1`, `1.0` and `1e0` agree; other floats in serde_json's
/// shortest round-trip form.
fn write_number(n: &serde_json::Number, out: &mut String) {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
            let _ = write!(out, "{}", f as i64);
        } else {
            out.push_str(&n.to_string());
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    // Serialising a &str to JSON cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        match serde_json::from_str(s).unwrap() {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn anon() -> Tenant {
        Tenant {
            hash: Vec::new(),
            label: "anon".into(),
        }
    }

    #[test]
    fn order_whitespace_and_number_forms_do_not_matter() {
        let a = obj(
            r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"hi"}],"max_tokens":10}"#,
        );
        let b = obj(
            "{ \"max_tokens\" : 10.0,\n \"messages\": [ {\"content\":\"hi\", \"role\":\"user\"} ],\n \"temperature\": 0.0, \"model\": \"other\", \"stream\": true, \"user\": \"u1\", \"stream_options\": {\"include_usage\": true} }",
        );
        assert_eq!(key(&a, "m", false, &anon()), key(&b, "m", false, &anon()));
    }

    #[test]
    fn content_model_scope_and_params_matter() {
        let a = obj(r#"{"temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
        let b = obj(r#"{"temperature":0,"messages":[{"role":"user","content":"hi!"}]}"#);
        let c = obj(r#"{"temperature":0,"messages":[{"role":"user","content":"hi"}],"seed":1}"#);
        let t = anon();
        let k = key(&a, "m", false, &t);
        assert_ne!(k, key(&b, "m", false, &t));
        assert_ne!(k, key(&c, "m", false, &t));
        assert_ne!(k, key(&a, "m2", false, &t));
        assert_ne!(k, key(&a, "m", true, &t));
        let other = Tenant {
            hash: vec![1; 32],
            label: "k:0101".into(),
        };
        assert_ne!(k, key(&a, "m", false, &other));
    }

    #[test]
    fn deterministic_mode_needs_temperature_zero_and_one_choice() {
        let d = CacheMode::Deterministic;
        assert!(cacheable(&obj(r#"{"temperature":0}"#), d));
        assert!(cacheable(&obj(r#"{"temperature":0.0,"n":1}"#), d));
        assert!(cacheable(&obj(r#"{"temperature":-0.0,"n":null}"#), d));
        assert!(!cacheable(&obj(r#"{}"#), d));
        assert!(!cacheable(&obj(r#"{"temperature":0.7}"#), d));
        assert!(!cacheable(&obj(r#"{"temperature":"0"}"#), d));
        assert!(!cacheable(&obj(r#"{"temperature":0,"n":2}"#), d));
        assert!(cacheable(
            &obj(r#"{"temperature":0.7,"n":3}"#),
            CacheMode::All
        ));
    }

    #[test]
    fn canonical_json_sorts_nested_keys() {
        let v: Value = serde_json::from_str(r#"{"b":[{"y":1,"x":2.50}],"a":"é\n"}"#).unwrap();
        assert_eq!(canonical_json(&v), r#"{"a":"é\n","b":[{"x":2.5,"y":1}]}"#);
    }
}
