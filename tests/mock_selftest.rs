//! Self-test for the mock upstream harness in `tests/common/mock.rs`.

mod common;

use std::time::{Duration, Instant};

use common::mock::*;
use futures::StreamExt;
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post(m: &MockUpstream, body: Value) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!("{}/chat/completions", m.url()))
        .json(&body)
        .send()
        .await
}

/// `data:` payloads of an SSE text (either line ending).
fn sse_data(text: &str) -> Vec<String> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn default_chat_and_recording() {
    let m = MockUpstream::start().await;
    assert!(m.url().starts_with("http://127.0.0.1:") && m.url().ends_with("/v1"));
    let resp = client()
        .post(format!("{}/chat/completions?api-version=1", m.url()))
        .header("Authorization", "Bearer sk-test")
        .json(&json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-x");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello from mock");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
    );

    assert_eq!(m.hits(), 1);
    assert_eq!(m.hits_path("/v1/chat/completions"), 1);
    let r = &m.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.query.as_deref()),
        ("POST", Some("api-version=1"))
    );
    assert_eq!(r.header("AUTHORIZATION"), Some("Bearer sk-test"));
    assert_eq!(r.json()["messages"][0]["content"], "hi");
    assert_eq!(m.last_json().unwrap()["model"], "gpt-x");
}

#[tokio::test]
async fn ok_chat_streams_with_and_without_usage() {
    let m = MockUpstream::start().await;
    m.set_default(Step::ok_chat("abcdefg"));
    let (c, url) = (client(), format!("{}/chat/completions", m.url()));
    for include in [true, false] {
        let body =
            json!({"model": "s", "stream": true, "stream_options": {"include_usage": include}});
        let resp = c.post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let data = sse_data(&resp.text().await.unwrap());
        assert_eq!(data.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert!(chunks.iter().all(|c| c["model"] == "s"));
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "abcdefg");
        assert_eq!(chunks.len(), if include { 6 } else { 5 }); // role + 3 pieces + finish (+ usage)
        let finish = chunks
            .iter()
            .position(|c| c["choices"][0]["finish_reason"] == "stop");
        assert!(finish.is_some());
        let usage = chunks.last().unwrap();
        assert_eq!(usage["usage"]["total_tokens"].is_u64(), include);
    }
    // Both complete streams reused one keep-alive connection.
    assert_eq!(m.connections_opened(), 1);
}

#[tokio::test]
async fn queue_is_fifo_then_default() {
    let m = MockUpstream::start().await;
    m.push(Step::status(500));
    m.push(Step::json(201, json!({"x": 1})).header("x-request-id", "r1"));
    assert_eq!(m.pending(), 2);
    let r = post(&m, json!({})).await.unwrap();
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["message"], "mock error 500");
    assert_eq!(v["error"]["type"], "mock_error");
    let r = post(&m, json!({})).await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-request-id"].to_str().unwrap()
        ),
        (201, "r1")
    );
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"x": 1}));
    assert_eq!(post(&m, json!({})).await.unwrap().status(), 200);
    m.set_default(Step::status(429).header("retry-after", "2"));
    let r = post(&m, json!({})).await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["retry-after"].to_str().unwrap()
        ),
        (429, "2")
    );
    assert_eq!(m.hits(), 4);
}

#[tokio::test]
async fn bodies_garbage_and_header_override() {
    let m = MockUpstream::start().await;
    m.push(Step::body(200, "text/plain", "hi there"));
    m.push(Step::garbage());
    m.push(Step::json(200, json!({})).header("Content-Type", "text/html"));
    let r = post(&m, json!({})).await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.text().await.unwrap(), "hi there");
    let r = post(&m, json!({})).await.unwrap();
    assert!(r.json::<Value>().await.is_err());
    let r = post(&m, json!({})).await.unwrap();
    assert_eq!(r.headers().get_all("content-type").iter().count(), 1);
    assert_eq!(r.headers()["content-type"], "text/html");
}

#[tokio::test]
async fn delays_and_drip() {
    let m = MockUpstream::start().await;
    m.push(Step::ok_chat("x").delay_headers(Duration::from_millis(300)));
    m.push(Step::body(200, "text/plain", "body").delay_body(Duration::from_millis(300)));
    m.push(Step::body(200, "text/plain", "abcdef").drip(Duration::from_millis(30)));

    let t = Instant::now();
    let r = post(&m, json!({})).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t.elapsed()
    );
    r.bytes().await.unwrap();

    let t = Instant::now();
    let r = post(&m, json!({})).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "headers late: {:?}",
        t.elapsed()
    );
    assert_eq!(r.text().await.unwrap(), "body");
    assert!(t.elapsed() >= Duration::from_millis(290));

    let t = Instant::now();
    let r = post(&m, json!({})).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "abcdef");
    assert!(
        t.elapsed() >= Duration::from_millis(140),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn connection_faults() {
    let m = MockUpstream::start().await;
    m.push(Step::close());
    m.push(Step::reset());
    m.push(Step::status(200).truncated(5));
    m.push(Step::raw("NOT HTTP AT ALL\r\n\r\n"));
    m.push(Step::raw(
        "HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\nok",
    ));

    let e = post(&m, json!({})).await.unwrap_err();
    assert!(!e.is_timeout(), "close: {e:?}");
    assert!(
        format!("{e:?}").contains("IncompleteMessage"),
        "close: {e:?}"
    );
    let e = post(&m, json!({})).await.unwrap_err();
    assert!(format!("{e:?}").contains("ConnectionReset"), "reset: {e:?}");
    let r = post(&m, json!({})).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "truncated body must fail");
    assert!(
        post(&m, json!({})).await.is_err(),
        "garbage status line must fail"
    );
    let r = post(&m, json!({})).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (202, "ok".to_string())
    );
    assert_eq!(m.hits(), 5);
    assert_eq!(m.pending(), 0);
}

#[tokio::test]
async fn models_endpoints_do_not_consume_steps() {
    let m = MockUpstream::start().await;
    m.set_models(&["a", "b"]);
    m.push(Step::status(418));
    let v: Value = client()
        .get(format!("{}/models", m.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(v["data"][0]["object"], "model");
    let v: Value = client()
        .get(format!("{}/api/tags", m.root()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["models"][1],
        json!({"name": "b", "model": "b", "size": 0, "details": {}})
    );
    let r = client()
        .get(format!("{}/nope", m.root()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    m.set_models_step(Some(Step::status(503)));
    let r = client()
        .get(format!("{}/models", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    assert_eq!(
        (
            m.hits(),
            m.hits_path("/v1/models"),
            m.hits_path("/api/tags")
        ),
        (0, 2, 1)
    );
    assert_eq!(post(&m, json!({})).await.unwrap().status(), 418);
}

#[tokio::test]
async fn keep_alive_chunked_request_and_other_endpoints() {
    let m = MockUpstream::start().await;
    let c = client();
    // Streamed request body => Transfer-Encoding: chunked.
    let parts: Vec<Result<&'static str, std::io::Error>> =
        vec![Ok("{\"model\":\"emb\","), Ok("\"input\":[\"a\",\"b\"]}")];
    let r = c
        .post(format!("{}/embeddings", m.url()))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(parts)))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(m.requests()[0].header("transfer-encoding"), Some("chunked"));
    assert_eq!(m.last_json().unwrap()["input"][1], "b");
    assert_eq!(
        (v["model"].as_str(), v["data"].as_array().unwrap().len()),
        (Some("emb"), 2)
    );

    // Anthropic shape, non-streaming and streaming, on the same connection.
    let url = format!("{}/messages", m.url());
    let v: Value = c
        .post(&url)
        .json(&json!({"model": "claude"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["type"].as_str(), v["content"][0]["text"].as_str()),
        (Some("message"), Some("Hello from mock"))
    );
    let text = c
        .post(&url)
        .json(&json!({"model": "claude", "stream": true}))
        .send()
        .await
        .unwrap();
    let text = text.text().await.unwrap();
    assert!(text.starts_with("event: message_start\n") && text.contains("event: message_stop"));
    assert_eq!(m.connections_opened(), 1);
    assert_eq!(m.connections_closed(), 0);
}

#[tokio::test]
async fn sse_scripting_spacing_framing_and_split_writes() {
    let m = MockUpstream::start().await;
    let evs = vec![
        SseEv::Comment("keep-alive".into()),
        SseEv::Data("a".into()),
        SseEv::Delay(Duration::from_millis(200)),
        SseEv::Event("ping".into(), "{}".into()),
        SseEv::Raw("data: raw\n\n".into()),
        SseEv::Done,
    ];
    m.push(Step::sse(evs.clone()));
    m.push(Step::sse(evs).crlf().split_writes());
    m.push(Step::sse(Step::chat_stream(&["x", "y"])));

    let mut s = post(&m, json!({})).await.unwrap().bytes_stream();
    let (mut text, mut t_a, mut t_ping) = (String::new(), None, None);
    while let Some(chunk) = s.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        if t_a.is_none() && text.contains("data: a") {
            t_a = Some(Instant::now());
        }
        if t_ping.is_none() && text.contains("event: ping") {
            t_ping = Some(Instant::now());
        }
    }
    let gap = t_ping.unwrap() - t_a.unwrap();
    assert!(
        gap >= Duration::from_millis(180),
        "events not spaced: {gap:?}"
    );
    assert_eq!(
        text,
        ": keep-alive\n\ndata: a\n\nevent: ping\ndata: {}\n\ndata: raw\n\ndata: [DONE]\n\n"
    );

    let mut s = post(&m, json!({})).await.unwrap().bytes_stream();
    let (mut crlf_text, mut frames) = (String::new(), 0);
    while let Some(chunk) = s.next().await {
        crlf_text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        frames += 1;
    }
    assert!(
        frames > 10,
        "split_writes should arrive in many frames, got {frames}"
    );
    assert!(
        crlf_text.starts_with(": keep-alive\r\n\r\ndata: a\r\n\r\nevent: ping\r\ndata: {}\r\n\r\n")
    );
    assert_eq!(sse_data(&crlf_text), ["a", "{}", "raw", "[DONE]"]);

    let data = sse_data(&post(&m, json!({})).await.unwrap().text().await.unwrap());
    assert_eq!(data.len(), 5);
    let v: Value = serde_json::from_str(&data[2]).unwrap();
    assert_eq!(v["choices"][0]["delta"]["content"], "y");
    assert_eq!(data[3], finish_json(MOCK_MODEL, "stop"));
}

#[tokio::test]
async fn stall_hang_and_client_cancellation() {
    let m = MockUpstream::start().await;
    assert!(!m.wait_client_closed(Duration::from_millis(50)).await);

    // Stall: the first event arrives, then nothing; the client gives up and drops the response.
    m.push(Step::sse(vec![
        SseEv::Data(chunk_json("m", "hi")),
        SseEv::Stall,
    ]));
    let mut s = post(&m, json!({})).await.unwrap().bytes_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("\"hi\""));
    assert!(tokio::time::timeout(Duration::from_millis(200), s.next())
        .await
        .is_err());
    drop(s);
    assert!(m.wait_client_closed(Duration::from_secs(10)).await);

    // Hang: the client times out waiting for headers. (Long enough for the request to reach the
    // mock first on a loaded machine: a close before that is no cancellation.)
    m.push(Step::hang());
    let e = client()
        .post(format!("{}/chat/completions", m.url()))
        .timeout(Duration::from_millis(1000))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_timeout());
    assert_eq!(m.hits(), 2);
    assert!(m.wait_client_closed(Duration::from_secs(10)).await);
    // Each close is consumed once.
    assert!(!m.wait_client_closed(Duration::from_millis(50)).await);
    assert_eq!(m.client_cancels(), 2);
    assert_eq!(m.connections_closed(), 2);
}

#[tokio::test]
async fn sse_drop_breaks_the_stream() {
    let m = MockUpstream::start().await;
    m.push(Step::sse(vec![SseEv::Data("a".into()), SseEv::Drop]));
    let mut s = post(&m, json!({})).await.unwrap().bytes_stream();
    let mut saw_error = false;
    while let Some(chunk) = s.next().await {
        saw_error |= chunk.is_err();
    }
    assert!(
        saw_error,
        "an unterminated chunked stream must end in an error"
    );
}

#[tokio::test]
async fn drop_closes_listener_and_connections() {
    let m = MockUpstream::start().await;
    let addr = m.addr;
    m.push(Step::hang());
    let pending = tokio::spawn(post_owned(m.url()));
    m.wait_hits(1).await;
    assert_eq!(m.hits(), 1);
    drop(m);
    let res = tokio::time::timeout(Duration::from_secs(2), pending)
        .await
        .expect("request not released");
    assert!(res.unwrap().is_err());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still open"
    );
}

async fn post_owned(url: String) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!("{url}/chat/completions"))
        .json(&json!({}))
        .send()
        .await
}
