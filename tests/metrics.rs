//! `/metrics`: Prometheus text after a scripted run, parsed and checked.

mod common;

use common::mock::{MockUpstream, Step};
use common::Proxy;
use std::collections::HashMap;

/// `name{labels}` → value, for every sample line.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn metrics_after_a_scripted_run() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    a.set_default(Step::status(503));
    let p = Proxy::start(&format!(
        "admin_key: adm\nproviders:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\", priority: 1, local: false}}\n  - {{name: b, kind: openai-compatible, base_url: \"{}\", priority: 2, local: false}}\nfailover:\n  circuit_breaker: {{failure_threshold: 2, recovery_timeout: 1m}}\n",
        a.url(),
        b.url()
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(p.chat("gpt-4o").await.status(), 200);
    }
    p.flush().await;
    let r = p
        .client
        .get(format!("{}/metrics", p.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "admin key required");
    let r = p
        .client
        .get(format!("{}/metrics", p.url))
        .header("x-admin-key", "adm")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("openmetrics-text"));
    let text = r.text().await.unwrap();
    assert!(
        text.lines()
            .filter(|l| l.starts_with("# TYPE"))
            .all(|l| l.starts_with("# TYPE stockyard_")),
        "{text}"
    );
    let m = parse(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("missing {k} in\n{text}"));
    assert_eq!(
        get(r#"stockyard_requests_total{provider="b",model="gpt-4o",status="ok"}"#),
        3.0
    );
    assert_eq!(
        get(r#"stockyard_failovers_total{from="a",to="b",reason="http_error"}"#),
        2.0
    );
    assert_eq!(
        get(r#"stockyard_failovers_total{from="a",to="b",reason="circuit_open"}"#),
        1.0
    );
    assert_eq!(get(r#"stockyard_circuit_state{provider="a"}"#), 2.0);
    assert_eq!(get(r#"stockyard_circuit_state{provider="b"}"#), 0.0);
    assert_eq!(get(r#"stockyard_in_flight{provider="b"}"#), 0.0);
    assert_eq!(
        get(r#"stockyard_prompt_tokens_total{provider="b",model="gpt-4o"}"#),
        30.0
    );
    assert_eq!(
        get(r#"stockyard_completion_tokens_total{provider="b",model="gpt-4o"}"#),
        15.0
    );
    let cost = get(r#"stockyard_cost_usd_total{provider="b",model="gpt-4o"}"#);
    assert!(
        (cost - 3.0 * (10.0 * 2.5 + 5.0 * 10.0) / 1e6).abs() < 1e-12,
        "{cost}"
    );
    assert_eq!(get("stockyard_proxy_overhead_seconds_count"), 3.0);
    assert_eq!(
        get(r#"stockyard_time_to_first_byte_seconds_count{provider="b"}"#),
        3.0
    );
    assert_eq!(get("stockyard_traces_written_total"), 3.0);
    assert_eq!(get("stockyard_traces_dropped_total"), 0.0);
    assert_eq!(
        get(r#"stockyard_attempts_total{provider="a",status="skipped",reason="circuit_open"}"#),
        1.0
    );
}
