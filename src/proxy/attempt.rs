//! The attempt loop: walk the planned chain, admit each candidate (breaker, concurrency), call
//! it, classify the outcome, retry with backoff where allowed, and fail over until one succeeds,
//! one fails finally, or the chain is exhausted.

use super::classify::{AttemptError, Class};
use super::state::{admit, ProviderRuntime, Refused};
use crate::config::RetryOn;
use crate::error::{ApiError, AttemptSummary};
use crate::providers::{openai, Wire};
use crate::routing::SkipReason;
use axum::body::Body;
use http::{HeaderMap, StatusCode};
use rand::Rng;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A Retry-After longer than this moves on to the next provider instead of sleeping.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(10);
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One provider to try.
#[derive(Debug, Clone)]
pub struct Cand {
    pub provider: Arc<ProviderRuntime>,
    pub model: String,
    pub skip: Option<SkipReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Ok,
    Failed,
    Skipped,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Skipped => "skipped",
        }
    }
}

/// One row of the trace's `attempts`.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub provider: String,
    pub model: String,
    pub outcome: AttemptOutcome,
    pub reason: Option<String>,
    pub http_status: Option<u16>,
    pub latency_ms: u64,
    /// Started in parallel by `failover.hedge_after`.
    pub hedged: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A successful upstream answer, ready to send to the client.
pub struct Success {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
    pub usage: Option<Usage>,
    /// For a stream: how it ended, filled in by the relay as it goes.
    pub stream: Option<StreamState>,
}

/// How a relayed stream ended.
#[derive(Debug, Clone, Default)]
pub struct StreamEnd {
    pub usage: Option<Usage>,
    /// Set when the upstream failed after content (the client got a `stream_error` event).
    pub error: Option<String>,
    /// The stream reached its end (`[DONE]`, or an error event was sent).
    pub complete: bool,
}

pub type StreamState = Arc<std::sync::Mutex<StreamEnd>>;

pub enum RunOutcome {
    Ok {
        success: Success,
        provider: Arc<ProviderRuntime>,
        model: String,
    },
    /// A final upstream error, returned to the client as is.
    Final {
        error: AttemptError,
        provider: Arc<ProviderRuntime>,
        model: String,
    },
    Exhausted(ApiError),
}

pub struct Run {
    pub outcome: RunOutcome,
    /// Upstream calls made (retries included).
    pub tries: u32,
    /// The answer did not come from the first viable candidate on its first try.
    pub failover: bool,
    /// Time to first byte of the successful attempt.
    pub ttfb: Option<Duration>,
    /// Time spent waiting on upstreams (attempts and backoff), to tell proxy overhead apart.
    pub upstream: Duration,
}

/// One attempt's context, handed to the response reader.
pub struct AttemptCtx {
    pub provider: Arc<ProviderRuntime>,
    /// The model name sent upstream.
    pub model: String,
    pub started: Instant,
    /// When the attempt's `total` timeout runs out.
    pub deadline: Instant,
}

/// What to send and how to read the answer.
pub struct Call<'a> {
    /// Endpoint under the API root for OpenAI-compatible providers, e.g. `/chat/completions`.
    pub path: &'static str,
    /// The same endpoint for Anthropic-native providers (`/messages`), if it has one.
    pub anthropic_path: Option<&'static str>,
    pub accept_sse: bool,
    /// Bring-your-own key replacing the configured one.
    pub key: Option<&'a str>,
    pub retry_on: &'a RetryOn,
    pub local_only: bool,
    pub requested_model: &'a str,
}

/// Runs the chain. `body_for(candidate)` builds the upstream body; `finish(response, provider,
/// started, deadline)` turns a 2xx response into a [`Success`] or an attempt error (malformed
/// body, error before first content...).
///
/// Attempts are appended to `attempts` as they happen (the one in flight shows as failed with
/// reason `client_closed` until it ends), so a caller dropped mid-way still has them.
pub async fn run<B, F, Fut>(
    cands: &[Cand],
    call: &Call<'_>,
    attempts: &mut Vec<AttemptRecord>,
    body_for: B,
    finish: F,
) -> Run
where
    B: Fn(&Cand) -> Result<Vec<u8>, AttemptError>,
    F: Fn(reqwest::Response, AttemptCtx) -> Fut,
    Fut: Future<Output = Result<Success, AttemptError>>,
{
    let mut tries = 0u32;
    let mut failover = false;
    let mut last_err: Option<AttemptError> = None;
    let mut earliest_retry: Option<Instant> = None;
    let mut upstream = Duration::ZERO;

    for c in cands {
        let record =
            |outcome, reason: Option<&str>, status, started: Option<Instant>| AttemptRecord {
                provider: c.provider.name().to_string(),
                model: c.model.clone(),
                outcome,
                reason: reason.map(str::to_string),
                http_status: status,
                latency_ms: started.map(|s| s.elapsed().as_millis() as u64).unwrap_or(0),
                hedged: false,
            };
        if let Some(skip) = c.skip {
            attempts.push(record(
                AttemptOutcome::Skipped,
                Some(skip.as_str()),
                None,
                None,
            ));
            continue;
        }
        let p = &c.provider;
        let mut retry_n = 0u32;
        loop {
            let permit = match admit(p, Instant::now()) {
                Ok(permit) => permit,
                Err(refused) => {
                    let reason = match refused {
                        Refused::CircuitOpen { retry_at } => {
                            earliest_retry =
                                Some(earliest_retry.map_or(retry_at, |e| e.min(retry_at)));
                            SkipReason::CircuitOpen
                        }
                        Refused::Overloaded => SkipReason::Overloaded,
                    };
                    failover = true;
                    attempts.push(record(
                        AttemptOutcome::Skipped,
                        Some(reason.as_str()),
                        None,
                        None,
                    ));
                    break;
                }
            };
            tries += 1;
            p.stats.requests.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            attempts.push(record(
                AttemptOutcome::Failed,
                Some("client_closed"),
                None,
                None,
            ));
            let total = p.cfg.timeouts.total;
            let deadline = started + total;
            let mut ttfb = None;
            let attempt = async {
                let body = body_for(c)?;
                let path = match p.cfg.kind.info().wire {
                    Wire::OpenAi => call.path,
                    Wire::Anthropic => call.anthropic_path.ok_or_else(|| {
                        AttemptError::Translate("this provider has no such endpoint".into())
                    })?,
                };
                let resp = openai::send(p, path, body, call.key, call.accept_sse).await?;
                ttfb = Some(started.elapsed());
                if !resp.status().is_success() {
                    return Err(
                        openai::error_from_response(resp, p.cfg.timeouts.idle, deadline).await,
                    );
                }
                finish(
                    resp,
                    AttemptCtx {
                        provider: p.clone(),
                        model: c.model.clone(),
                        started,
                        deadline,
                    },
                )
                .await
            };
            let result = match tokio::time::timeout(total, attempt).await {
                Ok(r) => r,
                Err(_) => Err(AttemptError::TotalTimeout(total)),
            };
            upstream += started.elapsed();
            if let Some(t) = ttfb {
                p.stats.record_ttfb(t.as_micros() as u64);
            }
            match result {
                Ok(success) => {
                    log_transition(p, permit.success());
                    set_last(
                        attempts,
                        record(
                            AttemptOutcome::Ok,
                            None,
                            Some(success.status.as_u16()),
                            Some(started),
                        ),
                    );
                    return Run {
                        outcome: RunOutcome::Ok {
                            success,
                            provider: p.clone(),
                            model: c.model.clone(),
                        },
                        tries,
                        failover: failover || retry_n > 0,
                        ttfb,
                        upstream,
                    };
                }
                Err(e) => {
                    let class = e.class(call.retry_on);
                    tracing::warn!(
                        provider = %p.name(),
                        model = %c.model,
                        reason = e.reason(),
                        status = ?e.http_status(),
                        error = %e,
                        "upstream attempt failed"
                    );
                    set_last(
                        attempts,
                        record(
                            AttemptOutcome::Failed,
                            Some(e.reason()),
                            e.http_status(),
                            Some(started),
                        ),
                    );
                    match class {
                        Class::Final => {
                            if e.http_status().is_some() {
                                log_transition(p, permit.success());
                            } else {
                                p.stats.errors.fetch_add(1, Ordering::Relaxed);
                                log_transition(p, permit.failure(Instant::now()));
                            }
                            return Run {
                                outcome: RunOutcome::Final {
                                    error: e,
                                    provider: p.clone(),
                                    model: c.model.clone(),
                                },
                                tries,
                                failover,
                                ttfb: None,
                                upstream,
                            };
                        }
                        Class::Skip => {
                            log_transition(p, permit.success());
                            failover = true;
                            last_err = Some(e);
                            break;
                        }
                        Class::Retryable { same_provider } => {
                            p.stats.errors.fetch_add(1, Ordering::Relaxed);
                            log_transition(p, permit.failure(Instant::now()));
                            failover = true;
                            let wait = (same_provider && retry_n < p.cfg.retries)
                                .then(|| backoff(retry_n, e.retry_after()))
                                .flatten();
                            last_err = Some(e);
                            match wait {
                                Some(d) => {
                                    tokio::time::sleep(d).await;
                                    upstream += d;
                                    retry_n += 1;
                                }
                                None => break,
                            }
                        }
                    }
                }
            }
        }
    }
    Run {
        outcome: RunOutcome::Exhausted(exhausted(call, attempts, last_err, earliest_retry)),
        tries,
        failover,
        ttfb: None,
        upstream,
    }
}

fn set_last(attempts: &mut [AttemptRecord], rec: AttemptRecord) {
    if let Some(last) = attempts.last_mut() {
        *last = rec;
    }
}

fn log_transition(p: &ProviderRuntime, t: Option<crate::breaker::Transition>) {
    if let Some(t) = t {
        tracing::warn!(provider = %p.name(), from = t.from.as_str(), to = t.to.as_str(), "circuit state changed");
    }
}

/// How long to wait before retrying the same provider: the upstream's Retry-After when it is
/// short enough (None when it is longer than [`MAX_RETRY_WAIT`]: move on instead), else
/// exponential backoff with jitter.
pub fn backoff(retry_n: u32, retry_after: Option<Duration>) -> Option<Duration> {
    if let Some(ra) = retry_after {
        return (ra <= MAX_RETRY_WAIT).then_some(ra);
    }
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << retry_n.min(16))
        .min(BACKOFF_MAX);
    let jitter = rand::thread_rng().gen_range(0.5..=1.0);
    Some(exp.mul_f64(jitter))
}

/// The client error for an exhausted chain (SPEC section 6).
fn exhausted(
    call: &Call<'_>,
    attempts: &[AttemptRecord],
    last_err: Option<AttemptError>,
    earliest_retry: Option<Instant>,
) -> ApiError {
    let summaries: Vec<AttemptSummary> = attempts
        .iter()
        .map(|a| AttemptSummary {
            provider: a.provider.clone(),
            model: a.model.clone(),
            reason: a
                .reason
                .clone()
                .unwrap_or_else(|| a.outcome.as_str().into()),
            status: a.http_status,
        })
        .collect();
    let model = call.requested_model;
    if attempts.is_empty() {
        return ApiError::AllProvidersFailed {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("no provider is configured that could serve model `{model}`"),
            attempts: summaries,
            retry_after: None,
        };
    }
    if attempts
        .iter()
        .all(|a| a.reason.as_deref() == Some(SkipReason::ModelUnsupported.as_str()))
    {
        return ApiError::ModelNotFound {
            message: format!("no configured provider serves model `{model}`"),
            attempts: summaries,
        };
    }
    let detail: Vec<String> = attempts
        .iter()
        .map(|a| {
            let mut s = format!(
                "{}: {}",
                a.provider,
                a.reason.as_deref().unwrap_or("failed")
            );
            if let Some(st) = a.http_status {
                s.push_str(&format!(" ({st})"));
            }
            s
        })
        .collect();
    let message = format!(
        "all providers failed for model `{model}`: {}",
        detail.join("; ")
    );
    let tried = attempts.iter().any(|a| a.outcome == AttemptOutcome::Failed);
    let (status, retry_after) = match (&last_err, tried) {
        _ if call.local_only => (StatusCode::SERVICE_UNAVAILABLE, None),
        (Some(e), true) => (
            StatusCode::from_u16(e.exhausted_status()).unwrap_or(StatusCode::BAD_GATEWAY),
            None,
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            earliest_retry.map(|t| {
                let d = t.saturating_duration_since(Instant::now());
                d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
            }),
        ),
    };
    ApiError::AllProvidersFailed {
        status,
        message,
        attempts: summaries,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_honours_retry_after_and_caps() {
        assert_eq!(
            backoff(0, Some(Duration::from_millis(300))),
            Some(Duration::from_millis(300))
        );
        assert_eq!(backoff(0, Some(Duration::from_secs(60))), None);
        for n in 0..8 {
            let d = backoff(n, None).unwrap();
            let exp = BACKOFF_BASE.saturating_mul(1 << n).min(BACKOFF_MAX);
            assert!(d >= exp / 2 && d <= exp, "{n}: {d:?}");
        }
    }
}
