//! A bounded fuzz run of each cargo-fuzz target in `fuzz/` (`config`, `h1`, `request`,
//! `differential`, the fronts: `h2`, `tls`, and `static_path`; see fuzz/README.md): the targets must build, and a short run of each from its seed corpus must
//! find no crash, panic, hang or out-of-memory.
//!
//! It installs cargo-fuzz (`cargo install --locked cargo-fuzz`) when it is missing, and builds
//! with `RUSTC_BOOTSTRAP=1`, since cargo-fuzz passes nightly-only flags and the project is on
//! stable Rust. `BATON_FUZZ_SECONDS` sets the time per target (default 20). A build failure or
//! a finding always fails. Only when the fuzz toolchain cannot work on this machine (cargo-fuzz
//! cannot be installed, no C++ compiler for libFuzzer, an unsupported platform) does the test say
//! so loudly and pass, unless BATON_E2E_REQUIRED is set (as `.ci/run` does), when it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const TARGETS: [&str; 7] = [
    "config",
    "h1",
    "request",
    "differential",
    "h2",
    "tls",
    "static_path",
];

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The cargo command for the fuzz crate, free of the variables that `cargo test` sets for this
/// crate and that would send the fuzz build somewhere else.
fn fuzz_cargo() -> Command {
    let mut c = Command::new(cargo());
    c.current_dir(Path::new(ROOT).join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn have_cargo_fuzz() -> bool {
    fuzz_cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why the fuzz toolchain cannot work here, if it cannot.
fn toolchain_problem() -> Option<String> {
    if !cfg!(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )) {
        return Some("cargo-fuzz runs only on x86_64/aarch64 Linux here".into());
    }
    // libfuzzer-sys compiles libFuzzer's C++ sources.
    if !["c++", "g++", "clang++"].iter().any(|t| have(t)) {
        return Some("no C++ compiler (c++, g++ or clang++) to build libFuzzer".into());
    }
    if !have_cargo_fuzz() {
        let target = std::env::temp_dir().join("cargo-install-target");
        eprintln!("fuzz_smoke: installing cargo-fuzz (cargo install --locked cargo-fuzz)");
        let out = Command::new(cargo())
            .args(["install", "--locked", "cargo-fuzz"])
            .env("CARGO_TARGET_DIR", &target)
            .output();
        match out {
            Ok(o) if o.status.success() && have_cargo_fuzz() => {}
            Ok(o) => {
                return Some(format!(
                    "cargo install --locked cargo-fuzz failed:\n{}",
                    tail(&text(&o), 30)
                ));
            }
            Err(e) => return Some(format!("cannot run cargo install: {e}")),
        }
    }
    None
}

fn host() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "aarch64-unknown-linux-gnu"
    } else {
        "x86_64-unknown-linux-gnu"
    }
}

/// "Done 12345 runs in 30 second(s)" → 12345.
fn runs(log: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix("Done "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The panic message(s) in a libFuzzer log, which the stack traces after them push out of a tail.
fn panics(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("panicked at"))
        .map(|(i, _)| lines[i..(i + 3).min(lines.len())].join("\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn artifacts(target: &str) -> Vec<PathBuf> {
    std::fs::read_dir(Path::new(ROOT).join("fuzz/artifacts").join(target))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn fuzz_targets_survive_a_bounded_run() {
    let required = std::env::var_os("BATON_E2E_REQUIRED").is_some();
    if let Some(why) = toolchain_problem() {
        assert!(!required, "the fuzz smoke test cannot run: {why}");
        eprintln!(
            "\n!!!!! SKIPPING the fuzz smoke test: {why} !!!!! \
             (set BATON_E2E_REQUIRED=1 to make this an error)\n"
        );
        return;
    }
    let seconds: u64 = std::env::var("BATON_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);

    // A smoke run, not a fuzzing campaign (fuzz/README.md has those): the targets are built
    // without optimisation and without AddressSanitizer. The release build with ASan took
    // 8 of the suite's minutes on a fresh 2-core machine, and bought little here: the
    // targets' time goes to setting up each input (a runtime, sockets), not to the code
    // under test, so a debug build runs about as many inputs; and safe Rust needs no
    // sanitizer to catch panics, overflows and bounds checks, which the debug build checks.
    let started = Instant::now();
    let build = fuzz_cargo()
        .args(["fuzz", "build", "--dev", "--sanitizer", "none"])
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "cargo fuzz build failed:\n{}",
        tail(&text(&build), 80)
    );
    eprintln!(
        "fuzz_smoke: built the fuzz targets in {:?}",
        started.elapsed()
    );

    // Two targets at a time, one per core.
    for pair in TARGETS.chunks(2) {
        let runs: Vec<_> = pair
            .iter()
            .map(|target| (*target, start(target, seconds)))
            .collect();
        for (target, (mut run, before, scratch)) in runs {
            let status = run.wait().unwrap();
            let log = std::fs::read_to_string(scratch.path().join("log")).unwrap_or_default();
            check(target, seconds, status, &log, &before);
        }
    }
}

/// The target's binary, as `cargo fuzz build --dev` left it.
fn binary(target: &str) -> PathBuf {
    Path::new(ROOT)
        .join("fuzz/target")
        .join(host())
        .join("debug")
        .join(target)
}

/// Start a bounded run of `target` from its seeds; new inputs go to a scratch corpus (the
/// first directory, kept alive with the run), the seeds are only read; its output goes to
/// `log` beside the corpus (a pipe nobody reads while the other run is waited for would stop
/// it).
fn start(target: &str, seconds: u64) -> (std::process::Child, Vec<PathBuf>, tempfile::TempDir) {
    let before = artifacts(target);
    let scratch = tempfile::tempdir().unwrap();
    let corpus = scratch.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let log = std::fs::File::create(scratch.path().join("log")).unwrap();
    let seeds = Path::new(ROOT).join("fuzz/corpus").join(target);
    let artifacts = Path::new(ROOT).join("fuzz/artifacts").join(target);
    std::fs::create_dir_all(&artifacts).unwrap();
    let run = Command::new(binary(target))
        .current_dir(Path::new(ROOT).join("fuzz"))
        .arg(&corpus)
        .arg(&seeds)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_total_time={seconds}"))
        .args(["-timeout=10", "-rss_limit_mb=4096", "-print_final_stats=1"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    (run, before, scratch)
}

/// A run ended: no crash, no new artifact, and some inputs ran.
fn check(
    target: &str,
    seconds: u64,
    status: std::process::ExitStatus,
    log: &str,
    before: &[PathBuf],
) {
    let new: Vec<PathBuf> = artifacts(target)
        .into_iter()
        .filter(|a| !before.contains(a))
        .collect();
    assert!(
        status.success() && new.is_empty(),
        "fuzz target `{target}` found a problem ({status}); reproduce with \
         `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --dev --sanitizer none {target} ARTIFACT`.\n\
         artifacts: {new:#?}\n{}\n…\n{}",
        panics(log),
        tail(log, 60)
    );
    let n = runs(log).unwrap_or(0);
    assert!(
        n > 0,
        "fuzz target `{target}` ran no input:\n{}",
        tail(log, 40)
    );
    eprintln!("fuzz_smoke: `{target}`: {n} inputs in {seconds}s, no crash");
}
