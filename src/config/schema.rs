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
    pub header_read_timeout: Option<Dur>,
    pub max_in_flight: Option<usize>,
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

// ---------------------------------------------------------------------------------------------
// The list of accepted keys, for the docs-vs-schema check
// ---------------------------------------------------------------------------------------------

/// The field names serde derived for struct `T`: the same table its "unknown field, expected
/// one of ..." message (and so the "did you mean" hint) is built from. Read by handing `T`'s
/// `Deserialize` impl a deserializer that only records what `deserialize_struct` is given.
pub fn struct_fields<T: de::DeserializeOwned>() -> &'static [&'static str] {
    struct Capture<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Capture<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Capture(&mut fields));
    fields
}

/// Returns a struct's field names (see [`struct_fields`]).
pub type FieldsFn = fn() -> &'static [&'static str];

/// Where each struct of the file format sits: the path prefix of its keys, and its fields.
/// `[]` marks a list entry (`providers[].name`), `<...>` a key the user chooses
/// (`pricing.<model>.input`). A new field on any of these structs appears in [`known_keys`]
/// by itself; a new nested struct needs a line here.
pub const SECTIONS: &[(&str, FieldsFn)] = &[
    ("", struct_fields::<RawConfig>),
    ("providers[]", struct_fields::<RawProvider>),
    ("providers[].timeouts", struct_fields::<RawTimeouts>),
    ("providers[].health_check", struct_fields::<RawHealthCheck>),
    ("model_alias", struct_fields::<RawModelAlias>),
    ("model_alias.aliases.<alias>", struct_fields::<RawAliasLong>),
    ("failover", struct_fields::<RawFailover>),
    ("failover.circuit_breaker", struct_fields::<RawBreaker>),
    ("traces", struct_fields::<RawTraces>),
    ("cache", struct_fields::<RawCache>),
    ("pricing.<model>", struct_fields::<RawPrice>),
];

/// Every key path the config file accepts, e.g. `listen`, `providers[].timeouts.connect`,
/// `model_alias.aliases.<alias>.local_only`, `pricing.<model>.input`; the keys that hold a
/// section (`failover`, `providers[].timeouts`) are included. Sorted, no duplicates.
pub fn known_keys() -> Vec<String> {
    let mut keys = std::collections::BTreeSet::new();
    for (prefix, fields) in SECTIONS {
        for f in fields() {
            let key = if prefix.is_empty() {
                f.to_string()
            } else {
                format!("{prefix}.{f}")
            };
            keys.insert(key);
        }
    }
    // An alias entry is itself a key: a target, a list of targets, or the long form.
    keys.insert("model_alias.aliases.<alias>".to_string());
    keys.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_fields_reads_serde_tables() {
        assert!(struct_fields::<RawConfig>().contains(&"listen"));
        assert!(struct_fields::<RawProvider>().contains(&"base_url"));
        assert_eq!(struct_fields::<RawPrice>(), &["input", "output"]);
    }

    #[test]
    fn every_section_hangs_off_a_known_key() {
        // A section's own key must be a field of its parent, so renaming a field cannot leave
        // a stale line in SECTIONS.
        let keys = known_keys();
        for (prefix, fields) in SECTIONS {
            assert!(!fields().is_empty(), "section `{prefix}` has no fields");
            if prefix.is_empty() {
                continue;
            }
            let own = prefix.trim_end_matches("[]");
            let parent = match own.rsplit_once('.') {
                Some((p, last)) if last.starts_with('<') => p.to_string(),
                _ => own.to_string(),
            };
            assert!(
                keys.contains(&parent),
                "section `{prefix}`: no key `{parent}`"
            );
        }
        assert!(keys.contains(&"providers[].timeouts.first_byte".to_string()));
        assert!(keys.contains(&"pricing.<model>.output".to_string()));
    }
}
