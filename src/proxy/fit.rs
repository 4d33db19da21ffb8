//! Fitting a chat request into each candidate's context window: `context_window` per provider,
//! else the built-in table ([`crate::routing::context`]). A candidate too small for the prompt
//! plus the requested output is skipped (`context_too_small`), or, with `truncate: true`, gets
//! the oldest non-system turns dropped until it fits.
//!
//! Most requests are far smaller than every window; a cheap upper bound on the estimate (from the
//! body's size) settles those without parsing the body.

use super::attempt::Cand;
use crate::routing::context::{self, builtin_window};
use crate::routing::SkipReason;
use serde_json::Value;
use std::sync::Arc;

/// Tokens per image in the estimate (see [`context`]).
const IMAGE_TOKENS_BOUND: u64 = 765;

/// An upper bound of the estimate of `context::estimate_prompt_tokens` for a body of these
/// bytes: no text costs more than 1/2 token per byte, plus each image part and some overhead.
fn upper_bound(bytes: &[u8]) -> u64 {
    let images = memchr::memmem::find_iter(bytes, b"image_url").count() as u64
        + memchr::memmem::find_iter(bytes, b"input_audio").count() as u64
        + memchr::memmem::find_iter(bytes, b"\"file\"").count() as u64;
    bytes.len() as u64 / 2 + images * IMAGE_TOKENS_BOUND * 4 + 64
}

/// Sets each candidate's window and skips or truncates those the request does not fit.
/// `output` is the requested completion budget when the caller already knows it.
pub fn fit(bytes: &[u8], cands: &mut [Cand]) {
    let mut smallest: Option<u64> = None;
    for c in cands.iter_mut() {
        c.window = c
            .provider
            .cfg
            .context_window
            .or_else(|| builtin_window(&c.model));
        if c.skip.is_none() {
            if let Some(w) = c.window {
                smallest = Some(smallest.map_or(w, |s: u64| s.min(w)));
            }
        }
    }
    let Some(smallest) = smallest else {
        return;
    };
    // Output tokens can be large on their own, so they are read from the body before bounding.
    if upper_bound(bytes) + max_output_bound(bytes) <= smallest {
        return;
    }
    let Ok(body) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let prompt = context::estimate_prompt_tokens(&body);
    let output = context::requested_output_tokens(&body);
    let fixed = context::estimate_non_message_tokens(&body) + output;
    let messages = body.get("messages").and_then(Value::as_array);
    for c in cands.iter_mut() {
        let Some(w) = c.window else { continue };
        if c.skip.is_some() || prompt + output <= w {
            continue;
        }
        let truncated = if c.provider.cfg.truncate {
            messages.and_then(|m| context::truncate_to_fit(m, w, fixed))
        } else {
            None
        };
        match truncated.map(start_with_user) {
            Some(t) => match serde_json::to_string(&t.messages) {
                Ok(raw) => {
                    tracing::info!(
                        provider = %c.provider.name(),
                        window = w,
                        dropped_messages = t.dropped_messages,
                        dropped_tokens = t.dropped_tokens,
                        "prompt truncated to fit the context window"
                    );
                    c.messages = Some(Arc::from(raw));
                    c.truncated_tokens = Some(t.dropped_tokens);
                }
                Err(_) => c.skip = Some(SkipReason::ContextTooSmall),
            },
            None => c.skip = Some(SkipReason::ContextTooSmall),
        }
    }
}

/// Drops assistant and tool messages left at the head of the conversation (after the system
/// messages) by truncation, so it starts with a user turn as every provider expects
/// (Anthropic's Messages API requires it). Dropping more only makes the prompt smaller.
fn start_with_user(mut t: context::Truncation) -> context::Truncation {
    if t.dropped_messages == 0 {
        return t;
    }
    if !t.messages.iter().any(|m| m["role"] == "user") {
        return t;
    }
    while let Some(i) = t
        .messages
        .iter()
        .position(|m| !matches!(m["role"].as_str(), Some("system" | "developer")))
    {
        if t.messages[i]["role"] == "user" {
            break;
        }
        let m = t.messages.remove(i);
        t.dropped_messages += 1;
        t.dropped_tokens += context::estimate_message_tokens(&m);
    }
    t
}

/// The largest output budget the body could ask for, read without parsing it whole:
/// `max_tokens` / `max_completion_tokens` if present (the larger), else 0.
fn max_output_bound(bytes: &[u8]) -> u64 {
    let mut best = 0;
    for key in [&b"\"max_tokens\""[..], &b"\"max_completion_tokens\""[..]] {
        for at in memchr::memmem::find_iter(bytes, key) {
            let rest = &bytes[at + key.len()..];
            let digits: Vec<u8> = rest
                .iter()
                .skip_while(|b| b.is_ascii_whitespace() || **b == b':')
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            if let Some(n) = std::str::from_utf8(&digits)
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
            {
                best = best.max(n);
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_bound_is_above_the_estimate() {
        let samples = [
            r#"{"model":"m","messages":[{"role":"user","content":"hello there, how are you?"}]}"#.to_string(),
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#, "日本語のテキスト".repeat(50)),
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#, "😀".repeat(100)),
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://x/y.png"}}]}]}"#.to_string(),
            r#"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":"a"},{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"1","content":"r"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#.to_string(),
        ];
        for s in samples {
            let v: Value = serde_json::from_str(&s).unwrap();
            let est = context::estimate_prompt_tokens(&v);
            assert!(upper_bound(s.as_bytes()) >= est, "{est} > bound for {s}");
        }
    }

    #[test]
    fn output_bound_reads_both_keys() {
        assert_eq!(max_output_bound(br#"{"max_tokens": 300}"#), 300);
        assert_eq!(
            max_output_bound(br#"{"max_tokens":10,"max_completion_tokens":2000}"#),
            2000
        );
        assert_eq!(max_output_bound(br#"{"model":"m"}"#), 0);
    }
}
