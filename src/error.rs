//! Errors returned to clients. Each variant owns its HTTP status, OpenAI error `type` and `code`,
//! and renders the OpenAI shape `{"error":{"message","type","param","code"}}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One entry of `error.attempts` in an `all_providers_failed` error.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AttemptSummary {
    pub provider: String,
    pub model: String,
    pub reason: String,
    pub status: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{message}")]
    InvalidField {
        param: &'static str,
        message: String,
    },
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("invalid API key; send a proxy key as `Authorization: Bearer KEY`")]
    Unauthorized,
    #[error("admin access requires the admin key (X-Admin-Key or Authorization: Bearer)")]
    AdminUnauthorized,
    #[error("admin API is only available from loopback when no admin_key is set")]
    AdminForbidden,
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("method {method} is not allowed for {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    ModelNotFound {
        message: String,
        attempts: Vec<AttemptSummary>,
    },
    /// The prompt does not fit any candidate's context window.
    #[error("{message}")]
    ContextTooLong {
        message: String,
        attempts: Vec<AttemptSummary>,
    },
    #[error("{message}")]
    AllProvidersFailed {
        status: StatusCode,
        message: String,
        attempts: Vec<AttemptSummary>,
        /// Seconds until the earliest circuit admits a probe, when nothing could be tried.
        retry_after: Option<u64>,
    },
    /// A config reload was refused; the message is `file:line:col: message` as `check` prints it.
    #[error("{0}")]
    InvalidConfig(String),
    #[error("stockyard is shutting down and stopped this request (shutdown_grace ran out)")]
    ShuttingDown,
    /// More proxy requests are in flight than `max_in_flight`: shed before any work is done.
    #[error("stockyard is overloaded: {limit} requests are already in flight (max_in_flight); retry shortly")]
    Overloaded { limit: usize },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_)
            | ApiError::InvalidField { .. }
            | ApiError::InvalidJson(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized | ApiError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::AdminForbidden => StatusCode::FORBIDDEN,
            ApiError::RouteNotFound { .. }
            | ApiError::NotFound(_)
            | ApiError::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::AllProvidersFailed { status, .. } => *status,
            ApiError::ContextTooLong { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidConfig(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::ShuttingDown | ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether a client may usefully retry the same request later.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::AllProvidersFailed { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Internal(_) | ApiError::ShuttingDown | ApiError::Overloaded { .. } => true,
            _ => false,
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Unauthorized | ApiError::AdminUnauthorized => "authentication_error",
            ApiError::AdminForbidden => "permission_error",
            ApiError::AllProvidersFailed { .. } => "upstream_error",
            ApiError::Internal(_) | ApiError::ShuttingDown | ApiError::Overloaded { .. } => {
                "server_error"
            }
            ApiError::RouteNotFound { .. }
            | ApiError::NotFound(_)
            | ApiError::ModelNotFound { .. } => "not_found_error",
            _ => "invalid_request_error",
        }
    }

    pub fn code(&self) -> Option<&'static str> {
        Some(match self {
            ApiError::InvalidJson(_) => "invalid_json",
            ApiError::InvalidField { .. } => "invalid_value",
            ApiError::BodyTooLarge { .. } => "request_too_large",
            ApiError::Unauthorized => "invalid_api_key",
            ApiError::AdminUnauthorized => "invalid_admin_key",
            ApiError::RouteNotFound { .. } => "unknown_route",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::ModelNotFound { .. } => "model_not_found",
            ApiError::ContextTooLong { .. } => "context_length_exceeded",
            ApiError::AllProvidersFailed { .. } => "all_providers_failed",
            ApiError::InvalidConfig(_) => "invalid_config",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Overloaded { .. } => "overloaded",
            _ => return None,
        })
    }

    pub fn param(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidField { param, .. } => Some(param),
            ApiError::ModelNotFound { .. } => Some("model"),
            ApiError::ContextTooLong { .. } => Some("messages"),
            _ => None,
        }
    }

    fn attempts(&self) -> Option<&[AttemptSummary]> {
        match self {
            ApiError::AllProvidersFailed { attempts, .. }
            | ApiError::ContextTooLong { attempts, .. }
            | ApiError::ModelNotFound { attempts, .. } => Some(attempts),
            _ => None,
        }
    }

    /// The OpenAI-shaped JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut err = serde_json::json!({
            "message": self.to_string(),
            "type": self.error_type(),
            "param": self.param(),
            "code": self.code(),
        });
        if let Some(a) = self.attempts() {
            err["attempts"] = serde_json::to_value(a).unwrap_or_default();
        }
        serde_json::json!({ "error": err })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        let retry_after = match &self {
            ApiError::AllProvidersFailed {
                retry_after: Some(s),
                ..
            } => Some(*s),
            ApiError::Overloaded { .. } => Some(1),
            _ => None,
        };
        if let Some(s) = retry_after {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

/// An OpenAI-shaped error body for arbitrary status/type/message (used when wrapping upstream
/// errors that were not already in that shape).
pub fn openai_error_body(message: &str, etype: &str, code: Option<&str>) -> serde_json::Value {
    serde_json::json!({"error": {"message": message, "type": etype, "param": null, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_statuses() {
        let e = ApiError::InvalidField {
            param: "messages",
            message: "`messages` is required".into(),
        };
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let b = e.body();
        assert_eq!(b["error"]["param"], "messages");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        let e = ApiError::AllProvidersFailed {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "x".into(),
            attempts: vec![AttemptSummary {
                provider: "a".into(),
                model: "m".into(),
                reason: "circuit_open".into(),
                status: None,
            }],
            retry_after: Some(3),
        };
        assert!(e.retryable());
        assert_eq!(e.body()["error"]["code"], "all_providers_failed");
        assert_eq!(e.body()["error"]["attempts"][0]["reason"], "circuit_open");
        let r = e.into_response();
        assert_eq!(r.headers()["retry-after"], "3");
        let e = ApiError::Overloaded { limit: 8 };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.body()["error"]["code"], "overloaded");
        assert_eq!(e.into_response().headers()["retry-after"], "1");
    }
}
