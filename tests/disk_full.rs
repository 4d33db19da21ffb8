//! The trace database's disk fills up mid-run: requests keep being served, the lost traces are
//! counted in `/metrics`, and writing resumes once space is freed.
//!
//! The real binary runs in a private mount namespace (`unshare --user --map-root-user --mount`)
//! with its `data_dir` on a small tmpfs, so the test can fill that disk without touching the
//! machine's. The test reaches the tmpfs through `/proc/<pid>/root`, which shows the files as
//! the proxy sees them.

mod common;

use common::mock::MockUpstream;
use common::{chat_body, closed_port};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stockyard");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn metric(client: &reqwest::Client, port: u16, name: &str) -> f64 {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

/// Waits until `written + dropped` reaches `total` (the writer has dealt with every trace).
async fn settle(client: &reqwest::Client, port: u16, total: f64) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let w = metric(client, port, "stockyard_traces_written_total").await;
        let d = metric(client, port, "stockyard_traces_dropped_total").await;
        if w + d >= total || Instant::now() > deadline {
            return (w, d);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(client: &reqwest::Client, port: u16, n: usize) {
    for _ in 0..n {
        let r = client
            .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
            .json(&chat_body("m"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "a request failed while the disk was full");
        assert_eq!(r.headers()["x-stockyard-provider"], "a");
    }
}

#[tokio::test]
async fn a_full_disk_mid_run_never_affects_requests_and_drops_are_counted() {
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .status();
    assert!(
        matches!(probe, Ok(s) if s.success()),
        "this test needs `unshare --user --map-root-user --mount` (util-linux, user namespaces)"
    );

    let a = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let port = closed_port();
    let cfg = dir.path().join("stockyard.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: \"{}\"\nproviders:\n  - {{name: a, kind: openai-compatible, base_url: \"{}\"}}\n",
            data.display(),
            a.url()
        ),
    )
    .unwrap();
    // A 1 MiB tmpfs over data_dir, visible only to the proxy.
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{}' && exec '{BIN}' serve --config '{}'",
        data.display(),
        cfg.display()
    );
    let server = Server(
        Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "proxy did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = reqwest::Client::new();
    let tmpfs: PathBuf = format!("/proc/{}/root{}", server.0.id(), data.display()).into();
    assert!(
        tmpfs.join("stockyard.db").exists(),
        "database not on the tmpfs"
    );

    // Healthy disk: traces are written.
    send(&client, port, 5).await;
    assert_eq!(settle(&client, port, 5.0).await, (5.0, 0.0));

    // Fill the disk to the last byte.
    let filler = tmpfs.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.write_all(&[0u8]);
    drop(f);

    // Requests are still served; their traces are lost and counted, not hidden.
    send(&client, port, 200).await;
    let (written, dropped) = settle(&client, port, 205.0).await;
    assert_eq!(
        written + dropped,
        205.0,
        "every trace is written or counted"
    );
    assert!(
        dropped > 0.0,
        "a full disk must show up as dropped traces (written {written})"
    );

    println!("disk full: {written} written, {dropped} dropped of 205");
    // Space comes back: writing resumes.
    std::fs::remove_file(&filler).unwrap();
    send(&client, port, 5).await;
    let (written2, dropped2) = settle(&client, port, 210.0).await;
    assert_eq!(dropped2, dropped, "no drops after space was freed");
    assert_eq!(written2, written + 5.0);
    let v: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/api/traces?limit=500"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["traces"].as_array().unwrap().len() as f64,
        written2,
        "what the writer reports as written is what the database holds"
    );
    drop(server);
}
