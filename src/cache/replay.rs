//! One stored form for both kinds of answer: a `chat.completion` JSON object. A streamed answer
//! is assembled into one from the chunks relayed to the client ([`Assembler`]); a stored answer is
//! replayed to a streaming client as a well-formed chunk stream ([`replay_sse`]).

use crate::sse::{self, SseDecoder};
use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Answers larger than this are not cached.
pub const MAX_ENTRY_BYTES: usize = 8 << 20;

/// Whether a stored body is a usable chat completion: a JSON object whose `choices` is a
/// non-empty array of objects that each carry a `message` object.
pub fn parse_completion(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let choices = v.get("choices")?.as_array()?;
    if choices.is_empty() || v.get("error").is_some() {
        return None;
    }
    choices
        .iter()
        .all(|c| c.get("message").is_some_and(Value::is_object))
        .then_some(v)
}

/// `usage.prompt_tokens` and `usage.completion_tokens` of a completion.
pub fn usage_of(v: &Value) -> Option<(u64, u64)> {
    let u = v.get("usage")?;
    Some((
        u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        u.get("completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    ))
}

#[derive(Debug, Default)]
struct ToolAcc {
    id: Option<Value>,
    kind: Option<Value>,
    name: String,
    arguments: String,
}

#[derive(Debug, Default)]
struct ChoiceAcc {
    role: Option<String>,
    content: Option<String>,
    refusal: Option<String>,
    reasoning_content: Option<String>,
    tool_calls: BTreeMap<u64, ToolAcc>,
    function_call: Option<(String, String)>,
    logprobs: Option<Vec<Value>>,
    finish_reason: Option<Value>,
}

fn append(slot: &mut Option<String>, v: Option<&Value>) {
    if let Some(s) = v.and_then(Value::as_str) {
        slot.get_or_insert_with(String::new).push_str(s);
    }
}

/// Rebuilds a `chat.completion` from the SSE bytes relayed to a client. Anything unexpected (an
/// error event, a chunk that is not JSON, a stream without `[DONE]`, a choice without a
/// finish_reason, an answer over [`MAX_ENTRY_BYTES`]) makes the result `None`: only complete,
/// clean answers are stored.
#[derive(Debug, Default)]
pub struct Assembler {
    dec: SseDecoder,
    head: Map<String, Value>,
    choices: BTreeMap<u64, ChoiceAcc>,
    usage: Option<Value>,
    seen: usize,
    broken: bool,
    done: bool,
}

impl Assembler {
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// `[DONE]` was seen (nothing else may follow).
    pub fn is_done(&self) -> bool {
        self.done && !self.broken
    }

    /// Feeds bytes as they are sent to the client.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        self.seen += bytes.len();
        if self.seen > MAX_ENTRY_BYTES * 2 {
            self.broken = true;
            return;
        }
        self.dec.push(bytes);
        loop {
            match self.dec.next_event() {
                Ok(Some(ev)) => self.event(&ev),
                Ok(None) => break,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
            if self.broken {
                break;
            }
        }
    }

    fn event(&mut self, ev: &sse::SseEvent) {
        if ev.is_comment_only() {
            return;
        }
        if self.done || ev.event.is_some() {
            // Nothing may follow [DONE]; named events (`event: error`) are not chunks.
            self.broken = true;
            return;
        }
        let Some(data) = &ev.data else { return };
        if ev.is_done() {
            self.done = true;
            return;
        }
        let Ok(Value::Object(chunk)) = serde_json::from_str::<Value>(data) else {
            self.broken = true;
            return;
        };
        if chunk.contains_key("error") {
            self.broken = true;
            return;
        }
        for k in [
            "id",
            "created",
            "model",
            "system_fingerprint",
            "service_tier",
        ] {
            if let Some(v) = chunk.get(k).filter(|v| !v.is_null()) {
                self.head.entry(k.to_string()).or_insert_with(|| v.clone());
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return;
        };
        for (pos, c) in choices.iter().enumerate() {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
            let acc = self.choices.entry(index).or_default();
            if let Some(d) = c.get("delta").filter(|d| d.is_object()) {
                if let Some(r) = d.get("role").and_then(Value::as_str) {
                    acc.role = Some(r.to_string());
                }
                append(&mut acc.content, d.get("content"));
                append(&mut acc.refusal, d.get("refusal"));
                append(&mut acc.reasoning_content, d.get("reasoning_content"));
                if let Some(fc) = d.get("function_call").filter(|f| f.is_object()) {
                    let f = acc.function_call.get_or_insert_with(Default::default);
                    if let Some(n) = fc.get("name").and_then(Value::as_str) {
                        f.0.push_str(n);
                    }
                    if let Some(a) = fc.get("arguments").and_then(Value::as_str) {
                        f.1.push_str(a);
                    }
                }
                if let Some(tcs) = d.get("tool_calls").and_then(Value::as_array) {
                    for (tpos, tc) in tcs.iter().enumerate() {
                        let ti = tc
                            .get("index")
                            .and_then(Value::as_u64)
                            .unwrap_or(tpos as u64);
                        let t = acc.tool_calls.entry(ti).or_default();
                        if let Some(id) = tc.get("id").filter(|v| !v.is_null()) {
                            t.id = Some(id.clone());
                        }
                        if let Some(k) = tc.get("type").filter(|v| !v.is_null()) {
                            t.kind = Some(k.clone());
                        }
                        if let Some(f) = tc.get("function") {
                            if let Some(n) = f.get("name").and_then(Value::as_str) {
                                t.name.push_str(n);
                            }
                            if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                                t.arguments.push_str(a);
                            }
                        }
                    }
                }
            }
            if let Some(lp) = c
                .get("logprobs")
                .and_then(|l| l.get("content"))
                .and_then(Value::as_array)
            {
                acc.logprobs
                    .get_or_insert_with(Vec::new)
                    .extend(lp.iter().cloned());
            }
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                acc.finish_reason = Some(f.clone());
            }
        }
    }

    /// The assembled completion, if the stream was complete and clean. `usage` (prompt,
    /// completion tokens) fills in when the client did not ask for the usage chunk.
    pub fn finish(mut self, usage: Option<(u64, u64)>) -> Option<Value> {
        if !self.broken {
            while let Ok(Some(ev)) = self.dec.finish() {
                self.event(&ev);
            }
        }
        if self.broken || !self.done || self.choices.is_empty() {
            return None;
        }
        let mut choices = Vec::with_capacity(self.choices.len());
        for (index, c) in self.choices {
            let finish = c.finish_reason?;
            let mut msg = Map::new();
            msg.insert(
                "role".into(),
                json!(c.role.unwrap_or_else(|| "assistant".into())),
            );
            msg.insert("content".into(), json!(c.content));
            if let Some(r) = c.refusal {
                msg.insert("refusal".into(), json!(r));
            }
            if let Some(r) = c.reasoning_content {
                msg.insert("reasoning_content".into(), json!(r));
            }
            if !c.tool_calls.is_empty() {
                let calls: Vec<Value> = c
                    .tool_calls
                    .into_values()
                    .map(|t| {
                        json!({
                            "id": t.id.unwrap_or(Value::Null),
                            "type": t.kind.unwrap_or_else(|| json!("function")),
                            "function": {"name": t.name, "arguments": t.arguments},
                        })
                    })
                    .collect();
                msg.insert("tool_calls".into(), Value::Array(calls));
            }
            if let Some((name, arguments)) = c.function_call {
                msg.insert(
                    "function_call".into(),
                    json!({"name": name, "arguments": arguments}),
                );
            }
            choices.push(json!({
                "index": index,
                "message": msg,
                "logprobs": c.logprobs.map(|l| json!({"content": l})),
                "finish_reason": finish,
            }));
        }
        let mut out = Map::new();
        out.insert(
            "id".into(),
            self.head
                .remove("id")
                .unwrap_or_else(|| json!("chatcmpl-stockyard")),
        );
        out.insert("object".into(), json!("chat.completion"));
        out.insert(
            "created".into(),
            self.head.remove("created").unwrap_or(json!(0)),
        );
        out.insert(
            "model".into(),
            self.head.remove("model").unwrap_or(json!("")),
        );
        out.insert("choices".into(), Value::Array(choices));
        let usage = self.usage.or_else(|| {
            usage.map(
                |(p, c)| json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}),
            )
        });
        if let Some(u) = usage {
            out.insert("usage".into(), u);
        }
        out.extend(self.head);
        Some(Value::Object(out))
    }
}

/// A stored completion as an SSE chunk stream, the way an OpenAI-compatible upstream sends it:
/// per choice a role chunk, its reasoning / content / refusal, its tool calls (one chunk each),
/// a finish chunk; then the usage chunk when the client asked for it
/// (`stream_options.include_usage`); then `data: [DONE]`.
pub fn replay_sse(c: &Value, include_usage: bool) -> Bytes {
    let mut base = Map::new();
    base.insert(
        "id".into(),
        c.get("id")
            .cloned()
            .unwrap_or_else(|| json!("chatcmpl-stockyard")),
    );
    base.insert("object".into(), json!("chat.completion.chunk"));
    base.insert(
        "created".into(),
        c.get("created").cloned().unwrap_or(json!(0)),
    );
    base.insert("model".into(), c.get("model").cloned().unwrap_or(json!("")));
    for k in ["system_fingerprint", "service_tier"] {
        if let Some(v) = c.get(k).filter(|v| !v.is_null()) {
            base.insert(k.into(), v.clone());
        }
    }
    let mut out = BytesMut::new();
    let mut emit = |choices: Value, usage: Option<&Value>| {
        let mut chunk = base.clone();
        chunk.insert("choices".into(), choices);
        if let Some(u) = usage {
            chunk.insert("usage".into(), u.clone());
        }
        out.extend_from_slice(&sse::data_event(&Value::Object(chunk).to_string()));
    };
    let choices = c
        .get("choices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (pos, ch) in choices.iter().enumerate() {
        let index = ch.get("index").cloned().unwrap_or(json!(pos));
        let one = |delta: Value, logprobs: Value, finish: Value| json!([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]);
        let empty = Map::new();
        let m = ch
            .get("message")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let role = m.get("role").cloned().unwrap_or(json!("assistant"));
        let content = m.get("content").and_then(Value::as_str);
        emit(
            one(
                json!({"role": role, "content": if content.is_some() { json!("") } else { Value::Null }}),
                Value::Null,
                Value::Null,
            ),
            None,
        );
        if let Some(r) = m
            .get("reasoning_content")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            emit(
                one(json!({"reasoning_content": r}), Value::Null, Value::Null),
                None,
            );
        }
        let logprobs = ch.get("logprobs").cloned().unwrap_or(Value::Null);
        if let Some(s) = content.filter(|s| !s.is_empty()) {
            emit(one(json!({"content": s}), logprobs, Value::Null), None);
        }
        if let Some(r) = m
            .get("refusal")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            emit(one(json!({"refusal": r}), Value::Null, Value::Null), None);
        }
        if let Some(calls) = m.get("tool_calls").and_then(Value::as_array) {
            for (i, tc) in calls.iter().enumerate() {
                let mut call = Map::new();
                call.insert("index".into(), json!(i));
                if let Some(id) = tc.get("id") {
                    call.insert("id".into(), id.clone());
                }
                call.insert(
                    "type".into(),
                    tc.get("type").cloned().unwrap_or(json!("function")),
                );
                call.insert(
                    "function".into(),
                    tc.get("function").cloned().unwrap_or(json!({})),
                );
                emit(
                    one(json!({"tool_calls": [call]}), Value::Null, Value::Null),
                    None,
                );
            }
        }
        if let Some(fc) = m.get("function_call").filter(|f| f.is_object()) {
            emit(
                one(json!({"function_call": fc}), Value::Null, Value::Null),
                None,
            );
        }
        let finish = ch
            .get("finish_reason")
            .cloned()
            .filter(|f| !f.is_null())
            .unwrap_or(json!("stop"));
        emit(one(json!({}), Value::Null, finish), None);
    }
    if include_usage {
        if let Some(u) = c.get("usage").filter(|u| u.is_object()) {
            emit(json!([]), Some(u));
        }
    }
    out.extend_from_slice(&sse::data_event("[DONE]"));
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(delta: Value, finish: Value) -> String {
        let v = json!({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {v}\n\n")
    }

    #[test]
    fn assembles_text_and_tool_calls() {
        let mut a = Assembler::new();
        a.push(chunk(json!({"role": "assistant", "content": ""}), Value::Null).as_bytes());
        a.push(chunk(json!({"content": "Hel"}), Value::Null).as_bytes());
        let two = chunk(json!({"content": "lo"}), Value::Null);
        let (x, y) = two.split_at(9);
        a.push(x.as_bytes());
        a.push(y.as_bytes());
        a.push(
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"a\""}}]}),
                Value::Null,
            )
            .as_bytes(),
        );
        a.push(
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
                Value::Null,
            )
            .as_bytes(),
        );
        a.push(chunk(json!({}), json!("tool_calls")).as_bytes());
        a.push(b": keep-alive\n\ndata: [DONE]\n\n");
        let c = a.finish(Some((3, 4))).unwrap();
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["id"], "c1");
        assert_eq!(c["choices"][0]["message"]["content"], "Hello");
        assert_eq!(
            c["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c["usage"]["total_tokens"], 7);

        // And back: the replay assembles to the same completion.
        let sse = replay_sse(&c, true);
        let mut b = Assembler::new();
        b.push(&sse);
        let again = b.finish(None).unwrap();
        assert_eq!(again, c);
        let text = String::from_utf8(sse.to_vec()).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(text.contains("\"choices\":[]"), "usage chunk when asked");
        assert!(!String::from_utf8(replay_sse(&c, false).to_vec())
            .unwrap()
            .contains("\"choices\":[]"));
    }

    #[test]
    fn incomplete_or_failed_streams_are_not_assembled() {
        let role = chunk(json!({"role": "assistant"}), Value::Null);
        let text = chunk(json!({"content": "Hi"}), Value::Null);
        let fin = chunk(json!({}), json!("stop"));
        let ok = format!("{role}{text}{fin}data: [DONE]\n\n");
        let mut a = Assembler::new();
        a.push(ok.as_bytes());
        assert!(a.finish(None).is_some());
        for bad in [
            format!("{role}{text}"),
            format!("{role}{text}data: [DONE]\n\n"),
            format!("{role}{text}data: {{\"error\":{{\"message\":\"x\",\"type\":\"stream_error\"}}}}\n\n"),
            format!("{role}{text}data: not json\n\n{fin}data: [DONE]\n\n"),
        ] {
            let mut a = Assembler::new();
            a.push(bad.as_bytes());
            assert!(a.finish(None).is_none(), "{bad}");
        }
    }

    #[test]
    fn stored_bodies_are_checked() {
        assert!(parse_completion(b"garbage").is_none());
        assert!(parse_completion(br#"{"choices":[]}"#).is_none());
        assert!(parse_completion(br#"{"choices":[{"text":"x"}]}"#).is_none());
        assert!(parse_completion(br#"{"choices":[{"message":{"content":"x"}}]}"#).is_some());
    }
}
