//! The attempt loop: walk the planned chain, admit each candidate (breaker, concurrency), call
//! it, classify the outcome, retry with backoff where allowed, and fail over until one succeeds,
//! one fails finally, or the chain is exhausted.

use super::classify::{AttemptError, Class};
use super::state::{admit, Permit, ProviderRuntime, Refused};
use crate::config::RetryOn;
use crate::error::{ApiError, AttemptSummary};
use crate::providers::transport::UpstreamResponse;
use crate::providers::{openai, Wire};
use crate::routing::SkipReason;
use axum::body::Body;
use http::{HeaderMap, StatusCode};
use rand::Rng;
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
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
    /// The candidate's context window in tokens, when known.
    pub window: Option<u64>,
    /// `messages` to send instead of the client's (raw JSON), after truncation to fit.
    pub messages: Option<Arc<str>>,
    /// Estimated prompt tokens dropped by that truncation.
    pub truncated_tokens: Option<u64>,
}

impl Cand {
    pub fn new(provider: Arc<ProviderRuntime>, model: String, skip: Option<SkipReason>) -> Cand {
        Cand {
            provider,
            model,
            skip,
            window: None,
            messages: None,
            truncated_tokens: None,
        }
    }
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
    /// The client's own key when it brought one (redacted from upstream text like the
    /// provider's configured key).
    pub byok: Option<Arc<str>>,
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
    /// `failover.hedge_after` (zero: no hedging).
    pub hedge_after: Duration,
}

/// Runs the chain. `body_for(candidate)` builds the upstream body; `finish(response, ctx)` turns
/// a 2xx response into a [`Success`] or an attempt error (malformed body, error before first
/// content...).
///
/// Attempts are appended to `attempts` as they happen (the one in flight shows as failed with
/// reason `client_closed` until it ends), so a caller dropped mid-way still has them.
///
/// With `call.hedge_after > 0`, an attempt that has produced no first byte after that long gets
/// a rival: the next admissible candidate starts in parallel, the first to deliver content
/// wins, and the other is dropped (its connection closed, recorded as `hedge_lost`).
pub async fn run<B, F, Fut>(
    cands: &[Cand],
    call: &Call<'_>,
    attempts: &mut Vec<AttemptRecord>,
    body_for: B,
    finish: F,
) -> Run
where
    B: Fn(&Cand) -> Result<Vec<u8>, AttemptError>,
    F: Fn(UpstreamResponse, AttemptCtx) -> Fut,
    Fut: Future<Output = Result<Success, AttemptError>>,
{
    let mut st = RunState {
        attempts,
        call,
        tries: 0,
        failover: false,
        last_err: None,
        earliest_retry: None,
        upstream: Duration::ZERO,
        too_small: None,
    };
    let mut next = 0usize;
    'chain: while let Some((ci, first_permit)) = st.admit_next(cands, &mut next) {
        let c = &cands[ci];
        let mut permit = Some(first_permit);
        let mut retry_n = 0u32;
        loop {
            let permit_a = match permit.take() {
                Some(p) => p,
                None => match st.admit(c) {
                    Some(p) => p,
                    None => continue 'chain,
                },
            };
            let a = st.begin(c, false);
            let fb_a = OnceLock::new();
            let fut_a = attempt(c, call, &body_for, &finish, a.started, &fb_a);
            tokio::pin!(fut_a);
            let hedge = call.hedge_after > Duration::ZERO && retry_n == 0;
            let early = if hedge {
                tokio::select! {
                    r = &mut fut_a => Some(r),
                    _ = tokio::time::sleep(call.hedge_after) => None,
                }
            } else {
                Some((&mut fut_a).await)
            };
            let rival = match early {
                None if fb_a.get().is_none() => st.admit_next(cands, &mut next),
                _ => None,
            };
            let verdict = match (early, rival) {
                (Some(r), _) => st.settle(c, a, permit_a, r, fb_a.get().copied(), retry_n),
                (None, None) => {
                    let r = fut_a.await;
                    st.settle(c, a, permit_a, r, fb_a.get().copied(), retry_n)
                }
                (None, Some((bi, permit_b))) => {
                    let cb = &cands[bi];
                    tracing::warn!(
                        provider = %c.provider.name(),
                        hedge = %cb.provider.name(),
                        after_ms = call.hedge_after.as_millis() as u64,
                        "no first byte yet: hedging with the next provider"
                    );
                    let b = st.begin(cb, true);
                    let fb_b = OnceLock::new();
                    let fut_b = attempt(cb, call, &body_for, &finish, b.started, &fb_b);
                    tokio::pin!(fut_b);
                    let a_first = tokio::select! {
                        r = &mut fut_a => Ok(r),
                        r = &mut fut_b => Err(r),
                    };
                    match a_first {
                        Ok(ra) => {
                            let ok = ra.is_ok();
                            let v1 = st.settle(c, a, permit_a, ra, fb_a.get().copied(), HEDGED);
                            if ok {
                                st.lose(cb, b, permit_b, fb_b.get().is_some());
                                v1
                            } else {
                                let rb = fut_b.await;
                                let v2 =
                                    st.settle(cb, b, permit_b, rb, fb_b.get().copied(), HEDGED);
                                Verdict::pick(v1, v2)
                            }
                        }
                        Err(rb) => {
                            let ok = rb.is_ok();
                            let v1 = st.settle(cb, b, permit_b, rb, fb_b.get().copied(), HEDGED);
                            if ok {
                                st.lose(c, a, permit_a, fb_a.get().is_some());
                                v1
                            } else {
                                let ra = fut_a.await;
                                let v2 = st.settle(c, a, permit_a, ra, fb_a.get().copied(), HEDGED);
                                Verdict::pick(v1, v2)
                            }
                        }
                    }
                }
            };
            match verdict {
                Verdict::Done(outcome, ttfb) => return st.finish(outcome, ttfb),
                Verdict::Next => continue 'chain,
                Verdict::RetryAfter(d) => {
                    tokio::time::sleep(d).await;
                    st.upstream += d;
                    retry_n += 1;
                }
            }
        }
    }
    let outcome = RunOutcome::Exhausted(exhausted(
        call,
        st.attempts,
        st.last_err.take(),
        st.earliest_retry,
    ));
    st.finish(outcome, None)
}

/// `retry_n` of a hedged attempt: no same-provider retries.
const HEDGED: u32 = u32::MAX;

/// One upstream call: send, check the status, read the answer with `finish`, all within the
/// provider's `total` timeout. `first_byte` is set when the response headers arrive.
async fn attempt<B, F, Fut>(
    c: &Cand,
    call: &Call<'_>,
    body_for: &B,
    finish: &F,
    started: Instant,
    first_byte: &OnceLock<Duration>,
) -> Result<Success, AttemptError>
where
    B: Fn(&Cand) -> Result<Vec<u8>, AttemptError>,
    F: Fn(UpstreamResponse, AttemptCtx) -> Fut,
    Fut: Future<Output = Result<Success, AttemptError>>,
{
    let p = &c.provider;
    let total = p.cfg.timeouts.total;
    let deadline = started + total;
    let work = async {
        let body = body_for(c)?;
        let path = match p.cfg.kind.info().wire {
            Wire::OpenAi => call.path,
            Wire::Anthropic => call.anthropic_path.ok_or_else(|| {
                AttemptError::Translate("this provider has no such endpoint".into())
            })?,
        };
        let resp = openai::send(p, path, body, call.key, call.accept_sse).await?;
        let _ = first_byte.set(started.elapsed());
        if resp.status().is_redirection() {
            // Redirects are never followed (the provider key would go along): the provider is
            // misconfigured or misbehaving, so this counts as a failed attempt.
            return Err(AttemptError::Malformed(format!(
                "upstream answered HTTP {} (a redirect); redirects are not followed, check base_url",
                resp.status().as_u16()
            )));
        }
        if !resp.status().is_success() {
            return Err(openai::error_from_response(resp, p.cfg.timeouts.idle, deadline).await);
        }
        finish(
            resp,
            AttemptCtx {
                provider: p.clone(),
                model: c.model.clone(),
                started,
                deadline,
                byok: call.key.map(Arc::from),
            },
        )
        .await
    };
    let result = match tokio::time::timeout(total, work).await {
        Ok(r) => r,
        Err(_) => Err(AttemptError::TotalTimeout(total)),
    };
    // An upstream that echoes the key it was sent must not hand it on.
    result.map_err(|e| e.redact(&p.secrets(call.key)))
}

/// An attempt in flight: its row in `attempts` and when it started.
#[derive(Clone, Copy)]
struct Slot {
    index: usize,
    started: Instant,
    hedged: bool,
}

/// What to do after an attempt.
enum Verdict {
    Done(RunOutcome, Option<Duration>),
    Next,
    RetryAfter(Duration),
}

impl Verdict {
    /// Of two hedged attempts that both finished: a success, else the first final error, else
    /// move on.
    fn pick(first: Verdict, second: Verdict) -> Verdict {
        match (first, second) {
            (_, v @ Verdict::Done(RunOutcome::Ok { .. }, _)) => v,
            (v @ Verdict::Done(..), _) | (_, v @ Verdict::Done(..)) => v,
            _ => Verdict::Next,
        }
    }
}

struct RunState<'r, 'c> {
    attempts: &'r mut Vec<AttemptRecord>,
    call: &'r Call<'c>,
    tries: u32,
    failover: bool,
    last_err: Option<AttemptError>,
    earliest_retry: Option<Instant>,
    upstream: Duration,
    /// After an upstream context-length error from a provider with a known window: that
    /// window, so candidates no larger are skipped (`context_too_small`).
    too_small: Option<u64>,
}

impl RunState<'_, '_> {
    fn record(
        c: &Cand,
        outcome: AttemptOutcome,
        reason: Option<&str>,
        status: Option<u16>,
        started: Option<Instant>,
        hedged: bool,
    ) -> AttemptRecord {
        AttemptRecord {
            provider: c.provider.name().to_string(),
            model: c.model.clone(),
            outcome,
            reason: reason.map(str::to_string),
            http_status: status,
            latency_ms: started.map(|s| s.elapsed().as_millis() as u64).unwrap_or(0),
            hedged,
        }
    }

    /// Admission to one candidate; a refusal is recorded as a skip.
    fn admit(&mut self, c: &Cand) -> Option<Permit> {
        match admit(&c.provider, Instant::now()) {
            Ok(p) => Some(p),
            Err(refused) => {
                let reason = match refused {
                    Refused::CircuitOpen { retry_at } => {
                        self.earliest_retry =
                            Some(self.earliest_retry.map_or(retry_at, |e| e.min(retry_at)));
                        SkipReason::CircuitOpen
                    }
                    Refused::Overloaded => SkipReason::Overloaded,
                };
                self.failover = true;
                self.attempts.push(Self::record(
                    c,
                    AttemptOutcome::Skipped,
                    Some(reason.as_str()),
                    None,
                    None,
                    false,
                ));
                None
            }
        }
    }

    /// The next candidate from `*next` on that can be tried now, recording the skipped ones.
    fn admit_next(&mut self, cands: &[Cand], next: &mut usize) -> Option<(usize, Permit)> {
        while *next < cands.len() {
            let i = *next;
            *next += 1;
            let c = &cands[i];
            let too_small = match (self.too_small, c.window) {
                (Some(failed), Some(w)) if w <= failed => Some(SkipReason::ContextTooSmall),
                _ => None,
            };
            if let Some(skip) = c.skip.or(too_small) {
                self.attempts.push(Self::record(
                    c,
                    AttemptOutcome::Skipped,
                    Some(skip.as_str()),
                    None,
                    None,
                    false,
                ));
                continue;
            }
            if let Some(p) = self.admit(c) {
                return Some((i, p));
            }
        }
        None
    }

    /// Starts an attempt: counts it and records it as in flight.
    fn begin(&mut self, c: &Cand, hedged: bool) -> Slot {
        self.tries += 1;
        c.provider.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.attempts.push(Self::record(
            c,
            AttemptOutcome::Failed,
            Some("client_closed"),
            None,
            None,
            hedged,
        ));
        if hedged {
            self.failover = true;
        }
        Slot {
            index: self.attempts.len() - 1,
            started: Instant::now(),
            hedged,
        }
    }

    /// A hedged attempt that lost the race: dropped (its connection closes), no breaker verdict.
    fn lose(&mut self, c: &Cand, slot: Slot, permit: Permit, had_first_byte: bool) {
        drop(permit);
        let elapsed = slot.started.elapsed();
        if !had_first_byte {
            // It was slower than its rival: let the latency estimate know.
            c.provider.stats.record_ttfb(elapsed.as_micros() as u64);
        }
        self.attempts[slot.index] = Self::record(
            c,
            AttemptOutcome::Failed,
            Some("hedge_lost"),
            None,
            Some(slot.started),
            slot.hedged,
        );
    }

    /// Records a finished attempt, updates the breaker, and decides what comes next.
    fn settle(
        &mut self,
        c: &Cand,
        slot: Slot,
        permit: Permit,
        result: Result<Success, AttemptError>,
        ttfb: Option<Duration>,
        retry_n: u32,
    ) -> Verdict {
        let p = &c.provider;
        self.upstream += slot.started.elapsed();
        if let Some(t) = ttfb {
            p.stats.record_ttfb(t.as_micros() as u64);
        }
        match result {
            Ok(success) => {
                log_transition(p, permit.success());
                self.attempts[slot.index] = Self::record(
                    c,
                    AttemptOutcome::Ok,
                    None,
                    Some(success.status.as_u16()),
                    Some(slot.started),
                    slot.hedged,
                );
                if retry_n > 0 && retry_n != HEDGED {
                    self.failover = true;
                }
                Verdict::Done(
                    RunOutcome::Ok {
                        success,
                        provider: p.clone(),
                        model: c.model.clone(),
                    },
                    ttfb,
                )
            }
            Err(e) => {
                let class = e.class(self.call.retry_on);
                tracing::warn!(
                    provider = %p.name(),
                    model = %c.model,
                    reason = e.reason(),
                    status = ?e.http_status(),
                    error = %e,
                    "upstream attempt failed"
                );
                self.attempts[slot.index] = Self::record(
                    c,
                    AttemptOutcome::Failed,
                    Some(e.reason()),
                    e.http_status(),
                    Some(slot.started),
                    slot.hedged,
                );
                match class {
                    Class::Final => {
                        if e.http_status().is_some() {
                            log_transition(p, permit.success());
                        } else {
                            p.stats.errors.fetch_add(1, Ordering::Relaxed);
                            log_transition(p, permit.failure(Instant::now()));
                        }
                        Verdict::Done(
                            RunOutcome::Final {
                                error: e,
                                provider: p.clone(),
                                model: c.model.clone(),
                            },
                            None,
                        )
                    }
                    Class::Skip => {
                        log_transition(p, permit.success());
                        if e.reason() == "context_length" {
                            if let Some(w) = c.window {
                                self.too_small = Some(self.too_small.map_or(w, |t| t.max(w)));
                            }
                        }
                        self.failover = true;
                        self.last_err = Some(e);
                        Verdict::Next
                    }
                    Class::Retryable { same_provider } => {
                        p.stats.errors.fetch_add(1, Ordering::Relaxed);
                        log_transition(p, permit.failure(Instant::now()));
                        self.failover = true;
                        let wait = (same_provider && retry_n != HEDGED && retry_n < p.cfg.retries)
                            .then(|| backoff(retry_n, e.retry_after()))
                            .flatten();
                        self.last_err = Some(e);
                        match wait {
                            Some(d) => Verdict::RetryAfter(d),
                            None => Verdict::Next,
                        }
                    }
                }
            }
        }
    }

    fn finish(self, outcome: RunOutcome, ttfb: Option<Duration>) -> Run {
        Run {
            outcome,
            tries: self.tries,
            failover: self.failover,
            ttfb,
            upstream: self.upstream,
        }
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
    let too_small = SkipReason::ContextTooSmall.as_str();
    if attempts
        .iter()
        .any(|a| a.reason.as_deref() == Some(too_small))
        && attempts.iter().all(|a| {
            matches!(
                a.reason.as_deref(),
                Some("context_too_small" | "context_length" | "model_unsupported" | "not_local")
            )
        })
        && !call.local_only
    {
        return ApiError::ContextTooLong {
            message: format!(
                "the prompt does not fit the context window of any provider for model `{model}` \
                 (set `truncate: true` on a provider to drop the oldest turns instead)"
            ),
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
    let message = if call.local_only {
        format!(
            "this request is local-only (x-stockyard-local-only or a local_only alias) and no local \
             provider could serve model `{model}`; nothing was sent to a cloud provider: {}",
            detail.join("; ")
        )
    } else {
        format!(
            "all providers failed for model `{model}`: {}",
            detail.join("; ")
        )
    };
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
