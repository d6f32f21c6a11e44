//! Bad configs: `baton check-config` and `baton run` name the file, line, column and key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

mod common;

use common::BATON;
use std::process::Command;

const BASE: &str = "name = \"app\"\n[listen]\naddress = \"127.0.0.1:8080\"\n[app]\ncommand = [\"sh\", \"main.sh\"]\n";

fn check(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BATON)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let p = path.display().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&p, "FILE");
    (out.status.success(), stderr.trim_end().to_owned(), p)
}

fn assert_error(text: &str, expected: &str) {
    let (ok, stderr, _) = check(text);
    assert!(!ok, "{text:?} must be rejected");
    assert_eq!(stderr, expected);
}

#[test]
fn unknown_key_names_key_and_line() {
    assert_error(
        &format!("{BASE}[workers]\ncont = 4\n"),
        "baton: FILE:7:1: key `workers.cont`: unknown field `cont`, expected one of `count`, `min`, `max`, `concurrency`, `max_queue`, `idle_timeout`, `max_requests`, `memory_limit`, `request_timeout`, `max_queue_time`, `max_request_time`",
    );
}

#[test]
fn wrong_type() {
    assert_error(
        &format!("{BASE}[workers]\ncount = \"four\"\n"),
        "baton: FILE:7:9: key `workers.count`: invalid type: string \"four\", expected a nonzero usize",
    );
}

#[test]
fn zero_workers() {
    assert_error(
        &format!("{BASE}[workers]\ncount = 0\n"),
        "baton: FILE:7:9: key `workers.count`: invalid value: integer `0`, expected a nonzero usize",
    );
}

#[test]
fn bad_duration() {
    assert_error(
        &format!("{BASE}[restart]\ndrain_timeout = \"30 parsecs\"\n"),
        "baton: FILE:7:17: key `restart.drain_timeout`: invalid duration \"30 parsecs\" (unknown time unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations)); write it like \"30s\" or \"500ms\"",
    );
}

#[test]
fn absurd_duration() {
    assert_error(
        &format!("{BASE}[restart]\ndrain_timeout = \"18446744073709551615s\"\n"),
        "baton: FILE:7:17: key `restart.drain_timeout`: duration \"18446744073709551615s\" is too long: at most a year (\"1y\", 365.25 days)",
    );
}

#[test]
fn missing_command() {
    assert_error(
        "name = \"app\"\n[app]\ndirectory = \"/srv\"\n",
        "baton: FILE:2:1: key `app`: missing field `command`",
    );
}

#[test]
fn bad_listen_address() {
    assert_error(
        "name = \"app\"\n[listen]\naddress = \"localhost:80\"\n[app]\ncommand = [\"x\"]\n",
        "baton: FILE:3:11: key `listen.address`: invalid address \"localhost:80\": write \"127.0.0.1:8080\", \"[::1]:8080\" or \"unix:/run/myapp.sock\"",
    );
}

#[test]
fn toml_syntax_error() {
    assert_error(
        &format!("{BASE}[workers\ncount = 1"),
        "baton: FILE:6:9: unclosed table, expected `]`",
    );
}

#[test]
fn min_above_max() {
    assert_error(
        &format!("{BASE}[workers]\nmin = 5\nmax = 2\n"),
        "baton: FILE:7:1: key `workers.min`: min (5) is greater than max (2)",
    );
}

#[test]
fn unknown_backend() {
    assert_error(
        &format!("{BASE}[spawner]\nbackend = \"docker\"\n"),
        "baton: FILE:7:11: key `spawner.backend`: unknown variant `docker`, expected one of `auto`, `systemd`, `process`",
    );
}

#[test]
fn bad_app_name() {
    assert_error(
        "name = \"my app\"\n[app]\ncommand = [\"x\"]\n",
        "baton: FILE:1:8: key `name`: invalid app name \"my app\": use 1 to 64 letters, digits, '-', '_' or '.', not starting with '-' or '.'",
    );
}

#[test]
fn missing_file() {
    let out = Command::new(BATON)
        .args(["check-config", "--config", "/nonexistent/app.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "baton: /nonexistent/app.toml: cannot read config: No such file or directory (os error 2)"
    );
}

#[test]
fn minimal_config_is_accepted() {
    let (ok, stderr, _) = check(BASE);
    assert!(ok, "{stderr}");
}

#[test]
fn run_refuses_a_bad_config_with_the_same_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    std::fs::write(&path, format!("{BASE}[workers]\ncount = 0\n")).unwrap();
    let out = Command::new(BATON)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "FILE");
    assert!(
        stderr.contains("baton: FILE:7:9: key `workers.count`: invalid value: integer `0`, expected a nonzero usize"),
        "{stderr}"
    );
}

#[test]
fn absurd_numbers_are_refused_before_they_cost_anything() {
    assert_error(
        &format!("{BASE}[workers]\ncount = 18446744073709551615\n"),
        "baton: FILE:7:1: key `workers.count`: 18446744073709551615 is above the maximum, 1024",
    );
    assert_error(
        "name = \"app\"\n[listen]\naddress = \"127.0.0.1:8080\"\nmax_connections = 9223372036854775807\n[app]\ncommand = [\"sh\"]\n",
        "baton: FILE:4:1: key `listen.max_connections`: 9223372036854775807 is above the maximum, 1000000",
    );
    assert_error(
        "name = \"app\"\n[listen]\naddress = \"127.0.0.1:8080\"\nmax_header_size = \"1TiB\"\n[app]\ncommand = [\"sh\"]\n",
        "baton: FILE:4:1: key `listen.max_header_size`: 1099511627776 bytes is above the maximum, 1MiB",
    );
    assert_error(
        &format!("{BASE}[workers]\nmax_queue = 100000000\n"),
        "baton: FILE:7:1: key `workers.max_queue`: 100000000 is above the maximum, 1000000",
    );
}

#[test]
fn what_the_machine_lacks_is_a_config_error() {
    assert_error(
        "name = \"app\"\n[app]\ncommand = [\"sh\"]\ndirectory = \"/nonexistent/release\"\n",
        "baton: FILE:4:1: key `app.directory`: /nonexistent/release is not a directory (or does not exist)",
    );
    let (ok, stderr, _) = check("name = \"app\"\n[app]\ncommand = [\"no-such-program-here\"]\n");
    assert!(!ok);
    assert!(
        stderr.starts_with(
            "baton: FILE:3:1: key `app.command`: \"no-such-program-here\" was not found on the PATH"
        ),
        "{stderr}"
    );
    assert_error(
        "name = \"app\"\n[app]\ncommand = [\"/etc/passwd\"]\n",
        "baton: FILE:3:1: key `app.command`: /etc/passwd is not an executable file",
    );
    assert_error(
        "name = \"app\"\n[app]\ncommand = [\"sh\"]\nuser = \"no-such-user-here\"\n",
        "baton: FILE:4:1: key `app.user`: no user \"no-such-user-here\" on this host",
    );
    assert_error(
        "name = \"app\"\n[app]\ncommand = [\"sh\"]\ngroup = \"no-such-group-here\"\n",
        "baton: FILE:4:1: key `app.group`: no group \"no-such-group-here\" on this host",
    );
    assert_error(
        "name = \"app\"\n[app]\ncommand = [\"sh\"]\n[control]\ngroup = \"no-such-group-here\"\n",
        "baton: FILE:5:1: key `control.group`: no group \"no-such-group-here\" on this host",
    );
    // Those that exist pass.
    let (ok, stderr, _) = check(
        "name = \"app\"\n[app]\ncommand = [\"sh\"]\nuser = \"root\"\ngroup = \"root\"\n[control]\ngroup = \"root\"\n",
    );
    assert!(ok, "{stderr}");
}

#[test]
fn environment_errors_name_the_variable_and_its_line() {
    assert_error(
        "name = \"app\"\n[app]\ncommand = [\"sh\"]\nenvironment = { SECRET = \"a\\u0000b\" }\n",
        "baton: FILE:4:1: key `app.environment.SECRET`: the value of SECRET contains a NUL byte",
    );
    assert_error(
        "name = \"app\"\n[app]\ncommand = [\"sh\"]\nenvironment = { \"A=B\" = \"1\" }\n",
        "baton: FILE:4:17: key `app.environment.A=B`: invalid environment variable name \"A=B\"",
    );
}

#[test]
fn no_worker_could_ever_start() {
    assert_error(
        &format!("{BASE}[workers]\nmin = 0\nmax = 2\nmax_queue = 0\n"),
        "baton: FILE:9:1: key `workers.max_queue`: with workers.min = 0 a request must wait in the queue while the first worker starts: set max_queue above 0 or min above 0",
    );
}

#[test]
fn acme_keys_are_checked() {
    let (ok, stderr, _) = check(&format!(
        "{BASE}[tls]\nacme = {{ domains = [\"shop.example\"], contact = [\"mailto:ops@shop.example\"] }}\n"
    ));
    assert!(ok, "{stderr}");
    // The spec's spelling: one contact as a string, a year of HSTS.
    let (ok, stderr, _) = check(&format!(
        "{BASE}[tls]\nacme = {{ domains = [\"shop.example\"], contact = \"mailto:ops@shop.example\" }}\nredirect_http = true\nhsts = \"1y\"\n"
    ));
    assert!(ok, "{stderr}");
    for (acme, message) in [
        (
            "{ domains = [] }",
            "key `tls.acme.domains`: name at least one domain the certificate is for",
        ),
        (
            "{ domains = [\"*.shop.example\"] }",
            "key `tls.acme.domains`: \"*.shop.example\" is not a DNS name a certificate can be obtained for by TLS-ALPN-01 (no wildcards, no ports)",
        ),
        (
            "{ domains = [\"127.0.0.1\"] }",
            "key `tls.acme.domains`: \"127.0.0.1\" is not a DNS name a certificate can be obtained for by TLS-ALPN-01 (no wildcards, no ports)",
        ),
        (
            "{ domains = [\"shop.example\"], directory = \"http://ca.example/dir\" }",
            "key `tls.acme.directory`: \"http://ca.example/dir\" is not an https:// URL",
        ),
        (
            "{ domains = [\"shop.example\"], contact = [\"ops@shop.example\"] }",
            "key `tls.acme.contact`: \"ops@shop.example\": write a contact as \"mailto:ops@example.com\"",
        ),
    ] {
        let (ok, stderr, _) = check(&format!("{BASE}[tls]\nacme = {acme}\n"));
        assert!(!ok, "{acme} must be rejected");
        assert!(stderr.ends_with(message), "{acme}: {stderr}");
    }
}

#[test]
fn a_shell_variable_in_the_command_is_refused() {
    const WHY: &str = "is not expanded (baton runs the command without a shell); write \"{port}\" for the worker's port, or let the app read the PORT environment variable, which baton always sets";
    assert_error(
        "name = \"app\"\n[app]\ncommand = [\"sh\", \"main.sh\", \"--port\", \"$PORT\"]\n",
        &format!("baton: FILE:3:1: key `app.command`: \"$PORT\" {WHY}"),
    );
    // Written over several lines: the key's line.
    assert_error(
        "name = \"app\"\n\n[app]\ndirectory = \"/\"\ncommand = [\n  \"sh\",\n  \"main.sh\",\n  \"--bind=127.0.0.1:${PORT}\",\n]\n",
        &format!(
            "baton: FILE:5:1: key `app.command`: \"${{PORT}}\" in \"--bind=127.0.0.1:${{PORT}}\" {WHY}"
        ),
    );
}

#[test]
fn a_shell_script_may_use_port() {
    for command in [
        r#"["sh", "-c", "exec app --port $PORT"]"#,
        r#"["env", "NODE_ENV=production", "bash", "-ec", "exec node main.js --port=${PORT}"]"#,
        r#"["sh", "main.sh", "--port", "{port}"]"#,
    ] {
        let (ok, stderr, _) = check(&format!("name = \"app\"\n[app]\ncommand = {command}\n"));
        assert!(ok, "{command}: {stderr}");
    }
}
