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
    /// end by convention; a `mod tests;` declaration is not one), without comment lines (doc
    /// links name modules without importing them).
    fn code(text: &str) -> String {
        text.split("#[cfg(test)]\nmod tests {")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n")
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
            let code = code(text);
            let uses = graph.entry(module.clone()).or_default();
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
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
