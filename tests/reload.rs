//! Hot reload: `POST /api/proxy/reload` (in process) and SIGHUP (the real binary).

mod common;

use common::bin::Server;
use common::mock::{MockUpstream, Step};
use common::{chat_body, closed_port, hdr, Proxy};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn write(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("stockyard.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn provider(name: &str, url: &str, extra: &str) -> String {
    format!("  - {{name: {name}, kind: openai-compatible, base_url: \"{url}\"{extra}}}\n")
}

#[tokio::test]
async fn reload_via_the_api_adds_a_provider_and_an_alias() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let first = format!(
        "providers:\n{}",
        provider("a", &a.url(), ", models: [\"m-a*\"]")
    );
    let path = write(dir.path(), &first);
    let p = Proxy::start_file(&path).await;

    let r = p.chat("fast").await;
    assert_eq!(r.status(), 404, "no alias and no provider for `fast` yet");

    write(
        dir.path(),
        &format!(
            "{first}{}model_alias:\n  aliases:\n    fast: b/m-b-large\n",
            provider("b", &b.url(), ", models: [\"m-b*\"], priority: 2")
        ),
    );
    let (s, v) = p.post_json("/api/proxy/reload", &[]).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["reloaded"], true);
    assert_eq!(v["added"], serde_json::json!(["b"]));
    assert_eq!(v["removed"], serde_json::json!([]));
    assert_eq!(v["providers"], serde_json::json!(["a", "b"]));
    assert_eq!(v["restart_required"], serde_json::json!([]));

    let r = p.chat("fast").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    assert_eq!(hdr(&r, "x-stockyard-model"), "m-b-large");
    assert_eq!(b.last_json().unwrap()["model"], "m-b-large");
    let (_, providers) = p.get_json("/api/proxy/providers").await;
    let names: Vec<&str> = providers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);

    // Removing it again: `fast` is gone, `a` still serves its models.
    write(dir.path(), &first);
    let (s, v) = p.post_json("/api/proxy/reload", &[]).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["removed"], serde_json::json!(["b"]));
    assert_eq!(p.chat("fast").await.status(), 404);
    assert_eq!(p.chat("m-a1").await.status(), 200);
    p.stop().await;
}

/// The message `stockyard check` prints for a file.
fn check_message(path: &Path) -> String {
    let o = common::bin::command(path.parent().unwrap())
        .arg("check")
        .arg("-c")
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    String::from_utf8(o.stderr).unwrap().trim().to_string()
}

#[tokio::test]
async fn an_invalid_file_is_rejected_with_its_location_and_the_running_config_stays() {
    let a = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let good = format!("providers:\n{}", provider("a", &a.url(), ""));
    let path = write(dir.path(), &good);
    let p = Proxy::start_file(&path).await;

    let cases = [
        // A typo in a key: did-you-mean, at its line and column.
        format!("providers:\n  - name: a\n    kind: openai-compatible\n    base_url: \"{}\"\n    priorty: 2\n", a.url()),
        // Broken YAML.
        "providers:\n  - name: a\n   bad: [\n".to_string(),
        // Semantically wrong: an alias pointing at a provider that does not exist.
        format!("{good}model_alias:\n  aliases:\n    fast: anthropic/claude-x\n"),
    ];
    for yaml in &cases {
        write(dir.path(), yaml);
        let want = check_message(&path);
        assert!(
            want.starts_with(&format!("{}:", path.display())),
            "check names the file: {want}"
        );
        let (s, v) = p.post_json("/api/proxy/reload", &[]).await;
        assert_eq!(s, 422, "{v}");
        assert_eq!(v["error"]["code"], "invalid_config");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], want.as_str(), "same text as check");
        // Still the old config: `a` serves.
        let r = p.chat("anything").await;
        assert_eq!(r.status(), 200);
        assert_eq!(hdr(&r, "x-stockyard-provider"), "a");
    }
    // A missing file is also refused.
    std::fs::remove_file(&path).unwrap();
    let (s, v) = p.post_json("/api/proxy/reload", &[]).await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cannot read config file"));
    assert_eq!(p.chat("anything").await.status(), 200);
    p.stop().await;
}

#[tokio::test]
async fn a_kept_provider_keeps_its_open_circuit_and_counters_new_ones_start_fresh() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    let c = MockUpstream::start().await;
    a.set_default(Step::status(500));
    let dir = tempfile::tempdir().unwrap();
    let breaker = "failover:\n  circuit_breaker: {failure_threshold: 2, recovery_timeout: 60s}\n";
    let path = write(
        dir.path(),
        &format!(
            "providers:\n{}{}{breaker}",
            provider("a", &a.url(), ", priority: 1"),
            provider("b", &b.url(), ", priority: 2")
        ),
    );
    let p = Proxy::start_file(&path).await;
    for _ in 0..2 {
        let r = p.chat("m").await;
        assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    }
    assert_eq!(p.breaker("a"), ("open".into(), 2));
    assert_eq!(a.hits(), 2);

    // Reload: `a` stays (with another priority), `b` goes, `c` comes.
    write(
        dir.path(),
        &format!(
            "providers:\n{}{}{breaker}",
            provider("a", &a.url(), ", priority: 5"),
            provider("c", &c.url(), ", priority: 6")
        ),
    );
    let (s, v) = p.post_json("/api/proxy/reload", &[]).await;
    assert_eq!(s, 200, "{v}");
    let (_, br) = p.get_json("/api/proxy/breakers").await;
    assert_eq!(br["breakers"]["a"]["state"], "open", "{br}");
    assert_eq!(br["breakers"]["a"]["failures"], 2);
    assert_eq!(br["breakers"]["c"]["state"], "closed");
    assert_eq!(br["count"], 2);
    let (_, providers) = p.get_json("/api/proxy/providers").await;
    let pa = &providers[0];
    assert_eq!(pa["name"], "a");
    assert_eq!(pa["priority"], 5, "the new config applies");
    assert_eq!(pa["stats"]["requests"], 2, "counters survive");
    assert_eq!(pa["stats"]["errors"], 2);
    assert_eq!(providers[1]["stats"]["requests"], 0);

    // Still open: skipped without a call, `c` answers.
    let r = p.chat("m").await;
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "c");
    assert_eq!(a.hits(), 2, "an open circuit is not called");
    let trace = p.trace(&hdr(&r, "x-stockyard-trace-id")).await;
    assert_eq!(trace["attempts"][0]["reason"], "circuit_open", "{trace}");
    p.stop().await;
}

#[tokio::test]
async fn in_flight_requests_finish_on_the_config_they_started_with() {
    let a = MockUpstream::start().await;
    let b = MockUpstream::start().await;
    a.push(Step::ok_chat("from a, slowly").delay_headers(Duration::from_millis(800)));
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &format!("providers:\n{}", provider("a", &a.url(), "")),
    );
    let p = Proxy::start_file(&path).await;
    let slow = p.spawn_chat(chat_body("m"));
    while a.hits() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // `a` disappears while its request is still running.
    write(
        dir.path(),
        &format!("providers:\n{}", provider("b", &b.url(), "")),
    );
    let (s, v) = p.post_json("/api/proxy/reload", &[]).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["removed"], serde_json::json!(["a"]));
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(hdr(&r, "x-stockyard-provider"), "a");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "from a, slowly");
    let r = p.chat("m").await;
    assert_eq!(hdr(&r, "x-stockyard-provider"), "b");
    p.stop().await;
}

#[tokio::test]
async fn reload_needs_the_admin_key_and_reports_restart_only_settings() {
    let a = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "admin_key: adm-secret\nproviders:\n{}",
        provider("a", &a.url(), "")
    );
    let path = write(dir.path(), &yaml);
    let p = Proxy::start_file(&path).await;
    let (s, v) = p.post_json("/api/proxy/reload", &[]).await;
    assert_eq!(s, 401, "{v}");
    let (s, _) = p
        .post_json("/api/proxy/reload", &[("x-admin-key", "wrong")])
        .await;
    assert_eq!(s, 401);

    // Settings fixed at startup are reported, and keep their running values.
    write(
        dir.path(),
        &format!("listen: 127.0.0.1:4999\nlog_level: debug\nshutdown_grace: 5s\n{yaml}"),
    );
    let (s, v) = p
        .post_json("/api/proxy/reload", &[("x-admin-key", "adm-secret")])
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["restart_required"],
        serde_json::json!(["listen", "log_level"])
    );
    let rt = p.state().runtime();
    assert_eq!(rt.config.listen.port(), 4200);
    assert_eq!(rt.config.shutdown_grace, Duration::from_secs(5));

    // A new admin key applies at once.
    write(dir.path(), &yaml.replace("adm-secret", "adm-rotated"));
    let (s, _) = p
        .post_json("/api/proxy/reload", &[("x-admin-key", "adm-secret")])
        .await;
    assert_eq!(s, 200);
    let (s, _) = p
        .post_json("/api/proxy/reload", &[("x-admin-key", "adm-secret")])
        .await;
    assert_eq!(s, 401);
    let (s, _) = p
        .post_json(
            "/api/proxy/reload",
            &[("authorization", "Bearer adm-rotated")],
        )
        .await;
    assert_eq!(s, 200);
    p.stop().await;
}

/// SIGHUP against the real binary: a valid file is applied; an invalid one is logged with its
/// location and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_real_binary() {
    let a = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let base = format!(
        "listen: 127.0.0.1:{port}\nproviders:\n{}",
        provider("a", &a.url(), "")
    );
    let path = write(dir.path(), &base);
    let data = dir.path().join("data");
    let server = Server::serve(
        dir.path(),
        &path,
        port,
        &[("STOCKYARD_DATA_DIR", data.to_str().unwrap())],
    )
    .await;
    let client = reqwest::Client::new();
    let route = |model: &'static str| {
        let client = client.clone();
        let url = format!("{}/api/proxy/route?model={model}", server.url());
        async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(route("fast").await["alias"], Value::Null);

    write(
        dir.path(),
        &format!("{base}model_alias:\n  aliases:\n    fast: a/m-fast\n"),
    );
    server.signal(libc::SIGHUP);
    server
        .wait_log("config reloaded", Duration::from_secs(20))
        .await;
    let v = route("fast").await;
    assert_eq!(v["chain"][0]["model"], "m-fast", "{v}");

    std::fs::write(&path, "providers:\n  - name: a\n    priorty: 1\n").unwrap();
    let want = check_message(&path);
    server.signal(libc::SIGHUP);
    let line = server
        .wait_log("config reload rejected", Duration::from_secs(20))
        .await;
    assert!(
        line.contains(&want),
        "log has the check message `{want}`: {line}"
    );
    assert_eq!(route("fast").await["chain"][0]["model"], "m-fast");
    let r = client
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&chat_body("fast"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
