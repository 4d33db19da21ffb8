//! The client's JSON request body, parsed just enough to route it. Unknown fields are kept as
//! raw JSON text in their original order and written back untouched; only `model` (and, for
//! streams, `stream_options`) is replaced when the body is sent upstream.

use crate::error::ApiError;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A JSON object as an ordered list of (key, raw value) borrowed from the request bytes.
#[derive(Debug)]
pub struct RawObject<'a> {
    pub fields: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> RawObject<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<RawObject<'a>, ApiError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let obj = de.deserialize_map(ObjVisitor).map_err(|e| {
            if e.classify() == serde_json::error::Category::Data {
                ApiError::InvalidRequest("request body must be a JSON object".into())
            } else {
                ApiError::InvalidJson(e.to_string())
            }
        })?;
        de.end().map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        Ok(obj)
    }

    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Serialises the object with some fields replaced (`Some(raw)`) or removed (`None`), and
    /// others appended when absent. Untouched fields are copied byte for byte.
    pub fn write_with(&self, overrides: &[(&str, Option<&str>)]) -> Vec<u8> {
        let len: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = Vec::with_capacity(len + 64);
        out.push(b'{');
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !first {
                out.push(b',');
            }
            first = false;
        };
        for (k, v) in &self.fields {
            let value = match overrides.iter().find(|(name, _)| *name == k.as_ref()) {
                Some((_, None)) => continue,
                Some((_, Some(raw))) => *raw,
                None => v.get(),
            };
            sep(&mut out);
            write_key(&mut out, k);
            out.extend_from_slice(value.as_bytes());
        }
        for (name, value) in overrides {
            if let Some(raw) = value {
                if self.get(name).is_none() {
                    sep(&mut out);
                    write_key(&mut out, name);
                    out.extend_from_slice(raw.as_bytes());
                }
            }
        }
        out.push(b'}');
        out
    }
}

fn write_key(out: &mut Vec<u8>, k: &str) {
    // serde_json escapes the key exactly as JSON requires; it cannot fail for a Vec writer.
    let _ = serde_json::to_writer(&mut *out, k);
    out.push(b':');
}

struct ObjVisitor;

impl<'de> Visitor<'de> for ObjVisitor {
    type Value = RawObject<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'de>, A::Error> {
        let mut fields = Vec::with_capacity(16);
        while let Some((k, v)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
            fields.push((k.0, v));
        }
        Ok(RawObject { fields })
    }
}

/// An object key borrowed from the request bytes, copied only when it has escapes. (serde's own
/// `Cow<str>` always copies: one allocation per field of every request.)
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// What the proxy needs to know about a chat request.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    pub obj: RawObject<'a>,
    pub model: String,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage`.
    pub include_usage: bool,
}

impl<'a> ChatRequest<'a> {
    /// Parses and validates a `/v1/chat/completions` body, naming the offending field on error.
    pub fn parse(bytes: &'a [u8]) -> Result<ChatRequest<'a>, ApiError> {
        let obj = RawObject::parse(bytes)?;
        let model = match obj.get("model") {
            None => return Err(missing("model")),
            Some(v) => match serde_json::from_str::<&str>(v.get())
                .map(Cow::Borrowed)
                .or_else(|_| serde_json::from_str::<String>(v.get()).map(Cow::Owned))
            {
                Ok(s) if !s.trim().is_empty() => s.into_owned(),
                Ok(_) => {
                    return Err(ApiError::InvalidField {
                        param: "model",
                        message: "`model` must not be empty".into(),
                    })
                }
                Err(_) => return Err(wrong_type("model", "a string")),
            },
        };
        match obj.get("messages") {
            None => return Err(missing("messages")),
            Some(v) => {
                let t = v.get().trim_start();
                if !t.starts_with('[') {
                    return Err(wrong_type("messages", "an array of message objects"));
                }
                if t[1..].trim_start().starts_with(']') {
                    return Err(ApiError::InvalidField {
                        param: "messages",
                        message: "`messages` must contain at least one message".into(),
                    });
                }
            }
        }
        let stream = match obj.get("stream") {
            None => false,
            Some(v) => match v.get().trim() {
                "true" => true,
                "false" | "null" => false,
                _ => return Err(wrong_type("stream", "a boolean")),
            },
        };
        let include_usage = obj
            .get("stream_options")
            .and_then(|v| serde_json::from_str::<StreamOptions>(v.get()).ok())
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        Ok(ChatRequest {
            obj,
            model,
            stream,
            include_usage,
        })
    }

    /// The body to send an OpenAI-compatible upstream, with `model` replaced.
    pub fn upstream_body(&self, model: &str) -> Vec<u8> {
        self.upstream_body_with(model, None)
    }

    /// As [`Self::upstream_body`], with `messages` (raw JSON) replaced too when given.
    pub fn upstream_body_with(&self, model: &str, messages: Option<&str>) -> Vec<u8> {
        let model_json = serde_json::Value::String(model.to_string()).to_string();
        let mut overrides: Vec<(&str, Option<&str>)> = Vec::with_capacity(3);
        overrides.push(("model", Some(&model_json)));
        if let Some(m) = messages {
            overrides.push(("messages", Some(m)));
        }
        if self.stream && !self.include_usage {
            // Ask for usage anyway so traces get token counts; the extra chunk is not relayed.
            overrides.push(("stream_options", Some(r#"{"include_usage":true}"#)));
        }
        self.obj.write_with(&overrides)
    }
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

fn missing(param: &'static str) -> ApiError {
    ApiError::InvalidField {
        param,
        message: format!("`{param}` is required"),
    }
}

fn wrong_type(param: &'static str, want: &str) -> ApiError {
    ApiError::InvalidField {
        param,
        message: format!("`{param}` must be {want}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_borrowed_unless_escaped() {
        let body = br#"{"model":"m","mo\u0064el2":1,"x\"y":[1],"\u00e9":null}"#;
        let obj = RawObject::parse(body).unwrap();
        let keys: Vec<(&str, bool)> = obj
            .fields
            .iter()
            .map(|(k, _)| (k.as_ref(), matches!(k, Cow::Borrowed(_))))
            .collect();
        assert_eq!(
            keys,
            [
                ("model", true),
                ("model2", false),
                ("x\"y", false),
                ("é", false)
            ]
        );
        assert_eq!(obj.get("model2").map(|v| v.get()), Some("1"));
        // Written back with the keys escaped as JSON requires.
        let out = obj.write_with(&[]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::from_slice::<serde_json::Value>(body).unwrap()
        );
    }

    #[test]
    fn keeps_unknown_fields_and_order() {
        let body = br#"{"model":"fast","messages":[{"role":"user","content":"hi"}],"x_custom":{"a":[1,2]},"temperature":0.5}"#;
        let r = ChatRequest::parse(body).unwrap();
        assert_eq!(r.model, "fast");
        assert!(!r.stream);
        let out = String::from_utf8(r.upstream_body("llama3:8b")).unwrap();
        assert_eq!(
            out,
            r#"{"model":"llama3:8b","messages":[{"role":"user","content":"hi"}],"x_custom":{"a":[1,2]},"temperature":0.5}"#
        );
    }

    #[test]
    fn stream_usage_injection() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let r = ChatRequest::parse(body).unwrap();
        assert!(r.stream && !r.include_usage);
        let v: serde_json::Value = serde_json::from_slice(&r.upstream_body("m")).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let body = br#"{"model":"m","messages":[1],"stream":true,"stream_options":{"include_usage":true}}"#;
        let r = ChatRequest::parse(body).unwrap();
        assert!(r.include_usage);
    }

    #[test]
    fn errors_name_the_field() {
        let e = ChatRequest::parse(b"{\"messages\":[1]}").unwrap_err();
        assert_eq!(e.param(), Some("model"));
        let e = ChatRequest::parse(b"{\"model\":3,\"messages\":[1]}").unwrap_err();
        assert_eq!(e.param(), Some("model"));
        let e = ChatRequest::parse(b"{\"model\":\"m\"}").unwrap_err();
        assert_eq!(e.param(), Some("messages"));
        let e = ChatRequest::parse(b"{\"model\":\"m\",\"messages\":\"hi\"}").unwrap_err();
        assert_eq!(e.param(), Some("messages"));
        let e = ChatRequest::parse(b"{\"model\":\"m\",\"messages\":[]}").unwrap_err();
        assert_eq!(e.param(), Some("messages"));
        let e = ChatRequest::parse(b"{\"model\":\"m\",\"messages\":[1],\"stream\":\"yes\"}")
            .unwrap_err();
        assert_eq!(e.param(), Some("stream"));
        assert!(matches!(
            ChatRequest::parse(b"{\"model\":").unwrap_err(),
            ApiError::InvalidJson(_)
        ));
        assert!(matches!(
            ChatRequest::parse(b"[1,2]").unwrap_err(),
            ApiError::InvalidRequest(_)
        ));
        assert!(matches!(
            ChatRequest::parse(b"{} trailing").unwrap_err(),
            ApiError::InvalidJson(_)
        ));
    }

    #[test]
    fn escaped_keys_round_trip() {
        let body = br#"{"mo\u0064el":"m","messages":[1],"k\"q":1}"#;
        let r = ChatRequest::parse(body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.upstream_body("n")).unwrap();
        assert_eq!(v["model"], "n");
        assert_eq!(v["k\"q"], 1);
    }
}
