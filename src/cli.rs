//! The command line: one binary, `baton`, with its subcommands.

use crate::config::Config;
use crate::control::{RestartEvent, client};
use crate::status::Snapshot;
use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use http::Method;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "baton",
    version,
    about = "Keeps a web application up while it is replaced"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// Which running baton a client command talks to.
#[derive(Args, Debug, Clone)]
#[group(multiple = false)]
pub struct Target {
    /// The app's config; its control socket is found from it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The control socket itself.
    #[arg(long, value_name = "SOCKET")]
    pub control: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the manager in the foreground (systemd's ExecStart).
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show workers, generation, queue, restart progress and resistance mode.
    Status {
        /// Print the status as one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Start a restart (rolling by default when the config enables it).
    Restart {
        #[arg(long, conflicts_with = "blocking")]
        rolling: bool,
        #[arg(long)]
        blocking: bool,
        /// Block until the restart ends; exit non-zero when it did not succeed.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Roll back to the previous generation's release directory (pinned, so `current` may
    /// point elsewhere already) and config, as a rolling restart.
    Rollback {
        /// Block until the rollback ends; exit non-zero when it did not succeed.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Leave resistance mode: the old workers keep serving, spawning and idle cleaning resume.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Reopen the access log file by its path (after logrotate renamed it); SIGUSR1 does
    /// the same.
    ReopenLogs {
        #[command(flatten)]
        target: Target,
    },
    /// Check a config and say exactly what is wrong with it: the file, and what it names on
    /// this machine (the release directory, the command, socket paths).
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Check the file alone, not what it names on this machine (e.g. a config written for
        /// another host).
        #[arg(long)]
        file_only: bool,
    },
    /// Run a bundled demo app with 4 workers on 127.0.0.1:8080 (process backend).
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// How long each demo worker takes to boot.
        #[arg(long, default_value = "1s")]
        boot_time: String,
    },
    /// Print (or write to /etc/systemd/system) a NAME.service + NAME.socket pair.
    Unit {
        name: String,
        /// Write the files to /etc/systemd/system instead of printing them.
        #[arg(long)]
        install: bool,
    },
    /// Write the man page and shell completions (used by packaging/dist.sh).
    #[command(hide = true)]
    GenerateAssets {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// The demo app itself (what `baton demo` runs as its workers).
    #[command(hide = true)]
    DemoApp {
        #[arg(long, env = "PORT")]
        port: u16,
        #[arg(long, default_value = "1s")]
        boot_time: String,
        /// CPU time to burn while booting, after --boot-time (an app whose boot is CPU-heavy:
        /// Python, Ruby, the JVM).
        #[arg(long, default_value = "0s")]
        boot_cpu: String,
    },
}

/// Print to stdout; a reader that went away (`baton status | head`) is not an error.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Like `say!` without the newline.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// Print to stderr, whatever becomes of it.
macro_rules! shout {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread for everything but the proxy: the control plane (supervisor, readiness,
    // control socket) runs here and never waits behind the data plane, which `baton run` gives
    // a runtime of its own (see `manager`). The demo app is a worker: all cores for it.
    let builder = if matches!(cli.command, Cmd::DemoApp { .. }) {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let mut builder = builder;
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            shout!("baton: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            shout!("baton: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn socket_of(target: &Target) -> anyhow::Result<PathBuf> {
    match (&target.control, &target.config) {
        (Some(s), _) => Ok(s.clone()),
        (None, Some(c)) => Ok(Config::load(c)?.control_socket_for_client()),
        (None, None) => bail!("say which app: --config FILE or --control SOCKET"),
    }
}

async fn dispatch(cmd: Cmd) -> anyhow::Result<ExitCode> {
    let cmd_is_reopen = matches!(cmd, Cmd::ReopenLogs { .. });
    match cmd {
        Cmd::Run { config } => {
            crate::journal::init();
            let path = config;
            let config = Config::load(&path)?;
            if let Err((key, message)) = config.check_host() {
                // Not fatal: a release may be deployed after the service starts; spawning
                // retries with backoff and says why in the journal.
                tracing::error!(app = %config.name, "{key}: {message}");
            }
            crate::manager::run(config, Some(path)).await?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConfig { config, file_only } => check_config(config, file_only),
        Cmd::Status { json, target } => {
            let socket = socket_of(&target)?;
            let reply = client::request(&socket, Method::GET, "/status").await?;
            let body = reply.text().await.context("reading status")?;
            let snap: Snapshot = serde_json::from_str(&body)
                .with_context(|| format!("unexpected status answer: {body}"))?;
            if json {
                say!("{}", serde_json::to_string_pretty(&snap)?);
            } else {
                say_raw!("{}", snap.render(std::io::stdout().is_terminal()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restart {
            rolling,
            blocking,
            wait,
            target,
        } => restart(rolling, blocking, wait, target).await,
        Cmd::Rollback { wait, target } => rollback(wait, target).await,
        Cmd::Resume { target } | Cmd::ReopenLogs { target } => {
            resume_or_reopen_logs(cmd_is_reopen, target).await
        }
        Cmd::Demo {
            listen,
            workers,
            boot_time,
        } => demo(listen, workers, boot_time).await,
        Cmd::Unit { name, install } => unit(name, install),
        Cmd::GenerateAssets { out } => {
            generate_assets(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::DemoApp {
            port,
            boot_time,
            boot_cpu,
        } => {
            let boot: crate::config::Duration = boot_time
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--boot-time: {e}"))?;
            let cpu: crate::config::Duration = boot_cpu
                .parse()
                .map_err(|e: String| anyhow::anyhow!("--boot-cpu: {e}"))?;
            crate::demo::run_app(port, boot.get(), cpu.get()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `baton check-config`: the file as `baton run` would read it, and unless --file-only the
/// host and the certificates too.
fn check_config(config: PathBuf, file_only: bool) -> anyhow::Result<ExitCode> {
    let c = if file_only {
        Config::load(&config)?
    } else {
        Config::load_checking_host(&config)?
    };
    // The certificates as baton would read them (not with --file-only: they are
    // the machine's files, or credentials only the service sees).
    if !file_only && c.tls.enabled() {
        let certs = crate::tls::Certificates::load(&c.tls)
            .with_context(|| format!("{}: [tls]", config.display()))?;
        for l in certs.loaded() {
            say!("certificate: {l}");
        }
    }
    let (min, max) = (c.workers.min(), c.workers.max());
    let workers = if min == max {
        format!("{min} workers")
    } else {
        format!("{min} to {max} workers")
    };
    say!(
        "{}: OK (app {:?}, {workers}, {} restarts)",
        config.display(),
        c.name.as_str(),
        if c.restart.rolling {
            "rolling"
        } else {
            "blocking"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `baton restart`: asks the control socket, and with --wait follows the roll to its end.
async fn restart(
    rolling: bool,
    blocking: bool,
    wait: bool,
    target: Target,
) -> anyhow::Result<ExitCode> {
    let socket = socket_of(&target)?;
    let mode = if rolling {
        "rolling"
    } else if blocking {
        "blocking"
    } else {
        "default"
    };
    let path = format!("/restart?mode={mode}&wait={}", u8::from(wait));
    let mut reply = client::request(&socket, Method::POST, &path).await?;
    if !reply.status.is_success() {
        let status = reply.status;
        let body = reply.text().await.unwrap_or_default();
        bail!("restart refused ({status}): {}", body.trim());
    }
    if !wait {
        say!("restart started; `baton status` shows its progress");
        return Ok(ExitCode::SUCCESS);
    }
    follow_restart(&mut reply, "restart").await
}

/// `baton rollback`: as `restart`, back to the release before.
async fn rollback(wait: bool, target: Target) -> anyhow::Result<ExitCode> {
    let socket = socket_of(&target)?;
    let path = format!("/rollback?wait={}", u8::from(wait));
    let mut reply = client::request(&socket, Method::POST, &path).await?;
    if !reply.status.is_success() {
        let status = reply.status;
        let body = reply.text().await.unwrap_or_default();
        bail!("rollback refused ({status}): {}", body.trim());
    }
    if !wait {
        say!("rollback started; `baton status` shows its progress");
        return Ok(ExitCode::SUCCESS);
    }
    follow_restart(&mut reply, "rollback").await
}

/// `baton resume` and `baton reopen-logs`: one POST, its message or error printed.
async fn resume_or_reopen_logs(cmd_is_reopen: bool, target: Target) -> anyhow::Result<ExitCode> {
    let path = if cmd_is_reopen {
        "/reopen-logs"
    } else {
        "/resume"
    };
    let socket = socket_of(&target)?;
    let reply = client::request(&socket, Method::POST, path).await?;
    let ok = reply.status.is_success();
    let body = reply.text().await?;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match (ok, v["message"].as_str(), v["error"].as_str()) {
        (true, Some(m), _) => say!("{m}"),
        (false, _, Some(e)) => eprintln!("baton: {e}"),
        _ => say!("{}", body.trim()),
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `baton demo`: the demo app behind baton, with the commands to try next.
async fn demo(listen: String, workers: usize, boot_time: String) -> anyhow::Result<ExitCode> {
    crate::journal::init();
    let (control, _private_dir) = crate::demo::demo_control_socket()
        .context("cannot make a private directory for the demo's control socket")?;
    let text = crate::demo::demo_config(&listen, workers, &boot_time, &control);
    let config = Config::parse(&text, std::path::Path::new("<demo>"))?;
    // The commands to try, as they can be pasted: baton by its full path (after
    // `cargo run` it is not on the PATH).
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "baton".into());
    let banner = format!(
        "baton demo: {workers} workers behind http://{listen}/\n  try:  curl http://{listen}/\n        {exe} status --control {c}\n        {exe} restart --wait --control {c}\n  Ctrl-C stops it.",
        c = control.display()
    );
    crate::manager::run_announcing(config, None, Some(banner)).await?;
    Ok(ExitCode::SUCCESS)
}

/// `baton unit`: the unit files for an app, printed or installed.
fn unit(name: String, install: bool) -> anyhow::Result<ExitCode> {
    crate::config::AppName::try_from(name.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if install {
        let dir = std::path::Path::new("/etc/systemd/system");
        let written = crate::unit_files::install(&name, dir)
            .with_context(|| format!("writing units to {}", dir.display()))?;
        for p in written {
            say!("wrote {}", p.display());
        }
        say!(
            "next: put the config in /etc/baton/{name}.toml, set ListenStream= in {name}.socket, then\n  systemctl daemon-reload && systemctl enable --now {name}.socket"
        );
    } else {
        for (file, text) in crate::unit_files::render(&name) {
            say!("# {file}\n{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Print a waiting restart's progress; the exit code tells its outcome.
async fn follow_restart(reply: &mut client::Reply, what: &str) -> anyhow::Result<ExitCode> {
    let tty = std::io::stderr().is_terminal();
    let mut buf = Vec::new();
    let mut shown = false;
    while let Some(line) = reply.next_line(&mut buf).await {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<RestartEvent>(&line) {
            Ok(RestartEvent::Progress(p)) => {
                let what = match p.rollback_to {
                    Some(to) => format!(
                        "rollback to the release of generation {to}, as generation {}",
                        p.generation
                    ),
                    None => format!("{} restart to generation {}", p.mode, p.generation),
                };
                let text = format!(
                    "{what}: worker {} of {} ({})",
                    (p.done + 1).min(p.total),
                    p.total,
                    p.waiting_on
                );
                let mut err = std::io::stderr();
                if tty {
                    let _ = write!(err, "\r\x1b[2K{text}");
                    shown = true;
                } else {
                    let _ = writeln!(err, "{text}");
                }
            }
            Ok(RestartEvent::Outcome(o)) => {
                if shown {
                    shout!();
                }
                if o.ok {
                    say!("{}", o.message);
                    return Ok(ExitCode::SUCCESS);
                }
                shout!("baton: {what} failed: {}", o.message);
                for l in &o.output {
                    shout!("  | {l}");
                }
                return Ok(ExitCode::FAILURE);
            }
            Err(_) => shout!("{line}"),
        }
    }
    shout!("baton: the manager closed the connection before the {what} ended");
    Ok(ExitCode::FAILURE)
}

/// The man pages baton(1), one baton-COMMAND(1) per subcommand and completions for bash, zsh
/// and fish, from the clap definitions; baton.toml(5) from docs/config.md.
fn generate_assets(out: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    let cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(out.join("baton.1"), page)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("baton-{}", sub.get_name());
        let mut page = Vec::new();
        clap_mangen::Man::new(
            sub.clone()
                .name(name.clone())
                .bin_name(format!("baton {}", sub.get_name())),
        )
        .render(&mut page)?;
        std::fs::write(out.join(format!("{name}.1")), page)?;
    }
    std::fs::write(
        out.join("baton.toml.5"),
        crate::manpage::config_page(
            crate::manpage::CONFIG_REFERENCE,
            "baton.toml",
            env!("CARGO_PKG_VERSION"),
        ),
    )?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "baton.bash"),
        (clap_complete::Shell::Zsh, "_baton"),
        (clap_complete::Shell::Fish, "baton.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "baton", &mut buf);
        std::fs::write(completions.join(file), buf)?;
    }
    say!(
        "wrote {0}/baton.1, {0}/baton-*.1, {0}/baton.toml.5 and {1}/",
        out.display(),
        completions.display()
    );
    Ok(())
}
