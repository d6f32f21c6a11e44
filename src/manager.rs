//! `baton run`: wires listeners, the pool, the supervisor, the proxy and the control socket
//! together, and turns signals into commands (SIGHUP: restart; SIGTERM/SIGINT: drain and stop).

use crate::config::{Backend, Config};
use crate::notify::Notifier;
use crate::pool::{Limits, Pool};
use crate::proxy::Proxy;
use crate::restart::{Command, Supervisor};
use crate::spawn::{Spawner, process::ProcessSpawner, systemd::SystemdSpawner};
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// `auto` picks systemd when baton runs under a service manager with a reachable bus.
async fn spawner(config: &Config) -> anyhow::Result<Arc<dyn Spawner>> {
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some()
        && std::path::Path::new("/run/systemd/system").exists();
    match config.spawner.backend {
        Backend::Process => Ok(Arc::new(ProcessSpawner)),
        Backend::Systemd => Ok(Arc::new(SystemdSpawner::connect(config).await?)),
        Backend::Auto if under_systemd => match SystemdSpawner::connect(config).await {
            Ok(s) => Ok(Arc::new(s)),
            Err(e) => {
                tracing::warn!("{e}; falling back to the process backend");
                Ok(Arc::new(ProcessSpawner))
            }
        },
        Backend::Auto => Ok(Arc::new(ProcessSpawner)),
    }
}

/// Run the manager until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let app = config.name.clone();
    let listeners = crate::listen::open(&config)?;
    let spawner = spawner(&config).await?;
    let pool = Pool::new(Limits {
        concurrency: config.workers.concurrency,
        max_queue: config.workers.max_queue,
    });
    let notifier = Arc::new(Notifier::default());
    let control_path = config.control_socket();
    let control = crate::control::bind(&control_path, config.control.group.as_deref())?;
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let (supervisor, handle) = Supervisor::new(
        config.clone(),
        pool.clone(),
        spawner.clone(),
        notifier.clone(),
        metrics.clone(),
    );
    if let Some(addr) = config.metrics.address {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on [metrics] address {addr}"))?;
        tokio::spawn(crate::metrics::serve_tcp(l, handle.clone()));
    }
    let supervisor = tokio::spawn(supervisor.run());
    tokio::spawn(crate::control::serve(control, handle.clone()));
    tokio::spawn(crate::status::sample_usage(handle.context.clone()));
    if let Some(every) = sd_notify::watchdog_enabled() {
        let n = notifier.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every / 2);
            loop {
                tick.tick().await;
                n.watchdog();
            }
        });
    }

    let proxy = Proxy::new(pool.clone(), &config.listen, metrics);
    let stop_accepting = CancellationToken::new();
    let connections = TaskTracker::new();
    for l in listeners {
        tracing::info!(app = %app, backend = spawner.name(), "serving {} with {}..{} workers; control socket {}",
            l.describe(), config.workers.min(), config.workers.max(), control_path.display());
        tokio::spawn(
            proxy
                .clone()
                .serve(l, stop_accepting.clone(), connections.clone()),
        );
    }

    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!(app = %app, "SIGHUP: starting a restart");
                handle.send(Command::Restart { mode: None, reply: None }).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    tracing::info!(app = %app, "stopping: finishing requests in flight");
    notifier.stopping();
    stop_accepting.cancel();
    connections.close();
    let drain = config.restart.drain_timeout.get() + Duration::from_secs(1);
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(app = %app, "requests still in flight after drain_timeout; cutting them");
    }
    pool.close();
    let (tx, rx) = oneshot::channel();
    if handle.send(Command::Shutdown(tx)).await {
        let _ = rx.await;
    }
    let _ = supervisor.await;
    let _ = std::fs::remove_file(&control_path);
    tracing::info!(app = %app, "stopped");
    Ok(())
}
