//! The native Anthropic provider through the real server: OpenAI requests translated to the
//! Messages API and answers (and streams) translated back, with failover both ways.

mod common;

use common::mock::{anthropic_message_json, anthropic_stream, MockUpstream, SseEv, Step};
use common::{hdr, Proxy};
use serde_json::{json, Value};

async fn setup() -> (MockUpstream, MockUpstream, Proxy) {
    let (openai, claude) = (MockUpstream::start().await, MockUpstream::start().await);
    let p = Proxy::start(&format!(
        "providers:\n  - {{name: openai, base_url: \"{}\", api_key: sk-server-openai, priority: 1, model_map: {{claude-sonnet-4-5: gpt-4o}}}}\n  - {{name: anthropic, base_url: \"{}\", api_key: sk-ant-server, priority: 2, model_map: {{gpt-4o: claude-sonnet-4-5}}}}\n",
        openai.url(),
        claude.url()
    ))
    .await;
    (openai, claude, p)
}

fn sse_events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|b| b.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn gpt_request_falls_over_from_openai_to_native_anthropic() {
    let (openai, claude, p) = setup().await;
    openai.push(Step::status(503));
    let r = p
        .post_chat(json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"}
            ],
            "stop": "END",
            "temperature": 0.3,
            "presence_penalty": 1
        }))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "anthropic");
    assert_eq!(hdr(&r, "x-stockyard-model"), "claude-sonnet-4-5");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from mock");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    );
    let req = &claude.requests()[0];
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.header("x-api-key"), Some("sk-ant-server"));
    assert_eq!(req.header("anthropic-version"), Some("2023-06-01"));
    assert!(req.header("authorization").is_none());
    let body = req.json();
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(body["system"], "be brief");
    assert_eq!(
        body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    );
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert_eq!(body["max_tokens"], 4096);
    assert!(
        body.get("presence_penalty").is_none(),
        "no Anthropic equivalent: dropped"
    );
}

#[tokio::test]
async fn claude_stream_overloaded_before_content_falls_over_to_openai() {
    let (openai, claude, p) = setup().await;
    claude.push(Step::sse(vec![
        SseEv::Event("message_start".into(), json!({"type": "message_start", "message": anthropic_message_json("claude-sonnet-4-5", "")}).to_string()),
        SseEv::Event("ping".into(), json!({"type": "ping"}).to_string()),
        SseEv::Event("error".into(), json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).to_string()),
    ]));
    let r = p
        .post_chat(json!({"model": "claude-sonnet-4-5", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "openai");
    assert_eq!(hdr(&r, "x-stockyard-failover"), "true");
    let text = r.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let content: String = sse_events(&text)
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(content, "Hello from mock");
    assert!(!text.contains("Overloaded"));
    assert_eq!((claude.hits(), openai.hits()), (1, 1));
    assert_eq!(openai.last_json().unwrap()["model"], "gpt-4o");
}

#[tokio::test]
async fn anthropic_stream_is_translated_to_openai_chunks() {
    let (_openai, claude, p) = setup().await;
    claude.push(Step::sse(anthropic_stream(
        "claude-sonnet-4-5",
        &["Hel", "lo", "!"],
    )));
    let r = p
        .post_chat(json!({"model": "claude-sonnet-4-5", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "anthropic");
    assert_eq!(hdr(&r, "content-type"), "text/event-stream");
    let id = hdr(&r, "x-stockyard-trace-id");
    let text = r.text().await.unwrap();
    let chunks = sse_events(&text);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let content: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(content, "Hello!");
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    let usage = chunks
        .iter()
        .find(|c| c["usage"].is_object())
        .expect("usage chunk, as asked");
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(claude.last_json().unwrap()["stream"], true);
    let t = p.trace(&id).await;
    assert_eq!(
        (t["tokens_in"].as_i64(), t["tokens_out"].as_i64()),
        (Some(10), Some(5))
    );
}

#[tokio::test]
async fn anthropic_errors_map_onto_failover_classes() {
    // 529 overloaded: retryable, next provider, breaker failure.
    let (openai, claude, p) = setup().await;
    claude.push(Step::json(
        529,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ));
    let r = p.chat("claude-sonnet-4-5").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "openai");
    assert_eq!(p.breaker("anthropic").1, 1);
    // Prompt too long: context-length skip, no breaker count. The next candidate asks for the
    // same model (same 200k window), so it is skipped too and the client learns why.
    claude.push(Step::json(400, json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 250000 tokens > 200000 maximum"}})));
    let r = p.chat("claude-sonnet-4-5").await;
    assert_eq!(r.status(), 400);
    let t = p.trace(&hdr(&r, "x-stockyard-trace-id")).await;
    assert_eq!(t["attempts"][0]["reason"], "context_length");
    assert_eq!(t["attempts"][1]["reason"], "context_too_small");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    // 401: final, OpenAI-shaped, with the Anthropic type kept.
    claude.push(Step::json(401, json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})));
    let r = p.chat("claude-sonnet-4-5").await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "invalid x-api-key");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(openai.hits(), 1);
}

#[tokio::test]
async fn untranslatable_requests_skip_the_anthropic_provider() {
    let (openai, claude, p) = setup().await;
    let r = p
        .post_chat(json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]}]}))
        .await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "openai");
    assert_eq!(claude.hits(), 0);
    assert_eq!(openai.hits(), 1);
    let t = p.trace(&hdr(&r, "x-stockyard-trace-id")).await;
    assert_eq!(t["attempts"][0]["reason"], "untranslatable");
}

// ---- Inbound: POST /v1/messages ----

async fn post_messages(p: &Proxy, body: Value) -> reqwest::Response {
    p.client
        .post(format!("{}/v1/messages", p.url))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn messages_body(model: &str) -> Value {
    json!({"model": model, "max_tokens": 64, "system": "be brief", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn messages_pass_through_to_anthropic_and_translate_for_openai() {
    let (openai, claude, p) = setup().await;
    // Natural provider anthropic: body passes through with the model, answer relayed.
    let r = post_messages(&p, messages_body("claude-sonnet-4-5")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "anthropic");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        anthropic_message_json("claude-sonnet-4-5", "Hello from mock")
    );
    assert_eq!(
        claude.last_json().unwrap(),
        messages_body("claude-sonnet-4-5")
    );
    // Anthropic down (529): falls over to OpenAI, answer translated into a Message.
    claude.push(Step::json(
        529,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ));
    let r = post_messages(&p, messages_body("claude-sonnet-4-5")).await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "openai");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"][0],
        json!({"type": "text", "text": "Hello from mock"})
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["output_tokens"], 5);
    let sent = openai.last_json().unwrap();
    assert_eq!(sent["model"], "gpt-4o");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
}

#[tokio::test]
async fn messages_stream_from_an_openai_upstream_is_an_anthropic_event_stream() {
    let (openai, claude, p) = setup().await;
    claude.set_default(Step::status(503));
    let mut body = messages_body("claude-sonnet-4-5");
    body["stream"] = json!(true);
    let r = post_messages(&p, body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "openai");
    let text = r.text().await.unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"content_block_delta") && names.contains(&"message_delta"));
    assert!(!text.contains("[DONE]") && !text.contains("chat.completion.chunk"));
    assert_eq!(openai.last_json().unwrap()["stream"], true);
}

#[tokio::test]
async fn messages_errors_come_back_in_anthropic_shape() {
    let (openai, claude, p) = setup().await;
    let r = post_messages(&p, json!({"model": "claude-sonnet-4-5"})).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    // Final upstream Anthropic error: relayed as is.
    let err = json!({"type": "error", "error": {"type": "permission_error", "message": "nope"}});
    claude.push(Step::json(403, err.clone()));
    let r = post_messages(&p, messages_body("claude-sonnet-4-5")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap(), err);
    // Exhausted chain: Anthropic shape with the attempts.
    claude.push(Step::status(500));
    openai.push(Step::status(503));
    let r = post_messages(&p, messages_body("claude-sonnet-4-5")).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");
    assert_eq!(v["error"]["attempts"][0]["provider"], "anthropic");
}

#[tokio::test]
async fn anthropic_python_sdk_against_messages_answered_by_openai_upstream() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import anthropic"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "the official `anthropic` Python SDK is required: pip install anthropic (./scripts/test.sh installs it)");
    let openai = MockUpstream::start().await;
    let p = Proxy::start(&format!(
        "providers:\n  - {{name: local, kind: openai-compatible, base_url: \"{}\"}}\n",
        openai.url()
    ))
    .await;
    let url = p.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/sdk/anthropic_messages.py"
                ),
                &url,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("plain: Hello from mock"), "{stdout}");
    assert!(stdout.contains("usage: 10 5"), "{stdout}");
    assert!(stdout.contains("stream: Hello from mock"), "{stdout}");
    assert!(stdout.contains("stream stop: end_turn"), "{stdout}");
    assert_eq!(openai.hits(), 2);
}
