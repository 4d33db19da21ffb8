//! Client authentication for the proxy routes (SPEC section 5): proxy keys, bring-your-own
//! provider keys, and the admin key rule for `/api/*`.

use crate::config::Config;
use crate::error::ApiError;
use crate::providers::Kind;
use http::HeaderMap;
use std::net::SocketAddr;

/// Who is calling.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No proxy keys configured and no provider key offered.
    Open,
    /// Presented a configured proxy key.
    ProxyKey,
    /// A provider key of `kind` that differs from the server's: goes straight to that provider.
    Byok { kind: Kind, key: String },
}

/// Constant-time comparison (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The key the client presented: a bearer token, else `x-api-key`.
pub fn presented_token(headers: &HeaderMap) -> Option<&str> {
    bearer(headers).or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|t| !t.is_empty())
    })
}

pub fn authenticate(cfg: &Config, headers: &HeaderMap) -> Result<ClientAuth, ApiError> {
    let token = presented_token(headers);
    let Some(token) = token else {
        return if cfg.api_keys.is_empty() {
            Ok(ClientAuth::Open)
        } else {
            Err(ApiError::Unauthorized)
        };
    };
    if cfg
        .api_keys
        .iter()
        .any(|k| ct_eq(k.expose().as_bytes(), token.as_bytes()))
    {
        return Ok(ClientAuth::ProxyKey);
    }
    if let Some(kind) = Kind::for_key_shape(token) {
        let same_as_server = cfg.providers.iter().any(|p| {
            p.kind == kind
                && p.api_key
                    .as_ref()
                    .is_some_and(|k| ct_eq(k.expose().as_bytes(), token.as_bytes()))
        });
        if !same_as_server {
            return Ok(ClientAuth::Byok {
                kind,
                key: token.to_string(),
            });
        }
        if cfg.api_keys.is_empty() {
            return Ok(ClientAuth::Open);
        }
    }
    if cfg.api_keys.is_empty() {
        Ok(ClientAuth::Open)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// The admin rule: with `admin_key`, require it (X-Admin-Key or Bearer); without, loopback only.
pub fn authorize_admin(
    cfg: &Config,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Result<(), ApiError> {
    match &cfg.admin_key {
        Some(key) => {
            let offered = headers
                .get("x-admin-key")
                .and_then(|v| v.to_str().ok())
                .or_else(|| bearer(headers));
            match offered {
                Some(o) if ct_eq(o.as_bytes(), key.expose().as_bytes()) => Ok(()),
                _ => Err(ApiError::AdminUnauthorized),
            }
        }
        None if peer.is_some_and(|p| p.ip().is_loopback()) => Ok(()),
        None => Err(ApiError::AdminForbidden),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::{load_str, Env};

    fn h(auth: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert("authorization", auth.parse().unwrap());
        m
    }

    #[test]
    fn byok_and_proxy_keys() {
        let env = Env::from_pairs([("HOME", "/tmp")]);
        let open = load_str(
            "providers:\n  - {name: openai, api_key: sk-server}\n",
            "t",
            &env,
        )
        .unwrap();
        assert_eq!(
            authenticate(&open, &HeaderMap::new()).unwrap(),
            ClientAuth::Open
        );
        assert_eq!(
            authenticate(&open, &h("Bearer ollama")).unwrap(),
            ClientAuth::Open
        );
        assert_eq!(
            authenticate(&open, &h("Bearer sk-server")).unwrap(),
            ClientAuth::Open
        );
        assert_eq!(
            authenticate(&open, &h("Bearer sk-ant-mine")).unwrap(),
            ClientAuth::Byok {
                kind: Kind::Anthropic,
                key: "sk-ant-mine".into()
            }
        );
        let locked = load_str(
            "api_keys: [sk-proxy-1]\nproviders:\n  - {name: openai, api_key: sk-server}\n",
            "t",
            &env,
        )
        .unwrap();
        assert!(authenticate(&locked, &HeaderMap::new()).is_err());
        assert!(authenticate(&locked, &h("Bearer nope")).is_err());
        assert!(authenticate(&locked, &h("Bearer sk-server")).is_err());
        assert_eq!(
            authenticate(&locked, &h("Bearer sk-proxy-1")).unwrap(),
            ClientAuth::ProxyKey
        );
        assert_eq!(
            authenticate(&locked, &h("Bearer gsk_mine")).unwrap(),
            ClientAuth::Byok {
                kind: Kind::Groq,
                key: "gsk_mine".into()
            }
        );
    }

    #[test]
    fn admin_rule() {
        let env = Env::from_pairs([("HOME", "/tmp")]);
        let c = load_str("admin_key: adm\n", "t", &env).unwrap();
        let mut hm = HeaderMap::new();
        assert!(authorize_admin(&c, &hm, None).is_err());
        hm.insert("x-admin-key", "adm".parse().unwrap());
        assert!(authorize_admin(&c, &hm, None).is_ok());
        assert!(authorize_admin(&c, &h("Bearer adm"), None).is_ok());
        let c = load_str("", "t", &env).unwrap();
        let lo: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:5".parse().unwrap();
        assert!(authorize_admin(&c, &HeaderMap::new(), Some(lo)).is_ok());
        assert!(matches!(
            authorize_admin(&c, &HeaderMap::new(), Some(remote)),
            Err(ApiError::AdminForbidden)
        ));
    }
}
