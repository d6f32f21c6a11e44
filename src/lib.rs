//! baton: a systemd-native application manager that keeps a web app up while it is replaced.
//!
//! See ARCHITECTURE.md for how the modules fit together.

pub mod access;
pub(crate) mod acme;
pub(crate) mod admin;
pub mod assets;
pub(crate) mod buffer;
pub mod canary;
pub mod cli;
pub mod config;
pub mod control;
pub(crate) mod demo;
pub mod h1;
pub(crate) mod journal;
pub mod listen;
pub(crate) mod manager;
pub(crate) mod manpage;
pub mod metrics;
pub(crate) mod notify;
pub mod policy;
pub mod pool;
pub mod proxy;
pub(crate) mod readiness;
pub(crate) mod restart;
pub mod spawn;
pub(crate) mod state;
pub mod status;
pub mod tls;
pub(crate) mod unit_files;
pub(crate) mod upstream;
pub(crate) mod util;

/// The module layout shows the architecture only if imports go one way: every module of
/// `src/` sits in a declared layer and may use only modules of lower layers.
#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// The layers, bottom first (ARCHITECTURE.md draws them). A new module is placed here.
    const LAYERS: &[&[&str]] = &[
        // Leaves: pure rules and small parts that know nothing of baton's state.
        &[
            "policy",
            "canary",
            "journal",
            "notify",
            "manpage",
            "unit_files",
            "admin",
            "util",
        ],
        &["h1", "config"],
        &[
            "spawn", "listen", "demo", "buffer", "tls", "assets", "access",
        ],
        &["readiness", "state", "acme"],
        &["pool"],
        // The HTTP client of the workers (attached to the pool's workers, unknown to it).
        &["upstream", "status"],
        &["metrics"],
        // The two sides: the supervisor and the data plane, which share only the pool and
        // the metrics.
        &["restart", "proxy"],
        &["control"],
        &["manager"],
        &["cli"],
    ];

    /// The code of one file that counts: up to its inline test module (`mod tests {`, at the
    /// end by convention; a `mod tests;` declaration is not one).
    fn code(text: &str) -> &str {
        text.split("#[cfg(test)]\nmod tests {").next().unwrap_or("")
    }

    fn is_ident(c: char) -> bool {
        c.is_alphanumeric() || c == '_'
    }

    /// `text` with its comments removed and its string and character literals emptied, so
    /// that what remains names only what the code uses: a doc link or a trailing comment
    /// names a module without importing it, and a string may hold any text. A token scan,
    /// not a parser: enough for code that compiles.
    fn strip(text: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == '/' && at(i + 1) == '/' {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            } else if c == '/' && at(i + 1) == '*' {
                // Block comments nest in Rust.
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && at(i + 1) == '*' {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && at(i + 1) == '/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            } else if c == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            } else if c == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'') {
                // A character literal; anything else after a quote is a lifetime or a label.
                i += if at(i + 1) == '\\' { 3 } else { 2 };
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if is_ident(c) {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let hashes = chars[i..].iter().take_while(|&&h| h == '#').count();
                if matches!(word.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"' {
                    // A raw string: it ends at a quote followed by as many hashes.
                    i += hashes + 1;
                    while i < chars.len()
                        && !(chars[i] == '"'
                            && chars[i + 1..]
                                .iter()
                                .take(hashes)
                                .filter(|&&h| h == '#')
                                .count()
                                == hashes)
                    {
                        i += 1;
                    }
                    i += 1 + hashes;
                    out.push_str("\"\"");
                } else {
                    out.push_str(&word);
                }
            } else {
                out.push(c);
                i += 1;
            }
        }
        out
    }

    /// The top-level modules one file of `module` names through `crate::` paths, tests
    /// aside: `use crate::a::…`, each item of a group (`use crate::{a, b::c, d::{e, f}}`
    /// names `a`, `b` and `d`), and a path in the code (`crate::a::f()`, `$crate::a`). A
    /// group's items count as much as a plain import: skipping them would let any upward
    /// import through in braces. `crate::{self, …}` names the crate, not a module.
    fn imports(module: &str, text: &str) -> BTreeSet<String> {
        let code = strip(code(text));
        let chars: Vec<char> = code.chars().collect();
        let word = |from: usize| -> (String, usize) {
            let end = from + chars[from..].iter().take_while(|&&c| is_ident(c)).count();
            (chars[from..end].iter().collect(), end)
        };
        let skip_space = |mut i: usize| {
            while chars.get(i).is_some_and(|c| c.is_whitespace()) {
                i += 1;
            }
            i
        };
        let mut names = BTreeSet::new();
        let mut i = 0;
        while i < chars.len() {
            if !is_ident(chars[i]) {
                i += 1;
                continue;
            }
            // Whole words only (`my_crate::x` is another crate's path), followed by `::`
            // (`pub(crate)` is not a path).
            let (w, end) = word(i);
            i = end;
            if w != "crate" {
                continue;
            }
            let j = skip_space(end);
            if chars.get(j) != Some(&':') || chars.get(j + 1) != Some(&':') {
                continue;
            }
            let j = skip_space(j + 2);
            if chars.get(j) == Some(&'{') {
                // A group: the first segment of each item at its top level.
                let mut depth = 0usize;
                let mut item_start = true;
                let mut k = j;
                while k < chars.len() {
                    let c = chars[k];
                    match c {
                        '{' => {
                            depth += 1;
                            item_start = depth == 1;
                        }
                        '}' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                break;
                            }
                        }
                        ',' if depth == 1 => item_start = true,
                        c if c.is_whitespace() => {}
                        c if item_start && depth == 1 && (is_ident(c) || c == '*') => {
                            let (name, end) = if c == '*' {
                                ("*".to_owned(), k + 1)
                            } else {
                                word(k)
                            };
                            names.insert(name);
                            item_start = false;
                            k = end;
                            continue;
                        }
                        _ => item_start = false,
                    }
                    k += 1;
                }
                i = k;
            } else if chars.get(j) == Some(&'*') {
                // A glob of the crate root hides what it uses: reported as no layer.
                names.insert("*".to_owned());
            } else {
                names.insert(word(j).0);
            }
        }
        names.retain(|n| !n.is_empty() && n != "self" && n != module);
        names
    }

    /// Top-level module -> the top-level modules its code (tests aside) names, from
    /// (path under `src/`, text) pairs.
    fn graph(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (rel, text) in files {
            let rel = Path::new(rel);
            if rel.extension().is_none_or(|e| e != "rs")
                || rel.file_name().is_some_and(|n| n == "tests.rs")
            {
                continue;
            }
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let uses = imports(&module, text);
            graph.entry(module).or_default().extend(uses);
        }
        graph
    }

    fn sources() -> Vec<(String, String)> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut out = Vec::new();
        let mut files = vec![src.clone()];
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            out.push((rel, std::fs::read_to_string(&p).unwrap_or_default()));
        }
        out
    }

    /// Every import that does not go down a layer, and every module with no layer.
    fn violations(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
        let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
        let mut wrong = Vec::new();
        for (module, uses) in graph {
            let Some(mine) = layer(module) else {
                wrong.push(format!("{module} has no layer in LAYERS"));
                continue;
            };
            for used in uses {
                match layer(used) {
                    Some(theirs) if theirs < mine => {}
                    Some(_) => wrong.push(format!("{module} uses {used}, which is not below it")),
                    None => wrong.push(format!("{module} uses {used}, which has no layer")),
                }
            }
        }
        wrong
    }

    #[test]
    fn every_module_uses_only_the_layers_below_it() {
        let graph = graph(&sources());
        assert!(graph.len() > 15, "{graph:?}");
        let wrong = violations(&graph);
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    /// Every module `module` reaches through its imports.
    fn reach(graph: &BTreeMap<String, BTreeSet<String>>, module: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut next = vec![module.to_owned()];
        while let Some(m) = next.pop() {
            for used in graph.get(&m).into_iter().flatten() {
                if seen.insert(used.clone()) {
                    next.push(used.clone());
                }
            }
        }
        seen
    }

    /// The supervisor knows workers, not HTTP: its modules never reach the HTTP client of the
    /// workers or the HTTP rules (the pool holds the data plane's per-worker state as an
    /// opaque `pool::Attachment`).
    #[test]
    fn the_supervisor_never_reaches_http() {
        let imports = graph(&sources());
        for http in ["upstream", "proxy", "h1", "policy", "buffer"] {
            for module in ["restart", "pool", "config", "state"] {
                assert!(
                    !reach(&imports, module).contains(http),
                    "{module} reaches {http}: {:?}",
                    reach(&imports, module)
                );
            }
        }
        let mut planted = sources();
        let (_, text) = planted
            .iter_mut()
            .find(|(rel, _)| rel == "pool/mod.rs")
            .unwrap();
        text.insert_str(0, "use crate::upstream::Conns;\n");
        assert!(reach(&graph(&planted), "restart").contains("upstream"));
    }

    /// The parse on its own: every form a `crate::` path takes is read, and nothing in a
    /// comment or a literal is.
    #[test]
    fn every_form_of_a_crate_path_is_read() {
        let text = r##"
use crate::{config, pool::Lease, proxy::{Proxy, narrow::{self, Rewound}}};
use crate::{
    // a comment in a group: crate::manager, cli
    self,
    h1::{self as http},
    restart, /* control, */
};
use crate :: { metrics, upstream as up };
fn f<'a>(x: &'a str) -> char {
    let _ = crate::status::Snapshot::new(); // crate::acme
    let _ = ("crate::cli", r"crate::control", br#"crate::{manager}"#, b"crate::demo");
    /* crate::journal /* nested: crate::notify */ crate::admin */
    let _ = ['{', '\'', '"'];
    'x'
}
macro_rules! m { () => { $crate::tls::Certificates } }
pub(crate) fn g() {}
#[cfg(test)]
mod tests {
    use crate::manpage;
}
"##;
        let found: Vec<String> = imports("assets", text).into_iter().collect();
        assert_eq!(
            found,
            [
                "config", "h1", "metrics", "pool", "proxy", "restart", "status", "tls", "upstream"
            ]
        );
        // A module's paths to itself are no import, and a glob of the crate root is one
        // nobody can place.
        let found: Vec<String> = imports("pool", "use crate::pool::x; use crate::*;")
            .into_iter()
            .collect();
        assert_eq!(found, ["*"]);
    }

    /// An upward import in a group is reported, as the same import alone is.
    #[test]
    fn a_planted_upward_grouped_import_is_reported() {
        let files = [
            (
                "pool/mod.rs",
                "use crate::{\n    config::WorkersConfig,\n    proxy::{Proxy, narrow},\n};\n",
            ),
            ("h1.rs", "use crate::{policy, util::{self}};\n"),
            ("proxy/mod.rs", "use crate::{pool::Lease, upstream};\n"),
        ]
        .map(|(rel, text)| (rel.to_owned(), text.to_owned()));
        // Only the files given are in the graph: `config`, used but not given, is no entry.
        assert_eq!(
            violations(&graph(&files)),
            ["pool uses proxy, which is not below it"]
        );
    }

    /// The test of the test: an upward import planted in any file, anywhere before its test
    /// module (in `restart/mod.rs`, whose `mod tests;` line comes first), fails it.
    #[test]
    fn a_planted_upward_import_is_caught() {
        let files = sources();
        for (target, planted) in [
            ("restart/mod.rs", "use crate::manager;"),
            ("pool/mod.rs", "use crate::proxy::Proxy;"),
            ("config/mod.rs", "use crate::restart;"),
            ("h1.rs", "use crate::pool;"),
            // Grouped imports, on one line or several.
            (
                "pool/mod.rs",
                "use crate::{config::Config, proxy::{Proxy, narrow}};",
            ),
            ("h1.rs", "use crate::{\n    policy,\n    pool::Lease,\n};"),
            (
                "state.rs",
                "fn f() { let _ = crate::restart::Context::state; }",
            ),
        ] {
            let mut changed = files.clone();
            let (_, text) = changed
                .iter_mut()
                .find(|(rel, _)| rel == target)
                .unwrap_or_else(|| panic!("{target} not found"));
            // Planted just before the inline test module, or at the end.
            let at = text.find("#[cfg(test)]\nmod tests {").unwrap_or(text.len());
            text.insert_str(at, &format!("{planted}\n"));
            assert!(
                !violations(&graph(&changed)).is_empty(),
                "{planted} in {target} was not caught"
            );
        }
    }
}
