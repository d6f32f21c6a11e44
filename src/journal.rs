//! Logging: structured entries in the journal when baton runs under systemd, else on stderr.
//!
//! Every entry about a worker carries the fields `app`, `worker`, `generation`, `pid` and (on the
//! systemd backend) `unit`; journald sees them upper-cased (`APP=`, `WORKER=`...). The events an
//! operator searches for have their own `MESSAGE_ID`, explained in `packaging/baton.catalog`.

use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// A worker failed to start or to become ready.
pub const MSG_SPAWN_FAILED: &str = "7d1b3a9e2c5f4e8a9b0c6d2e4f1a3b5c";
/// A rolling restart hit a deployment error and the old workers keep serving.
pub const MSG_RESISTANCE_ENTERED: &str = "a3f04c2b8e1d4d6f9c7b5e2a1d0c8f36";
/// Resistance mode ended (new restart or `baton resume`).
pub const MSG_RESISTANCE_LEFT: &str = "5c8e2f1a7b3d4e9c8a6f0b2d4e1c7a95";
/// The canary judge rejected a new generation: it failed visitors more than the old one.
pub const MSG_CANARY_FAILED: &str = "4b9d2e7f1a6c4c3e8f0a5d7b2c9e1f64";
/// A rollback to the previous generation's release began (by itself or `baton rollback`).
pub const MSG_ROLLBACK: &str = "c2e8a4f6b1d94e3a7f5c0b8d6e2a9f13";
/// The HTTPS certificates in force (at start, and after every reload that re-read them).
pub const MSG_CERTIFICATES: &str = "8f3a6c1e9d2b4a7f8e5c0d3b6a9f2e41";
/// baton obtained or renewed a certificate by ACME.
pub const MSG_ACME_OBTAINED: &str = "3d7e9a1c5b2f4e8d9a6c1f0b7e3d5a29";
/// baton could not obtain or renew a certificate by ACME (the one in force keeps serving).
pub const MSG_ACME_FAILED: &str = "b5f1c8e2a9d34f7b8e6a2c0d9f4b1e73";
/// A restart began.
pub const MSG_ROLL_STARTED: &str = "e6b2d4f8a1c34b7d9e5f2a8c6b0d1e47";
/// A restart ended (its outcome is in the message).
pub const MSG_ROLL_FINISHED: &str = "91c7e3a5b2d84f6e8c1a9b7d3f5e2c08";

/// Set up logging once, at start. `RUST_LOG` overrides the default level (info).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // JOURNAL_STREAM is set by systemd when stderr goes to the journal: then log natively,
    // with fields, rather than as flat text lines.
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|l| {
            l.with_field_prefix(None)
                .with_syslog_identifier("baton".into())
        });
    let registry = tracing_subscriber::registry().with(filter);
    let result = match journald {
        Some(layer) => registry.with(layer).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_target(false),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
