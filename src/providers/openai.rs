//! The OpenAI-compatible wire format: how a request is sent to any provider that speaks it, and
//! how transport failures map onto attempt errors. Bodies pass through untouched except for the
//! fields the proxy rewrites.

use crate::providers::transport::{error_chain, SendError, UpstreamResponse};
use crate::providers::Wire;
use crate::proxy::classify::{http_error, parse_retry_after, AttemptError};
use crate::proxy::state::{auth_header, ProviderRuntime};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderName, HeaderValue};
use std::time::{Duration, Instant};

/// The Messages API version Stockyard speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Upstream headers worth passing back to the client.
pub const RELAYED_HEADERS: &[&str] = &[
    "x-request-id",
    "openai-processing-ms",
    "openai-organization",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
];

/// Sends `body` to `path` (e.g. `/chat/completions`) and waits for response headers within the
/// provider's `first_byte` timeout. `key` overrides the configured key (bring-your-own key).
/// Only these headers go upstream: content type, accept, the provider's auth (never the
/// client's), `anthropic-version` for Anthropic, and the provider's configured `headers`.
pub async fn send(
    p: &ProviderRuntime,
    path: &str,
    body: Vec<u8>,
    key: Option<&str>,
    accept_sse: bool,
) -> Result<UpstreamResponse, AttemptError> {
    let uri = p.endpoint(path).ok_or_else(|| {
        AttemptError::Connect("the provider's base_url is not a valid URL".into())
    })?;
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(4 + p.cfg.headers.len());
    headers.push((
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    ));
    headers.push((
        http::header::ACCEPT,
        HeaderValue::from_static(if accept_sse {
            "text/event-stream"
        } else {
            "application/json"
        }),
    ));
    match key {
        Some(k) => headers.extend(auth_header(p.cfg.kind, k)),
        None => headers.extend(p.auth().cloned()),
    }
    if p.cfg.kind.info().wire == Wire::Anthropic {
        headers.push((
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static(ANTHROPIC_VERSION),
        ));
    }
    headers.extend(p.cfg.headers.iter().cloned());
    let first_byte = p.cfg.timeouts.first_byte;
    let sent = p.upstream.post(uri, headers, Bytes::from(body));
    match tokio::time::timeout(first_byte, sent).await {
        Err(_) => Err(AttemptError::FirstByteTimeout(first_byte)),
        Ok(Err(SendError::Connect(msg))) => Err(AttemptError::Connect(msg)),
        Ok(Err(SendError::ConnectTimeout)) => {
            Err(AttemptError::ConnectTimeout(p.cfg.timeouts.connect))
        }
        Ok(Err(SendError::Transport(msg))) => Err(AttemptError::Transport(msg)),
        Ok(Ok(resp)) => Ok(resp),
    }
}

/// Maps a reqwest error onto the attempt error classes.
pub fn transport_error(e: &reqwest::Error, connect_timeout: Duration) -> AttemptError {
    let msg = error_chain(e);
    if e.is_connect() {
        if e.is_timeout() {
            AttemptError::ConnectTimeout(connect_timeout)
        } else {
            AttemptError::Connect(msg)
        }
    } else if e.is_timeout() {
        AttemptError::ConnectTimeout(connect_timeout)
    } else {
        AttemptError::Transport(msg)
    }
}

/// A failure while reading an answer's body (reset, closed early, bad chunking).
pub fn body_error(e: &hyper::Error) -> AttemptError {
    AttemptError::Transport(error_chain(e))
}

/// Reads a whole (error) body with a size cap, honouring the idle and total deadlines.
pub async fn read_limited(
    resp: UpstreamResponse,
    limit: usize,
    idle: Duration,
    deadline: Instant,
) -> Result<(Bytes, bool), AttemptError> {
    let mut stream = resp.bytes_stream();
    let mut buf = bytes::BytesMut::new();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(AttemptError::TotalTimeout(Duration::ZERO));
        }
        let wait = idle.min(deadline - now);
        match tokio::time::timeout(wait, stream.next()).await {
            Err(_) if wait < idle => return Err(AttemptError::TotalTimeout(wait)),
            Err(_) => return Err(AttemptError::IdleTimeout(idle)),
            Ok(None) => return Ok((buf.freeze(), false)),
            Ok(Some(Err(e))) => return Err(body_error(&e)),
            Ok(Some(Ok(chunk))) => {
                let room = limit.saturating_sub(buf.len());
                if chunk.len() > room {
                    buf.extend_from_slice(&chunk[..room]);
                    return Ok((buf.freeze(), true));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

/// Turns a non-2xx response into a classified attempt error (reading at most 1 MiB of body).
pub async fn error_from_response(
    resp: UpstreamResponse,
    idle: Duration,
    deadline: Instant,
) -> AttemptError {
    let status = resp.status().as_u16();
    let retry_after = parse_retry_after(resp.headers());
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // A broken error body still tells us the status; keep what arrived.
    let body = read_limited(resp, 1 << 20, idle, deadline)
        .await
        .map(|(b, _)| b)
        .unwrap_or_default();
    http_error(status, body, content_type, retry_after)
}
