//! Test configs as TOML tables: a test gives its own sections, and the harness's defaults (the
//! listen address, the app, the control socket, the workers) fill in only what it left out.
//! Nothing is spliced as text, so a test's `[listen]` and the harness's cannot collide.
#![allow(dead_code)]

use toml::{Table, Value};

#[derive(Clone, Debug)]
pub struct TestConfig {
    table: Table,
}

impl TestConfig {
    /// A test's own sections, as TOML (e.g. `[listen]\nshutdown_delay = "2s"`).
    pub fn parse(sections: &str) -> TestConfig {
        let table = sections
            .parse::<Table>()
            .unwrap_or_else(|e| panic!("a test's config is not TOML: {e}\n{sections}"));
        TestConfig { table }
    }

    /// `key` (e.g. `"listen.address"`, `"name"`) unless the test set it.
    pub fn or(mut self, key: &str, value: impl Into<Value>) -> TestConfig {
        let (table, name) = self.slot(key);
        table.entry(name).or_insert(value.into());
        self
    }

    /// `key`, whatever the test said.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> TestConfig {
        let (table, name) = self.slot(key);
        table.insert(name, value.into());
        self
    }

    /// Whether the test gave this section.
    pub fn has(&self, section: &str) -> bool {
        self.table.contains_key(section)
    }

    /// The section and the key's own name, the section made if it is not there.
    fn slot(&mut self, key: &str) -> (&mut Table, String) {
        match key.split_once('.') {
            None => (&mut self.table, key.to_owned()),
            Some((section, name)) => {
                let t = self
                    .table
                    .entry(section)
                    .or_insert_with(|| Value::Table(Table::new()));
                match t {
                    Value::Table(t) => (t, name.to_owned()),
                    other => panic!("{section} is not a section in the test config: {other}"),
                }
            }
        }
    }

    pub fn render(&self) -> String {
        toml::to_string(&self.table).unwrap_or_else(|e| panic!("cannot write the test config: {e}"))
    }
}

impl std::fmt::Display for TestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}
