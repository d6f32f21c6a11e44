//! The proxies behind the fuzz targets `h2` and `tls`, on a current-thread tokio runtime that
//! only runs while an input is tried (so each input's work happens during its own run): the
//! tiny worker of `common/worker.rs` on 127.0.0.1, a real `Pool` with two ready workers that
//! both point at it (the differential harness's), and two real `Proxy`s over that pool, one
//! buffering requests and answers (in 1 KiB of memory, so bodies spill to temporary files)
//! and one streaming both. The targets drive a proxy's TLS or HTTP/2 front through an
//! in-memory stream (`Proxy::serve_tls_stream`, `Proxy::serve_h2_stream`).

use baton::config::Config;
use baton::metrics::Metrics;
use baton::proxy::Proxy;
use baton::spawn::ExitReason;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub struct Front {
    pub rt: tokio::runtime::Runtime,
    /// Buffering, then streaming.
    pub proxies: Vec<Arc<Proxy>>,
    /// Held so that the workers' `exited` watch never fires.
    _exit: watch::Sender<Option<ExitReason>>,
}

/// Start the worker and the proxies; `extra` is appended to each proxy's config (a `[tls]`
/// section).
pub fn start(extra: &str) -> Front {
    // libFuzzer's C++ main, unlike a Rust main, leaves SIGPIPE fatal; baton's binary runs
    // with it ignored.
    // SAFETY: setting a signal's disposition to SIG_IGN, before any thread is started here.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (proxies, exit) = rt.block_on(async {
        let worker = TcpListener::bind("127.0.0.1:0").await.expect("bind worker");
        let worker_addr = worker.local_addr().expect("worker address");
        tokio::spawn(super::worker::serve(worker));
        let (pool, exit) = super::harness::two_ready_workers(worker_addr);
        let mut proxies = Vec::new();
        for buffering in [true, false] {
            // The smallest head limit the config allows, so that 414/431 are reached
            // cheaply; small buffers, so that the temporary files and 413 are too.
            let text = format!(
                r#"name = "fuzz"
[app]
command = ["true"]
[listen]
max_header_size = "8KiB"
header_timeout = "1s"
client_body_timeout = "1s"
send_timeout = "2s"
buffer_memory = "1KiB"
max_body_size = "64KiB"
max_response_buffer = "16KiB"
request_buffering = {buffering}
response_buffering = {buffering}
{extra}"#
            );
            let config =
                Config::parse(&text, std::path::Path::new("fuzz.toml")).expect("fuzz config");
            proxies.push(Proxy::new(
                pool.clone(),
                &config,
                64,
                Arc::new(Metrics::default()),
            ));
        }
        (proxies, exit)
    });
    Front {
        rt,
        proxies,
        _exit: exit,
    }
}
