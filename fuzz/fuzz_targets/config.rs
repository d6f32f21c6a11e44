//! `config`: arbitrary bytes (lossily made UTF-8) as a config file.
//!
//! Asserts: `Config::parse` never panics; an error always names the file, a line and a column
//! (`fuzz.toml:LINE:COLUMN: ...`, both 1-based, the line within the text); an accepted config
//! can be used (its derived values and its Debug form compute without panicking).

#![no_main]

use baton::config::Config;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, Path::new("fuzz.toml")) {
        Ok(config) => {
            let (min, max) = (config.workers.min(), config.workers.max());
            assert!(min <= max, "min {min} > max {max} was accepted");
            for id in [0, 1, u64::MAX] {
                if let Some(limit) = config.workers.request_limit(id) {
                    assert!(limit >= config.workers.max_requests);
                }
            }
            let _ = config.control_socket();
            let _ = format!("{config:?}");
        }
        Err(e) => {
            let msg = e.to_string();
            let rest = msg
                .strip_prefix("fuzz.toml:")
                .unwrap_or_else(|| panic!("error does not start with the file name: {msg:?}"));
            let mut parts = rest.splitn(3, ':');
            let line: usize = parts
                .next()
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("error names no line: {msg:?}"));
            let column: usize = parts
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("error names no column: {msg:?}"));
            assert!(
                parts.next().is_some_and(|m| m.starts_with(' ')),
                "no message after the position: {msg:?}"
            );
            assert!(line >= 1 && column >= 1, "position not 1-based: {msg:?}");
            let lines = text.matches('\n').count() + 1;
            assert!(line <= lines, "line {line} of {lines}: {msg:?}");
        }
    }
});
