//! The control API: HTTP + JSON over a Unix socket (mode 0600, or 0660 with `[control] group`).
//!
//! `GET /status`, `POST /restart?mode=rolling|blocking&wait=1`, `POST /rollback?wait=1`,
//! `POST /resume`, `GET /metrics`.
//! With `wait=1` the restart answer streams one JSON object per line: `{"progress": ...}` while
//! the roll runs, then `{"outcome": ...}`; `baton restart --wait` prints them. `curl
//! --unix-socket` works too.

pub mod client;

use crate::restart::{Command, Handle, Outcome, RestartMode};
use crate::status::{RollingJson, Snapshot};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: another baton answers there")]
    InUse { path: String },
    #[error("control socket {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("control socket {path}: unknown group {group:?} ([control] group)")]
    UnknownGroup { path: String, group: String },
}

/// Create the control socket with its permissions set before anyone can connect.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, ControlError> {
    let p = path.display().to_string();
    let io = |error| ControlError::Io {
        path: p.clone(),
        error,
    };
    match crate::listen::clear_stale_socket(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(ControlError::InUse { path: p });
        }
        other => other.map_err(io)?,
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Bind under a tight umask so the socket is never reachable with looser permissions.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(io)?;
    if let Some(g) = group {
        let gid = nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .ok_or_else(|| ControlError::UnknownGroup {
                path: p.clone(),
                group: g.to_owned(),
            })?
            .gid;
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| io(e.into()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    }
    listener.set_nonblocking(true).map_err(io)?;
    UnixListener::from_std(listener).map_err(io)
}

/// Serve the control API until the process ends.
/// `access`: the access log that `POST /reopen-logs` reopens, if there is a file.
pub async fn serve(
    listener: UnixListener,
    handle: Handle,
    access: Option<Arc<crate::access::AccessLog>>,
) {
    let gate = crate::admin::Gate::default();
    loop {
        let Some(permit) = gate.enter().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let access = access.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(req, handle.clone(), access.clone()));
            let _ = crate::admin::http1()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            drop(permit);
        });
    }
}

pub fn health(handle: &Handle) -> crate::status::Health {
    let ctx = &handle.context;
    crate::status::Health::new(&ctx.state(), &ctx.pool.workers())
}

pub fn snapshot(handle: &Handle) -> Snapshot {
    let ctx = &handle.context;
    let workers = ctx.pool.workers();
    Snapshot::new(
        ctx.config().name.as_str(),
        ctx.spawner.name(),
        ctx.desired(&workers),
        &ctx.state(),
        &workers,
        ctx.pool.queue_len(),
    )
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
    text.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(text)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

async fn route(
    req: Request<Incoming>,
    handle: Handle,
    access: Option<Arc<crate::access::AccessLog>>,
) -> Result<Response<Body>, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => json(StatusCode::OK, &snapshot(&handle)),
        (&Method::GET, "/health") => {
            let h = health(&handle);
            let status = StatusCode::from_u16(h.http_status()).unwrap_or(StatusCode::OK);
            json(status, &h)
        }
        (&Method::GET, "/metrics") => metrics(&handle),
        (&Method::POST, "/restart") => {
            let mode = match query(&req, "mode") {
                None | Some("") | Some("default") => None,
                Some("rolling") => Some(RestartMode::Rolling),
                Some("blocking") => Some(RestartMode::Blocking),
                Some(other) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        &format!("unknown mode {other:?}: use rolling or blocking"),
                    ));
                }
            };
            let wait = matches!(query(&req, "wait"), Some("1" | "true" | ""));
            restart(handle, wait, |reply| Command::Restart {
                mode,
                reply: Some(reply),
            })
            .await
        }
        (&Method::POST, "/rollback") => {
            let wait = matches!(query(&req, "wait"), Some("1" | "true" | ""));
            restart(handle, wait, |reply| Command::Rollback {
                reply: Some(reply),
            })
            .await
        }
        (&Method::POST, "/resume") => resume(&handle).await,
        (&Method::POST, "/reopen-logs") => match access {
            Some(log) => {
                log.reopen();
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "reopened": true, "message": "the access log is reopened by its path" }),
                )
            }
            None => json(
                StatusCode::OK,
                &serde_json::json!({ "reopened": false, "message": "no access log file: [log] access is off or the journal" }),
            ),
        },
        (
            _,
            "/status" | "/health" | "/metrics" | "/restart" | "/rollback" | "/resume"
            | "/reopen-logs",
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "wrong method"),
        _ => error(
            StatusCode::NOT_FOUND,
            "unknown path; try /status, /health, /restart, /rollback, /resume, /reopen-logs, /metrics",
        ),
    };
    Ok(resp)
}

/// `GET /metrics`: Prometheus' text format.
fn metrics(handle: &Handle) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(
            handle.context.metrics.render(&snapshot(handle)),
        ))
        .boxed(),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// `POST /resume`: out of resistance mode, if in it.
async fn resume(handle: &Handle) -> Response<Body> {
    let (tx, rx) = oneshot::channel();
    if !handle.send(Command::Resume(tx)).await {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the manager is shutting down",
        )
    } else {
        let was = rx.await.unwrap_or(false);
        json(
            StatusCode::OK,
            &serde_json::json!({ "resumed": was, "message": if was {
                "left resistance mode: spawning and idle cleaning resume; the old workers keep serving"
            } else {
                "not in resistance mode"
            }}),
        )
    }
}

/// How long an answer without `wait=1` waits for an immediate refusal.
const REFUSAL_WINDOW: Duration = Duration::from_millis(300);

/// One line of a waiting restart's answer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartEvent {
    Progress(RollingJson),
    Outcome(Outcome),
}

/// A restart or a rollback (`command` builds it around the reply channel); with `wait`, its
/// progress and outcome as they come.
async fn restart(
    handle: Handle,
    wait: bool,
    command: impl FnOnce(oneshot::Sender<Outcome>) -> Command,
) -> Response<Body> {
    if handle.context.state().phase.is_stopping() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::restart::STOPPING_MESSAGE,
        );
    }
    let (tx, mut rx) = oneshot::channel();
    if !handle.send(command(tx)).await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the manager is shutting down",
        );
    }
    if !wait {
        // A restart or rollback refused at once (an invalid config file, nothing to roll back
        // to) is said now, not only in the journal: the supervisor answers those at once.
        if let Ok(Ok(outcome)) = tokio::time::timeout(REFUSAL_WINDOW, &mut rx).await
            && !outcome.ok
        {
            return error(StatusCode::CONFLICT, &outcome.message);
        }
        return json(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "started": true }),
        );
    }
    let (lines, body_rx) = mpsc::channel::<Bytes>(16);
    // Every step as it happens, plus a refresh each second (a drain's "oldest N s").
    let mut steps = handle.context.subscribe();
    steps.mark_unchanged();
    tokio::spawn(send_progress(handle, rx, steps, lines));
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

/// A waiting restart's lines: its progress as it changes, then its outcome. Ends early when the
/// client leaves; the restart goes on.
async fn send_progress(
    handle: Handle,
    mut rx: oneshot::Receiver<Outcome>,
    mut steps: tokio::sync::watch::Receiver<crate::restart::RestartState>,
    lines: mpsc::Sender<Bytes>,
) {
    let mut last: Option<RollingJson> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut open = true;
    loop {
        tokio::select! {
            outcome = &mut rx => {
                let outcome = outcome.unwrap_or(Outcome {
                    ok: false,
                    generation: 0,
                    message: "the manager stopped before the restart ended".into(),
                    output: Vec::new(),
                });
                let _ = lines.send(line(&RestartEvent::Outcome(outcome))).await;
                return;
            }
            changed = steps.changed(), if open => {
                if changed.is_err() {
                    open = false;
                    continue;
                }
                let Some(p) = steps.borrow_and_update().phase.rolling().cloned() else {
                    continue;
                };
                let now = Some(RollingJson::new(&p, &handle.context.pool.workers()));
                if now != last {
                    last = now.clone();
                    if let Some(p) = now
                        && lines.send(line(&RestartEvent::Progress(p))).await.is_err()
                    {
                        return;
                    }
                }
            }
            _ = tick.tick() => {
                let now = snapshot(&handle).rolling_restart;
                if now.is_some() && now != last {
                    last = now.clone();
                    if let Some(p) = now
                        && lines.send(line(&RestartEvent::Progress(p))).await.is_err()
                    {
                        // The client left; the restart goes on.
                        return;
                    }
                }
            }
        }
    }
}

fn line(ev: &RestartEvent) -> Bytes {
    let mut v = serde_json::to_vec(ev).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Serve `GET /metrics` on a TCP address (`[metrics] address`).
pub async fn serve_metrics(listener: tokio::net::TcpListener, handle: Handle) {
    use hyper::service::service_fn;
    let gate = crate::admin::Gate::default();
    loop {
        let Some(permit) = gate.enter().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let handle = handle.clone();
                async move {
                    let (status, body, json) = match req.uri().path() {
                        "/metrics" => {
                            let snap = snapshot(&handle);
                            (200, handle.context.metrics.render(&snap), false)
                        }
                        "/health" => {
                            let h = health(&handle);
                            let text = serde_json::to_string(&h).unwrap_or_default() + "\n";
                            (h.http_status(), text, true)
                        }
                        _ => (404, "try /metrics or /health\n".to_owned(), false),
                    };
                    let mut r =
                        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(if json {
                            "application/json"
                        } else {
                            "text/plain; version=0.0.4"
                        }),
                    );
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = crate::admin::http1()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            drop(permit);
        });
    }
}
