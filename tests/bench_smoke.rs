//! Smoke test of the overhead benchmark (issue 8): `stockyard-bench --quick` runs end to end
//! against the debug `stockyard` binary and writes results with every expected field. No timing
//! thresholds: CI machines are noisy, and debug builds are slow.

use serde_json::Value;
use std::process::Command;

fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for k in path.split('.') {
        cur = match k.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[k],
        };
        assert!(
            !cur.is_null(),
            "missing `{path}` (at `{k}`) in results.json"
        );
    }
    cur
}

fn num(v: &Value, path: &str) -> f64 {
    field(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("`{path}` is not a number"))
}

#[test]
fn quick_bench_writes_complete_results() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_stockyard-bench"))
        .args(["--quick", "--stockyard", env!("CARGO_BIN_EXE_stockyard")])
        .arg("--out-dir")
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench failed: {stderr}");

    let json = std::fs::read_to_string(out.path().join("results.json")).unwrap();
    let r: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(r["schema"], "stockyard-bench/1");
    assert_eq!(r["quick"], true);
    field(&r, "machine.cpus");

    let closed = field(&r, "closed_loop").as_array().unwrap();
    assert_eq!(closed.len(), 2, "quick levels are 1,4");
    for l in closed {
        for side in ["direct", "stockyard"] {
            for k in ["rps", "requests", "errors"] {
                num(l, &format!("{side}.{k}"));
            }
            for p in ["p50", "p90", "p99", "p999"] {
                num(l, &format!("{side}.latency_us.{p}"));
            }
            assert_eq!(num(l, &format!("{side}.errors")), 0.0, "{l}");
            assert!(num(l, &format!("{side}.requests")) > 0.0, "{l}");
        }
        for p in ["p50", "p90", "p99", "p999"] {
            num(l, &format!("added_us.{p}"));
        }
        assert!(num(l, "process.peak_rss_kb") > 0.0, "{l}");
        num(l, "process.cpu_s");
        num(l, "process.cpu_us_per_req");
    }
    num(&r, "saturation.direct_rps");
    num(&r, "saturation.stockyard_rps");
    num(&r, "saturation.ratio");

    let open = field(&r, "open_loop").as_array().unwrap();
    assert!(!open.is_empty());
    num(&open[0], "rate");
    num(&open[0], "added_us.p50");
    num(&open[0], "added_us.p99");
    // The yardstick in the open loop: the bare forwarder at 50% of its own saturation.
    let bare = field(&r, "open_loop_bare").as_array().unwrap();
    assert_eq!(bare.len(), 1, "quick rate fractions are 0.5");
    assert_eq!(num(&bare[0], "fraction"), 0.5);
    assert!(num(&bare[0], "bare.requests") > 0.0, "{}", bare[0]);
    assert_eq!(num(&bare[0], "bare.errors"), 0.0, "{}", bare[0]);
    num(&bare[0], "added_us.p50");
    num(&bare[0], "bare_cpu_us_per_req");

    let streams = field(&r, "streams").as_array().unwrap();
    assert_eq!(streams.len(), 2);
    for l in streams {
        for side in ["direct", "stockyard"] {
            num(l, &format!("{side}.ttft_us.p50"));
            num(l, &format!("{side}.total_us.p99"));
            assert_eq!(num(l, &format!("{side}.errors")), 0.0, "{l}");
            // Every content chunk arrived (5 per stream in quick mode), each in its own frame.
            assert_eq!(
                num(l, &format!("{side}.content_events_per_stream")),
                5.0,
                "{l}"
            );
            assert!(num(l, &format!("{side}.frames_per_stream")) >= 5.0, "{l}");
            assert_eq!(num(l, &format!("{side}.shared_frame_events")), 0.0, "{l}");
            num(l, &format!("{side}.close_events"));
        }
        num(l, "added_ttft_us.p50");
        num(l, "added_total_us.p50");
        num(l, "process.peak_rss_kb");
    }

    // The failover hop really fails over; the open circuit really is open and skipped.
    num(&r, "failover.added_us.p50");
    assert_eq!(field(&r, "failover.check.last_request.failover"), "true");
    assert_eq!(field(&r, "failover.check.last_request.provider"), "mock");
    num(&r, "open_circuit.added_us.p50");
    assert_eq!(field(&r, "open_circuit.check.breaker_state"), "open");
    assert_eq!(
        field(&r, "open_circuit.check.last_request.provider"),
        "mock"
    );
    assert_eq!(
        num(&r, "failover.errors") + num(&r, "open_circuit.errors"),
        0.0
    );

    let leak = field(&r, "leak");
    assert_eq!(num(leak, "errors"), 0.0);
    assert!(field(leak, "samples").as_array().unwrap().len() >= 2);
    num(leak, "growth_pct");
    num(leak, "samples.0.rss_kb");

    let targets = field(&r, "targets").as_array().unwrap();
    assert!(targets.len() >= 8, "{targets:?}");
    assert_eq!(num(&r, "total_errors"), 0.0);

    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(
        md.contains("| target |") && md.contains("Closed loop"),
        "{md}"
    );
    let svg = std::fs::read_to_string(out.path().join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
}
