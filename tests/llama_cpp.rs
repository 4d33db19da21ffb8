//! End to end with a real local LLM: a llama.cpp server (`llama-cpp-python[server]`) serving a
//! tiny random-weight model (written by `tests/tools/tiny_gguf.py`, no download) is the local
//! provider for `llama3:8b`, and a mock is the cloud provider behind it.
//!
//! Checks that requests for `llama3:8b` go local, that streaming works through Stockyard with that
//! server's real SSE framing, and that once the server is killed the same requests fail over to
//! the cloud mock and the local provider's circuit opens.
//!
//! Needs `pip install 'llama-cpp-python[server]' gguf` (`.ci/run` and `./scripts/test.sh` install
//! it); without it the test fails and says so.

mod common;

use common::mock::{MockUpstream, Step};
use common::{hdr, Proxy};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The llama.cpp server process, killed (and reaped) when dropped.
struct Server {
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn start(model: &Path, port: u16, log: PathBuf) -> Server {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new("python3")
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(model)
            .args(["--model_alias", "llama3:8b", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string(), "--n_ctx", "512"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3 -m llama_cpp.server: {e}"));
        Server {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `GET /v1/models` answers with the alias, failing with the server's log if it
    /// exits or takes longer than `limit`.
    async fn wait_ready(&mut self, url: &str, limit: Duration) {
        let client = reqwest::Client::new();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "llama_cpp.server exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = client.get(format!("{url}/models")).send().await {
                if r.status().is_success() {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    assert_eq!(v["data"][0]["id"], "llama3:8b", "{v}");
                    return;
                }
            }
            assert!(
                start.elapsed() < limit,
                "llama_cpp.server not ready after {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn require_llama_cpp() {
    let check = Command::new("python3")
        .args(["-c", "import llama_cpp.server.app, gguf, numpy, uvicorn"])
        .output();
    match check {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "tests/llama_cpp.rs needs a real llama.cpp server: run\n    \
             python3 -m pip install 'llama-cpp-python[server]' gguf\n\
             (./scripts/test.sh and .ci/run install it; the wheel builds from source once)\n\
             import failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("python3 is required for tests/llama_cpp.rs: {e}"),
    }
}

/// Writes `tiny.gguf` into `dir` with the vendored generator.
fn write_tiny_model(dir: &Path) -> PathBuf {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/tiny_gguf.py");
    let o = Command::new("python3")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tiny_gguf.py failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let model = dir.join("tiny.gguf");
    assert!(model.exists(), "tiny_gguf.py wrote no tiny.gguf");
    model
}

fn free_port() -> u16 {
    common::closed_port()
}

/// The `data:` payloads of an SSE body, one per event, in order.
fn sse_data(body: &str) -> Vec<String> {
    body.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// Sends a streaming request and checks it is a complete OpenAI stream: chunks, then `[DONE]`.
/// Returns (provider, failover header, text, finish_reason).
async fn stream(p: &Proxy, model: &str) -> (String, String, String, String) {
    let r = p
        .post_chat(json!({
            "model": model,
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 8,
            "stream": true,
        }))
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        hdr(&r, "content-type").starts_with("text/event-stream"),
        "{}",
        hdr(&r, "content-type")
    );
    let provider = hdr(&r, "x-stockyard-provider");
    let failover = hdr(&r, "x-stockyard-failover");
    let body = r.text().await.unwrap();
    let events = sse_data(&body);
    assert!(events.len() >= 3, "too few events:\n{body}");
    assert_eq!(
        events.last().unwrap(),
        "[DONE]",
        "no [DONE] at the end:\n{body}"
    );
    let mut text = String::new();
    let mut finish = String::new();
    for e in &events[..events.len() - 1] {
        let v: Value =
            serde_json::from_str(e).unwrap_or_else(|err| panic!("bad chunk {e:?}: {err}\n{body}"));
        assert_eq!(v["object"], "chat.completion.chunk", "{e}");
        assert!(v["error"].is_null(), "error event in stream: {e}");
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (provider, failover, text, finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_llama_cpp_server_serves_locally_streams_and_fails_over() {
    require_llama_cpp();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let model = write_tiny_model(dir.path());
    let port = free_port();
    let llama_url = format!("http://127.0.0.1:{port}/v1");
    let mut server = Server::start(&model, port, dir.path().join("llama_server.log"));
    server.wait_ready(&llama_url, Duration::from_secs(60)).await;

    let cloud = MockUpstream::start().await;
    cloud.set_default(Step::ok_chat("Hello from the cloud"));
    let yaml = format!(
        r#"
providers:
  - name: llama
    kind: openai-compatible
    base_url: {llama_url}
    local: true
    priority: 1
    models: ["llama3*"]
    timeouts: {{connect: 1s, first_byte: 30s}}
  - name: cloud
    kind: openai-compatible
    base_url: {cloud_url}
    local: false
    priority: 2
    model_map: {{"llama3:8b": gpt-4o-mini}}
failover:
  circuit_breaker: {{failure_threshold: 2, recovery_timeout: 5m}}
"#,
        cloud_url = cloud.url()
    );
    let p = Proxy::start(&yaml).await;

    // 1. A plain request for llama3:8b is answered by the real local server.
    let r = p
        .post_chat(json!({
            "model": "llama3:8b",
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 8,
        }))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "llama");
    assert_eq!(hdr(&r, "x-stockyard-model"), "llama3:8b");
    assert_eq!(hdr(&r, "x-stockyard-failover"), "false");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["model"], "llama3:8b", "{v}");
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert!(
        v["usage"]["completion_tokens"].as_u64().unwrap_or(0) > 0,
        "{v}"
    );

    // 2. Streaming through Stockyard with llama.cpp's own SSE framing.
    let (provider, failover, text, finish) = stream(&p, "llama3:8b").await;
    assert_eq!((provider.as_str(), failover.as_str()), ("llama", "false"));
    assert!(!text.is_empty(), "no content streamed");
    assert!(
        finish == "length" || finish == "stop",
        "finish_reason {finish:?}"
    );
    assert_eq!(
        cloud.hits(),
        0,
        "the cloud was called while the local server was up"
    );

    // 3. The local server dies: the same requests fail over to the cloud.
    server.kill();
    let r = p
        .post_chat(json!({
            "model": "llama3:8b",
            "messages": [{"role": "user", "content": "Say hi"}],
            "max_tokens": 8,
        }))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "cloud");
    assert_eq!(hdr(&r, "x-stockyard-model"), "gpt-4o-mini");
    assert_eq!(hdr(&r, "x-stockyard-failover"), "true");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from the cloud"
    );

    let (provider, failover, text, finish) = stream(&p, "llama3:8b").await;
    assert_eq!((provider.as_str(), failover.as_str()), ("cloud", "true"));
    assert_eq!(
        (text.as_str(), finish.as_str()),
        ("Hello from the cloud", "stop")
    );
    assert_eq!(cloud.hits(), 2);
    assert_eq!(cloud.requests()[0].json()["model"], "gpt-4o-mini");

    // Two connection failures in a row opened the local provider's circuit.
    assert_eq!(p.breaker("llama").0, "open");
    let traces = p.traces("").await;
    assert_eq!(traces.len(), 4);
    let providers: Vec<&str> = traces
        .iter()
        .map(|t| t["provider"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(providers, ["cloud", "cloud", "llama", "llama"]);
    assert_eq!(traces[3]["local"], true);
    assert_eq!(traces[0]["failover"], true);
    let t = p.trace(traces[1]["id"].as_str().unwrap()).await;
    assert_eq!(t["attempts"][0]["provider"], "llama");
    assert_eq!(t["attempts"][0]["outcome"], "failed");
    assert_eq!(t["attempts"][0]["reason"], "connect_error");

    // 4. With the circuit open the local server is not even tried.
    let (provider, _, _, _) = stream(&p, "llama3:8b").await;
    assert_eq!(provider, "cloud");
    let traces = p.traces("limit=1").await;
    let t = p.trace(traces[0]["id"].as_str().unwrap()).await;
    assert_eq!(t["attempts"][0]["outcome"], "skipped", "{t}");
    assert_eq!(t["attempts"][0]["reason"], "circuit_open", "{t}");

    eprintln!(
        "llama.cpp end-to-end test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
