//! Connection-level limits: the request-head deadline (`header_read_timeout`, against slowloris
//! clients and idle connections), the global in-flight cap (`max_in_flight`), ten thousand idle
//! keep-alive connections against the real binary, and the request-body limits of every proxy
//! route.

mod common;

use common::mock::{chunk_json, role_json, MockUpstream, SseEv, Step, MOCK_MODEL};
use common::{chat_body, Proxy};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one(url: &str, top: &str) -> String {
    format!("{top}providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{url}\"}}\n")
}

fn addr(p: &Proxy) -> String {
    p.url.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes (Ok(bytes read)) or `limit` passes (Err).
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, ()> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A slowloris client: writes a request head one byte at a time, `every` apart, until the server
/// closes the connection. Returns how long the server let it go on and how many bytes it sent.
async fn slowloris(address: String, every: Duration) -> (Duration, usize) {
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: stockyard\r\nContent-Type: application/json\r\nContent-Length: 60\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    // Before connecting: the server's deadline cannot start before its accept, which may run
    // before this task resumes after `connect`.
    let t0 = Instant::now();
    let mut s = TcpStream::connect(&address).await.unwrap();
    let mut sent = 0;
    for b in head.as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            return (t0.elapsed(), sent);
        }
        sent += 1;
        // A closed connection shows up as EOF on read before the next write.
        let mut probe = [0u8; 64];
        match tokio::time::timeout(every, s.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (t0.elapsed(), sent),
            Ok(Ok(_)) => panic!("the server answered a request head that never completed"),
            Err(_) => {}
        }
    }
    panic!(
        "the whole head ({sent} bytes over {:?}) was accepted",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_dropped_while_normal_clients_are_served() {
    let m = MockUpstream::start().await;
    let p = Proxy::start(&one(&m.url(), "header_read_timeout: 1s\n")).await;
    // Twenty slow clients at one byte per 250ms: the whole head would take about 40s.
    let slow: Vec<_> = (0..20)
        .map(|_| tokio::spawn(slowloris(addr(&p), Duration::from_millis(250))))
        .collect();
    // Meanwhile ordinary clients are answered.
    for _ in 0..10 {
        let r = p.chat("m").await;
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in slow {
        let (took, sent) = t.await.unwrap();
        assert!(
            took >= Duration::from_millis(900),
            "dropped before the timeout: {took:?}"
        );
        assert!(
            took < Duration::from_secs(20),
            "kept for {took:?} ({sent} bytes)"
        );
    }
    assert_eq!(p.chat("m").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_keep_alive_connections_are_closed_after_the_timeout() {
    let m = MockUpstream::start().await;
    let p = Proxy::start(&one(&m.url(), "header_read_timeout: 1s\n")).await;
    // Connects and never sends a byte.
    let mut silent = TcpStream::connect(addr(&p)).await.unwrap();
    // Sends one complete request, reads the answer, then keeps the connection idle.
    let mut idle = TcpStream::connect(addr(&p)).await.unwrap();
    // Before the request: the server's idle deadline starts once it has written the answer,
    // possibly well before this task gets to read it.
    let t0 = Instant::now();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("{\"status\":\"ok\"}") {
        let n = idle.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        p.state().runtime().config.header_read_timeout,
        Duration::from_secs(1)
    );
    let rest = read_until_closed(&mut idle, Duration::from_secs(20))
        .await
        .expect("idle keep-alive connection not closed");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    let rest = read_until_closed(&mut silent, Duration::from_secs(20))
        .await
        .expect("silent connection not closed");
    assert!(rest.is_empty());
    // Half an HTTP/2 preface, then nothing: dropped as well.
    let mut h2 = TcpStream::connect(addr(&p)).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    read_until_closed(&mut h2, Duration::from_secs(20))
        .await
        .expect("a stalled HTTP/2 preface is never dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_still_works() {
    let m = MockUpstream::start().await;
    let p = Proxy::start(&one(&m.url(), "header_read_timeout: 1s\n")).await;
    let c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..2 {
        let r = c
            .post(format!("{}/v1/chat/completions", p.url))
            .json(&chat_body("m"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        // Longer than header_read_timeout between requests on the same connection: HTTP/2 has
        // no request-head deadline once the connection is up.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_deadline_does_not_cut_slow_answers_or_long_streams() {
    let m = MockUpstream::start().await;
    let p = Proxy::start(&one(&m.url(), "header_read_timeout: 1s\n")).await;
    // Upstream takes longer than the timeout to answer.
    m.push(Step::ok_chat("slow").delay_headers(Duration::from_millis(1200)));
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "slow");
    // A stream whose gaps add up to several timeouts.
    m.push(Step::sse(vec![
        SseEv::Data(role_json(MOCK_MODEL)),
        SseEv::Data(chunk_json(MOCK_MODEL, "one")),
        SseEv::Delay(Duration::from_millis(700)),
        SseEv::Data(chunk_json(MOCK_MODEL, " two")),
        SseEv::Delay(Duration::from_millis(700)),
        SseEv::Data(chunk_json(MOCK_MODEL, " three")),
        SseEv::Done,
    ]));
    let mut body = chat_body("m");
    body["stream"] = json!(true);
    let text = p.post_chat(body).await.text().await.unwrap();
    for piece in ["one", " two", " three", "[DONE]"] {
        assert!(text.contains(piece), "missing {piece}: {text}");
    }
    // A slowly uploaded body is not a slow head either (only a pause longer than the timeout
    // ends it: see the next test).
    let mut s = TcpStream::connect(addr(&p)).await.unwrap();
    let b = serde_json::to_vec(&chat_body("m")).unwrap();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            b.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Six pauses well under the timeout, adding up to more than it.
    for part in b.chunks(b.len() / 6 + 1) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.write_all(part).await.unwrap();
    }
    let out = read_until_closed(&mut s, Duration::from_secs(20))
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_answered_and_frees_its_slot() {
    let m = MockUpstream::start().await;
    let p = Proxy::start(&one(
        &m.url(),
        "header_read_timeout: 1s\nmax_in_flight: 1\n",
    ))
    .await;
    let mut s = TcpStream::connect(addr(&p)).await.unwrap();
    // Before the write: the server's body deadline starts once it has read these bytes, so the
    // answer cannot come sooner than a full timeout after this.
    let t0 = Instant::now();
    s.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
    )
    .await
    .unwrap();
    // While it stalls it holds the only slot.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = read_until_closed(&mut s, Duration::from_secs(20))
        .await
        .expect("a stalled body is never answered");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("header_read_timeout"), "{out}");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(until_admitted(&p).await.status(), 200);
    assert_eq!(m.hits(), 1);
}

#[tokio::test]
async fn header_read_timeout_and_max_in_flight_are_validated() {
    use stockyard::config::load::{load_str, Env};
    let env = Env::from_pairs([("HOME", "/tmp")]);
    let c = load_str("", "t.yaml", &env).unwrap();
    assert_eq!(c.header_read_timeout, Duration::from_secs(30));
    assert_eq!(c.max_in_flight, 1024);
    for (yaml, want) in [
        (
            "header_read_timeout: 10ms\n",
            "t.yaml:1:22: header_read_timeout must be between 100ms and 1h",
        ),
        (
            "header_read_timeout: 2h\n",
            "t.yaml:1:22: header_read_timeout must be between 100ms and 1h",
        ),
        (
            "header_read_timeout: soon\n",
            "t.yaml:1:22: header_read_timeout",
        ),
        (
            "max_in_flight: 0\n",
            "t.yaml:1:16: max_in_flight must be at least 1",
        ),
        ("max_in_flight: -3\n", "t.yaml:1:16: max_in_flight"),
    ] {
        let e = load_str(yaml, "t.yaml", &env).unwrap_err().to_string();
        assert!(e.starts_with(want), "{yaml}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// max_in_flight
// ---------------------------------------------------------------------------------------------

/// Retries `POST /v1/chat/completions` until it is not shed (slots free up asynchronously once
/// the held requests are gone).
async fn until_admitted(p: &Proxy) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = p.chat("m").await;
        if r.status() != 503 {
            return r;
        }
        assert!(Instant::now() < deadline, "still shed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn shed_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("stockyard_requests_shed_total "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no stockyard_requests_shed_total in\n{metrics}"))
}

async fn metrics(p: &Proxy) -> String {
    p.client
        .get(format!("{}/metrics", p.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_in_flight_requests_are_shed_with_503_and_admin_routes_still_answer() {
    let m = MockUpstream::start().await;
    m.set_default(Step::hang());
    let p = Proxy::start(&one(&m.url(), "max_in_flight: 3\n")).await;
    assert_eq!(shed_count(&metrics(&p).await), 0);
    let held: Vec<_> = (0..3).map(|_| p.spawn_chat(chat_body("m"))).collect();
    m.wait_hits(3).await;

    // Chat, messages and embeddings are all shed, before the body is even read.
    for (path, body) in [
        ("/v1/chat/completions", chat_body("m")),
        (
            "/v1/messages",
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/v1/embeddings", json!({"model": "m", "input": "hi"})),
    ] {
        let r = p
            .client
            .post(format!("{}{path}", p.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{path}");
        assert_eq!(common::hdr(&r, "retry-after"), "1", "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "overloaded", "{v}");
        assert_eq!(v["error"]["type"], "server_error", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_in_flight"));
    }
    assert_eq!(m.hits(), 3, "shed requests never reach an upstream");

    // Health, readiness, metrics and the admin API are never shed.
    assert_eq!(p.get_json("/health").await.0, 200);
    assert_eq!(p.get_json("/ready").await.0, 200);
    let (s, v) = p.get_json("/api/proxy/providers").await;
    assert_eq!(s, 200);
    assert_eq!(v[0]["in_flight"], 3);
    assert_eq!(shed_count(&metrics(&p).await), 3);

    // The held requests go away (their clients disconnect): capacity comes back.
    for h in held {
        h.abort();
    }
    m.set_default(Step::ok_chat("back"));
    let r = until_admitted(&p).await;
    assert_eq!(r.status(), 200);
    drop(r);
    // All three slots are free again. (One admitted request only proves one slot came back: the
    // other aborted requests, and this answer's own body, give theirs back asynchronously, so
    // wait for them before holding three again. Count the hits before spawning: the spawned
    // requests may reach the mock before this task runs again.)
    p.wait_idle().await;
    m.set_default(Step::hang());
    let before = m.hits();
    let held: Vec<_> = (0..3).map(|_| p.spawn_chat(chat_body("m"))).collect();
    m.wait_hits(before + 3).await;
    assert_eq!(p.chat("m").await.status(), 503);
    for h in held {
        h.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_holds_its_slot_until_it_ends() {
    let m = MockUpstream::start().await;
    m.push(Step::sse(vec![
        SseEv::Data(role_json(MOCK_MODEL)),
        SseEv::Data(chunk_json(MOCK_MODEL, "partial")),
        SseEv::Stall,
    ]));
    let p = Proxy::start(&one(&m.url(), "max_in_flight: 1\n")).await;
    let mut body = chat_body("m");
    body["stream"] = json!(true);
    let stream = p.post_chat(body).await;
    assert_eq!(stream.status(), 200);
    let mut chunks = futures::StreamExt::boxed(stream.bytes_stream());
    let mut text = String::new();
    while !text.contains("partial") {
        let c = futures::StreamExt::next(&mut chunks)
            .await
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&c));
    }
    // Headers were sent long ago, but the stream is still in flight.
    let r = p.chat("m").await;
    assert_eq!(r.status(), 503);
    // The admin view and the rest of the server are fine.
    assert_eq!(p.get_json("/api/traces").await.0, 200);
    drop(chunks);
    let r = until_admitted(&p).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_follows_a_reload() {
    let m = MockUpstream::start().await;
    m.set_default(Step::hang());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stockyard.yaml");
    std::fs::write(&path, one(&m.url(), "max_in_flight: 1\n")).unwrap();
    let p = Proxy::start_file(&path).await;
    let held = p.spawn_chat(chat_body("m"));
    m.wait_hits(1).await;
    assert_eq!(p.chat("m").await.status(), 503);
    std::fs::write(&path, one(&m.url(), "max_in_flight: 2\n")).unwrap();
    let (s, v) = p.post_json("/api/proxy/reload", &[]).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["restart_required"], json!([]), "{v}");
    m.set_default(Step::ok_chat("ok"));
    assert_eq!(p.chat("m").await.status(), 200);
    held.abort();
}

// ---------------------------------------------------------------------------------------------
// Body limits on every proxy route
// ---------------------------------------------------------------------------------------------

/// `/v1/messages` answers errors in the Anthropic shape (`{"type":"error","error":{type,message}}`).
fn anthropic(path: &str) -> bool {
    path == "/v1/messages"
}

fn assert_too_large(path: &str, v: &Value) {
    if anthropic(path) {
        assert_eq!(v["type"], "error", "{path}: {v}");
        assert_eq!(v["error"]["type"], "request_too_large", "{path}: {v}");
    } else {
        assert_eq!(v["error"]["code"], "request_too_large", "{path}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{path}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxy_route_refuses_oversized_and_malformed_bodies() {
    let m = MockUpstream::start().await;
    let p = Proxy::start(&one(&m.url(), "max_body_size: 4KiB\n")).await;
    let big = format!("{{\"model\":\"m\",\"input\":\"{}\"}}", "x".repeat(8 * 1024));
    for path in ["/v1/chat/completions", "/v1/messages", "/v1/embeddings"] {
        let url = format!("{}{path}", p.url);
        // Declared size over the limit.
        let r = p.client.post(&url).body(big.clone()).send().await.unwrap();
        assert_eq!(r.status(), 413, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_too_large(path, &v);
        // Chunked, no Content-Length, growing past the limit.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
            .as_bytes()
            .chunks(1000)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let r = p
            .client
            .post(&url)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413, "{path} chunked");
        // A huge declared Content-Length is refused at once, without waiting for the body.
        let mut s = TcpStream::connect(addr(&p)).await.unwrap();
        s.write_all(
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1099511627776\r\n\r\n{{\"model\"")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("request_too_large") {
            let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
                .await
                .expect("no answer to a huge Content-Length")
                .unwrap();
            assert!(n > 0, "{path}: closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&got);
        assert!(head.starts_with("HTTP/1.1 413"), "{path}: {head}");
        // Malformed JSON.
        let r = p
            .client
            .post(&url)
            .body("{\"model\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        if anthropic(path) {
            assert_eq!(v["error"]["type"], "invalid_request_error", "{path}: {v}");
        } else {
            assert_eq!(v["error"]["code"], "invalid_json", "{path}: {v}");
        }
        // Wrong method.
        let r = p.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 405, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed", "{path}: {v}");
    }
    // Missing and mistyped fields name the field, on messages and embeddings too (chat is
    // covered in tests/http.rs).
    for (path, body, param) in [
        (
            "/v1/messages",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}),
            "model",
        ),
        (
            "/v1/messages",
            json!({"model": "m", "max_tokens": 5}),
            "messages",
        ),
        (
            "/v1/messages",
            json!({"model": 5, "messages": [], "max_tokens": 5}),
            "model",
        ),
        ("/v1/embeddings", json!({"input": "x"}), "model"),
        ("/v1/embeddings", json!({"model": "m"}), "input"),
        (
            "/v1/embeddings",
            json!({"model": ["m"], "input": "x"}),
            "model",
        ),
    ] {
        let r = p
            .client
            .post(format!("{}{path}", p.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path} {body}");
        let v: Value = r.json().await.unwrap();
        if !anthropic(path) {
            assert_eq!(v["error"]["param"], param, "{path} {body}: {v}");
        }
        assert_eq!(v["error"]["type"], "invalid_request_error", "{path}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(param),
            "{path}: message should name `{param}`: {v}"
        );
    }
    // Unknown routes under /v1 and elsewhere are JSON 404s.
    for path in ["/v1/completions", "/v2/chat/completions", "/nope"] {
        let r = p
            .client
            .post(format!("{}{path}", p.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unknown_route", "{path}: {v}");
    }
    assert_eq!(
        m.hits_path("/v1/chat/completions") + m.hits_path("/v1/embeddings"),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// Ten thousand idle connections, against the real binary
// ---------------------------------------------------------------------------------------------

#[cfg(target_os = "linux")]
mod many {
    use super::*;
    use common::bin::Server;

    /// Raises this process's open-file limit to its hard limit; returns the new soft limit.
    #[allow(clippy::unnecessary_cast)]
    fn raise_nofile() -> u64 {
        // SAFETY: plain libc calls on a local struct.
        unsafe {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
            if l.rlim_cur < l.rlim_max {
                let want = libc::rlimit {
                    rlim_cur: l.rlim_max,
                    rlim_max: l.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                    l.rlim_cur = l.rlim_max;
                }
            }
            l.rlim_cur as u64
        }
    }

    fn proc_status(pid: i32, key: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
    }

    fn open_fds(pid: i32) -> usize {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    }

    async fn wait_fds(pid: i32, ok: impl Fn(usize) -> bool, what: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let n = open_fds(pid);
            if ok(n) {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the server has {n} fds open"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// One answered chat completion through a fresh connection; how long it took.
    async fn fresh_chat(url: &str) -> Duration {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let t = Instant::now();
        let r = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&chat_body("m"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        t.elapsed()
    }

    /// Opens `n` connections to the server `pid` (which had `base_fds` fds open): half send one
    /// complete keep-alive request (and read the answer) and keep the connection, half only
    /// connect. In batches well inside the accept queue, each accepted before the next: past
    /// the queue the kernel answers with SYN cookies and drops handshake ACKs it has no room
    /// for, and a client that only connects then looks connected to a server that never sees it
    /// (a loaded machine got there with 256 at once when the queue was std's 128; it is now
    /// `stockyard::server::LISTEN_BACKLOG`, capped by `net.core.somaxconn`, which CI may set low).
    async fn open_many(port: u16, pid: i32, base_fds: usize, n: usize) -> Vec<TcpStream> {
        const BATCH: usize = 64;
        let mut conns = Vec::with_capacity(n);
        for first in (0..n).step_by(BATCH) {
            let batch = connect_batch(port, first..(first + BATCH).min(n)).await;
            conns.extend(batch);
            // (A few fds of the baseline come and go, as below.)
            let opened = conns.len();
            let what = format!("{opened} connections opened (baseline {base_fds} fds)");
            wait_fds(pid, |f| f + 16 >= base_fds + opened, &what).await;
        }
        conns
    }

    async fn connect_batch(port: u16, ids: std::ops::Range<usize>) -> Vec<TcpStream> {
        let mut tasks = Vec::with_capacity(ids.len());
        for i in ids {
            let address = format!("127.0.0.1:{port}");
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(&address).await.unwrap();
                if i % 2 == 0 {
                    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                        .await
                        .unwrap();
                    let mut got = Vec::new();
                    let mut buf = [0u8; 512];
                    while !got.ends_with(b"{\"status\":\"ok\"}") {
                        let k = s.read(&mut buf).await.unwrap();
                        assert!(k > 0, "connection {i} closed before its answer");
                        got.extend_from_slice(&buf[..k]);
                    }
                }
                s
            }));
        }
        let mut conns = Vec::with_capacity(tasks.len());
        for t in tasks {
            conns.push(t.await.unwrap());
        }
        conns
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_idle_keep_alive_connections() {
        let limit = raise_nofile();
        // The server inherits this limit (and raises its own soft limit to the hard one).
        let n = 10_000usize.min((limit as usize).saturating_sub(300));
        if n < 10_000 {
            eprintln!("RLIMIT_NOFILE is {limit}: testing {n} connections instead of 10000");
        }
        assert!(n >= 500, "RLIMIT_NOFILE {limit} is too low for this test");
        let m = MockUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let port = common::closed_port();
        let config = dir.path().join("stockyard.yaml");
        std::fs::write(
            &config,
            one(
                &m.url(),
                &format!("listen: 127.0.0.1:{port}\nheader_read_timeout: 10m\nmax_in_flight: 64\n"),
            ),
        )
        .unwrap();
        let data = dir.path().join("data");
        let server = Server::serve(
            dir.path(),
            &config,
            port,
            &[("STOCKYARD_DATA_DIR", data.to_str().unwrap())],
        )
        .await;
        let pid = server.pid();
        let url = server.url();
        // Warm up (trace writer, client pool, allocator), then take the baseline.
        for _ in 0..3 {
            fresh_chat(&url).await;
        }
        let base_fds = open_fds(pid);
        let base_rss = proc_status(pid, "VmRSS:");
        let base_threads = proc_status(pid, "Threads:");
        let baseline_latency = fresh_chat(&url).await;

        let conns = open_many(port, pid, base_fds, n).await;
        // The server really holds them all.
        // (A few fds of the baseline come and go: the upstream pool, the last client's socket.)
        let held = wait_fds(
            pid,
            |f| f + 16 >= base_fds + n,
            &format!("not every connection was accepted (baseline {base_fds} fds)"),
        )
        .await;

        // New clients are still answered, and no slower than a (generous) bound.
        let mut worst = Duration::ZERO;
        for _ in 0..5 {
            worst = worst.max(fresh_chat(&url).await);
        }
        assert!(
            worst < Duration::from_secs(10),
            "with {n} idle connections a request took {worst:?} (baseline {baseline_latency:?})"
        );
        let rss = proc_status(pid, "VmRSS:");
        let threads = proc_status(pid, "Threads:");
        let per_conn = (rss.saturating_sub(base_rss) * 1024) / n as u64;
        eprintln!(
            "{n} connections: fds {base_fds} -> {held}, RSS {base_rss} kB -> {rss} kB ({per_conn} B per connection), threads {base_threads} -> {threads}"
        );
        assert!(
            per_conn < 64 * 1024,
            "{per_conn} bytes of RSS per idle connection"
        );
        // Connections are tasks, not threads.
        assert!(
            threads <= base_threads + 8,
            "threads {base_threads} -> {threads}"
        );

        // Every client goes away: the server lets go of every socket.
        drop(conns);
        wait_fds(
            pid,
            |f| f <= base_fds + 16,
            &format!("connections not released after the clients closed (baseline {base_fds} fds)"),
        )
        .await;
        fresh_chat(&url).await;
        let after = proc_status(pid, "VmRSS:");
        // The allocator keeps freed pages, so RSS need not drop. A second round of as many
        // connections must mostly reuse that memory: it may add some (fragmentation, which
        // shrinks round after round), but a per-connection leak would add as much as the first
        // round took.
        let conns = open_many(port, pid, base_fds, n).await;
        wait_fds(pid, |f| f + 16 >= base_fds + n, "second round not accepted").await;
        let again = proc_status(pid, "VmRSS:");
        drop(conns);
        wait_fds(pid, |f| f <= base_fds + 16, "second round not released").await;
        eprintln!("after close: RSS {after} kB; with a second round {again} kB");
        let first = rss.saturating_sub(base_rss);
        assert!(
            again.saturating_sub(after) < first / 2,
            "a second round of {n} connections added {} kB (the first took {first} kB)",
            again.saturating_sub(after)
        );
        fresh_chat(&url).await;
        drop(server);
    }
}
