//! The file format exactly as users write it (SPEC section 3). Every struct rejects unknown keys;
//! [`super::load`] turns serde's message into a `file:line:col` with a "did you mean" hint.

use super::units::{ByteSize, Dur};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub port: Option<u16>,
    pub data_dir: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub api_keys: Option<Vec<Option<String>>>,
    pub admin_key: Option<String>,
    pub allow_unauthenticated: Option<bool>,
    pub max_body_size: Option<ByteSize>,
    pub shutdown_grace: Option<Dur>,
    pub providers: Option<RawProviders>,
    pub model_alias: Option<RawModelAlias>,
    pub failover: Option<RawFailover>,
    pub traces: Option<RawTraces>,
    pub cache: Option<RawCache>,
    pub pricing: Option<BTreeMap<String, RawPrice>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `providers:` as a list of entries with `name`, or a map keyed by name. `map_form` records
/// which, so positions can be looked up by the right path.
#[derive(Debug, Default)]
pub struct RawProviders {
    pub entries: Vec<RawProvider>,
    pub map_form: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    pub priority: Option<i64>,
    pub models: Option<Vec<String>>,
    pub model_map: Option<BTreeMap<String, String>>,
    pub local: Option<bool>,
    pub enabled: Option<bool>,
    pub context_window: Option<u64>,
    pub truncate: Option<bool>,
    pub max_concurrency: Option<usize>,
    pub retries: Option<u32>,
    pub timeouts: Option<RawTimeouts>,
    pub health_check: Option<RawHealthCheck>,
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<Dur>,
    pub first_byte: Option<Dur>,
    pub idle: Option<Dur>,
    pub total: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub interval: Option<Dur>,
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelAlias {
    pub enabled: Option<bool>,
    pub aliases: Option<BTreeMap<String, RawAlias>>,
}

/// An alias target: one `provider/model` string, a list of them, or the long form.
#[derive(Debug)]
pub enum RawAlias {
    One(String),
    Chain(Vec<String>),
    Long(RawAliasLong),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAliasLong {
    pub targets: Vec<String>,
    pub local_only: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    pub enabled: Option<bool>,
    pub strategy: Option<Strategy>,
    pub providers: Option<Vec<String>>,
    pub hedge_after: Option<Dur>,
    pub local_factor: Option<f64>,
    pub retry_on: Option<Vec<RetryOnEntry>>,
    pub circuit_breaker: Option<RawBreaker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Priority,
    Latency,
}

/// One `retry_on` entry: an HTTP status or one of the words `timeout`, `connect`, `stream_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOnEntry {
    Status(u16),
    Timeout,
    Connect,
    StreamError,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub enabled: Option<bool>,
    pub failure_threshold: Option<u32>,
    pub recovery_timeout: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTraces {
    pub enabled: Option<bool>,
    pub store_bodies: Option<bool>,
    pub retention_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub enabled: Option<bool>,
    pub mode: Option<CacheMode>,
    pub ttl: Option<Dur>,
    pub max_entries: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    #[default]
    Deterministic,
    All,
}

#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: f64,
    pub output: f64,
}

impl<'de> Deserialize<'de> for RawProviders {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawProviders;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of providers, or a map of providers keyed by name")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawProviders, E> {
                Ok(RawProviders::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawProviders, A::Error> {
                let mut entries = Vec::new();
                while let Some(p) = seq.next_element::<RawProvider>()? {
                    entries.push(p);
                }
                Ok(RawProviders {
                    entries,
                    map_form: false,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawProviders, A::Error> {
                let mut entries = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    let mut p = map.next_value::<Option<RawProvider>>()?.unwrap_or_default();
                    if p.name.as_ref().is_some_and(|n| n != &name) {
                        return Err(de::Error::custom(format!(
                            "provider `{name}` has a different `name` inside; in the map form the key is the name"
                        )));
                    }
                    p.name = Some(name);
                    entries.push(p);
                }
                Ok(RawProviders {
                    entries,
                    map_form: true,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawAlias {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAlias;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a target like `provider/model`, a list of targets, or {targets, local_only}",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAlias, E> {
                Ok(RawAlias::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawAlias, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(RawAlias::Chain(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawAlias, A::Error> {
                RawAliasLong::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawAlias::Long)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RetryOnEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RetryOnEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "an HTTP status (e.g. 429) or one of `timeout`, `connect`, `stream_error`",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOnEntry, E> {
                match u16::try_from(v) {
                    Ok(s) if (100..=599).contains(&s) => Ok(RetryOnEntry::Status(s)),
                    _ => Err(E::custom(format!("`{v}` is not an HTTP status"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOnEntry, E> {
                Err(E::custom(format!("`{v}` is not an HTTP status")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOnEntry, E> {
                match v {
                    "timeout" => Ok(RetryOnEntry::Timeout),
                    "connect" => Ok(RetryOnEntry::Connect),
                    "stream_error" => Ok(RetryOnEntry::StreamError),
                    other => match other.parse::<u64>() {
                        Ok(n) => self.visit_u64(n),
                        Err(_) => Err(E::custom(format!(
                            "unknown retry_on entry `{other}`; expected an HTTP status or one of `timeout`, `connect`, `stream_error`"
                        ))),
                    },
                }
            }
        }
        d.deserialize_any(V)
    }
}
