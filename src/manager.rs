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
use tokio_util::sync::CancellationToken;

/// `auto` picks systemd when baton runs under a service manager with a reachable bus.
/// The proxy's runtime. Dropped from async code (at the end of `run`, or on an early error),
/// so it shuts down in the background: what is left there (idle worker connections) ends
/// with it.
struct DataPlane(Option<tokio::runtime::Runtime>);

impl DataPlane {
    /// The data plane gets its own runtime, one thread per core; the caller's (a single
    /// thread) keeps the control plane. Under a load that saturates the machine, the
    /// supervisor's timers, readiness probes and the control socket then never queue behind
    /// client connections (they did: readiness seen seconds late, timeouts firing late).
    fn start() -> anyhow::Result<DataPlane> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(DataPlane(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cores)
                .thread_name("baton-proxy")
                .enable_all()
                .build()
                .context("cannot start the proxy's runtime")?,
        )))
    }

    fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.0 {
            Some(rt) => rt.spawn(f),
            None => tokio::spawn(f),
        }
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Give memory back after a burst of client connections: glibc keeps what thousands of
/// connections' buffers used in its arenas after they close (8 MiB of RSS became 35 MiB, and
/// stayed, after 2,000 idle connections). Each time the open connections have fallen by a
/// burst's worth since the peak after the last trim, `malloc_trim` returns the free pages: a
/// burst that closes over several seconds is trimmed until its last connection is gone.
/// glibc's only: other C libraries (musl) have no `malloc_trim`, and no such arenas to trim.
#[cfg(target_env = "gnu")]
async fn trim_after_bursts(proxy: Arc<Proxy>) {
    const BURST: usize = 1000;
    let mut peak = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let open = proxy.open_connections();
        peak = peak.max(open);
        if peak.saturating_sub(open) >= BURST {
            peak = open;
            // It walks the heap: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(|| {
                // SAFETY: malloc_trim has no preconditions; it only releases free memory.
                unsafe { libc::malloc_trim(0) };
            })
            .await;
        }
    }
}

/// Call once the control socket is bound (the process backend's workers are marked with it).
async fn spawner(config: &Config, control: &std::path::Path) -> anyhow::Result<Arc<dyn Spawner>> {
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some()
        && std::path::Path::new("/run/systemd/system").exists();
    match config.spawner.backend {
        Backend::Process => Ok(process_spawner(config, control).await),
        Backend::Systemd => Ok(Arc::new(SystemdSpawner::connect(config).await?)),
        Backend::Auto if under_systemd => match SystemdSpawner::connect(config).await {
            Ok(s) => Ok(Arc::new(s)),
            Err(e) => {
                tracing::warn!("{e}; falling back to the process backend");
                Ok(process_spawner(config, control).await)
            }
        },
        Backend::Auto => Ok(process_spawner(config, control).await),
    }
}

/// The process backend, after stopping what a killed predecessor left running.
async fn process_spawner(config: &Config, control: &std::path::Path) -> Arc<dyn Spawner> {
    let spawner = Arc::new(ProcessSpawner::new(control));
    let sweeper = spawner.clone();
    let killed = tokio::task::spawn_blocking(move || sweeper.sweep_strays())
        .await
        .unwrap_or(0);
    if killed > 0 {
        tracing::warn!(app = %config.name, "stopped {killed} worker processes left by a previous baton of this app");
    }
    spawner
}

/// Descriptors kept for everything but client connections: workers' pipes, readiness probes,
/// the control socket and metrics listeners (each bounded by `admin::MAX_CONNECTIONS`), the
/// journal, D-Bus, temporary files.
const RESERVED_FDS: u64 = 256 + 2 * crate::admin::MAX_CONNECTIONS as u64;

/// Raise the soft descriptor limit to the hard one (systemd starts services at 1024 soft), and
/// fit `max_connections` under it: each client connection may hold one upstream connection
/// too, and what is left must keep the control socket answering during an incident.
fn connection_budget(configured: usize, config: &Config) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("cannot read the descriptor limit: {e}");
            return configured;
        }
    };
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("cannot raise the descriptor limit from {soft} to {hard}: {e}");
                soft
            }
        }
    } else {
        soft
    };
    let fits = usize::try_from(limit.saturating_sub(RESERVED_FDS) / 2)
        .unwrap_or(usize::MAX)
        .max(1);
    if configured > fits {
        tracing::warn!(
            app = %config.name,
            "listen.max_connections is {configured}, but the descriptor limit ({limit}) fits {fits} client connections with their worker connections; using {fits} (raise LimitNOFILE= to allow more)"
        );
        fits
    } else {
        configured
    }
}

/// Run the manager until SIGTERM or SIGINT.
/// `config_path`: where the config came from, re-read by every restart (`None` for `baton
/// demo`'s built-in one).
pub async fn run(config: Config, config_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    run_announcing(config, config_path, None).await
}

/// Like [`run`], printing `banner` to stderr once baton serves (its sockets are bound).
pub async fn run_announcing(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    banner: Option<String>,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let app = config.name.clone();
    let data_plane = DataPlane::start()?;
    // Opened on the data plane's runtime, so that its I/O driver, not this one, serves them.
    let listen_config = config.clone();
    let listeners = data_plane
        .spawn(async move { crate::listen::open(&listen_config) })
        .await
        .context("opening the listeners")??;
    let control_path = config.control_socket();
    let control = crate::control::bind(&control_path, config.control.group.as_deref())?;
    let spawner = spawner(&config, &control_path).await?;
    let pool = Pool::new(Limits::from_config(&config.workers));
    let notifier = Arc::new(Notifier::default());
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let (supervisor, handle) = Supervisor::new(
        config.clone(),
        config_path,
        pool.clone(),
        spawner.clone(),
        Arc::new(crate::readiness::NetworkProbe),
        notifier.clone(),
        metrics.clone(),
    );
    serve_metrics(&config, &handle).await?;
    let acme_stop = CancellationToken::new();
    let _acme_stops = acme_stop.clone().drop_guard();
    let certificates = https(&config, &listeners, &supervisor, &acme_stop)?;
    // [static]: the supervisor pins each generation's directory, the proxy serves from them.
    let assets =
        crate::assets::Assets::new(&config.static_files, config.listen.header_timeout.get())
            .map(Arc::new);
    if let Some(a) = &assets {
        supervisor.serve_assets(a.clone());
    }
    // [log] access: its writer thread starts before anything is served.
    let access = crate::access::AccessLog::start(
        &config.log,
        config.name.as_str(),
        metrics.access_log_dropped.clone(),
    )?
    .map(Arc::new);
    let supervisor = tokio::spawn(supervisor.run());
    tokio::spawn(crate::control::serve(
        control,
        handle.clone(),
        access.clone(),
    ));
    keep_watchdog_fed(&notifier);

    let proxy = proxy(&config, &pool, metrics, &listeners, assets, access.as_ref());
    #[cfg(target_env = "gnu")]
    tokio::spawn(trim_after_bursts(proxy.clone()));
    let stop_accepting = CancellationToken::new();
    let connections = proxy.tasks().clone();
    let all = listeners
        .plain
        .into_iter()
        .map(|l| (l, None))
        .chain(listeners.tls.into_iter().map(|l| (l, certificates.clone())));
    for (l, tls) in all {
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(app = %app, backend = spawner.name(), "serving {scheme} on {} with {}..{} workers; control socket {}",
            l.describe(), config.workers.min(), config.workers.max(), control_path.display());
        data_plane.spawn(proxy.clone().serve(l, tls, stop_accepting.clone()));
    }

    if let Some(b) = banner {
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "{b}");
    }
    until_stopped(&config, &handle, access.as_ref()).await?;
    finish_in_flight(&config, &stop_accepting, &connections).await;
    pool.close();
    handle.shutdown().await;
    let _ = supervisor.await;
    leave(&control_path, access).await;
    tracing::info!(app = %app, "stopped");
    Ok(())
}

/// HTTPS: the certificates, read before anything is served (one that cannot be used stops
/// `[metrics] address`: /metrics on a TCP socket of its own.
async fn serve_metrics(config: &Config, handle: &crate::restart::Handle) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics.address {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on [metrics] address {addr}"))?;
        tokio::spawn(crate::control::serve_metrics(l, handle.clone()));
    }
    Ok(())
}

/// No new connection, and the requests in flight finish within drain_timeout (then they are
/// cut).
async fn finish_in_flight(
    config: &Config,
    stop_accepting: &CancellationToken,
    connections: &tokio_util::task::TaskTracker,
) {
    let app = &config.name;
    tracing::info!(app = %app, "stopping: finishing requests in flight");
    stop_accepting.cancel();
    connections.close();
    let drain = config.restart.drain_timeout.get() + Duration::from_secs(1);
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(app = %app, "requests still in flight after drain_timeout; cutting them");
    }
}

/// What baton leaves behind when it exits: not its control socket, and no access log line
/// unwritten.
async fn leave(control_path: &std::path::Path, access: Option<Arc<crate::access::AccessLog>>) {
    // Only our own socket: never whatever might have been put there since.
    if crate::config::not_a_foreign_file(control_path).is_ok() {
        let _ = std::fs::remove_file(control_path);
    }
    if let Some(log) = &access {
        // Every line of the requests served is written before baton exits.
        let log = log.clone();
        let _ = tokio::task::spawn_blocking(move || log.close(Duration::from_secs(10))).await;
    }
}

/// The proxy, with what it serves besides the workers: the redirect to HTTPS, the static
/// files and the access log.
fn proxy(
    config: &Config,
    pool: &Arc<Pool>,
    metrics: Arc<crate::metrics::Metrics>,
    listeners: &crate::listen::Listeners,
    assets: Option<Arc<crate::assets::Assets>>,
    access: Option<&Arc<crate::access::AccessLog>>,
) -> Arc<Proxy> {
    let max_connections = connection_budget(config.listen.max_connections.get(), config);
    let proxy = Proxy::new(pool.clone(), config, max_connections, metrics);
    if config.tls.redirect_http
        && let Some(port) = listeners.tls.iter().find_map(|l| match l {
            crate::listen::Listener::Tcp(t) => t.local_addr().ok().map(|a| a.port()),
            crate::listen::Listener::Unix(_) => None,
        })
    {
        proxy.redirect_http_to(port);
    }
    if let Some(assets) = assets {
        proxy.serve_assets(assets);
    }
    if let Some(log) = access {
        proxy.serve_access(log.clone());
    }
    proxy
}

/// baton, with the reason), and the ACME task that renews them.
fn https(
    config: &Config,
    listeners: &crate::listen::Listeners,
    supervisor: &Supervisor,
    acme_stop: &CancellationToken,
) -> anyhow::Result<Option<Arc<crate::tls::Certificates>>> {
    if !config.tls.enabled() && listeners.tls.is_empty() {
        return Ok(None);
    }
    if listeners.tls.is_empty() {
        tracing::warn!(app = %config.name, "[tls] has certificates but no socket to serve them on: set [tls] address, or pass a socket named \"https\" (FileDescriptorName=https)");
    }
    let certs = Arc::new(
        crate::tls::Certificates::load(&config.tls).with_context(|| {
            format!(
                "cannot serve HTTPS on {}",
                listeners
                    .tls
                    .iter()
                    .map(|l| l.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?,
    );
    if let Some(acme) = &config.tls.acme {
        let acme = crate::acme::Acme::new(acme.clone(), config.name.clone(), certs.clone());
        // A certificate kept from an earlier run serves at once; else (or when it cannot
        // be used) the task obtains one, and HTTPS handshakes wait for it.
        if let Err(e) = acme.restore() {
            tracing::warn!(app = %config.name, "the certificate kept by ACME is not used: {e}; a new one is obtained");
        }
        tokio::spawn(acme.run(acme_stop.clone()));
    }
    let list: Vec<String> = certs.loaded().iter().map(ToString::to_string).collect();
    tracing::info!(app = %config.name, message_id = crate::journal::MSG_CERTIFICATES, "certificates in force: {}",
        if list.is_empty() { "none yet (ACME obtains one)".to_owned() } else { list.join("; ") });
    supervisor.serve_tls(certs.clone());
    Ok(Some(certs))
}

/// systemd's watchdog, when the unit has one, is told at twice the rate it asks for.
fn keep_watchdog_fed(notifier: &Arc<Notifier>) {
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
}

/// Signals until SIGTERM or SIGINT (SIGHUP restarts, SIGUSR1 reopens the access log), then
/// the lame duck: the health check says 503 at once, so load balancers take this host out
/// before a single connection is refused, and serving goes on for `shutdown_delay`.
async fn until_stopped(
    config: &Config,
    handle: &crate::restart::Handle,
    access: Option<&Arc<crate::access::AccessLog>>,
) -> anyhow::Result<()> {
    let app = &config.name;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    loop {
        tokio::select! {
            _ = usr1.recv() => {
                if let Some(log) = access {
                    log.reopen();
                }
            }
            _ = hup.recv() => {
                tracing::info!(app = %app, "SIGHUP: starting a restart");
                handle.send(Command::Restart { mode: None, reply: None }).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }

    handle.begin_stop().await;
    let delay = config.listen.shutdown_delay.get();
    if !delay.is_zero() {
        tracing::info!(app = %app, "stopping in {}: health answers 503 meanwhile", humantime::format_duration(delay));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    Ok(())
}
