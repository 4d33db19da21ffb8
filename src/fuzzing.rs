//! Property checks shared by the `cargo fuzz` targets in `fuzz/` and by `tests/fuzz_corpus.rs`,
//! which replays the committed corpus and regression inputs on the stable toolchain.
//!
//! Each function takes arbitrary bytes, runs them through the real parsing and translation code,
//! and panics when a property is violated. "No panic" is the floor; every check also asserts
//! something about the output (differential decoding, structural validity, round trips).
//! Not part of the proxy's API.

use crate::config::{self, Env};
use crate::providers::anthropic::{
    self, AnthropicToOpenAiStream, OpenAiOut, OpenAiToAnthropicStream,
};
use crate::proxy::body::{ChatRequest, RawObject};
use crate::proxy::{chat, embeddings, messages, stream};
use crate::sse::{self, SseDecoder, SseError, SseEvent, DEFAULT_MAX_EVENT_SIZE};
use serde_json::Value;

type Outcome = Result<SseEvent, SseError>;

/// Decodes `chunks` pushed one after another, draining events after every push, then finishes.
fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, limit: usize) -> Vec<Outcome> {
    let mut dec = SseDecoder::with_limit(limit);
    let mut out = Vec::new();
    for c in chunks {
        dec.push(c);
        while let Some(o) = dec.next_event().transpose() {
            out.push(o);
        }
    }
    while let Some(o) = dec.finish().transpose() {
        out.push(o);
    }
    assert_eq!(dec.buffered_len(), 0, "finish left bytes buffered");
    out
}

/// The decoded events of a whole byte string (errors skipped), as the relays see them.
fn events(input: &[u8]) -> Vec<SseEvent> {
    decode_chunks([input], DEFAULT_MAX_EVENT_SIZE)
        .into_iter()
        .filter_map(Result::ok)
        .collect()
}

/// Split points derived from the input itself (a small xorshift seeded by its bytes), so the
/// same input always splits the same way.
fn pseudo_random_chunks(input: &[u8]) -> Vec<&[u8]> {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for &b in input.iter().take(64) {
        seed = (seed ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
    }
    let mut chunks = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = usize::try_from(seed % 9).unwrap_or(0).min(rest.len());
        let (a, b) = rest.split_at(n);
        chunks.push(a);
        rest = b;
    }
    chunks
}

/// Line breaks (CRLF, CR, LF) normalised to LF, as the decoder joins `data:` lines.
fn normalise_breaks(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

/// SSE decoder: decoding the input whole, byte by byte, in fixed-size pieces and at
/// pseudo-random split points gives identical events and errors, with the default limit and
/// with a small one; the encoders round-trip through the decoder.
pub fn sse(data: &[u8]) {
    // A limit small enough that some inputs exceed it; the split must not matter either way.
    let small = data.len() / 3 + 1;
    for limit in [DEFAULT_MAX_EVENT_SIZE, small] {
        let whole = decode_chunks([data], limit);
        let splits: [(&str, Vec<&[u8]>); 4] = [
            ("byte by byte", data.chunks(1).collect()),
            ("3-byte pieces", data.chunks(3).collect()),
            ("pseudo-random splits", pseudo_random_chunks(data)),
            ("empty pushes", vec![&data[..0], data, &data[..0]]),
        ];
        for (how, chunks) in splits {
            let split = decode_chunks(chunks, limit);
            assert_eq!(
                whole, split,
                "{how} differs from whole input (limit {limit})"
            );
        }
        for o in whole.iter().flatten() {
            assert!(!o.raw.is_empty(), "event without bytes");
            // The OpenAI chunk classifier must cope with any event.
            let _ = stream::classify_event(o);
        }
    }

    // Encoders: whatever the text, decoding the encoded event gives it back.
    let text = String::from_utf8_lossy(data);
    let (name, payload) = text.split_once('\u{0}').unwrap_or(("message", &text));
    let decoded = events(&sse::data_event(payload));
    assert_eq!(decoded.len(), 1, "data_event did not decode to one event");
    assert_eq!(
        decoded[0].data.as_deref(),
        Some(&*normalise_breaks(payload))
    );
    assert_eq!(decoded[0].event, None);
    let decoded = events(&sse::named_event(name, payload));
    assert_eq!(decoded.len(), 1, "named_event did not decode to one event");
    let name_sent: String = name.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    assert_eq!(decoded[0].event.as_deref(), Some(name_sent.as_str()));
    assert_eq!(
        decoded[0].data.as_deref(),
        Some(&*normalise_breaks(payload))
    );
}

/// Config loader: any UTF-8 text either loads or fails with a positioned error; never panics.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = Env::from_pairs([
        ("OPENAI_API_KEY", "sk-fuzz"),
        ("ANTHROPIC_API_KEY", "sk-ant-fuzz"),
        ("HOME", "/home/fuzz"),
    ]);
    match config::load::load_str(text, "fuzz.yaml", &env) {
        Ok(c) => {
            let n = c.providers.len();
            let mut seen = std::collections::HashSet::new();
            for &i in &c.failover.order {
                assert!(i < n, "failover order names provider {i} of {n}");
                assert!(seen.insert(i), "failover order repeats provider {i}");
            }
            for (name, alias) in &c.aliases {
                for t in &alias.targets {
                    assert!(
                        t.provider.is_none_or(|p| p < n),
                        "alias {name} pins a provider index out of range"
                    );
                }
            }
            let names: std::collections::HashSet<&str> =
                c.providers.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names.len(), n, "duplicate provider names were accepted");
        }
        Err(e) => {
            assert!(!e.message.is_empty(), "config error without a message");
            let Some(pos) = e.pos else {
                panic!("config error without a position: {e}");
            };
            assert!(pos.line >= 1 && pos.col >= 1, "0-based position in {e}");
            assert!(e.to_string().starts_with("fuzz.yaml:"), "{e}");
        }
    }
}

/// Checks an Anthropic Messages request produced by [`anthropic::request_to_anthropic`].
pub fn check_anthropic_request(out: &Value, model: &str, stream: bool) {
    assert_eq!(out["model"], model);
    assert!(out["max_tokens"].as_u64().is_some_and(|n| n > 0), "{out}");
    assert_eq!(out.get("stream") == Some(&Value::Bool(true)), stream);
    if let Some(t) = out.get("temperature") {
        let t = t.as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&t), "temperature {t} outside 0..=1");
    }
    let Some(msgs) = out["messages"].as_array() else {
        panic!("messages is not an array: {out}");
    };
    let mut prev: Option<&str> = None;
    for m in msgs {
        let role = m["role"].as_str().unwrap_or("");
        assert!(role == "user" || role == "assistant", "role {role}");
        assert_ne!(prev, Some(role), "consecutive {role} turns were not merged");
        prev = Some(role);
        let Some(blocks) = m["content"].as_array() else {
            panic!("content is not an array: {m}");
        };
        assert!(!blocks.is_empty(), "empty turn was sent: {m}");
        let kinds: Vec<&str> = blocks
            .iter()
            .map(|b| b["type"].as_str().unwrap_or(""))
            .collect();
        if role == "user" {
            let results = kinds.iter().take_while(|k| **k == "tool_result").count();
            assert!(
                kinds[results..].iter().all(|k| *k != "tool_result"),
                "tool_result blocks not first in {m}"
            );
        }
        for b in blocks {
            if b["type"] == "tool_use" {
                assert!(
                    b["input"].is_object(),
                    "tool_use input is not an object: {b}"
                );
            }
        }
    }
    if let Some(tools) = out.get("tools") {
        assert!(tools.as_array().is_some_and(|t| !t.is_empty()));
    } else {
        assert!(
            out.get("tool_choice").is_none(),
            "tool_choice without tools"
        );
    }
}

/// Checks an OpenAI chat request produced by [`anthropic::request_to_openai`].
pub fn check_openai_request(out: &Value, model: &str) {
    assert_eq!(out["model"], model);
    let Some(msgs) = out["messages"].as_array() else {
        panic!("messages is not an array: {out}");
    };
    for m in msgs {
        let role = m["role"].as_str().unwrap_or("");
        assert!(
            matches!(role, "system" | "user" | "assistant" | "tool"),
            "role {role}"
        );
        if role == "tool" {
            assert!(
                m["tool_call_id"].is_string(),
                "tool message without id: {m}"
            );
        }
        if let Some(calls) = m.get("tool_calls") {
            let Some(calls) = calls.as_array() else {
                panic!("tool_calls is not an array: {m}");
            };
            for c in calls {
                let args = c["function"]["arguments"].as_str().unwrap_or("");
                assert!(
                    serde_json::from_str::<Value>(args).is_ok(),
                    "arguments are not JSON: {c}"
                );
            }
        }
    }
    if out.get("tools").is_none() {
        assert!(
            out.get("tool_choice").is_none(),
            "tool_choice without tools"
        );
    }
}

/// Checks an Anthropic `message` produced by [`anthropic::response_to_anthropic`].
pub fn check_anthropic_response(out: &Value) {
    assert_eq!(out["type"], "message");
    assert_eq!(out["role"], "assistant");
    assert!(out["stop_reason"].is_string(), "{out}");
    let Some(blocks) = out["content"].as_array() else {
        panic!("content is not an array: {out}");
    };
    for b in blocks {
        match b["type"].as_str() {
            Some("text") => assert!(b["text"].is_string()),
            Some("tool_use") => {
                assert!(b["id"].is_string() && b["name"].is_string(), "{b}");
                assert!(
                    b["input"].is_object(),
                    "tool_use input is not an object: {b}"
                );
            }
            _ => panic!("unexpected block {b}"),
        }
    }
    for k in ["input_tokens", "output_tokens"] {
        assert!(out["usage"][k].is_u64(), "usage.{k} missing: {out}");
    }
}

/// The Anthropic event grammar: `message_start`, then content blocks opened, extended and
/// closed one at a time with consecutive indices, then `message_delta` and `message_stop`; an
/// `error` may end the stream at any point. Every event also round-trips through the SSE codec.
#[derive(Default)]
struct AnthropicGrammar {
    started: bool,
    open: Option<u64>,
    next_index: u64,
    saw_delta: bool,
    ended: bool,
}

impl AnthropicGrammar {
    fn feed(&mut self, name: &str, v: &Value) {
        assert!(!self.ended, "{name} after the stream ended");
        assert_eq!(v["type"], name, "event name and data type differ");
        let wire = sse::named_event(name, &v.to_string());
        let back = events(&wire);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].event.as_deref(), Some(name));
        let data: Value = match serde_json::from_str(back[0].data.as_deref().unwrap_or("")) {
            Ok(d) => d,
            Err(e) => panic!("{name} data does not round-trip: {e}"),
        };
        assert_eq!(&data, v);
        if name == "error" {
            assert!(v["error"]["message"].is_string(), "{v}");
            self.ended = true;
            return;
        }
        if name == "message_start" {
            assert!(!self.started, "second message_start");
            self.started = true;
            return;
        }
        assert!(self.started, "{name} before message_start");
        let index = v["index"].as_u64();
        match name {
            "content_block_start" => {
                assert_eq!(self.open, None, "block opened while another is open");
                assert_eq!(index, Some(self.next_index), "block index not consecutive");
                assert!(
                    matches!(
                        v["content_block"]["type"].as_str(),
                        Some("text" | "tool_use")
                    ),
                    "{v}"
                );
                self.open = index;
                self.next_index += 1;
            }
            "content_block_delta" => {
                assert!(
                    self.open.is_some() && index == self.open,
                    "delta to a closed block"
                );
            }
            "content_block_stop" => {
                assert!(
                    self.open.is_some() && index == self.open,
                    "stop of a closed block"
                );
                self.open = None;
            }
            "message_delta" => {
                assert_eq!(self.open, None, "message_delta with a block open");
                assert!(!self.saw_delta, "second message_delta");
                assert!(v["delta"]["stop_reason"].is_string(), "{v}");
                self.saw_delta = true;
            }
            "message_stop" => {
                assert!(self.saw_delta, "message_stop without message_delta");
                self.ended = true;
            }
            other => panic!("unexpected event {other}"),
        }
    }
}

/// Checks a complete Anthropic event sequence (as (event name, data)) against the grammar
/// [`to_anthropic`] enforces on the stream translator.
pub fn check_anthropic_events(evs: &[(&str, Value)]) {
    let mut g = AnthropicGrammar::default();
    for (name, v) in evs {
        g.feed(name, v);
    }
    assert!(g.ended, "stream did not end with message_stop or error");
}

/// Feeds OpenAI chunks to [`OpenAiToAnthropicStream`] as the `/v1/messages` relay does and
/// checks the events against the Anthropic grammar.
fn openai_chunks_to_anthropic(chunks: impl IntoIterator<Item = Value>) {
    let mut enc = OpenAiToAnthropicStream::new("claude-fuzz");
    let mut g = AnthropicGrammar::default();
    for chunk in chunks {
        for (name, v) in enc.on_chunk(&chunk) {
            g.feed(name, &v);
        }
    }
    for (name, v) in enc.finish() {
        g.feed(name, &v);
    }
    assert!(g.ended, "stream did not end with message_stop or error");
    assert!(enc.finish().is_empty(), "finish twice produced events");
}

/// OpenAI → Anthropic: the input as an OpenAI chat request (outbound translation), as an OpenAI
/// response, as one stream chunk and as an SSE stream of chunks; and as an Anthropic Messages
/// request (inbound translation to OpenAI).
pub fn to_anthropic(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        for stream in [false, true] {
            if let Ok(out) = anthropic::request_to_anthropic(&v, "claude-fuzz", stream) {
                check_anthropic_request(&out, "claude-fuzz", stream);
            }
        }
        if let Ok(out) = anthropic::request_to_openai(&v, "gpt-fuzz") {
            check_openai_request(&out, "gpt-fuzz");
            // Back out again: must not panic (it may be rejected, e.g. non-object tool input).
            if let Ok(again) = anthropic::request_to_anthropic(&out, "claude-fuzz", false) {
                check_anthropic_request(&again, "claude-fuzz", false);
            }
        }
        if let Ok(out) = anthropic::response_to_anthropic(&v, "claude-fuzz") {
            check_anthropic_response(&out);
        }
        openai_chunks_to_anthropic([v]);
    }
    // As the relay reads an OpenAI stream: JSON data events until `[DONE]`.
    let mut chunks = Vec::new();
    for ev in events(data) {
        if ev.is_done() {
            break;
        }
        if let Some(v) = ev
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok())
        {
            chunks.push(v);
        }
    }
    openai_chunks_to_anthropic(chunks);
}

/// Checks an OpenAI `chat.completion` produced by [`anthropic::response_to_openai`].
pub fn check_openai_response(out: &Value) {
    assert_eq!(out["object"], "chat.completion");
    let msg = &out["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    assert!(
        msg["content"].is_null() || msg["content"].is_string(),
        "{out}"
    );
    if let Some(calls) = msg.get("tool_calls") {
        for c in calls.as_array().into_iter().flatten() {
            let args = c["function"]["arguments"].as_str().unwrap_or("");
            assert!(serde_json::from_str::<Value>(args).is_ok(), "{c}");
        }
    }
    assert!(out["choices"][0]["finish_reason"].is_string(), "{out}");
    let u = &out["usage"];
    let (p, c, t) = (
        u["prompt_tokens"].as_u64(),
        u["completion_tokens"].as_u64(),
        u["total_tokens"].as_u64(),
    );
    assert!(p.is_some() && c.is_some() && t.is_some(), "usage: {u}");
    assert_eq!(
        p.zip(c).and_then(|(p, c)| p.checked_add(c)),
        t,
        "usage: {u}"
    );
}

/// Anthropic → OpenAI: the input as an Anthropic response body and as an Anthropic event stream
/// through [`AnthropicToOpenAiStream`]; every chunk must be a valid `chat.completion.chunk` that
/// survives the SSE codec, the role comes first, `finish_reason` is sent once, nothing follows
/// `[DONE]`. Also the error-body translation.
pub fn from_anthropic(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if let Ok(out) = anthropic::response_to_openai(&v, "gpt-fuzz") {
            check_openai_response(&out);
        }
    }
    for status in [400, 429, 529] {
        let e = anthropic::error_to_openai(data, status);
        assert!(e["error"]["message"].is_string(), "{e}");
        let _ = anthropic::error_body_message(data, status);
    }

    for include_usage in [false, true] {
        let mut tr = AnthropicToOpenAiStream::new("gpt-fuzz", include_usage);
        let mut done = false;
        let mut first = true;
        let mut finishes = 0;
        for ev in events(data) {
            let Some(d) = ev.data.as_deref() else {
                continue;
            };
            let Ok(outs) = tr.on_event(ev.event.as_deref(), d) else {
                continue;
            };
            for o in outs {
                assert!(!done, "output after Done: {o:?}");
                match o {
                    OpenAiOut::Done => done = true,
                    OpenAiOut::Error { .. } => {}
                    OpenAiOut::Chunk(c) => {
                        assert_eq!(c["object"], "chat.completion.chunk");
                        assert_eq!(c["model"], "gpt-fuzz");
                        let text = c.to_string();
                        let back = events(&sse::data_event(&text));
                        assert_eq!(back.len(), 1);
                        assert_eq!(back[0].data.as_deref(), Some(text.as_str()));
                        let Some(choices) = c["choices"].as_array() else {
                            panic!("choices is not an array: {c}");
                        };
                        if choices.is_empty() {
                            assert!(include_usage, "usage chunk not asked for: {c}");
                            let u = &c["usage"];
                            let p = u["prompt_tokens"].as_u64();
                            let t = u["total_tokens"].as_u64();
                            let cmp = u["completion_tokens"].as_u64();
                            assert_eq!(p.zip(cmp).and_then(|(p, c)| p.checked_add(c)), t);
                            continue;
                        }
                        let delta = &choices[0]["delta"];
                        assert!(delta.is_object(), "{c}");
                        if first {
                            assert_eq!(delta["role"], "assistant", "first chunk: {c}");
                        }
                        first = false;
                        if !choices[0]["finish_reason"].is_null() {
                            finishes += 1;
                        }
                        // The relay's classifier must accept what the translator produces.
                        let ev = SseEvent {
                            raw: sse::data_event(&text),
                            event: None,
                            data: Some(text),
                            id: None,
                            comments: Vec::new(),
                        };
                        assert!(
                            stream::classify_event(&ev).is_ok(),
                            "classifier rejects {c}"
                        );
                    }
                }
            }
        }
        assert!(finishes <= 1, "finish_reason sent {finishes} times");
        let _ = tr.usage();
    }
}

/// Request bodies: `/v1/chat/completions`, `/v1/messages` and `/v1/embeddings` parsing, the
/// raw-object rewrite (fields and order kept, `model` replaced), and upstream answer validation.
pub fn body(data: &[u8]) {
    if let Ok(obj) = RawObject::parse(data) {
        let copy = obj.write_with(&[]);
        let again = match RawObject::parse(&copy) {
            Ok(o) => o,
            Err(e) => panic!("rewritten object does not parse: {e}"),
        };
        assert_eq!(obj.fields.len(), again.fields.len());
        for ((k1, v1), (k2, v2)) in obj.fields.iter().zip(&again.fields) {
            assert_eq!(k1, k2);
            assert_eq!(v1.get(), v2.get());
        }
    }
    if let Ok(req) = ChatRequest::parse(data) {
        assert!(!req.model.trim().is_empty());
        let up = req.upstream_body("fuzz-model");
        let re = match ChatRequest::parse(&up) {
            Ok(r) => r,
            Err(e) => panic!("upstream body does not parse: {e}"),
        };
        assert_eq!(re.model, "fuzz-model");
        assert_eq!(re.stream, req.stream);
        assert_eq!(re.include_usage, req.include_usage || req.stream);
        let n = |o: &RawObject| {
            o.fields
                .iter()
                .filter(|(k, _)| k != "stream_options")
                .count()
        };
        assert_eq!(n(&re.obj), n(&req.obj), "fields lost or added");
    }
    if let Ok(m) = messages::parse_request(data) {
        assert!(!m.model.trim().is_empty());
        assert!(m.tree["messages"].as_array().is_some_and(|a| !a.is_empty()));
        let _ = anthropic::request_to_openai(&m.tree, "gpt-fuzz");
    }
    if let Ok((obj, model)) = embeddings::parse(data) {
        assert!(!model.trim().is_empty());
        assert!(obj.get("input").is_some());
    }
    let _ = chat::validate_chat_json(200, data);
    let _ = embeddings::validate_embeddings(200, data);
}
