//! A bounded fuzz run of each cargo-fuzz target in `fuzz/` (`config`, `h1`, `request`,
//! `differential`, the fronts: `h2`, `tls`, and `static_path`; see fuzz/README.md): the targets must build, and a short run of each from its seed corpus must
//! find no crash, panic, hang or out-of-memory.
//!
//! It installs cargo-fuzz (`cargo install --locked cargo-fuzz`) when it is missing, and builds
//! with `RUSTC_BOOTSTRAP=1`, since cargo-fuzz passes nightly-only flags and the project is on
//! stable Rust. `BATON_FUZZ_SECONDS` sets the time per target (default 30). A build failure or
//! a finding always fails. Only when the fuzz toolchain cannot work on this machine (cargo-fuzz
//! cannot be installed, no C++ compiler for libFuzzer, an unsupported platform) does the test say
//! so loudly and pass, unless BATON_E2E_REQUIRED is set (as `.ci/run` does), when it fails.

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

/// AddressSanitizer needs the toolchain's ASan runtime; without it, fuzz without a sanitizer
/// (Rust code needs none to catch panics, overflows and out-of-bounds indexing).
fn sanitizer() -> &'static str {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let lib = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(host())
        .join("lib");
    let has_asan = std::fs::read_dir(lib).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with("_rt.asan.a"))
    });
    if has_asan { "address" } else { "none" }
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
        .unwrap_or(30);
    let sanitizer = sanitizer();

    let started = Instant::now();
    let build = fuzz_cargo()
        .args(["fuzz", "build", "--sanitizer", sanitizer])
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "cargo fuzz build failed:\n{}",
        tail(&text(&build), 80)
    );
    eprintln!(
        "fuzz_smoke: built the fuzz targets (sanitizer {sanitizer}) in {:?}",
        started.elapsed()
    );

    for target in TARGETS {
        let before = artifacts(target);
        // New inputs go to a scratch corpus (the first directory); the seeds are only read.
        let scratch = tempfile::tempdir().unwrap();
        let seeds = Path::new(ROOT).join("fuzz/corpus").join(target);
        let run = fuzz_cargo()
            .args(["fuzz", "run", "--sanitizer", sanitizer, target])
            .arg(scratch.path())
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-timeout=10", "-rss_limit_mb=4096", "-print_final_stats=1"])
            .output()
            .unwrap();
        let log = text(&run);
        let new: Vec<PathBuf> = artifacts(target)
            .into_iter()
            .filter(|a| !before.contains(a))
            .collect();
        assert!(
            run.status.success() && new.is_empty(),
            "fuzz target `{target}` found a problem ({}); reproduce with \
             `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {target} ARTIFACT`.\n\
             artifacts: {new:#?}\n{}\n…\n{}",
            run.status,
            panics(&log),
            tail(&log, 60)
        );
        let n = runs(&log).unwrap_or(0);
        assert!(
            n > 0,
            "fuzz target `{target}` ran no input:\n{}",
            tail(&log, 40)
        );
        eprintln!("fuzz_smoke: `{target}`: {n} inputs in {seconds}s, no crash");
    }
}
