//! `baton demo` and the bundled demo app it runs (also the app the tests use).
//!
//! The demo app is a tiny HTTP server inside the baton binary (`baton demo-app`, hidden), so
//! the demo and the tests need nothing outside the repository. What it does at boot is read
//! from the file `demo-mode` in its working directory (the release directory), so a test can
//! make a "broken release" the way an operator would: by deploying a different directory.
//!
//! Besides `/` (a line naming the release), it answers a few paths the tests use: `/sleep/MS`,
//! `/burn/MS`, `/alloc/MB`, `/bytes/N`, `/events/N`, `/hang`, `/crash`, `/headers` (the request
//! as it arrived), `/echo` (the body back), `/upgrade`, and `/page`: an HTML page naming the
//! release and the `X-Forwarded-Proto` the app got, whose script writes the protocol the
//! browser used for it (`nextHopProtocol`, e.g. `h2`) into the page, for a browser's test.
//!
//! `/shop` is a page that uses its own release's fingerprinted assets, as a Rails or Django
//! page does: the file `shop-assets` in the release directory names them, one a line (e.g.
//! `app-3f2a9c1d.css`), and the page links each `.css` (`<link rel="stylesheet">`) and loads
//! each `.js` (`<script src>`) under `/assets/`, around `<p id="release">release NAME</p>` and
//! an empty `<p id="script">` for the script to fill. The app never serves those files itself
//! (baton's `[static]` does): a request under `/assets/` that reaches it is answered 500 and
//! written to its stderr (`demo-app: asset request ... reached the worker`), so that a test
//! sees it both in the browser and in baton's log.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

/// The config `baton demo` runs: 4 workers of the demo app on 127.0.0.1:8080.
pub fn demo_config(listen: &str, workers: usize, boot_time: &str, control: &Path) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "baton".into());
    format!(
        r#"name = "demo"

[listen]
address = "{listen}"

[app]
command = ["{exe}", "demo-app", "--port", "{{port}}", "--boot-time", "{boot_time}"]

[workers]
count = {workers}
concurrency = 0

[readiness]
http_path = "/"
timeout = "30s"

[restart]
drain_timeout = "10s"
stop_timeout = "5s"

# The canary judge looks at the first new worker for 5 s (30 s by default), so that a roll
# of the demo is quick to watch.
[canary]
duration = "5s"

[spawner]
backend = "process"

[control]
socket = "{control}"
"#,
        control = control.display()
    )
}

/// Where `baton demo` puts its control socket: /run/baton when root, else
/// `$XDG_RUNTIME_DIR`, else a new private directory (mode 0700) in the temporary directory —
/// never a fixed name in a shared one, which another user could take first. The directory
/// returned with it, if any, is removed when dropped.
pub fn demo_control_socket() -> std::io::Result<(std::path::PathBuf, Option<tempfile::TempDir>)> {
    if nix::unistd::geteuid().is_root() {
        return Ok(("/run/baton/demo.sock".into(), None));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Ok((std::path::PathBuf::from(dir).join("baton-demo.sock"), None));
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("baton-demo-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()?;
    Ok((dir.path().join("control.sock"), Some(dir)))
}

/// The demo app's behaviour, from `./demo-mode` (default: serve).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Serve,
    /// Exit with status 1 at boot, as a release with a bad config would.
    Exit,
    /// Start but never listen: never ready.
    Hang,
    /// Serve, then crash this long after listening (`crash` alone: half a second), as a release
    /// with a fatal bug on first use would.
    CrashAfterReady(Duration),
    /// Leave the port to a stray process of another process group (which serves it for 20 s)
    /// and never listen: what answers on the port is not the worker.
    StrayOnPort,
    /// Boot and answer `/health`, but answer 500 to this share (in %) of the other requests,
    /// at random, from this long after it started listening: a release with a database
    /// configuration error, a flaky one, or one that turns bad later (`errors 30% after 10s`).
    Errors(f64, Duration),
    /// Boot and answer `/health`, but leave every other request unanswered from this long
    /// after it started listening (`hangs`, `hangs after 20s`): a release waiting on a
    /// database host that drops packets.
    Hangs(Duration),
    /// Answer every request but `/health` this much later (`slow 20ms`).
    Slow(Duration),
}

/// A median answer time drawn anew for every request but `/health` (`demo-latency` in the
/// release directory, or `BATON_DEMO_LATENCY`: `varied 2ms`), besides the mode: the heavy
/// tail of a real app (a Pareto of shape 2: a tenth of the answers over 3 times the median, a
/// hundredth over 10 times, none beyond 50), so the canary's latency judge is tried on the
/// spread it meets in production.
fn read_latency() -> Option<Duration> {
    let text = std::env::var("BATON_DEMO_LATENCY")
        .or_else(|_| std::fs::read_to_string("demo-latency"))
        .ok()?;
    text.trim()
        .strip_prefix("varied ")?
        .parse::<crate::config::Duration>()
        .ok()
        .map(|d| d.get())
}

/// One answer time of [`read_latency`]'s distribution around `median`.
fn varied(median: Duration) -> Duration {
    // Pareto(x_m, 2): median x_m * sqrt(2); x = x_m / sqrt(u) for u uniform in (0, 1].
    let u = uniform().max(1.0 / 2500.0);
    median.mul_f64((1.0 / u).sqrt() / std::f64::consts::SQRT_2)
}

fn read_mode() -> Mode {
    let mode = std::env::var("BATON_DEMO_MODE")
        .or_else(|_| std::fs::read_to_string("demo-mode"))
        .map(|s| s.trim().to_owned());
    match mode {
        Ok(m) if m == "exit" => Mode::Exit,
        Ok(m) if m == "hang" => Mode::Hang,
        Ok(m) if m == "crash" => Mode::CrashAfterReady(Duration::from_millis(500)),
        Ok(m) if m.starts_with("crash ") => Mode::CrashAfterReady(
            m["crash ".len()..]
                .parse::<crate::config::Duration>()
                .map(|d| d.get())
                .unwrap_or(Duration::from_millis(500)),
        ),
        Ok(m) if m == "stray" => Mode::StrayOnPort,
        Ok(m) if m == "hangs" || m.starts_with("hangs after ") => Mode::Hangs(
            m["hangs".len()..]
                .trim_start_matches(" after ")
                .parse::<crate::config::Duration>()
                .map_or(Duration::ZERO, |d| d.get()),
        ),
        Ok(m) if m.starts_with("slow ") => m["slow ".len()..]
            .parse::<crate::config::Duration>()
            .map_or(Mode::Serve, |d| Mode::Slow(d.get())),
        Ok(m) if m.starts_with("errors ") => {
            let rest = &m["errors ".len()..];
            let (share, after) = rest.split_once(" after ").unwrap_or((rest, "0s"));
            let after = after
                .parse::<crate::config::Duration>()
                .map_or(Duration::ZERO, |d| d.get());
            share
                .trim_end_matches('%')
                .parse::<f64>()
                .map_or(Mode::Serve, |p| Mode::Errors(p, after))
        }
        _ => Mode::Serve,
    }
}

/// Spin until this thread has used `cpu` of CPU time (not wall time: at a low priority, a
/// CPU-heavy boot takes longer when others need the CPU, as a real one does).
fn burn_cpu(cpu: Duration) {
    use nix::time::{ClockId, clock_gettime};
    let now = || {
        clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
            .map(Duration::from)
            .unwrap_or_default()
    };
    let start = now();
    let mut x = 0u64;
    while now().saturating_sub(start) < cpu {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
}

/// Run the demo app: serve `/` (hello), `/headers` (the request's), `/sleep/MS`, `/hang`, `/crash`, `/alloc/MB`, `/echo`
/// (POST), and `/upgrade` (101, then echo bytes).
pub async fn run_app(port: u16, boot_time: Duration, boot_cpu: Duration) -> anyhow::Result<()> {
    let mode = read_mode();
    let latency = read_latency();
    let release = std::env::current_dir()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    tokio::time::sleep(boot_time).await;
    if !boot_cpu.is_zero() {
        tokio::task::spawn_blocking(move || burn_cpu(boot_cpu)).await?;
    }
    boot_as(mode, port).await?;
    if let Some(after) = std::env::var("BATON_DEMO_EXIT_AFTER")
        .ok()
        .and_then(|v| v.parse::<crate::config::Duration>().ok())
    {
        tokio::spawn(async move {
            tokio::time::sleep(after.get()).await;
            std::process::exit(0);
        });
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("demo-app: release {release:?} listening on 127.0.0.1:{port}");
    let release: &'static str = Box::leak(release.into_boxed_str());
    let listening = std::time::Instant::now();
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let fail = match mode {
                    Mode::Errors(share, after) => {
                        req.uri().path() != "/health"
                            && listening.elapsed() >= after
                            && chance(share / 100.0)
                    }
                    _ => false,
                };
                let health = req.uri().path() == "/health";
                let hang =
                    matches!(mode, Mode::Hangs(after) if !health && listening.elapsed() >= after);
                let slow = match (mode, latency) {
                    (Mode::Slow(by), _) if !health => by,
                    (_, Some(median)) if !health => varied(median),
                    _ => Duration::ZERO,
                };
                async move {
                    if hang {
                        std::future::pending::<()>().await;
                    }
                    if !slow.is_zero() {
                        tokio::time::sleep(slow).await;
                    }
                    if fail {
                        return Ok::<_, Infallible>(text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "could not connect to the database (demo-mode = errors)\n".into(),
                        ));
                    }
                    app(req, release).await
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// What a broken release does at boot, by `BATON_DEMO_MODE`; the modes that serve go on.
async fn boot_as(mode: Mode, port: u16) -> anyhow::Result<()> {
    match mode {
        Mode::Exit => {
            eprintln!("demo-app: cannot start: this release is broken (demo-mode = exit)");
            std::process::exit(1);
        }
        Mode::Hang => {
            eprintln!("demo-app: hanging at boot (demo-mode = hang)");
            std::future::pending::<()>().await;
        }
        Mode::CrashAfterReady(after) => {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                eprintln!("demo-app: crashing (demo-mode = crash)");
                std::process::exit(2);
            });
        }
        Mode::StrayOnPort => {
            let exe = std::env::current_exe()?;
            std::process::Command::new(exe)
                .args(["demo-app", "--port", &port.to_string(), "--boot-time", "0s"])
                .env("BATON_DEMO_MODE", "serve")
                .env("BATON_DEMO_EXIT_AFTER", "20s")
                .process_group(0)
                .spawn()?;
            std::future::pending::<()>().await;
        }
        Mode::Serve | Mode::Errors(..) | Mode::Hangs(_) | Mode::Slow(_) => {}
    }
    Ok(())
}

/// True with probability `p`.
fn chance(p: f64) -> bool {
    uniform() < p
}

/// Uniform in [0, 1) (xorshift, seeded by the pid and the clock).
fn uniform() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Relaxed);
    if x == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        x = nanos ^ (u64::from(std::process::id()) << 32) | 1;
    }
    x = crate::util::xorshift(x);
    STATE.store(x, Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

type Body = BoxBody<Bytes, hyper::Error>;

fn text(status: StatusCode, s: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(s)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r
}

async fn app(
    mut req: Request<Incoming>,
    release: &'static str,
) -> Result<Response<Body>, Infallible> {
    let pid = std::process::id();
    let path = req.uri().path().to_owned();
    let resp = if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().unwrap_or(100);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        text(
            StatusCode::OK,
            format!("slept {ms} ms in {release} pid {pid}\n"),
        )
    } else if let Some(ms) = path.strip_prefix("/burn/") {
        // Spin the CPU this long, as a CPU-bound request of a single-threaded app server does.
        let ms: u64 = ms.parse().unwrap_or(5);
        let until = std::time::Instant::now() + Duration::from_millis(ms);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        text(
            StatusCode::OK,
            format!("burned {ms} ms in {release} pid {pid}\n"),
        )
    } else if let Some(mb) = path.strip_prefix("/alloc/") {
        // Grow (and keep) this much memory, touched so that it counts in RSS: for memory_limit.
        let mb: usize = mb.parse().unwrap_or(1);
        let total = hold(mb);
        text(
            StatusCode::OK,
            format!("holding {total} MiB in pid {pid}\n"),
        )
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0);
        bytes(n)
    } else if let Some(n) = path.strip_prefix("/events/") {
        let n: u32 = n.parse().unwrap_or(10);
        events(n)
    } else if path == "/hang" {
        std::future::pending::<()>().await;
        text(StatusCode::OK, String::new())
    } else if path == "/crash" {
        std::process::exit(3);
    } else if path == "/headers" {
        // The request as the app got it: its line and headers, one per line.
        let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (n, v) in req.headers() {
            out.push_str(&format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        text(StatusCode::OK, out)
    } else if path == "/page" {
        page(&req, release)
    } else if path == "/shop" {
        shop(release)
    } else if path.starts_with("/assets/") {
        eprintln!("demo-app: asset request {path} reached the worker (pid {pid})");
        text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("asset request {path} reached the worker: baton should serve it\n"),
        )
    } else if path == "/echo" {
        let (parts, body) = req.into_parts();
        let _ = parts;
        Response::new(body.boxed())
    } else if path == "/upgrade" {
        upgrade(&mut req)
    } else {
        let fwd = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        text(
            StatusCode::OK,
            format!("hello from release {release} pid {pid} (x-forwarded-for {fwd})\n"),
        )
    };
    Ok(resp)
}

/// Keeps `mb` MiB more for the life of the process; how many it holds in all.
fn hold(mb: usize) -> usize {
    static HELD: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
    let block = vec![1u8; mb << 20];
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    held.push(block);
    held.iter().map(Vec::len).sum::<usize>() >> 20
}

/// `n` bytes, produced as fast as they are taken: for response buffering.
fn bytes(n: u64) -> Response<Body> {
    let chunk = Bytes::from(vec![b'x'; 64 << 10]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            (left > 0).then(|| {
                let take = left.min(chunk.len() as u64);
                (
                    Ok::<_, hyper::Error>(Frame::data(chunk.slice(..take as usize))),
                    left - take,
                )
            })
        }
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
    r
}

/// `n` server-sent events, 100 ms apart, each carrying when it was written (µs since the
/// epoch): for stream latency through the proxy.
fn events(n: u32) -> Response<Body> {
    let stream = futures_util::stream::unfold(0u32, move |i| async move {
        if i >= n {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let event = Bytes::from(format!("data: {now}\n\n"));
        Some((Ok::<_, hyper::Error>(Frame::data(event)), i + 1))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// A page that shows its release and how it came (for the browser tests).
fn page(req: &Request<Incoming>, release: &str) -> Response<Body> {
    let proto = req
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let mut r = text(
        StatusCode::OK,
        format!(
            "<!doctype html><html><head><title>baton demo</title></head><body>\n\
             <p id=\"release\">hello from release {release}</p>\n\
             <p id=\"forwarded\">x-forwarded-proto: {proto}</p>\n\
             <p id=\"protocol\"></p>\n\
             <script>document.getElementById(\"protocol\").textContent = \"protocol: \" + \
             performance.getEntriesByType(\"navigation\")[0].nextHopProtocol;</script>\n\
             </body></html>\n"
        ),
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// A page linking the release's fingerprinted assets, as listed in its `shop-assets` file.
fn shop(release: &str) -> Response<Body> {
    let mut head = String::new();
    let mut scripts = String::new();
    for name in std::fs::read_to_string("shop-assets")
        .unwrap_or_default()
        .lines()
        .map(str::trim)
    {
        if name.ends_with(".css") {
            head.push_str(&format!(
                "<link rel=\"stylesheet\" href=\"/assets/{name}\">\n"
            ));
        } else if name.ends_with(".js") {
            scripts.push_str(&format!("<script src=\"/assets/{name}\"></script>\n"));
        }
    }
    let mut r = text(
        StatusCode::OK,
        format!(
            "<!doctype html><html><head><title>shop</title>\n{head}</head><body>\n\
             <p id=\"release\">release {release}</p>\n<p id=\"script\"></p>\n\
             {scripts}</body></html>\n"
        ),
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// 101, then the connection echoes its bytes.
fn upgrade(req: &mut Request<Incoming>) -> Response<Body> {
    let on = hyper::upgrade::on(&mut *req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let protocol = req
        .headers()
        .get(http::header::UPGRADE)
        .cloned()
        .unwrap_or(http::HeaderValue::from_static("echo"));
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
    r.headers_mut().insert(http::header::UPGRADE, protocol);
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    r
}
