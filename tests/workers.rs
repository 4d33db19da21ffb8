//! Per-core connection workers (src/workers.rs), as the binary runs them: each client connection
//! is served on one worker thread, with that worker's own upstream connection pools; shutdown
//! still waits for requests in flight on the workers.

mod common;

use common::mock::{MockUpstream, SseEv, Step};
use common::{chat_body, hdr, Proxy};
use serde_json::json;
use std::time::{Duration, Instant};

fn one(url: &str) -> String {
    format!("providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{url}\"}}\n")
}

/// A client that keeps exactly one connection to the proxy.
fn one_connection() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn chat(client: &reqwest::Client, p: &Proxy, stream: bool) -> (u16, String, String) {
    let mut body = chat_body("m");
    if stream {
        body["stream"] = json!(true);
    }
    let r = client
        .post(format!("{}/v1/chat/completions", p.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let provider = hdr(&r, "x-stockyard-provider");
    (status, provider, r.text().await.unwrap())
}

#[tokio::test]
async fn each_worker_serves_its_connections_with_its_own_upstream_pool() {
    let a = MockUpstream::start().await;
    a.set_default(Step::ok_chat("hello"));
    let p = Proxy::start_on(&one(&a.url()), Some(2)).await;

    // First client connection (worker 1): sequential requests reuse one upstream connection.
    let c1 = one_connection();
    for _ in 0..5 {
        let (status, provider, body) = chat(&c1, &p, false).await;
        assert_eq!((status, provider.as_str()), (200, "a"), "{body}");
        assert!(body.contains("hello"), "{body}");
    }
    assert_eq!(a.connections_opened(), 1);

    // A second client connection goes to the other worker, which has a pool of its own: its
    // requests do not borrow worker 1's idle upstream connection (that one is driven by worker
    // 1's thread; using it from here would put a cross-thread wake-up on every request).
    let c2 = one_connection();
    for _ in 0..5 {
        let (status, _, body) = chat(&c2, &p, false).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(a.hits(), 10);
    assert_eq!(a.connections_opened(), 2);

    // Both connections keep working, streams included, and keep their pools.
    for c in [&c1, &c2] {
        a.push(Step::sse(Step::chat_stream(&["x", "y"])));
        let (status, _, body) = chat(c, &p, true).await;
        assert_eq!(status, 200);
        assert!(body.contains("data: [DONE]"), "{body}");
        let (status, _, _) = chat(c, &p, false).await;
        assert_eq!(status, 200);
    }
    assert_eq!(a.connections_opened(), 2);
    p.flush().await;
    assert_eq!(p.traces("limit=100").await.len(), 14);
    p.stop().await;
}

#[tokio::test]
async fn failover_and_breakers_work_across_workers() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.set_default(Step::status(503));
    b.set_default(Step::ok_chat("from b"));
    let yaml = common::two(
        &a.url(),
        &b.url(),
        "",
        "failover:\n  circuit_breaker: {failure_threshold: 2, recovery_timeout: 1h}\n",
    );
    let p = Proxy::start_on(&yaml, Some(2)).await;
    // Four client connections, two per worker; the breaker is shared by all of them.
    let clients: Vec<_> = (0..4).map(|_| one_connection()).collect();
    for c in &clients {
        let (status, provider, body) = chat(c, &p, false).await;
        assert_eq!((status, provider.as_str()), (200, "b"), "{body}");
    }
    assert_eq!(p.breaker("a").0, "open");
    assert_eq!(
        a.hits(),
        2,
        "the breaker opened after 2 failures, on whichever worker"
    );
    p.stop().await;
}

#[tokio::test]
async fn shutdown_waits_for_requests_in_flight_on_workers() {
    let a = MockUpstream::start().await;
    a.set_default(Step::ok_chat("slow").delay_headers(Duration::from_millis(400)));
    let mut evs = Step::chat_stream(&["s1"]);
    evs.insert(1, SseEv::Delay(Duration::from_millis(400)));
    a.push(Step::sse(evs));
    let p = Proxy::start_on(&one(&a.url()), Some(2)).await;
    let url = p.url.clone();
    let stream = tokio::spawn({
        let c = one_connection();
        let url = url.clone();
        async move {
            let r = c
                .post(format!("{url}/v1/chat/completions"))
                .json(&json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        }
    });
    // The stream is at the upstream (it takes the queued stream step) before the plain request
    // is sent, and both are in flight before the shutdown starts.
    a.wait_hits(1).await;
    let plain = tokio::spawn({
        let c = one_connection();
        let url = url.clone();
        async move {
            let r = c
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat_body("m"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    a.wait_hits(2).await;
    let t0 = Instant::now();
    p.stop().await;
    assert!(
        t0.elapsed() >= Duration::from_millis(150),
        "shutdown returned before the requests in flight finished"
    );
    let body = stream.await.unwrap();
    assert!(body.contains("s1") && body.contains("[DONE]"), "{body}");
    let (status, body) = plain.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("slow"));
    // The listener is closed.
    let refused = reqwest::Client::new()
        .get(format!("{url}/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(refused.is_err(), "still accepting after shutdown");
}
