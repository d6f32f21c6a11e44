//! baton: a systemd-native application manager that keeps a web app up while it is replaced.
//!
//! See ARCHITECTURE.md for how the modules fit together.

pub mod admin;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod journal;
pub mod listen;
pub mod manager;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod proxy;
pub mod readiness;
pub mod restart;
pub mod spawn;
pub mod state;
pub mod status;
pub mod units;
pub mod upstream;
