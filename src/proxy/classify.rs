//! What went wrong with one upstream attempt, and what that means for failover (SPEC section 5):
//! retryable (next provider, counts against the breaker), skip (next provider, no breaker count),
//! or final (returned to the client as is).

use crate::config::RetryOn;
use bytes::Bytes;
use std::time::Duration;

/// The failover class of an attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Fail over and count a breaker failure. `same_provider` says whether retrying the same
    /// provider can help (an exhausted quota cannot).
    Retryable { same_provider: bool },
    /// Move on without counting against the breaker (404, context length).
    Skip,
    /// Return to the client; never retried.
    Final,
}

/// One failed attempt.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("connect timeout after {0:?}")]
    ConnectTimeout(Duration),
    #[error("no response within first_byte timeout ({0:?})")]
    FirstByteTimeout(Duration),
    #[error("no data within idle timeout ({0:?})")]
    IdleTimeout(Duration),
    #[error("response not complete within total timeout ({0:?})")]
    TotalTimeout(Duration),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("malformed upstream response: {0}")]
    Malformed(String),
    #[error("request cannot be translated for this provider: {0}")]
    Translate(String),
    #[error("stream failed before any content: {0}")]
    StreamError(String),
    #[error("upstream answered {status} with an error body")]
    ErrorBody { status: u16, body: Bytes },
    #[error("upstream returned HTTP {status}")]
    Http {
        status: u16,
        body: Bytes,
        content_type: Option<String>,
        retry_after: Option<Duration>,
        /// Classified from status, error type and code.
        kind: HttpErrorKind,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpErrorKind {
    Generic,
    NotFound,
    ContextLength,
    QuotaExhausted,
}

/// The shortest secret [`AttemptError::redact`] replaces (shorter strings would match ordinary
/// text).
const MIN_SECRET_LEN: usize = 6;

/// What replaces a secret in upstream error text.
pub const REDACTED: &str = "[redacted]";

fn redact_str(s: &mut String, secrets: &[&str]) {
    for k in secrets {
        if k.len() >= MIN_SECRET_LEN && s.contains(k) {
            *s = s.replace(k, REDACTED);
        }
    }
}

/// `text` with every secret replaced by [`REDACTED`].
pub fn redact_text(text: &str, secrets: &[&str]) -> String {
    let mut s = text.to_string();
    redact_str(&mut s, secrets);
    s
}

fn redact_bytes(b: &mut Bytes, secrets: &[&str]) {
    for k in secrets {
        if k.len() >= MIN_SECRET_LEN && memchr::memmem::find(b, k.as_bytes()).is_some() {
            let text = String::from_utf8_lossy(b).replace(k, REDACTED);
            *b = Bytes::from(text);
        }
    }
}

impl AttemptError {
    /// Replaces every occurrence of `secrets` (the keys sent upstream) in the upstream's text:
    /// providers that echo a rejected key in their error must not pass it on to the client,
    /// the traces or the logs.
    pub fn redact(mut self, secrets: &[&str]) -> AttemptError {
        match &mut self {
            AttemptError::Connect(s)
            | AttemptError::Transport(s)
            | AttemptError::Malformed(s)
            | AttemptError::Translate(s)
            | AttemptError::StreamError(s) => redact_str(s, secrets),
            AttemptError::ErrorBody { body, .. } | AttemptError::Http { body, .. } => {
                redact_bytes(body, secrets)
            }
            AttemptError::ConnectTimeout(_)
            | AttemptError::FirstByteTimeout(_)
            | AttemptError::IdleTimeout(_)
            | AttemptError::TotalTimeout(_) => {}
        }
        self
    }

    pub fn class(&self, retry_on: &RetryOn) -> Class {
        let retry = |ok: bool| {
            if ok {
                Class::Retryable {
                    same_provider: true,
                }
            } else {
                Class::Final
            }
        };
        match self {
            AttemptError::Connect(_) | AttemptError::Transport(_) => retry(retry_on.connect),
            AttemptError::ConnectTimeout(_) => retry(retry_on.connect || retry_on.timeout),
            AttemptError::FirstByteTimeout(_)
            | AttemptError::IdleTimeout(_)
            | AttemptError::TotalTimeout(_) => retry(retry_on.timeout),
            AttemptError::StreamError(_) => retry(retry_on.stream_error),
            AttemptError::Translate(_) => Class::Skip,
            AttemptError::Malformed(_) | AttemptError::ErrorBody { .. } => Class::Retryable {
                same_provider: true,
            },
            AttemptError::Http { status, kind, .. } => match kind {
                HttpErrorKind::NotFound | HttpErrorKind::ContextLength => Class::Skip,
                HttpErrorKind::QuotaExhausted => Class::Retryable {
                    same_provider: false,
                },
                HttpErrorKind::Generic => retry(retry_on.statuses.contains(status)),
            },
        }
    }

    /// The reason recorded in traces and in `error.attempts`.
    pub fn reason(&self) -> &'static str {
        match self {
            AttemptError::Connect(_) => "connect_error",
            AttemptError::ConnectTimeout(_) => "connect_timeout",
            AttemptError::FirstByteTimeout(_) => "first_byte_timeout",
            AttemptError::IdleTimeout(_) => "idle_timeout",
            AttemptError::TotalTimeout(_) => "total_timeout",
            AttemptError::Transport(_) => "transport_error",
            AttemptError::Malformed(_) => "malformed_response",
            AttemptError::ErrorBody { .. } => "upstream_error",
            AttemptError::StreamError(_) => "stream_error",
            AttemptError::Translate(_) => "untranslatable",
            AttemptError::Http { kind, .. } => match kind {
                HttpErrorKind::NotFound => "not_found",
                HttpErrorKind::ContextLength => "context_length",
                HttpErrorKind::QuotaExhausted => "quota_exhausted",
                HttpErrorKind::Generic => "http_error",
            },
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            AttemptError::Http { status, .. } | AttemptError::ErrorBody { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// The status a client sees when this was the last attempt of an exhausted chain.
    pub fn exhausted_status(&self) -> u16 {
        match self {
            AttemptError::Http { status, .. } => *status,
            AttemptError::Translate(_) => 400,
            AttemptError::ConnectTimeout(_)
            | AttemptError::FirstByteTimeout(_)
            | AttemptError::IdleTimeout(_)
            | AttemptError::TotalTimeout(_) => 504,
            _ => 502,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Builds the error for a non-2xx upstream answer, classifying it by status, then the error's
/// `code`/`type`, then (last resort) its message.
pub fn http_error(
    status: u16,
    body: Bytes,
    content_type: Option<String>,
    retry_after: Option<Duration>,
) -> AttemptError {
    let kind = classify_http(status, &body);
    AttemptError::Http {
        status,
        body,
        content_type,
        retry_after,
        kind,
    }
}

pub fn classify_http(status: u16, body: &[u8]) -> HttpErrorKind {
    if status == 404 {
        return HttpErrorKind::NotFound;
    }
    let info = ErrorInfo::from_body(body);
    if matches!(status, 400 | 413 | 422) && info.is_context_length() {
        return HttpErrorKind::ContextLength;
    }
    if status == 429 && info.code_or_type_is(&["insufficient_quota", "billing_hard_limit_reached"])
    {
        return HttpErrorKind::QuotaExhausted;
    }
    HttpErrorKind::Generic
}

/// The interesting parts of an upstream error body in any of the shapes providers use:
/// OpenAI `{"error":{...}}`, Anthropic `{"type":"error","error":{...}}`, Gemini
/// `[{"error":{...}}]`, or `{"error":"text"}`.
#[derive(Debug, Default)]
pub struct ErrorInfo {
    pub message: Option<String>,
    pub etype: Option<String>,
    pub code: Option<String>,
}

impl ErrorInfo {
    pub fn from_body(body: &[u8]) -> ErrorInfo {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return ErrorInfo::default();
        };
        let v = match &v {
            serde_json::Value::Array(a) => a.first().cloned().unwrap_or_default(),
            _ => v,
        };
        let e = &v["error"];
        let s = |x: &serde_json::Value| match x {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        if let serde_json::Value::String(m) = e {
            return ErrorInfo {
                message: Some(m.clone()),
                ..Default::default()
            };
        }
        ErrorInfo {
            message: s(&e["message"]).or_else(|| s(&v["message"])),
            etype: s(&e["type"]).or_else(|| s(&e["status"])),
            code: s(&e["code"]),
        }
    }

    fn code_or_type_is(&self, names: &[&str]) -> bool {
        [&self.code, &self.etype]
            .iter()
            .any(|f| f.as_deref().is_some_and(|f| names.contains(&f)))
    }

    pub fn is_context_length(&self) -> bool {
        if self.code_or_type_is(&[
            "context_length_exceeded",
            "string_above_max_length",
            "request_too_large",
        ]) {
            return true;
        }
        let Some(m) = &self.message else { return false };
        let m = m.to_ascii_lowercase();
        // Last resort: the wording each provider uses (OpenAI, Anthropic, Gemini, Groq, Mistral,
        // vLLM, llama.cpp, Ollama).
        [
            "maximum context length",
            "context length",
            "context_length",
            "prompt is too long",
            "context window",
            "too many tokens",
            "exceeds the context",
            "input token count",
            "reduce the length",
        ]
        .iter()
        .any(|p| m.contains(p))
    }
}

/// Parses `retry-after-ms`, else `retry-after` (seconds or an HTTP date).
pub fn parse_retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> RetryOn {
        RetryOn::default()
    }

    fn http(status: u16, body: &str) -> AttemptError {
        http_error(status, Bytes::from(body.to_string()), None, None)
    }

    #[test]
    fn status_classes() {
        for s in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert_eq!(
                http(s, "{}").class(&r()),
                Class::Retryable {
                    same_provider: true
                },
                "{s}"
            );
        }
        for s in [400, 401, 403, 422, 501] {
            assert_eq!(http(s, "{}").class(&r()), Class::Final, "{s}");
        }
        assert_eq!(http(404, "{}").class(&r()), Class::Skip);
    }

    #[test]
    fn retry_on_changes_the_set() {
        let mut ro = r();
        ro.statuses.remove(&503);
        ro.statuses.insert(400);
        ro.connect = false;
        assert_eq!(http(503, "").class(&ro), Class::Final);
        assert_eq!(
            http(400, "").class(&ro),
            Class::Retryable {
                same_provider: true
            }
        );
        assert_eq!(AttemptError::Connect("x".into()).class(&ro), Class::Final);
        assert_eq!(
            AttemptError::Malformed("x".into()).class(&ro),
            Class::Retryable {
                same_provider: true
            }
        );
    }

    #[test]
    fn context_length_by_code_type_and_wording() {
        let openai = r#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        let anthropic = r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#;
        let gemini = r#"[{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}]"#;
        let vllm = r#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens","type":"BadRequestError","code":400}"#;
        for b in [openai, anthropic, gemini, vllm] {
            assert_eq!(http(400, b).class(&r()), Class::Skip, "{b}");
            assert_eq!(http(400, b).reason(), "context_length");
        }
        assert_eq!(
            http(
                413,
                r#"{"error":{"type":"request_too_large","message":"x"}}"#
            )
            .class(&r()),
            Class::Skip
        );
        assert_eq!(
            http(400, r#"{"error":{"message":"bad temperature"}}"#).class(&r()),
            Class::Final
        );
    }

    #[test]
    fn quota_fails_over_without_same_provider_retry() {
        let b = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(
            http(429, b).class(&r()),
            Class::Retryable {
                same_provider: false
            }
        );
    }

    #[test]
    fn redact_removes_echoed_keys() {
        let e = http(401, r#"{"error":{"message":"Incorrect API key provided: sk-live-123456. Again: sk-live-123456"}}"#)
            .redact(&["sk-live-123456", "abc"]);
        let AttemptError::Http { body, .. } = &e else {
            panic!()
        };
        let text = String::from_utf8_lossy(body);
        assert!(!text.contains("sk-live-123456"), "{text}");
        assert!(
            text.contains("provided: [redacted]. Again: [redacted]"),
            "{text}"
        );
        let e =
            AttemptError::StreamError("key sk-live-123456 bad".into()).redact(&["sk-live-123456"]);
        assert_eq!(
            e.to_string(),
            "stream failed before any content: key [redacted] bad"
        );
    }

    #[test]
    fn exhausted_status_rules() {
        assert_eq!(
            AttemptError::Connect("refused".into()).exhausted_status(),
            502
        );
        assert_eq!(
            AttemptError::FirstByteTimeout(Duration::from_secs(1)).exhausted_status(),
            504
        );
        assert_eq!(http(429, "").exhausted_status(), 429);
        assert_eq!(AttemptError::Malformed("x".into()).exhausted_status(), 502);
    }

    #[test]
    fn retry_after_headers() {
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = http::HeaderMap::new();
        let future = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(future).parse().unwrap(),
        );
        let d = parse_retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&h), None);
    }
}
