//! The benchmark must not rot: run `bench/run.sh --short` (a few seconds per figure) and check
//! that it measured every figure, that the rolling restart under load failed no request and
//! that no static-file request reached a worker.
//! Speed targets are the benchmark's to report (PASS/MISS), never this test's to enforce: they
//! depend on the machine. Needs wrk, nginx, jq, curl, h2load and openssl, which run.sh installs
//! with apt-get when root; without root and without them the test says so loudly and passes,
//! unless BATON_E2E_REQUIRED is set (as `.ci/run` does), when it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

use serde_json::Value;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            &format!("command -v {tool} || test -x /usr/sbin/{tool}"),
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The number at `path` (e.g. "restart.rolling.p99_us"), or a panic naming what is wrong.
fn number(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[key],
        };
    }
    match cur.as_f64() {
        Some(n) if n.is_finite() => n,
        _ => panic!("results.json: {path} is not a number: {cur}"),
    }
}

#[test]
fn short_benchmark_measures_every_figure_and_fails_no_request_in_a_roll() {
    let required = std::env::var_os("BATON_E2E_REQUIRED").is_some();
    let root = nix::unistd::geteuid().is_root();
    let missing: Vec<&str> = ["wrk", "nginx", "jq", "curl", "h2load", "openssl"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() && !root {
        let why = format!("not root, and {missing:?} missing (bench/run.sh would install them)");
        assert!(!required, "the benchmark smoke test cannot run: {why}");
        eprintln!(
            "\n!!!!! SKIPPING the benchmark smoke test: {why} !!!!! \
             (set BATON_E2E_REQUIRED=1 to make this an error)\n"
        );
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let run = Command::new("bash")
        .arg(format!("{ROOT}/bench/run.sh"))
        .arg("--short")
        .arg("--out")
        .arg(&out)
        .current_dir(ROOT)
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "bench/run.sh --short failed:\n{log}");
    eprintln!("{log}");
    let text = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{out:?}: {e}\n{log}"));
    let r: Value = serde_json::from_str(&text).unwrap();

    // Steady state: every target at every concurrency of --short, every figure a number.
    let steady = r["steady"].as_array().expect("steady is an array");
    for target in ["direct", "nginx", "baton"] {
        for conc in [1, 16] {
            let i = steady
                .iter()
                .position(|s| s["target"] == target && s["concurrency"] == conc)
                .unwrap_or_else(|| panic!("no steady figure for {target} at concurrency {conc}"));
            for f in [
                "rps",
                "requests",
                "p50_us",
                "p99_us",
                "max_us",
                "proxy_cpu_us_per_request",
                "app_cpu_us_per_request",
            ] {
                number(&r, &format!("steady.{i}.{f}"));
            }
            assert!(number(&r, &format!("steady.{i}.requests")) > 0.0);
        }
    }
    for conc in 0..2 {
        number(&r, &format!("added_p50_us.{conc}.nginx"));
        number(&r, &format!("added_p50_us.{conc}.baton"));
    }

    // Restarts under load.
    for window in ["steady", "rolling", "steady_after", "blocking"] {
        for f in [
            "requests",
            "rps",
            "failed_requests",
            "p50_us",
            "p99_us",
            "max_us",
            "window_ms",
            "peak_workers",
            "peak_worker_processes",
            "peak_rss_bytes",
        ] {
            number(&r, &format!("restart.{window}.{f}"));
        }
        assert!(number(&r, &format!("restart.{window}.requests")) > 0.0);
    }
    number(&r, "restart.steady_p99_us");
    number(&r, "restart.rolling_p99_ratio");
    number(&r, "restart.rolling.restart_ms");
    number(&r, "restart.rolling.overhead_per_worker_ms");
    number(&r, "restart.blocking.restart_ms");
    number(&r, "restart.blocking.overhead_ms");
    assert!(number(&r, "manager_rss_bytes.peak") > 0.0);
    number(&r, "meta.other_cpu_share");
    assert!(
        number(&r, "restart.rolling.peak_workers") >= 4.0,
        "the sampler never saw the pool"
    );

    // The one hard requirement: a rolling restart under load fails no request.
    assert_eq!(
        number(&r, "restart.rolling.failed_requests"),
        0.0,
        "requests failed during the rolling restart: {}",
        r["restart"]["rolling"]
    );

    // A CPU-heavy boot, with and without a low boot priority: measured, and no request failed.
    for i in 0..2 {
        for window in ["steady", "rolling"] {
            number(&r, &format!("cpu_heavy_boot.{i}.{window}.max_us"));
            number(&r, &format!("cpu_heavy_boot.{i}.{window}.p999_us"));
        }
        assert_eq!(
            number(&r, &format!("cpu_heavy_boot.{i}.rolling.failed_requests")),
            0.0,
            "{}",
            r["cpu_heavy_boot"][i]
        );
    }
    // Idle connections: measured, and the manager still served the last one opened.
    for f in ["rss_before_bytes", "rss_held_bytes", "rss_after_bytes"] {
        assert!(number(&r, &format!("idle_connections.{f}")) > 0.0);
    }
    assert_eq!(r["idle_connections"]["last_answered"], true);

    // HTTPS and HTTP/2 beside nginx (issue 24): every figure measured on both sides, with its
    // ratio.
    let figures = r["tls"]["figures"]
        .as_array()
        .expect("tls.figures is an array");
    for kind in ["keepalive", "handshake", "http2"] {
        assert!(
            figures.iter().any(|f| f["kind"] == kind),
            "no HTTPS figure of kind {kind}"
        );
    }
    for i in 0..figures.len() {
        for side in ["nginx", "baton"] {
            for f in ["rps", "requests", "failed", "proxy_cpu_us_per_request"] {
                number(&r, &format!("tls.figures.{i}.{side}.{f}"));
            }
            assert!(number(&r, &format!("tls.figures.{i}.{side}.requests")) > 0.0);
        }
        number(&r, &format!("tls.figures.{i}.rps_ratio"));
        number(&r, &format!("tls.figures.{i}.cpu_ratio"));
    }
    for i in 0..2 {
        for side in ["nginx", "baton"] {
            number(&r, &format!("tls.idle.{i}.{side}.bytes_per_connection"));
        }
        number(&r, &format!("tls.idle.{i}.bytes_ratio"));
    }
    assert_eq!(r["tls"]["idle"][0]["baton"]["last_answered"], true);

    // Static files beside nginx (issue 26): both files at concurrency 16, both sides measured,
    // with their ratios; no static request reached a worker.
    let figures = r["static"]["figures"]
        .as_array()
        .expect("static.figures is an array");
    for bytes in [1024, 1048576] {
        assert!(
            figures
                .iter()
                .any(|f| f["bytes"] == bytes && f["concurrency"] == 16),
            "no static figure for {bytes} bytes at concurrency 16"
        );
    }
    for i in 0..figures.len() {
        for side in ["nginx", "baton"] {
            for f in ["rps", "requests", "failed", "proxy_cpu_us_per_request"] {
                number(&r, &format!("static.figures.{i}.{side}.{f}"));
            }
            assert!(number(&r, &format!("static.figures.{i}.{side}.requests")) > 0.0);
            assert_eq!(
                number(&r, &format!("static.figures.{i}.{side}.failed")),
                0.0,
                "{}",
                r["static"]["figures"][i]
            );
        }
        number(&r, &format!("static.figures.{i}.rps_ratio"));
        number(&r, &format!("static.figures.{i}.cpu_ratio"));
        // The figures are medians of the rounds' ratios, which are there beside them.
        number(&r, &format!("static.figures.{i}.round_rps_ratios.0"));
        number(&r, &format!("static.figures.{i}.round_cpu_ratios.0"));
    }
    assert_eq!(
        number(&r, "static.worker_requests"),
        0.0,
        "static requests reached baton's workers"
    );

    // The access log's cost (issue 26): proxy CPU per request with it on and off, and what it
    // wrote against what was answered.
    for f in [
        "off.proxy_cpu_us_per_request",
        "on.proxy_cpu_us_per_request",
        "off.requests",
        "on.requests",
        "cpu_ratio",
        "control_ratio",
        "rps_ratio",
        "wrk_requests",
        "requests_answered",
        "lines_written",
        "dropped",
    ] {
        number(&r, &format!("access_log.{f}"));
    }
    assert!(number(&r, "access_log.lines_written") > 0.0);

    // Targets are reported with their figures; whether they pass is not this test's business.
    let targets = r["targets"].as_array().expect("targets is an array");
    assert!(targets.len() >= 8, "targets: {targets:?}");
    for (i, t) in targets.iter().enumerate() {
        assert!(t["name"].is_string(), "target {i} has no name: {t}");
        assert!(t["pass"].is_boolean(), "target {i} has no verdict: {t}");
        number(&r, &format!("targets.{i}.value"));
        number(&r, &format!("targets.{i}.limit"));
    }
}
