//! Test harness, by concern: `harness` (a real `baton run` and its releases), `config` (the
//! test configs, built as TOML tables), `load` (the load generator), `procs` (worker processes
//! from /proc), `tls` (certificates for the HTTPS tests).
#![allow(dead_code, unused_imports)]

pub mod config;
pub mod e2e;
pub mod harness;
pub mod load;
pub mod procs;
pub mod tls;

pub use config::TestConfig;
pub use harness::*;
pub use load::*;
pub use procs::*;
pub use tls::*;
