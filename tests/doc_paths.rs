//! The paths README.md and docs/ give an operator are the paths the packaged units and packages
//! use: the config file, the control socket, the example config, the man pages. Read from the
//! unit files and Cargo.toml's package metadata, not restated here.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The value of `Key=` in a unit file (the last one: later lines override).
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .to_owned()
}

/// What a user reads: README and every page of docs/.
fn user_docs() -> Vec<(String, String)> {
    let mut docs = vec![("README.md".to_owned(), read("README.md"))];
    for e in std::fs::read_dir(Path::new(ROOT).join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            let rel = format!("docs/{}", p.file_name().unwrap().to_string_lossy());
            docs.push((rel.clone(), read(&rel)));
        }
    }
    docs
}

#[test]
fn the_documented_config_and_socket_paths_are_the_units() {
    let service = read("units/baton@.service");
    // The config: ExecStart's --config, for app "myapp".
    let exec = unit_value(&service, "ExecStart");
    let config = exec
        .split_whitespace()
        .skip_while(|w| *w != "--config")
        .nth(1)
        .expect("ExecStart passes --config")
        .replace("%i", "myapp");
    // The control socket: the default is $RUNTIME_DIRECTORY/control.sock, and the unit's
    // RuntimeDirectory= is under /run.
    let runtime = unit_value(&service, "RuntimeDirectory").replace("%i", "myapp");
    let socket = format!("/run/{runtime}/control.sock");
    let readme = read("README.md");
    assert!(
        readme.contains(&config),
        "README never names the packaged config path {config}"
    );
    assert!(
        readme.contains(&socket),
        "README never names the packaged control socket {socket}"
    );
    // No page names another place for myapp's socket under the packaged units.
    for (name, text) in user_docs() {
        for wrong in ["/run/baton/myapp.sock", "/run/myapp/control.sock"] {
            assert!(
                !text.contains(wrong),
                "{name} names {wrong}, but the packaged units put the socket at {socket}"
            );
        }
    }
}

#[test]
fn the_documented_package_paths_are_the_packages() {
    let cargo = read("Cargo.toml");
    let readme = read("README.md");
    // README tells operators to copy the example config from where both packages install it.
    let example = "/usr/share/doc/baton/examples/example.toml";
    assert!(
        readme.contains(example),
        "README does not say where the example is"
    );
    assert!(
        cargo.contains(r#"["packaging/example.toml", "usr/share/doc/baton/examples/", "644"]"#),
        "the .deb does not install the example at {example}"
    );
    assert!(
        cargo.contains(&format!(r#"dest = "{example}""#)),
        "the .rpm does not install the example at {example}"
    );
    // The man pages the docs point to are packaged.
    for (page, dir) in [("baton.toml(5)", "man5"), ("baton(1)", "man1")] {
        assert!(
            user_docs().iter().any(|(_, t)| t.contains(page)),
            "no page mentions {page}"
        );
        assert!(
            cargo.contains(&format!("usr/share/man/{dir}/")),
            "{page} is not packaged in {dir}"
        );
    }
}
