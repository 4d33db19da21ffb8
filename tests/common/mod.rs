#![allow(dead_code)]
#[cfg(unix)]
pub mod bin;
pub mod mock;

use serde_json::{json, Value};
use std::time::Duration;
use stockyard::config::load::{load_str, Env};
use stockyard::server::Running;

/// Polls `probe` every 10 ms until it gives `Ok`, for up to 20 s, then fails with its last
/// `Err`: how a test waits for what the proxy or a mock does asynchronously (a fixed sleep is a
/// race on a loaded machine).
pub async fn eventually<T, F, Fut>(mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(why) => assert!(std::time::Instant::now() < deadline, "{why}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The real server, in process, on 127.0.0.1:0, with a config given as YAML text.
pub struct Proxy {
    pub url: String,
    pub client: reqwest::Client,
    running: Option<Running>,
    /// Holds the trace database (`<dir>/stockyard.db`).
    pub data_dir: tempfile::TempDir,
}

impl Proxy {
    pub async fn start(yaml: &str) -> Proxy {
        Proxy::start_on(yaml, None).await
    }

    /// [`Proxy::start`] serving client connections on `workers` per-core worker threads, as the
    /// binary does (`None`: on the test's runtime).
    pub async fn start_on(yaml: &str, workers: Option<usize>) -> Proxy {
        let data_dir = tempfile::tempdir().unwrap();
        let env = Env::from_pairs([
            ("HOME", "/tmp".to_string()),
            ("STOCKYARD_DATA_DIR", data_dir.path().display().to_string()),
        ]);
        let cfg = load_str(yaml, "test.yaml", &env)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let opts = stockyard::server::StartOptions {
            workers,
            ..Default::default()
        };
        let running = stockyard::server::start_with(cfg, Some(listener), opts)
            .await
            .unwrap();
        Proxy {
            url: format!("http://{}", running.addr),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            running: Some(running),
            data_dir,
        }
    }

    /// The real server started from a config file, which `POST /api/proxy/reload` re-reads
    /// (with the same environment: HOME=/tmp and a temporary STOCKYARD_DATA_DIR).
    pub async fn start_file(path: &std::path::Path) -> Proxy {
        let data_dir = tempfile::tempdir().unwrap();
        let env = Env::from_pairs([
            ("HOME", "/tmp".to_string()),
            ("STOCKYARD_DATA_DIR", data_dir.path().display().to_string()),
        ]);
        let cfg = stockyard::config::load_file(path, &env)
            .unwrap_or_else(|e| panic!("test config invalid: {e}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let opts = stockyard::server::StartOptions {
            source: Some(stockyard::reload::ConfigSource {
                path: Some(path.to_path_buf()),
                env,
            }),
            notifier: None,
            // Connections on this test's runtime (the binary uses per-core workers; tests that
            // start the binary cover those).
            workers: None,
        };
        let running = stockyard::server::start_with(cfg, Some(listener), opts)
            .await
            .unwrap();
        Proxy {
            url: format!("http://{}", running.addr),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            running: Some(running),
            data_dir,
        }
    }

    pub async fn post_json(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut req = self.client.post(format!("{}{}", self.url, path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until every finished request's trace is in the database.
    pub async fn flush(&self) {
        self.running.as_ref().unwrap().flush_traces().await;
    }

    /// Newest-first traces through the admin API, after a flush.
    pub async fn traces(&self, query: &str) -> Vec<Value> {
        self.flush().await;
        let (s, v) = self.get_json(&format!("/api/traces?{query}")).await;
        assert_eq!(s, 200, "{v}");
        v["traces"].as_array().unwrap().clone()
    }

    /// One trace with its attempts, after a flush.
    pub async fn trace(&self, id: &str) -> Value {
        self.flush().await;
        let (s, v) = self.get_json(&format!("/api/traces/{id}")).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// The trace of a request that has ended, polling (up to 20 s): a stream's trace is written
    /// when its body ends and an abandoned request's when the proxy drops it, neither ordered
    /// with what the test observes.
    pub async fn wait_trace(&self, id: &str) -> Value {
        eventually(|| async move {
            self.flush().await;
            match self.get_json(&format!("/api/traces/{id}")).await {
                (200, v) => Ok(v),
                (s, v) => Err(format!("no trace {id}: {s} {v}")),
            }
        })
        .await
    }

    pub fn state(&self) -> &std::sync::Arc<stockyard::proxy::state::AppState> {
        &self.running.as_ref().unwrap().state
    }

    /// Requests (handlers and response bodies) the server is still running, of any route.
    pub fn in_flight(&self) -> usize {
        self.running.as_ref().unwrap().in_flight()
    }

    /// Waits (up to 20 s) until the server runs no request at all: every slot of the ones that
    /// finished or whose client went away has really been given back.
    pub async fn wait_idle(&self) {
        eventually(|| async move {
            match self.in_flight() {
                0 => Ok(()),
                n => Err(format!("{n} requests still in flight")),
            }
        })
        .await
    }

    pub async fn chat(&self, model: &str) -> reqwest::Response {
        self.post_chat(chat_body(model)).await
    }

    pub async fn post_chat(&self, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/chat/completions", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Sends `POST /v1/chat/completions` with `body` from a task of its own: for requests a
    /// test holds in flight, or abandons (aborting the task closes its connection).
    pub fn spawn_chat(
        &self,
        body: Value,
    ) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let req = self
            .client
            .post(format!("{}/v1/chat/completions", self.url))
            .json(&body);
        tokio::spawn(req.send())
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{}", self.url, path))
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Breaker state and failure count of a provider, from the live state.
    pub fn breaker(&self, name: &str) -> (String, u32) {
        let rt = self.state().runtime();
        let p = rt.providers.iter().find(|p| p.cfg.name == name).unwrap();
        let s = p.with_breaker(|b| b.snapshot());
        (s.state.as_str().to_string(), s.failures)
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.task.abort();
        }
    }
}

pub fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// A port with nothing listening on it (bound then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Header value as a string ("" when absent).
pub fn hdr(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A two-provider config: `a` (priority 1) then `b` (priority 2), both OpenAI-compatible, with
/// extra YAML appended to each provider and to the top level.
pub fn two(a: &str, b: &str, provider_extra: &str, top_extra: &str) -> String {
    format!(
        "providers:\n  - {{name: a, kind: openai-compatible, base_url: \"{a}\", priority: 1{provider_extra}}}\n  - {{name: b, kind: openai-compatible, base_url: \"{b}\", priority: 2{provider_extra}}}\n{top_extra}"
    )
}

// Response cache helpers (tests/cache.rs).
impl Proxy {
    /// Waits until every response-cache write queued so far is in the database.
    pub async fn flush_cache(&self) {
        self.running.as_ref().unwrap().flush_cache().await;
    }

    /// Stops the server (flushing traces and the cache) and starts a new one with `yaml` on the
    /// same data_dir, as a restart of the process would.
    pub async fn restart(&mut self, yaml: &str) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
        let env = Env::from_pairs([
            ("HOME", "/tmp".to_string()),
            (
                "STOCKYARD_DATA_DIR",
                self.data_dir.path().display().to_string(),
            ),
        ]);
        let cfg = load_str(yaml, "test.yaml", &env)
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = stockyard::server::start(cfg, Some(listener)).await.unwrap();
        self.url = format!("http://{}", running.addr);
        self.running = Some(running);
    }
}
