//! Running as a service, against the real binary: graceful shutdown on SIGTERM/SIGINT, the
//! systemd notify protocol, and JSON logs.

mod common;

use common::bin::Server;
use common::mock::{chunk_json, finish_json, role_json, MockUpstream, SseEv, Step, MOCK_MODEL};
use common::{chat_body, closed_port, hdr};
use futures::StreamExt;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    config: PathBuf,
}

impl Setup {
    /// A config on a free port with one provider per mock, in priority order, plus `extra`.
    fn new(mocks: &[&MockUpstream], extra: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let port = closed_port();
        let mut yaml = format!("listen: 127.0.0.1:{port}\n{extra}providers:\n");
        for (i, m) in mocks.iter().enumerate() {
            yaml.push_str(&format!(
                "  - {{name: p{i}, kind: openai-compatible, base_url: \"{}\", priority: {i}}}\n",
                m.url()
            ));
        }
        let config = dir.path().join("stockyard.yaml");
        std::fs::write(&config, yaml).unwrap();
        Setup { dir, port, config }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    async fn serve(&self, env: &[(&str, &str)]) -> Server {
        let data = self.data_dir();
        let mut all = vec![("STOCKYARD_DATA_DIR", data.to_str().unwrap())];
        all.extend_from_slice(env);
        Server::serve(self.dir.path(), &self.config, self.port, &all).await
    }
}

/// The `requests` row of a trace: (status, http_status, error).
fn trace_row(data_dir: &Path, id: &str) -> (String, Option<i64>, Option<String>) {
    let conn = rusqlite::Connection::open(data_dir.join("stockyard.db")).unwrap();
    conn.query_row(
        "SELECT status, http_status, error FROM requests WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap_or_else(|e| panic!("no trace row for {id}: {e}"))
}

fn slow_stream() -> Step {
    Step::sse(vec![
        SseEv::Data(role_json(MOCK_MODEL)),
        SseEv::Data(chunk_json(MOCK_MODEL, "one")),
        SseEv::Delay(Duration::from_millis(700)),
        SseEv::Data(chunk_json(MOCK_MODEL, " two")),
        SseEv::Delay(Duration::from_millis(700)),
        SseEv::Data(chunk_json(MOCK_MODEL, " three")),
        SseEv::Data(finish_json(MOCK_MODEL, "stop")),
        SseEv::Done,
    ])
}

async fn wait_refused(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.refuses_connections() {
        assert!(
            Instant::now() < deadline,
            "new connections still accepted after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_streams_then_exits_0() {
    let m = MockUpstream::start().await;
    m.push(Step::ok_chat("slow answer").delay_headers(Duration::from_millis(1500)));
    m.push(slow_stream());
    let setup = Setup::new(&[&m], "shutdown_grace: 20s\n");
    let mut server = setup.serve(&[]).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.url());

    let plain = tokio::spawn(client.post(&url).json(&chat_body("m")).send());
    m.wait_hits(1).await;
    let mut body = chat_body("m");
    body["stream"] = json!(true);
    let stream = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let stream_trace = hdr(&stream, "x-stockyard-trace-id");
    let mut chunks = stream.bytes_stream();
    let first = chunks.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("one"));

    let t0 = Instant::now();
    server.signal(libc::SIGTERM);
    wait_refused(&server).await;
    server
        .wait_log("shutting down", Duration::from_secs(10))
        .await;
    assert!(server.running(), "still draining");

    // The plain request, sent before the signal, completes normally.
    let r = plain.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let plain_trace = hdr(&r, "x-stockyard-trace-id");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "slow answer");

    // So does the stream: every piece, then [DONE].
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(c) = chunks.next().await {
        text.push_str(&String::from_utf8_lossy(&c.unwrap()));
    }
    for piece in ["one", " two", " three", "[DONE]"] {
        assert!(text.contains(piece), "missing {piece} in {text}");
    }
    assert!(!text.contains("shutting_down"));

    let status = server
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exit");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "it waited for the stream"
    );
    // Both traces were flushed before exit.
    for id in [&plain_trace, &stream_trace] {
        let (status, http, _) = trace_row(&setup.data_dir(), id);
        assert_eq!((status.as_str(), http), ("ok", Some(200)), "{id}");
    }
    let log = server.stderr();
    assert!(log.contains("every in-flight request finished"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let m = MockUpstream::start().await;
    m.set_default(Step::hang());
    let setup = Setup::new(&[&m], "shutdown_grace: 30s\n");
    let mut server = setup.serve(&[]).await;
    let client = reqwest::Client::new();
    let pending = tokio::spawn(
        client
            .post(format!("{}/v1/chat/completions", server.url()))
            .json(&chat_body("m"))
            .send(),
    );
    m.wait_hits(1).await;
    server.signal(libc::SIGTERM);
    server
        .wait_log("shutting down", Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.running(), "waits for the hanging request");

    let t = Instant::now();
    server.signal(libc::SIGINT);
    // "At once": well before the 30 s shutdown_grace the first signal started.
    let status = server
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits after the second signal");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(status.code(), Some(128 + libc::SIGINT));
    assert!(server.stderr().contains("second signal"));
    // The hanging request was cut: the connection closed, or (when the process got that far
    // before exiting) a 503 `shutting_down`.
    match pending.await.unwrap() {
        Err(_) => {}
        Ok(r) => assert_eq!(r.status(), 503),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_grace_period_runs_out_requests_are_cut_and_traced() {
    let m = MockUpstream::start().await;
    m.push(Step::hang());
    m.push(Step::sse(vec![
        SseEv::Data(role_json(MOCK_MODEL)),
        SseEv::Data(chunk_json(MOCK_MODEL, "partial")),
        SseEv::Stall,
    ]));
    let setup = Setup::new(&[&m], "shutdown_grace: 400ms\n");
    let mut server = setup.serve(&[]).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.url());
    let hanging = tokio::spawn(client.post(&url).json(&chat_body("m")).send());
    m.wait_hits(1).await;
    let mut body = chat_body("m");
    body["stream"] = json!(true);
    let stream = client.post(&url).json(&body).send().await.unwrap();
    let stream_trace = hdr(&stream, "x-stockyard-trace-id");
    let mut chunks = stream.bytes_stream();
    let mut text = String::new();
    while !text.contains("partial") {
        text.push_str(&String::from_utf8_lossy(
            &chunks.next().await.unwrap().unwrap(),
        ));
    }

    let t = Instant::now();
    server.signal(libc::SIGTERM);
    let r = hanging.await.unwrap().unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "shutting_down", "{v}");
    while let Some(c) = chunks.next().await {
        match c {
            Ok(c) => text.push_str(&String::from_utf8_lossy(&c)),
            Err(_) => break,
        }
    }
    assert!(text.contains("\"code\":\"shutting_down\""), "{text}");
    assert!(
        !text.contains("[DONE]"),
        "a cut stream is not complete: {text}"
    );

    let status = server
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("exit");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(server.stderr().contains("shutdown_grace ran out"));
    let (status, _, error) = trace_row(&setup.data_dir(), &stream_trace);
    assert_eq!(status, "error");
    assert!(error.unwrap().contains("shutdown_grace"));
    let conn = rusqlite::Connection::open(setup.data_dir().join("stockyard.db")).unwrap();
    let cut: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM requests WHERE status = 'error' AND error LIKE '%shutdown_grace%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        cut, 2,
        "both cut requests are traced as cut by the shutdown"
    );
}

/// Receives notify datagrams until one has `line`; returns everything received so far.
async fn recv_until(sock: &tokio::net::UnixDatagram, line: &str, got: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 4096];
    loop {
        if got.iter().any(|m| m.lines().any(|l| l == line)) {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Ok(Err(e)) => panic!("recv: {e}"),
            Err(_) => panic!("no `{line}` notification; got {got:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notify_ready_watchdog_reloading_stopping() {
    let m = MockUpstream::start().await;
    let setup = Setup::new(&[&m], "");
    let sock_path = setup.dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let data = setup.data_dir();
    let mut cmd = common::bin::command(setup.dir.path());
    cmd.arg("serve")
        .arg("-c")
        .arg(&setup.config)
        .env("STOCKYARD_DATA_DIR", &data)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000");
    // Spawn without waiting for the port: READY=1 must come once it accepts.
    let port = setup.port;
    let spawn = tokio::spawn(async move { Server::spawn(cmd, port).await });
    let mut got = Vec::new();
    recv_until(&sock, "READY=1", &mut got).await;
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("listening when READY=1 arrives");
    let mut server = spawn.await.unwrap();
    assert!(got[0].lines().next() == Some("READY=1"), "{got:?}");

    // WATCHDOG=1 every WATCHDOG_USEC/2 = 100 ms.
    let start = got.len();
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    while t.elapsed() < Duration::from_millis(700) {
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await
        {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let pings = got[start..].iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!((3..=10).contains(&pings), "{pings} pings in 700ms: {got:?}");

    server.signal(libc::SIGHUP);
    recv_until(&sock, "RELOADING=1", &mut got).await;
    let reloading = got.iter().find(|m| m.starts_with("RELOADING=1")).unwrap();
    assert!(reloading.contains("\nMONOTONIC_USEC="), "{reloading}");
    let mut rest = Vec::new();
    recv_until(&sock, "READY=1", &mut rest).await;

    server.signal(libc::SIGTERM);
    recv_until(&sock, "STOPPING=1", &mut rest).await;
    let status = server
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exit");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_request_failover_and_circuit_lines_and_no_secrets() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.set_default(Step::status(500));
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let yaml = [
        format!("listen: 127.0.0.1:{port}"),
        "log_format: json".into(),
        "api_keys: [sy-proxy-secret-1]".into(),
        "admin_key: ${ADMIN}".into(),
        "providers:".into(),
        format!("  - {{name: a, kind: openai-compatible, base_url: \"{}\", api_key: ${{UPSTREAM_KEY}}, priority: 1}}", a.url()),
        format!("  - {{name: b, kind: openai-compatible, base_url: \"{}\", api_key: sk-b-secret-3, priority: 2}}", b.url()),
        "failover:".into(),
        "  circuit_breaker: {failure_threshold: 1, recovery_timeout: 60s}".into(),
    ]
    .join("\n");
    let path = dir.path().join("stockyard.yaml");
    std::fs::write(&path, yaml).unwrap();
    let data = dir.path().join("data");
    let mut server = Server::serve(
        dir.path(),
        &path,
        port,
        &[
            ("STOCKYARD_DATA_DIR", data.to_str().unwrap()),
            ("UPSTREAM_KEY", "sk-a-secret-2"),
            ("ADMIN", "adm-secret-4"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth("sy-proxy-secret-1")
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let trace_id = hdr(&r, "x-stockyard-trace-id");
    assert_eq!(
        a.requests()[0].header("authorization"),
        Some("Bearer sk-a-secret-2")
    );
    // A rejected key and an admin call are logged without the keys either.
    let r = client
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth("wrong-key-5")
        .json(&chat_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{}/api/proxy/reload", server.url()))
        .header("x-admin-key", "adm-secret-4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exit");
    assert_eq!(status.code(), Some(0));
    let lines = server.lines();
    assert!(!lines.is_empty());
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for (l, e) in lines.iter().zip(&events) {
        assert!(e["timestamp"].is_string() && e["level"].is_string(), "{l}");
        for secret in [
            "sy-proxy-secret-1",
            "sk-a-secret-2",
            "sk-b-secret-3",
            "adm-secret-4",
            "wrong-key-5",
        ] {
            assert!(!l.contains(secret), "secret in log: {l}");
        }
    }
    let find =
        |msg: &str| -> Vec<&Value> { events.iter().filter(|e| e["message"] == msg).collect() };
    let req = find("request");
    let req = req
        .iter()
        .find(|e| e["trace_id"] == trace_id.as_str())
        .unwrap_or_else(|| panic!("no request line for {trace_id}: {lines:#?}"));
    assert_eq!(req["level"], "INFO");
    assert_eq!(req["model"], "m");
    assert_eq!(req["provider"], "b");
    assert_eq!(req["attempts"], 2);
    assert_eq!(req["failover"], true);
    assert_eq!(req["status"], "ok");
    assert_eq!(req["http_status"], 200);
    assert!(req["latency_ms"].is_u64(), "{req}");

    let fo = find("failover");
    assert_eq!(fo.len(), 1, "{fo:?}");
    assert_eq!(fo[0]["level"], "WARN");
    assert_eq!(fo[0]["from"], "a");
    assert_eq!(fo[0]["to"], "b");
    assert_eq!(fo[0]["reason"], "http_error");
    assert_eq!(fo[0]["http_status"], 500);
    assert_eq!(fo[0]["trace_id"], trace_id.as_str());

    let circuit = find("circuit state changed");
    assert_eq!(circuit.len(), 1, "{circuit:?}");
    assert_eq!(circuit[0]["level"], "WARN");
    assert_eq!(circuit[0]["provider"], "a");
    assert_eq!(circuit[0]["from"], "closed");
    assert_eq!(circuit[0]["to"], "open");
    assert_eq!(find("config reloaded").len(), 1);
}

/// The example unit: the settings operators rely on, its ExecStart/ExecReload matching the CLI
/// and the signals handled above, and `systemd-analyze verify` when systemd is installed.
#[test]
fn systemd_unit_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("examples/systemd/stockyard.service")).unwrap();
    let mut service: Vec<(String, String)> = Vec::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("bad line {line}"));
        if section == "[Service]" {
            service.push((k.to_string(), v.to_string()));
        }
    }
    let get = |k: &str| -> Vec<&str> {
        service
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |k: &str| -> &str {
        let v = get(k);
        assert_eq!(v.len(), 1, "{k} once in [Service]");
        v[0]
    };
    for (k, v) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "stockyard"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Environment", "STOCKYARD_DATA_DIR=/var/lib/stockyard"),
    ] {
        assert_eq!(one(k), v, "{k}");
    }
    assert!(get("SystemCallFilter").contains(&"@system-service"));
    let families = one("RestrictAddressFamilies");
    for f in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(families.contains(f), "{f}: AF_UNIX carries sd_notify");
    }
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert_eq!(
        exec,
        [
            "/usr/local/bin/stockyard",
            "serve",
            "--config",
            "/etc/stockyard/stockyard.yaml"
        ]
    );
    // The stop timeout leaves room for the default shutdown_grace (30s).
    let stop: u64 = one("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(stop > 30, "TimeoutStopSec {stop}s");

    // `--config` is what the CLI takes.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("stockyard.yaml");
    std::fs::write(&cfg, "providers:\n  - name: ollama\n").unwrap();
    let o = common::bin::command(dir.path())
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // systemd's own parser, with ExecStart pointing at the binary under test.
    let unit = dir.path().join("stockyard.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/stockyard", common::bin::BIN),
    )
    .unwrap();
    match std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    {
        Err(_) => eprintln!("systemd-analyze not installed; skipped"),
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let ours: Vec<&str> = err.lines().filter(|l| l.contains("stockyard")).collect();
            assert!(o.status.success() && ours.is_empty(), "{err}");
        }
    }
}
