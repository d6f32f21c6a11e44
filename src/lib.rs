//! baton: a systemd-native application manager that keeps a web app up while it is replaced.
//!
//! See ARCHITECTURE.md for how the modules fit together.

pub(crate) mod admin;
pub(crate) mod buffer;
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
pub mod pool;
pub mod proxy;
pub(crate) mod readiness;
pub(crate) mod restart;
pub mod spawn;
pub(crate) mod state;
pub mod status;
pub(crate) mod unit_files;
pub(crate) mod upstream;

/// The module layout shows the architecture only if imports go one way: no module of `src/`
/// may reach, directly or through others, a module that reaches it back.
#[cfg(test)]
mod layering {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Top-level module -> the top-level modules its code (tests aside) names.
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut files = vec![src.clone()];
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap();
            if p.extension().is_none_or(|e| e != "rs")
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
            let text = std::fs::read_to_string(&p).unwrap();
            let code: String = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or("")
                .lines()
                // Doc links name modules without importing them.
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
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

    #[test]
    fn no_module_imports_one_that_imports_it_back() {
        let graph = graph();
        assert!(graph.len() > 15, "{graph:?}");
        // Depth-first search for a path back to where it started.
        fn reaches(
            g: &BTreeMap<String, BTreeSet<String>>,
            from: &str,
            to: &str,
            path: &mut Vec<String>,
            seen: &mut BTreeSet<String>,
        ) -> bool {
            for next in g.get(from).into_iter().flatten() {
                path.push(next.clone());
                if next == to || (seen.insert(next.clone()) && reaches(g, next, to, path, seen)) {
                    return true;
                }
                path.pop();
            }
            false
        }
        for m in graph.keys() {
            let mut path = vec![m.clone()];
            if reaches(&graph, m, m, &mut path, &mut BTreeSet::new()) {
                panic!("import circle: {}", path.join(" -> "));
            }
        }
    }
}
