//! The app's configuration: the TOML of docs/config.md, parsed with serde, checked, and given defaults.
//!
//! Every error names the file, line, column and key, because an operator reads it in
//! `journalctl` or in the output of `systemctl reload` and must find the line at once.

mod values;

pub use values::{ByteSize, Duration};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {}{message}", key_prefix(.key))]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Dotted key, e.g. `workers.count`; empty for a syntax error outside any key.
        key: String,
        message: String,
    },
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() || key == "." {
        String::new()
    } else {
        format!("key `{key}`: ")
    }
}

/// The name of the app: part of unit names, journal fields and socket paths, so it is kept to
/// characters that need no escaping anywhere.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AppName(String);

impl TryFrom<String> for AppName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !s.starts_with(['-', '.']);
        if ok {
            Ok(AppName(s))
        } else {
            Err(format!(
                "invalid app name {s:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '-' or '.'"
            ))
        }
    }
}

impl AppName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where baton listens when systemd passes no socket.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ListenAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl TryFrom<String> for ListenAddress {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.starts_with('/') {
                return Ok(ListenAddress::Unix(PathBuf::from(path)));
            }
            return Err(format!(
                "invalid address {s:?}: a Unix socket path must be absolute, e.g. \"unix:/run/myapp.sock\""
            ));
        }
        s.parse::<SocketAddr>().map(ListenAddress::Tcp).map_err(|_| {
            format!("invalid address {s:?}: write \"127.0.0.1:8080\", \"[::1]:8080\" or \"unix:/run/myapp.sock\"")
        })
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(a) => write!(f, "{a}"),
            ListenAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The app's argv; `{port}` in any argument is replaced by the worker's port.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct AppCommand(Vec<String>);

impl TryFrom<Vec<String>> for AppCommand {
    type Error = String;
    fn try_from(v: Vec<String>) -> Result<Self, String> {
        match v.first() {
            None => Err(
                "the command is empty: give at least the program, e.g. [\"node\", \"main.js\"]"
                    .into(),
            ),
            Some(p) if p.is_empty() => {
                Err("the program (first element of command) is empty".into())
            }
            Some(_) => Ok(AppCommand(v)),
        }
    }
}

impl AppCommand {
    pub fn new(argv: Vec<String>) -> Result<Self, String> {
        Self::try_from(argv)
    }
    /// The argv with `{port}` substituted.
    pub fn argv(&self) -> &[String] {
        &self.0
    }

    pub fn argv_for_port(&self, port: u16) -> Vec<String> {
        let p = port.to_string();
        self.0.iter().map(|a| a.replace("{port}", &p)).collect()
    }

    /// The first argument with `$PORT` or `${PORT}` (a shell's habit) that no shell will
    /// expand, and that spelling as written. A shell's `-c` script expands it (baton always
    /// sets `PORT`), so what follows a shell and its `-c` option is left alone.
    pub fn unexpanded_port(&self) -> Option<(&str, &str)> {
        let argv = &self.0;
        let expanded_from = (0..argv.len())
            .filter(|&i| is_shell(&argv[i]))
            .find_map(|shell| script_after(&argv[shell + 1..]).map(|c| shell + 1 + c + 1))
            .unwrap_or(argv.len());
        argv[..expanded_from]
            .iter()
            .find_map(|a| port_variable(a).map(|v| (a.as_str(), v)))
    }
}

/// Shells that take a script with `-c`, by the program's file name.
fn is_shell(program: &str) -> bool {
    let name = program.rsplit('/').next().unwrap_or(program);
    matches!(
        name,
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" | "fish"
    )
}

/// Where among a shell's arguments its `-c` option is (alone or in a cluster such as `-ec`),
/// looking only at its options: `sh script.sh -c` hands `-c` to the script.
fn script_after(args: &[String]) -> Option<usize> {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        let flags = a.strip_prefix(['-', '+'])?;
        if a == "--" || a == "-" {
            return None;
        }
        let cluster = !a.starts_with("--") && flags.chars().all(|c| c.is_ascii_alphabetic());
        if cluster && a.starts_with('-') && flags.contains('c') {
            return Some(i);
        }
        // `-o pipefail`, `-O extglob`: the option's value is not a script.
        if cluster && flags.ends_with(['o', 'O']) {
            i += 1;
        }
        i += 1;
    }
    None
}

/// The first `$PORT` or `${PORT...}` in `arg`, as written; not `$PORTS` or `${PORTS}`.
fn port_variable(arg: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(i) = arg[from..].find('$') {
        let at = from + i;
        let rest = &arg[at + 1..];
        if let Some(after) = rest.strip_prefix("PORT") {
            if !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                return Some(&arg[at..at + 5]);
            }
        } else if let Some(after) = rest.strip_prefix("{PORT")
            && after.starts_with(['}', ':', '-', '=', '+', '?', '#', '%', '/'])
        {
            let end = after.find('}').map_or(arg.len(), |j| at + 6 + j + 1);
            return Some(&arg[at..end]);
        }
        from = at + 1;
    }
    None
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    pub address: Option<ListenAddress>,
    /// Client connections open at once; beyond, new ones wait in the kernel's backlog.
    pub max_connections: NonZeroUsize,
    /// How long a client may take to send its request headers (slow clients are cut off).
    pub header_timeout: Duration,
    /// Largest request head (request line + headers) accepted; beyond: 431 (or 414 for the URI).
    pub max_header_size: ByteSize,
    /// Peers (addresses or networks, e.g. a load balancer) whose `X-Forwarded-*` headers are
    /// believed and extended; everyone else's are replaced by what baton sees.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Receive a request body whole before a worker is leased.
    pub request_buffering: bool,
    /// Read a worker's response as fast as it comes, whatever the client's pace.
    pub response_buffering: bool,
    /// Largest request body (413 beyond).
    pub max_body_size: ByteSize,
    /// Longest wait between two reads of a request body (408).
    pub client_body_timeout: Duration,
    /// A client that takes no byte of its response for this long is closed.
    pub send_timeout: Duration,
    /// An upgraded connection (WebSocket) with no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Bytes of one body kept in memory before the rest goes to a temporary file.
    pub buffer_memory: ByteSize,
    /// Most of one response kept for a client that has not read it (then the worker waits).
    pub max_response_buffer: ByteSize,
    /// Where buffer files go (unlinked at once); default: the system's temporary directory.
    pub buffer_directory: Option<PathBuf>,
    /// On SIGTERM: health answers 503 at once, serving goes on this long (lame duck), then
    /// baton stops as usual.
    pub shutdown_delay: Duration,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: None,
            max_connections: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            header_timeout: Duration::from_secs(30),
            max_header_size: ByteSize(64 << 10),
            trusted_proxies: Vec::new(),
            request_buffering: true,
            response_buffering: true,
            max_body_size: ByteSize(1 << 30),
            client_body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(3600),
            buffer_memory: ByteSize(64 << 10),
            max_response_buffer: ByteSize(1 << 30),
            buffer_directory: None,
            shutdown_delay: Duration::from_secs(0),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub command: AppCommand,
    pub directory: Option<PathBuf>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    pub user: Option<String>,
    pub group: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    pub count: Option<NonZeroUsize>,
    pub min: Option<usize>,
    pub max: Option<NonZeroUsize>,
    pub concurrency: usize,
    pub max_queue: usize,
    pub idle_timeout: Duration,
    pub max_requests: u64,
    pub memory_limit: ByteSize,
    /// A worker that has not begun its answer this long after it got the whole request: 504
    /// (and, for a streamed answer, the longest pause between two of its reads). 0: no limit.
    pub request_timeout: Duration,
    /// A request that waited this long for a free worker: 503 with `Retry-After`. 0: no limit.
    pub max_queue_time: Duration,
    /// A worker with a request in flight this long is replaced (Passenger's key); default:
    /// `request_timeout`. 0: never.
    pub max_request_time: Option<Duration>,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            count: None,
            min: None,
            max: None,
            concurrency: 1,
            max_queue: 100,
            idle_timeout: Duration::from_secs(300),
            max_requests: 0,
            memory_limit: ByteSize(0),
            request_timeout: Duration::from_secs(60),
            max_queue_time: Duration::from_secs(30),
            max_request_time: None,
        }
    }
}

/// The most workers one app may have.
pub const MAX_WORKERS: u64 = 1024;
/// The most client connections `[listen] max_connections` may allow.
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// The largest `[listen] max_header_size`.
pub const MAX_HEADER_SIZE: u64 = 1 << 20;
/// The largest body size or buffer a config may name.
pub const MAX_BUFFER: u64 = 1 << 40;

/// A path where baton would put a socket must be free or hold a socket: baton never deletes
/// anything else (a typo in a config must not cost the operator a file).
pub fn not_a_foreign_file(path: &Path) -> Result<(), ForeignFile> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => Err(ForeignFile(path.to_owned())),
        _ => Ok(()),
    }
}

/// A path where baton would put a socket holds something else.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} exists and is not a socket; baton replaces only a stale socket of its own, so move it away or choose another path",
    .0.display()
)]
pub struct ForeignFile(pub PathBuf);

/// A program that cannot be run, as [`find_program`] finds it.
#[derive(Debug, thiserror::Error)]
pub enum NoProgram {
    #[error("{} is not an executable file", .0.display())]
    NotExecutable(PathBuf),
    #[error("{program:?} was not found on the PATH ({path})")]
    NotOnPath { program: String, path: String },
}

/// The file `program` names, found as execvp finds it: a name with a `/` relative to
/// `directory` (else the current one), any other on `path_var` (the app's PATH, else baton's),
/// and only a regular file with an exec bit, so a non-executable file of that name earlier on
/// the PATH does not hide the program. The config check and the systemd backend (whose
/// `ExecStart` wants an absolute path) both ask here, so a command that passed the check is the
/// one a unit runs. Empty PATH entries are skipped: a unit has no current directory to search.
pub fn find_program(
    program: &str,
    directory: Option<&Path>,
    path_var: Option<&str>,
) -> Result<PathBuf, NoProgram> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = match directory {
            _ if program.starts_with('/') => PathBuf::from(program),
            Some(d) => d.join(program),
            None => std::env::current_dir().map_or_else(|_| program.into(), |d| d.join(program)),
        };
        return if executable(&path) {
            Ok(path)
        } else {
            Err(NoProgram::NotExecutable(path))
        };
    }
    let path_var = path_var
        .map(str::to_owned)
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| NoProgram::NotOnPath {
            program: program.to_owned(),
            path: path_var.clone(),
        })
}

/// Workers kept when neither `count` nor `min`/`max` is given.
pub const DEFAULT_WORKER_COUNT: usize = 2;

impl WorkersConfig {
    /// Workers always kept running (idle cleaning stops here).
    pub fn min(&self) -> usize {
        match (self.count, self.min, self.max) {
            (Some(c), _, _) => c.get(),
            (None, Some(min), _) => min,
            (None, None, Some(_)) => 1,
            (None, None, None) => DEFAULT_WORKER_COUNT,
        }
    }

    /// Workers at most, spawning on demand when requests queue.
    pub fn max(&self) -> usize {
        match (self.count, self.min, self.max) {
            (Some(c), _, _) => c.get(),
            (None, _, Some(max)) => max.get(),
            (None, Some(min), None) => min.max(DEFAULT_WORKER_COUNT),
            (None, None, None) => DEFAULT_WORKER_COUNT,
        }
    }

    /// How long a request may be in flight on a worker before it is replaced (zero: never).
    pub fn max_request_time(&self) -> std::time::Duration {
        self.max_request_time.unwrap_or(self.request_timeout).get()
    }

    /// The request count after which a worker is recycled: `max_requests` plus up to 10 %,
    /// different per worker, so that workers started together do not all recycle together.
    pub fn request_limit(&self, worker: u64) -> Option<u64> {
        if self.max_requests == 0 {
            return None;
        }
        let spread = self.max_requests / 10 + 1;
        // A fixed mix of the id (splitmix64): spread evenly, no random source needed.
        let mut z = worker.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Some(self.max_requests + z % spread)
    }
}

/// How readiness is probed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// `GET http_path` must answer below 500: the app itself answers.
    #[default]
    Http,
    /// A TCP connect is enough. Fooled by app servers whose master binds the port before it
    /// loads the app (gunicorn, Puma, Unicorn): an explicit choice.
    Tcp,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadinessConfig {
    pub probe: Probe,
    pub http_path: String,
    pub timeout: Duration,
    /// A new worker that exits within this time of becoming ready is a deployment error (during
    /// a roll) or a crash (outside one); a roll drains an old worker only after its replacement
    /// has lived this long, and succeeds only once the last new worker has.
    pub settle: Duration,
}

impl ReadinessConfig {
    /// The path to GET, or `None` for TCP-only readiness.
    pub fn http_path(&self) -> Option<&str> {
        match self.probe {
            Probe::Http => Some(&self.http_path),
            Probe::Tcp => None,
        }
    }
}

impl Default for ReadinessConfig {
    fn default() -> Self {
        ReadinessConfig {
            probe: Probe::Http,
            http_path: "/".into(),
            timeout: Duration::from_secs(60),
            settle: Duration::from_secs(2),
        }
    }
}

/// How much CPU a booting worker may take from the serving ones, until it is ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootCpuWeight {
    /// Nice 10 (process backend) or `CPUWeight=20` (systemd backend, default 100).
    #[default]
    Low,
    /// Nice 19 or `CPUWeight=1`: boots only on spare CPU.
    Idle,
    /// No change.
    Normal,
}

impl BootCpuWeight {
    /// The nice value a booting worker starts with.
    pub fn nice(self) -> i32 {
        match self {
            BootCpuWeight::Low => 10,
            BootCpuWeight::Idle => 19,
            BootCpuWeight::Normal => 0,
        }
    }

    /// The `CPUWeight=` a booting worker's unit starts with (`None`: systemd's default).
    pub fn cpu_weight(self) -> Option<u64> {
        match self {
            BootCpuWeight::Low => Some(20),
            BootCpuWeight::Idle => Some(1),
            BootCpuWeight::Normal => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    pub rolling: bool,
    /// A booting worker runs at low CPU priority until it is ready.
    pub boot_cpu_weight: BootCpuWeight,
    pub max_surge: NonZeroUsize,
    pub resist_deployment_errors: bool,
    pub drain_timeout: Duration,
    pub stop_timeout: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            rolling: true,
            boot_cpu_weight: BootCpuWeight::Low,
            max_surge: NonZeroUsize::MIN,
            resist_deployment_errors: true,
            drain_timeout: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// The canary phase of every rolling restart: the first new workers serve beside the old ones
/// while the canary judge ([`crate::canary`]) compares the two generations' errors.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    /// New workers judged before any old one is drained; 0: no canary phase.
    pub workers: usize,
    /// How long they are judged (a release that is clearly worse is stopped sooner).
    pub duration: Duration,
    /// Requests the canary must serve for a "fine"; with fewer the verdict is inconclusive.
    pub min_requests: u64,
    pub on_inconclusive: OnInconclusive,
    /// How long a generation is still judged after its roll ended; worse, or a death of one
    /// of its workers, rolls it back by itself. `0s`: no watch.
    pub watch: Duration,
    /// How much slower (median or 90th percentile) the new generation may be than the old
    /// one, beyond chance, before it is worse.
    pub latency_tolerance: f64,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            workers: 1,
            duration: Duration::from_secs(30),
            min_requests: 200,
            on_inconclusive: OnInconclusive::Proceed,
            watch: Duration::from_secs(300),
            latency_tolerance: crate::canary::LATENCY_TOLERANCE,
        }
    }
}

/// What a canary whose traffic was too thin to judge leads to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInconclusive {
    /// The roll goes on (an app with little traffic still deploys).
    #[default]
    Proceed,
    /// A deployment error, as if the canary were worse.
    Resist,
}

/// Which backend runs the workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Auto,
    Systemd,
    Process,
}

/// `ProtectSystem=` of the worker units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtectSystem {
    No,
    Yes,
    Full,
    Strict,
}

impl ProtectSystem {
    pub fn as_str(self) -> &'static str {
        match self {
            ProtectSystem::No => "no",
            ProtectSystem::Yes => "yes",
            ProtectSystem::Full => "full",
            ProtectSystem::Strict => "strict",
        }
    }
}

/// A CPU quota like `"150%"` (1.5 CPUs), as systemd's `CPUQuota=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct CpuQuota {
    pub percent: u32,
}

impl TryFrom<String> for CpuQuota {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<u32>().ok())
            .filter(|n| *n > 0)
            .map(|percent| CpuQuota { percent })
            .ok_or_else(|| format!("invalid CPU quota {s:?}: write a percentage like \"150%\""))
    }
}

#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnerConfig {
    #[serde(default)]
    pub backend: Backend,
    /// systemd backend: the worker unit's `MemoryMax=`.
    pub memory_max: Option<ByteSize>,
    /// systemd backend: the worker unit's `CPUQuota=`.
    pub cpu_quota: Option<CpuQuota>,
    /// systemd backend: the worker unit's `NoNewPrivileges=`.
    pub no_new_privileges: Option<bool>,
    /// systemd backend: the worker unit's `ProtectSystem=`.
    pub protect_system: Option<ProtectSystem>,
}

#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    pub socket: Option<PathBuf>,
    pub group: Option<String>,
}

/// `[tls]`: HTTPS, and HTTP/2 by ALPN, on the socket systemd names `https` or on `address`.
#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Where HTTPS is served when systemd passes no socket (as `[listen] address`).
    pub address: Option<SocketAddr>,
    /// The certificate chains and their keys; the first one valid for the name a client asks
    /// for (SNI) is served, else the first.
    pub certificates: Vec<CertificateConfig>,
    /// Plain HTTP answers `301` to the same host and path on HTTPS.
    pub redirect_http: bool,
    /// `Strict-Transport-Security: max-age=...` on every HTTPS answer; 0: none.
    pub hsts: Duration,
    /// Certificates obtained and renewed by baton itself from an ACME CA (Let's Encrypt).
    pub acme: Option<AcmeConfig>,
}

impl TlsConfig {
    /// HTTPS is configured.
    pub fn enabled(&self) -> bool {
        !self.certificates.is_empty() || self.acme.is_some()
    }
}

/// A name a CA issues for: labels of letters, digits and inner hyphens, at most 63 bytes
/// each, 253 in all, at least two labels.
fn is_dns_name(d: &str) -> bool {
    d.len() <= 253
        && d.split('.').count() >= 2
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `[tls] acme`: one certificate for `domains`, obtained by the TLS-ALPN-01 challenge on the
/// HTTPS socket (port 443 as the CA sees it), kept in `storage`, renewed before it expires.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The names the certificate is for (its subjectAltName); the first is its name in logs.
    pub domains: Vec<String>,
    /// How the CA reaches the operator, e.g. `mailto:ops@shop.example` (one, or a list).
    #[serde(default, deserialize_with = "one_or_more")]
    pub contact: Vec<String>,
    /// The CA's ACME directory URL.
    #[serde(default = "AcmeConfig::lets_encrypt")]
    pub directory: String,
    /// A PEM root certificate that the ACME server's own HTTPS certificate is checked against
    /// instead of the system's roots (a private CA, or a test server such as pebble).
    pub directory_ca: Option<PathBuf>,
    /// Where the account and the certificate are kept (mode 0700): default
    /// `$STATE_DIRECTORY/acme` (`StateDirectory=` of the unit), else `/var/lib/baton/NAME/acme`.
    pub storage: Option<PathBuf>,
    /// Renew when less than this is left; default: a third of the certificate's lifetime
    /// (30 days of Let's Encrypt's 90).
    pub renew_before: Option<Duration>,
}

/// A string, or a list of them.
fn one_or_more<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(String),
        More(Vec<String>),
    }
    Ok(match OneOrMore::deserialize(d)? {
        OneOrMore::One(s) => vec![s],
        OneOrMore::More(v) => v,
    })
}

impl AcmeConfig {
    fn lets_encrypt() -> String {
        "https://acme-v02.api.letsencrypt.org/directory".into()
    }
}

/// One certificate chain (PEM, leaf first: certbot's `fullchain.pem`) and its private key
/// (PEM); a path starting `%d/` is a systemd credential (`LoadCredential=`), in
/// `$CREDENTIALS_DIRECTORY`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[log]`: the access log.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"off"`, `"journal"` or a file's absolute path.
    pub access: AccessTarget,
    pub format: AccessFormat,
    /// Entries waiting for the writer; beyond, entries are dropped (and counted).
    pub queue: usize,
    /// Add `X-Request-Id` to requests that have none (default: when the access log is on).
    pub request_id: Option<bool>,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            access: AccessTarget::Off,
            format: AccessFormat::Combined,
            queue: 16384,
            request_id: None,
        }
    }
}

impl LogConfig {
    /// Requests get an `X-Request-Id` when they have none.
    pub fn request_ids(&self) -> bool {
        self.request_id
            .unwrap_or(!matches!(self.access, AccessTarget::Off))
    }
}

/// Where access log lines go.
#[derive(Clone, Debug, PartialEq)]
pub enum AccessTarget {
    Off,
    Journal,
    File(PathBuf),
}

impl<'de> Deserialize<'de> for AccessTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "off" => Ok(AccessTarget::Off),
            "journal" => Ok(AccessTarget::Journal),
            p if p.starts_with('/') => Ok(AccessTarget::File(PathBuf::from(p))),
            other => Err(serde::de::Error::custom(format!(
                "{other:?}: write \"off\", \"journal\" or an absolute file path"
            ))),
        }
    }
}

/// How an access log line is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    /// nginx's `combined`, then request time, upstream time, worker, generation, request id.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// `[static]`: files of each generation's pinned release, served by baton without a worker.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StaticConfig {
    /// The directory of the files, relative to the release (`[app] directory`), e.g.
    /// `"public"`; none: no static files.
    pub directory: Option<PathBuf>,
    /// URL path prefixes served from `directory` (the URL path is the file's path beneath
    /// it); a missing file there is a 404 from baton.
    pub prefixes: Vec<String>,
    /// How long the files of a generation stay served after its last worker stopped.
    pub keep_old: Duration,
    /// File names that carry their content's hash (fingerprinted), as a regular expression:
    /// `Cache-Control: public, max-age=31536000, immutable`; any other file is revalidated.
    pub immutable: String,
    /// Files open at once for static answers; more wait (bounded by `header_timeout`).
    pub max_open_files: usize,
}

impl Default for StaticConfig {
    fn default() -> StaticConfig {
        StaticConfig {
            directory: None,
            prefixes: Vec::new(),
            keep_old: Duration(std::time::Duration::from_secs(600)),
            immutable: StaticConfig::FINGERPRINT.into(),
            max_open_files: 1024,
        }
    }
}

impl StaticConfig {
    /// A hash of 8 or more hex digits after a `-` or `.`, before the extension:
    /// `app-3f2a9c1d.css` (Sprockets, Propshaft, webpack), `main.8f3a2b1c.js`.
    pub const FINGERPRINT: &str = r"[-.][0-9a-f]{8,}\.[A-Za-z0-9]+$";
}

#[derive(Clone, Debug, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub address: Option<SocketAddr>,
}

/// One app's whole configuration.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub name: AppName,
    #[serde(default)]
    pub listen: ListenConfig,
    pub app: AppConfig,
    #[serde(default)]
    pub workers: WorkersConfig,
    #[serde(default)]
    pub readiness: ReadinessConfig,
    #[serde(default)]
    pub restart: RestartConfig,
    #[serde(default)]
    pub canary: CanaryConfig,
    #[serde(default)]
    pub spawner: SpawnerConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default, rename = "static")]
    pub static_files: StaticConfig,
    #[serde(default)]
    pub log: LogConfig,
}

impl Config {
    /// Read and check the config at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Like [`Config::load`], then the checks that look at the machine ([`Config::check_host`]),
    /// with the same file:line:key errors: what `check-config` runs.
    pub fn load_checking_host(path: &Path) -> Result<Config, ConfigError> {
        let config = Self::load(path)?;
        if let Err((key, message)) = config.check_host() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let (line, column) = line_col(&text, find_key(&text, &key).map_or(0, |s| s.start));
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                key,
                message,
            });
        }
        Ok(config)
    }

    /// Parse and check config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |span: Option<std::ops::Range<usize>>, key: String, message: String| {
            let (line, column) = line_col(text, span.map_or(0, |s| s.start));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                column,
                key,
                message,
            }
        };
        let de = toml::de::Deserializer::parse(text)
            .map_err(|e| invalid(e.span(), String::new(), e.message().to_owned()))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            invalid(inner.span(), key, inner.message().to_owned())
        })?;
        config
            .check()
            .map_err(|(key, message)| invalid(find_key(text, &key), key, message))?;
        Ok(config)
    }

    /// Rules that span several keys; returns the key to blame and the message.
    fn check(&self) -> Result<(), (String, String)> {
        let w = &self.workers;
        if w.count.is_some() && (w.min.is_some() || w.max.is_some()) {
            return Err((
                "workers.count".into(),
                "set either `count` or `min`/`max`, not both".into(),
            ));
        }
        if let (Some(min), Some(max)) = (w.min, w.max)
            && min > max.get()
        {
            return Err((
                "workers.min".into(),
                format!("min ({min}) is greater than max ({max})"),
            ));
        }
        // With no worker kept running, only a queued request starts one: a queue of 0 means
        // every request is refused and no worker ever starts.
        if w.min() == 0 && w.max_queue == 0 {
            return Err((
                "workers.max_queue".into(),
                "with workers.min = 0 a request must wait in the queue while the first worker starts: set max_queue above 0 or min above 0".into(),
            ));
        }
        if (self.tls.redirect_http || !self.tls.hsts.get().is_zero()) && !self.tls.enabled() {
            return Err((
                if self.tls.redirect_http {
                    "tls.redirect_http"
                } else {
                    "tls.hsts"
                }
                .into(),
                "there is no HTTPS without tls.certificates or tls.acme".into(),
            ));
        }
        if self.tls.address.is_some() && !self.tls.enabled() {
            return Err((
                "tls.address".into(),
                "HTTPS needs at least one certificate: set tls.certificates = [{ cert = \"...\", key = \"...\" }] or tls.acme = { domains = [\"...\"] }".into(),
            ));
        }
        self.check_static()?;
        let st = &self.static_files;
        if self.log.queue == 0 || self.log.queue > 1 << 20 {
            return Err((
                "log.queue".into(),
                format!("{} is out of range (1 to 1048576)", self.log.queue),
            ));
        }
        if st.max_open_files == 0 || st.max_open_files > 1 << 20 {
            return Err((
                "static.max_open_files".into(),
                format!("{} is out of range (1 to 1048576)", st.max_open_files),
            ));
        }
        self.check_acme()?;
        let p = &self.readiness.http_path;
        if !p.starts_with('/') {
            return Err((
                "readiness.http_path".into(),
                format!("{p:?} must start with '/'"),
            ));
        }
        if self.listen.max_header_size.0 < 8192 {
            return Err((
                "listen.max_header_size".into(),
                "must be at least 8KiB".into(),
            ));
        }
        if self.readiness.timeout.get().is_zero() {
            return Err(("readiness.timeout".into(), "must be longer than 0s".into()));
        }
        self.check_limits()?;
        self.check_app()
    }

    /// Every number has a ceiling, so that no configured value can exhaust memory or overflow.
    fn check_limits(&self) -> Result<(), (String, String)> {
        fn at_most(key: &str, value: u64, max: u64) -> Result<(), (String, String)> {
            if value > max {
                return Err((key.into(), format!("{value} is above the maximum, {max}")));
            }
            Ok(())
        }
        let w = &self.workers;
        at_most(
            "workers.count",
            w.count.map_or(0, |c| c.get() as u64),
            MAX_WORKERS,
        )?;
        at_most("workers.min", w.min.unwrap_or(0) as u64, MAX_WORKERS)?;
        at_most(
            "workers.max",
            w.max.map_or(0, |c| c.get() as u64),
            MAX_WORKERS,
        )?;
        at_most("workers.concurrency", w.concurrency as u64, 100_000)?;
        at_most("workers.max_queue", w.max_queue as u64, 1_000_000)?;
        at_most("canary.workers", self.canary.workers as u64, MAX_WORKERS)?;
        let tolerance = self.canary.latency_tolerance;
        if !(1.0..=1000.0).contains(&tolerance) {
            return Err((
                "canary.latency_tolerance".into(),
                format!("{tolerance} is not a slowdown between 1.0 (none tolerated) and 1000"),
            ));
        }
        at_most(
            "canary.min_requests",
            self.canary.min_requests,
            1_000_000_000,
        )?;
        at_most(
            "restart.max_surge",
            self.restart.max_surge.get() as u64,
            MAX_WORKERS,
        )?;
        at_most(
            "listen.max_connections",
            self.listen.max_connections.get() as u64,
            MAX_CONNECTIONS as u64,
        )?;
        self.check_listen_limits()
    }

    /// The `[listen]` sizes and timeouts: each bounded, none zero.
    fn check_listen_limits(&self) -> Result<(), (String, String)> {
        for (key, value) in [
            ("listen.buffer_memory", self.listen.buffer_memory.0),
            ("listen.max_body_size", self.listen.max_body_size.0),
            (
                "listen.max_response_buffer",
                self.listen.max_response_buffer.0,
            ),
        ] {
            if value > MAX_BUFFER {
                return Err((
                    key.into(),
                    format!("{value} bytes is above the maximum, 1TiB"),
                ));
            }
        }
        if self.listen.buffer_memory.0 > 64 << 20 {
            return Err((
                "listen.buffer_memory".into(),
                "is kept per request and per response: at most 64MiB".into(),
            ));
        }
        for (key, d) in [
            (
                "listen.client_body_timeout",
                self.listen.client_body_timeout,
            ),
            ("listen.send_timeout", self.listen.send_timeout),
            (
                "listen.tunnel_idle_timeout",
                self.listen.tunnel_idle_timeout,
            ),
            ("listen.header_timeout", self.listen.header_timeout),
        ] {
            if d.get().is_zero() {
                return Err((key.into(), "must be longer than 0s".into()));
            }
        }
        if self.listen.max_header_size.0 > MAX_HEADER_SIZE {
            return Err((
                "listen.max_header_size".into(),
                format!(
                    "{} bytes is above the maximum, 1MiB",
                    self.listen.max_header_size.0
                ),
            ));
        }
        Ok(())
    }

    /// `[static]`: a directory within the release, and the URL prefixes served from it.
    fn check_static(&self) -> Result<(), (String, String)> {
        let st = &self.static_files;
        if let Some(dir) = &st.directory {
            if dir.is_absolute()
                || dir
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err((
                    "static.directory".into(),
                    format!(
                        "{dir:?} must be a path within the release, such as \"public\" (each generation serves its own release's files)"
                    ),
                ));
            }
            if self.app.directory.is_none() {
                return Err((
                    "static.directory".into(),
                    "static files come from the release: set [app] directory".into(),
                ));
            }
            if st.prefixes.is_empty() {
                return Err((
                    "static.prefixes".into(),
                    "name the URL prefixes served from static.directory, e.g. [\"/assets\"]".into(),
                ));
            }
        }
        if let Some(p) = st.prefixes.iter().find(|p| {
            !p.starts_with('/')
                || p.contains(['?', '#', '%', '\\'])
                || p.split('/').any(|s| s == ".." || s == ".")
        }) {
            return Err((
                "static.prefixes".into(),
                format!("{p:?} is not a URL path prefix such as \"/assets\""),
            ));
        }
        if let Err(e) = regex_lite::Regex::new(&st.immutable) {
            return Err((
                "static.immutable".into(),
                format!("not a regular expression: {e}"),
            ));
        }
        Ok(())
    }

    /// `tls.acme`: names, a directory and contacts a CA can take.
    fn check_acme(&self) -> Result<(), (String, String)> {
        if let Some(acme) = &self.tls.acme {
            if acme.domains.is_empty() {
                return Err((
                    "tls.acme.domains".into(),
                    "name at least one domain the certificate is for".into(),
                ));
            }
            if let Some(bad) = acme
                .domains
                .iter()
                .find(|d| !is_dns_name(d) || d.parse::<std::net::Ipv4Addr>().is_ok())
            {
                return Err((
                    "tls.acme.domains".into(),
                    format!(
                        "{bad:?} is not a DNS name a certificate can be obtained for by TLS-ALPN-01 (no wildcards, no ports)"
                    ),
                ));
            }
            if !acme.directory.starts_with("https://") {
                return Err((
                    "tls.acme.directory".into(),
                    format!("{:?} is not an https:// URL", acme.directory),
                ));
            }
            if let Some(c) = acme.contact.iter().find(|c| !c.starts_with("mailto:")) {
                return Err((
                    "tls.acme.contact".into(),
                    format!("{c:?}: write a contact as \"mailto:ops@example.com\""),
                ));
            }
        }
        Ok(())
    }

    /// `[app]`: an environment and a command that can be passed to a process as written.
    fn check_app(&self) -> Result<(), (String, String)> {
        for (key, value) in &self.app.environment {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err((
                    format!("app.environment.{key}"),
                    format!("invalid environment variable name {key:?}"),
                ));
            }
            if value.contains('\0') {
                return Err((
                    format!("app.environment.{key}"),
                    format!("the value of {key} contains a NUL byte"),
                ));
            }
        }
        if let Some(arg) = self.app.command.argv().iter().find(|a| a.contains('\0')) {
            return Err((
                "app.command".into(),
                format!("argument {arg:?} contains a NUL byte"),
            ));
        }
        if let Some((arg, variable)) = self.app.command.unexpanded_port() {
            let which = if arg == variable {
                format!("{variable:?}")
            } else {
                format!("{variable:?} in {arg:?}")
            };
            return Err((
                "app.command".into(),
                format!(
                    "{which} is not expanded (baton runs the command without a shell); write \"{{port}}\" for the worker's port, or let the app read the PORT environment variable, which baton always sets"
                ),
            ));
        }
        Ok(())
    }

    /// Checks that look at the machine (`check-config` and start-up): the release directory,
    /// the command, the user and groups, and socket paths that would have to be replaced.
    /// They can still fail later (at spawn: then the backoff and the journal entry apply).
    pub fn check_host(&self) -> Result<(), (String, String)> {
        if let Some(dir) = &self.app.directory
            && !dir.is_dir()
        {
            return Err((
                "app.directory".into(),
                format!("{} is not a directory (or does not exist)", dir.display()),
            ));
        }
        let program = self.app.command.argv().first().cloned().unwrap_or_default();
        if let Err(why) = find_program(
            &program,
            self.app.directory.as_deref(),
            self.app.environment.get("PATH").map(String::as_str),
        ) {
            return Err(("app.command".into(), why.to_string()));
        }
        // A user or group typed wrong would fail every worker's start (or the control
        // socket's bind): better said once, here, than as a deployment error.
        if let Some(name) = &self.app.user
            && !matches!(nix::unistd::User::from_name(name), Ok(Some(_)))
        {
            return Err(("app.user".into(), format!("no user {name:?} on this host")));
        }
        for (key, group) in [
            ("app.group", &self.app.group),
            ("control.group", &self.control.group),
        ] {
            if let Some(name) = group
                && !matches!(nix::unistd::Group::from_name(name), Ok(Some(_)))
            {
                return Err((key.into(), format!("no group {name:?} on this host")));
            }
        }
        if let Some(ListenAddress::Unix(path)) = &self.listen.address {
            not_a_foreign_file(path).map_err(|e| ("listen.address".into(), e.to_string()))?;
        }
        not_a_foreign_file(&self.control_socket())
            .map_err(|e| ("control.socket".into(), e.to_string()))?;
        Ok(())
    }

    /// The control socket: the config's, else `$RUNTIME_DIRECTORY/control.sock`, else
    /// `/run/baton/<name>.sock`.
    pub fn control_socket(&self) -> PathBuf {
        if let Some(p) = &self.control.socket {
            return p.clone();
        }
        if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
            // systemd may pass several directories separated by ':'; the first is ours.
            let dir = dir
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned();
            if !dir.is_empty() {
                return Path::new(&dir).join("control.sock");
            }
        }
        PathBuf::from(format!("/run/baton/{}.sock", self.name))
    }
}

impl Config {
    /// Where a client looks for a running baton's control socket: the config's, else the
    /// server's default as seen from the client's environment, else the packaged unit's
    /// `RuntimeDirectory=baton/<name>` (an operator's shell has no `$RUNTIME_DIRECTORY`).
    pub fn control_socket_for_client(&self) -> PathBuf {
        let primary = self.control_socket();
        if self.control.socket.is_some() || primary.exists() {
            return primary;
        }
        let packaged = PathBuf::from(format!("/run/baton/{}/control.sock", self.name));
        if packaged.exists() { packaged } else { primary }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// Best-effort span of a dotted key (`table.key`) for errors found after parsing.
fn find_key(text: &str, dotted: &str) -> Option<std::ops::Range<usize>> {
    let (table, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut in_table = table.is_empty();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(header) = t.strip_prefix('[') {
            let name = header.split(']').next().unwrap_or("").trim();
            in_table = name == table;
        } else if in_table {
            let k = t.split('=').next().unwrap_or("").trim().trim_matches('"');
            if k == key && t.contains('=') {
                let start = offset + (line.len() - t.len());
                return Some(start..start + key.len());
            }
        }
        offset += line.len();
    }
    // A key inside an inline table (`environment = { "A=B" = "1" }`): the quoted key itself,
    // else the key that holds the table.
    if let Some(i) = text.find(&format!("\"{key}\"")) {
        return Some(i..i + key.len() + 2);
    }
    if !table.is_empty() {
        return find_key(text, table);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name = \"app\"\n[listen]\naddress = \"127.0.0.1:8080\"\n[app]\ncommand = [\"node\", \"main.js\"]\n";

    #[test]
    fn a_program_is_an_executable_file_found_as_execvp_finds_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (early, late) = (dir.path().join("early"), dir.path().join("late"));
        for (d, mode) in [(&early, 0o644), (&late, 0o755)] {
            std::fs::create_dir(d).unwrap();
            let file = d.join("serve");
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        // A directory of the name, earlier still, is no program either.
        std::fs::create_dir_all(dir.path().join("dirs/serve")).unwrap();
        let path = format!(
            "{}::{}:{}",
            dir.path().join("dirs").display(),
            early.display(),
            late.display()
        );
        assert_eq!(
            find_program("serve", None, Some(&path)).unwrap(),
            late.join("serve")
        );
        let only_early = early.display().to_string();
        assert!(matches!(
            find_program("serve", None, Some(&only_early)),
            Err(NoProgram::NotOnPath { .. })
        ));
        // A name with a `/` is the release directory's, not the PATH's.
        assert_eq!(
            find_program("late/serve", Some(dir.path()), Some("")).unwrap(),
            late.join("serve")
        );
        assert!(matches!(
            find_program("early/serve", Some(dir.path()), None),
            Err(NoProgram::NotExecutable(p)) if p == early.join("serve")
        ));
        let absolute = late.join("serve").display().to_string();
        assert_eq!(
            find_program(&absolute, Some(&early), None).unwrap(),
            late.join("serve")
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL, Path::new("a.toml")).unwrap();
        assert_eq!(c.workers.min(), DEFAULT_WORKER_COUNT);
        assert_eq!(c.workers.max(), DEFAULT_WORKER_COUNT);
        assert!(c.restart.rolling);
        assert_eq!(c.restart.max_surge.get(), 1);
        assert_eq!(
            c.readiness.timeout.get(),
            std::time::Duration::from_secs(60)
        );
        assert_eq!(c.control_socket(), PathBuf::from("/run/baton/app.sock"));
    }

    fn unexpanded(argv: &[&str]) -> Option<(String, String)> {
        AppCommand::new(argv.iter().map(|a| (*a).to_owned()).collect())
            .unwrap()
            .unexpanded_port()
            .map(|(a, v)| (a.to_owned(), v.to_owned()))
    }

    #[test]
    fn a_shell_variable_no_shell_expands_is_found() {
        let found = |arg: &str, var: &str| Some((arg.to_owned(), var.to_owned()));
        assert_eq!(
            unexpanded(&["uvicorn", "app:app", "--port", "$PORT"]),
            found("$PORT", "$PORT")
        );
        assert_eq!(
            unexpanded(&["gunicorn", "-b", "127.0.0.1:${PORT}"]),
            found("127.0.0.1:${PORT}", "${PORT}")
        );
        assert_eq!(
            unexpanded(&["app", "--port=${PORT:-8080}", "x"]),
            found("--port=${PORT:-8080}", "${PORT:-8080}")
        );
        assert_eq!(
            unexpanded(&["app", "--port=$PORT/x"]),
            found("--port=$PORT/x", "$PORT")
        );
        // Other variables, and the placeholder, are not it.
        assert_eq!(
            unexpanded(&["app", "$PORTS", "${PORTAL}", "{port}", "$"]),
            None
        );
        // After a script's name, `-c` is the script's.
        assert_eq!(
            unexpanded(&["sh", "main.sh", "-c", "$PORT"]),
            found("$PORT", "$PORT")
        );
        // A shell's option value is not its script.
        assert_eq!(
            unexpanded(&["bash", "-o", "pipefail", "$PORT"]),
            found("$PORT", "$PORT")
        );
    }

    #[test]
    fn a_shell_script_may_use_port() {
        for argv in [
            &["sh", "-c", "exec app --port $PORT"][..],
            &["/bin/bash", "-euc", "exec app --port \"${PORT}\""],
            &[
                "bash",
                "-o",
                "pipefail",
                "-lc",
                "app --port $PORT | tee log",
            ],
            &[
                "/usr/bin/env",
                "FOO=1",
                "dash",
                "-c",
                "exec app --port=$PORT",
            ],
            &["nice", "zsh", "+x", "-c", "app $PORT"],
            &["sh", "wrapper.sh", "bash", "-c", "app $PORT"],
        ] {
            assert_eq!(unexpanded(argv), None, "{argv:?}");
        }
    }

    #[test]
    fn argv_gets_port() {
        let c = AppCommand::new(vec!["x".into(), "--port={port}".into()]).unwrap();
        assert_eq!(c.argv_for_port(81), vec!["x", "--port=81"]);
    }
}
