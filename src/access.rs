//! The access log (`[log] access`): one line per request, to a file or to the journal, in
//! nginx's `combined` format (with baton's own fields after it) or as JSON.
//!
//! The proxy never waits for it. To a file: the proxy's thread formats the line and appends it
//! to a bounded buffer, and a thread of the log's own takes the buffer every 20 ms and writes
//! it, so no request wakes it and no line crosses a channel. To the journal: the entry goes
//! into a bounded queue (`try_send`) that the same thread empties every 20 ms. When the buffer
//! or the queue holds `queue` entries (a disk that stalls, a journal that cannot keep up), the
//! entry is dropped and counted (`baton_access_log_dropped_total`), never waited for. `reopen`
//! (SIGUSR1, `baton reopen-logs`) makes the writer reopen the file by its path after the lines
//! before it are written, for logrotate without `copytruncate`: nothing is
//! lost, as lines written meanwhile go to the renamed file.

use crate::config::{AccessFormat, AccessTarget, LogConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// One request, as the log tells it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// When its head was read.
    pub time: Option<SystemTime>,
    pub https: bool,
    pub status: u16,
    /// Bytes of the answer's body sent to the client.
    pub bytes: u64,
    /// From the head read to the answer's last byte written (or the connection's end).
    pub duration: Duration,
    /// The worker that answered, if one did.
    pub upstream: Option<Upstream>,
    request: Request,
}

/// What the log says of the request itself.
#[derive(Debug, Clone)]
// The narrow path makes a `Head` per request, on the stack: boxing it would be an allocation
// per request, which is what it avoids.
#[allow(clippy::large_enum_variant)]
enum Request {
    /// An HTTP/1.1 head as the client sent it (the connection's own bytes, not copied) and
    /// where its fields are, from the parse that took it: the client's address and the id
    /// baton gave the request beside it.
    Head {
        head: bytes::Bytes,
        spans: crate::h1::Spans,
        client: Option<http::HeaderValue>,
        generated: Option<([u8; 32], usize)>,
    },
    /// A request hyper parsed (HTTP/2, or hyper's HTTP/1.1 path).
    Parsed(Box<Fields>),
}

/// The request's fields that the log writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    /// The client's IP (none on a Unix socket).
    pub client: Option<String>,
    pub method: String,
    pub target: String,
    /// `HTTP/1.1`, `HTTP/2.0`...
    pub version: &'static str,
    pub host: Option<String>,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// [`Fields`] borrowed from wherever the entry keeps them.
struct View<'a> {
    client: Option<&'a [u8]>,
    method: &'a [u8],
    target: &'a [u8],
    version: &'static str,
    host: Option<&'a [u8]>,
    referer: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
    request_id: Option<&'a [u8]>,
}

/// Who answered a request, and how long its answer head took from the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub worker: u64,
    pub generation: u64,
    pub time: Duration,
}

impl Entry {
    /// An entry for a request head the narrow path took, its fields at `spans`.
    /// `generated`: the id baton gave the request, unless it had a valid one of its own.
    pub fn from_head(
        head: bytes::Bytes,
        spans: crate::h1::Spans,
        client: Option<&http::HeaderValue>,
        https: bool,
        generated: Option<&[u8]>,
    ) -> Entry {
        let generated = generated.map(|g| {
            let mut id = [0u8; 32];
            let n = g.len().min(32);
            id[..n].copy_from_slice(&g[..n]);
            (id, n)
        });
        Entry {
            time: Some(SystemTime::now()),
            https,
            request: Request::Head {
                head,
                spans,
                client: client.cloned(),
                generated,
            },
            ..Entry::unfinished()
        }
    }

    /// An entry for a request hyper parsed; `request_id`: the one the worker was given.
    pub fn from_parts(
        method: &http::Method,
        uri: &http::Uri,
        version: http::Version,
        headers: &http::HeaderMap,
        client: Option<&str>,
        https: bool,
        request_id: Option<&[u8]>,
    ) -> Entry {
        let text = |n: http::header::HeaderName| {
            headers
                .get(n)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        Entry::new(
            Fields {
                client: client.map(str::to_owned),
                method: method.as_str().to_owned(),
                target: uri
                    .path_and_query()
                    .map_or_else(|| uri.to_string(), |p| p.as_str().to_owned()),
                version: match version {
                    http::Version::HTTP_2 => "HTTP/2.0",
                    http::Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                host: text(http::header::HOST).or_else(|| uri.authority().map(|a| a.to_string())),
                referer: text(http::header::REFERER),
                user_agent: text(http::header::USER_AGENT),
                request_id: request_id.map(|id| String::from_utf8_lossy(id).into_owned()),
            },
            https,
        )
    }

    /// An entry of these fields, made now.
    pub fn new(fields: Fields, https: bool) -> Entry {
        Entry {
            time: Some(SystemTime::now()),
            https,
            request: Request::Parsed(Box::new(fields)),
            ..Entry::unfinished()
        }
    }

    /// The answer's part of an entry, before there is an answer. (Not `Default`: a default
    /// request would be a box made and dropped per request.)
    fn unfinished() -> Entry {
        Entry {
            time: None,
            https: false,
            status: 0,
            bytes: 0,
            duration: Duration::ZERO,
            upstream: None,
            request: Request::Head {
                head: bytes::Bytes::new(),
                spans: crate::h1::Spans::default(),
                client: None,
                generated: None,
            },
        }
    }

    /// This entry with its own copy of the head it borrowed from a connection's buffer.
    fn detached(mut self) -> Entry {
        if let Request::Head { head, .. } = &mut self.request {
            *head = bytes::Bytes::copy_from_slice(head);
        }
        self
    }

    /// The request's fields, wherever they are kept.
    fn view<R>(&self, f: impl FnOnce(&View<'_>) -> R) -> R {
        fn opt(s: &Option<String>) -> Option<&[u8]> {
            s.as_deref().map(str::as_bytes)
        }
        match &self.request {
            Request::Parsed(p) => f(&View {
                client: opt(&p.client),
                method: p.method.as_bytes(),
                target: p.target.as_bytes(),
                version: p.version,
                host: opt(&p.host),
                referer: opt(&p.referer),
                user_agent: opt(&p.user_agent),
                request_id: opt(&p.request_id),
            }),
            Request::Head {
                head,
                spans,
                client,
                generated,
            } => {
                let at = |r: &std::ops::Range<usize>| head.get(r.clone());
                f(&View {
                    client: client.as_ref().map(http::HeaderValue::as_bytes),
                    method: at(&spans.method).unwrap_or(b"-"),
                    target: at(&spans.target).unwrap_or(b"-"),
                    version: "HTTP/1.1",
                    host: spans.host.as_ref().and_then(at),
                    referer: spans.referer.as_ref().and_then(at),
                    user_agent: spans.user_agent.as_ref().and_then(at),
                    request_id: spans
                        .request_id
                        .as_ref()
                        .and_then(at)
                        .or_else(|| generated.as_ref().map(|(id, n)| &id[..*n])),
                })
            }
        }
    }

    /// The request's fields as the log writes them (for tests and the journal).
    pub fn fields(&self) -> Fields {
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        self.view(|v| Fields {
            client: text(v.client),
            method: String::from_utf8_lossy(v.method).into_owned(),
            target: String::from_utf8_lossy(v.target).into_owned(),
            version: v.version,
            host: text(v.host),
            referer: text(v.referer),
            user_agent: text(v.user_agent),
            request_id: text(v.request_id),
        })
    }
}

enum Message {
    Entry(Box<Entry>),
    Reopen,
    /// Write what is queued, then end; the sender is told when it is done.
    Close(mpsc::Sender<()>),
}

/// The queue to the writer thread.
pub struct AccessLog {
    tx: mpsc::SyncSender<Message>,
    /// The lines of a file log, formatted by the proxy's threads (`None`: the journal).
    lines: Option<Arc<Lines>>,
    format: AccessFormat,
    dropped: Arc<AtomicU64>,
    /// Set by `reopen`; the writer looks at it after each batch (a full queue cannot lose it).
    reopen: Arc<AtomicBool>,
    app: String,
}

/// Why the access log cannot start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {path}: {source}")]
pub struct OpenError {
    path: PathBuf,
    source: std::io::Error,
}

impl AccessLog {
    /// Start the writer, or `None` when `[log] access = "off"`. `dropped` counts the entries
    /// the queue had no room for.
    pub fn start(
        config: &LogConfig,
        app: &str,
        dropped: Arc<AtomicU64>,
    ) -> Result<Option<AccessLog>, OpenError> {
        let sink = match &config.access {
            AccessTarget::Off => return Ok(None),
            AccessTarget::Journal => Sink::Journal,
            AccessTarget::File(path) => Sink::File {
                file: open(path)?,
                path: path.clone(),
            },
        };
        let lines = matches!(sink, Sink::File { .. }).then(|| Arc::new(Lines::new(config.queue)));
        // A file log's channel carries only reopen and close.
        let (tx, rx) = mpsc::sync_channel(if lines.is_some() { 16 } else { config.queue });
        let reopen = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            lines: lines.clone(),
            reopen: reopen.clone(),
            sink,
            format: config.format,
            app: app.to_owned(),
            line: Vec::with_capacity(512),
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| OpenError {
                path: "(writer thread)".into(),
                source,
            })?;
        Ok(Some(AccessLog {
            tx,
            lines,
            format: config.format,
            dropped,
            reopen,
            app: app.to_owned(),
        }))
    }

    /// Log an entry; when `queue` entries wait already it is dropped (and counted), never
    /// waited for.
    pub fn log(&self, entry: Entry) {
        let kept = match &self.lines {
            Some(lines) => lines.push(&entry, self.format),
            // A queued entry keeps a copy of its head, not the connection's buffer.
            None => self
                .tx
                .try_send(Message::Entry(Box::new(entry.detached())))
                .is_ok(),
        };
        if !kept {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reopen the file by its path once the lines queued before are written (logrotate).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // A wake-up for an idle writer; a busy one finds the flag after its batch.
        let _ = self.tx.try_send(Message::Reopen);
        tracing::info!(app = %self.app, "access log: reopening");
    }

    /// Write every queued line, then stop the writer (baton's exit).
    pub fn close(&self, within: Duration) {
        let (done, wait) = mpsc::channel();
        if self.tx.send(Message::Close(done)).is_ok() {
            let _ = wait.recv_timeout(within);
        }
    }
}

fn open(path: &Path) -> Result<std::fs::File, OpenError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| OpenError {
            path: path.to_owned(),
            source,
        })
}

/// A file log's lines, formatted by the proxy's threads and waiting for the writer, in the
/// order their answers ended (one buffer: lines of requests made one after the other stay in
/// that order; the lock is held for one line's copy, or the writer's swap).
struct Lines {
    waiting: std::sync::Mutex<Waiting>,
    /// Lines held at most (`queue`).
    limit: usize,
}

#[derive(Default)]
struct Waiting {
    buf: Vec<u8>,
    lines: usize,
}

impl Lines {
    fn new(queue: usize) -> Lines {
        Lines {
            waiting: Default::default(),
            limit: queue,
        }
    }

    /// Format the entry and append it; false when `queue` lines wait already.
    fn push(&self, e: &Entry, format: AccessFormat) -> bool {
        thread_local! {
            static LINE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
        }
        // Formatted before the lock is taken, so the lock is held for a copy of the line:
        // a proxy thread seldom finds it held by the other, or by the writer.
        LINE.with_borrow_mut(|line| {
            line.clear();
            match format {
                AccessFormat::Combined => combined(e, line),
                AccessFormat::Json => json(e, line),
            }
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if w.lines >= self.limit {
                return false;
            }
            w.lines += 1;
            w.buf.extend_from_slice(line);
            drop(w);
            // A huge head's line does not keep its room for the thread's life.
            if line.capacity() > 64 * 1024 {
                *line = Vec::with_capacity(512);
            }
            true
        })
    }

    /// Take the lines waiting into `out`; the buffer keeps `spare`'s allocation.
    fn take(&self, out: &mut Vec<u8>, spare: &mut Vec<u8>) {
        {
            let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if w.lines == 0 {
                return;
            }
            spare.clear();
            std::mem::swap(&mut w.buf, spare);
            w.lines = 0;
        }
        out.extend_from_slice(spare);
    }
}

enum Sink {
    Journal,
    File { file: std::fs::File, path: PathBuf },
}

struct Writer {
    lines: Option<Arc<Lines>>,
    reopen: Arc<AtomicBool>,
    sink: Sink,
    format: AccessFormat,
    app: String,
    line: Vec<u8>,
}

/// Bytes kept before a write to the file.
const BATCH: usize = 64 * 1024;
/// How long the writer sleeps between two rounds of writing what was queued.
const PERIOD: Duration = Duration::from_millis(20);

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        let mut pending: Vec<u8> = Vec::with_capacity(BATCH);
        let mut spare: Vec<u8> = Vec::new();
        loop {
            // The lines formatted before this round, before any reopen or close asked since.
            if let Some(lines) = &self.lines {
                lines.take(&mut pending, &mut spare);
            }
            // Take everything queued, write it, then sleep one period: the proxy never wakes
            // this thread (a wake-up per line cost more than the line), and a line is on disk
            // within PERIOD of its answer.
            loop {
                match rx.try_recv() {
                    Ok(Message::Entry(e)) => {
                        self.line.clear();
                        match self.format {
                            AccessFormat::Combined => combined(&e, &mut self.line),
                            AccessFormat::Json => json(&e, &mut self.line),
                        }
                        match &self.sink {
                            Sink::Journal => self.journal(&e),
                            Sink::File { .. } => {
                                pending.extend_from_slice(&self.line);
                                if pending.len() >= BATCH {
                                    self.flush(&mut pending);
                                }
                            }
                        }
                    }
                    Ok(Message::Reopen) => {}
                    Ok(Message::Close(done)) => {
                        self.last(&mut pending, &mut spare);
                        let _ = done.send(());
                        return;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.last(&mut pending, &mut spare);
                        return;
                    }
                }
            }
            self.flush(&mut pending);
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.reopen_file();
            }
            std::thread::sleep(PERIOD);
        }
    }

    /// Write all that is left, the lines formatted since this round began too.
    fn last(&mut self, pending: &mut Vec<u8>, spare: &mut Vec<u8>) {
        if let Some(lines) = &self.lines {
            lines.take(pending, spare);
        }
        self.flush(pending);
    }

    fn reopen_file(&mut self) {
        if let Sink::File { file, path } = &mut self.sink {
            match open(path) {
                Ok(f) => *file = f,
                Err(e) => {
                    tracing::error!(app = %self.app, "{e}; writing on to the file open before")
                }
            }
        }
    }

    fn journal(&self, e: &Entry) {
        let line = String::from_utf8_lossy(&self.line);
        let up = e.upstream;
        // The id from the entry's view, not `fields()`: no strings made for the other fields.
        let id = e.view(|v| {
            v.request_id
                .map(|id| String::from_utf8_lossy(id).into_owned())
        });
        tracing::info!(
            target: "baton::access",
            app = %self.app,
            status = e.status,
            worker = up.map(|u| u.worker),
            generation = up.map(|u| u.generation),
            request_id = id.as_deref(),
            "{}",
            line.trim_end()
        );
    }

    fn flush(&mut self, pending: &mut Vec<u8>) {
        if pending.is_empty() {
            return;
        }
        if let Sink::File { file, path } = &mut self.sink
            && let Err(e) = file.write_all(pending)
        {
            tracing::error!(app = %self.app, "cannot write the access log {}: {e}; {} bytes lost", path.display(), pending.len());
        }
        pending.clear();
    }
}

/// nginx's `combined`, then baton's own: request time, upstream time (s), worker,
/// generation, request id, each `-` when there is none.
fn combined(e: &Entry, out: &mut Vec<u8>) {
    e.view(|v| {
        let dash = |b: Option<&[u8]>, out: &mut Vec<u8>| escaped(b.unwrap_or(b"-"), out);
        dash(v.client, out);
        out.extend_from_slice(b" - - [");
        clf_time_cached(e.time.unwrap_or_else(SystemTime::now), out);
        out.extend_from_slice(b"] \"");
        escaped(v.method, out);
        out.push(b' ');
        escaped(v.target, out);
        out.push(b' ');
        out.extend_from_slice(v.version.as_bytes());
        out.extend_from_slice(b"\" ");
        out.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
        out.push(b' ');
        out.extend_from_slice(itoa::Buffer::new().format(e.bytes).as_bytes());
        out.extend_from_slice(b" \"");
        dash(v.referer, out);
        out.extend_from_slice(b"\" \"");
        dash(v.user_agent, out);
        out.extend_from_slice(b"\" ");
        seconds(e.duration, out);
        out.push(b' ');
        match e.upstream {
            Some(u) => {
                seconds(u.time, out);
                out.push(b' ');
                out.extend_from_slice(itoa::Buffer::new().format(u.worker).as_bytes());
                out.push(b' ');
                out.extend_from_slice(itoa::Buffer::new().format(u.generation).as_bytes());
                out.push(b' ');
            }
            None => out.extend_from_slice(b"- - - "),
        }
        dash(v.request_id, out);
        out.push(b'\n');
    });
}

/// Printable ASCII as it is; `"`, `\` and anything else as `\xHH` (as nginx does), so a
/// line cannot be forged or broken by what a client sends.
fn escaped(s: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    /// The bytes written as they are: printable ASCII but `"` and `\`.
    const PLAIN: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0x20;
        while b < 0x7f {
            t[b] = b != b'"' as usize && b != b'\\' as usize;
            b += 1;
        }
        t
    };
    let plain = |b: u8| PLAIN[usize::from(b)];
    let mut rest = s;
    while !rest.is_empty() {
        // Whole runs of plain bytes at once: most fields have nothing to escape.
        let run = rest.iter().position(|&b| !plain(b)).unwrap_or(rest.len());
        out.extend_from_slice(&rest[..run]);
        let Some((&b, tail)) = rest[run..].split_first() else {
            break;
        };
        rest = tail;
        out.extend_from_slice(&[
            b'\\',
            b'x',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 15)],
        ]);
    }
}

/// A duration in seconds with milliseconds, `12.345` (nginx's `$request_time`), rounded to
/// the nearest millisecond.
fn seconds(d: Duration, out: &mut Vec<u8>) {
    // u64 arithmetic: a u128 division per line showed in the profile.
    let ms = d.as_secs() * 1000 + u64::from((d.subsec_nanos() + 500_000) / 1_000_000);
    out.extend_from_slice(itoa::Buffer::new().format(ms / 1000).as_bytes());
    let frac = (ms % 1000) as u16;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// [`clf_time`], remembered per thread for the second it was last asked for: a busy log
/// asks for the same second thousands of times.
fn clf_time_cached(t: SystemTime, out: &mut Vec<u8>) {
    thread_local! {
        static LAST: std::cell::RefCell<(u64, Vec<u8>)> =
            const { std::cell::RefCell::new((u64::MAX, Vec::new())) };
    }
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != secs {
            last.1.clear();
            clf_time(t, &mut last.1);
            last.0 = secs;
        }
        out.extend_from_slice(&last.1);
    });
}

/// `03/Dec/2026:07:01:02 +0000` (UTC).
fn clf_time(t: SystemTime, out: &mut Vec<u8>) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

/// One JSON object per line.
fn json(e: &Entry, out: &mut Vec<u8>) {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        time: String,
        client: Option<&'a str>,
        method: &'a str,
        target: &'a str,
        protocol: &'a str,
        scheme: &'a str,
        host: Option<&'a str>,
        status: u16,
        bytes: u64,
        duration_s: f64,
        upstream_s: Option<f64>,
        worker: Option<u64>,
        generation: Option<u64>,
        request_id: Option<&'a str>,
        referer: Option<&'a str>,
        user_agent: Option<&'a str>,
    }
    let up = e.upstream;
    let f = e.fields();
    let line = Line {
        time: humantime::format_rfc3339_millis(e.time.unwrap_or_else(SystemTime::now)).to_string(),
        client: f.client.as_deref(),
        method: &f.method,
        target: &f.target,
        protocol: f.version,
        scheme: if e.https { "https" } else { "http" },
        host: f.host.as_deref(),
        status: e.status,
        bytes: e.bytes,
        duration_s: e.duration.as_secs_f64(),
        upstream_s: up.map(|u| u.time.as_secs_f64()),
        worker: up.map(|u| u.worker),
        generation: up.map(|u| u.generation),
        request_id: f.request_id.as_deref(),
        referer: f.referer.as_deref(),
        user_agent: f.user_agent.as_deref(),
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Fields {
        Fields {
            client: Some("192.0.2.7".into()),
            method: "GET".into(),
            target: "/cart?id=1".into(),
            version: "HTTP/1.1",
            host: Some("shop.example".into()),
            referer: Some("https://shop.example/".into()),
            user_agent: Some("curl/8 \"quoted\"\n".into()),
            request_id: Some("4f2a".into()),
        }
    }

    fn finished(mut e: Entry) -> Entry {
        e.time = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_281_262));
        e.status = 200;
        e.bytes = 1234;
        e.duration = Duration::from_millis(12);
        e.upstream = Some(Upstream {
            worker: 3,
            generation: 2,
            time: Duration::from_millis(11),
        });
        e
    }

    fn entry() -> Entry {
        finished(Entry::new(fields(), true))
    }

    #[test]
    fn a_head_s_entry_says_what_its_fields_say() {
        let head = b"GET /cart?id=1 HTTP/1.1\r\nHost: shop.example\r\nReferer: https://shop.example/\r\nUser-Agent: curl/8 \"quoted\"\xe9\r\n\r\n";
        let client = http::HeaderValue::from_static("192.0.2.7");
        let e = finished(taken(head, Some(&client), true));
        let want = Fields {
            user_agent: Some("curl/8 \"quoted\"\u{fffd}".into()),
            ..fields()
        };
        assert_eq!(e.fields(), want);
        // The line has the client's bytes, escaped, not their lossy UTF-8 form.
        let mut line = Vec::new();
        combined(&e, &mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "192.0.2.7 - - [03/Dec/2026:07:01:02 +0000] \"GET /cart?id=1 HTTP/1.1\" 200 1234 \"https://shop.example/\" \"curl/8 \\x22quoted\\x22\\xE9\" 0.012 0.011 3 2 4f2a\n"
        );
        // The client's own valid id wins over the one baton made.
        let head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-123\r\n\r\n";
        let f = taken(head, None, false).fields();
        assert_eq!(
            (f.request_id.as_deref(), f.version, f.client),
            (Some("abc-123"), "HTTP/1.1", None)
        );
    }

    /// The entry the narrow path makes of a head it took (request ids on, baton's `4f2a`).
    fn taken(head: &[u8], client: Option<&http::HeaderValue>, https: bool) -> Entry {
        let ids = crate::policy::Client {
            ip: None,
            trusted: false,
            https,
            request_id: Some(b"4f2a"),
        };
        let limits = crate::policy::Limits {
            max_head: 8192,
            max_body: 0,
        };
        let crate::h1::Request::Simple(s) =
            crate::h1::request(head, ids, &limits, 0, &mut Vec::new())
        else {
            panic!("the narrow path did not take {head:?}");
        };
        let head = bytes::Bytes::copy_from_slice(&head[..s.len]);
        Entry::from_head(head, s.spans, client, https, Some(b"4f2a"))
    }

    #[test]
    fn combined_is_nginx_s_with_baton_s_fields_after_it() {
        let mut out = Vec::new();
        combined(&entry(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "192.0.2.7 - - [03/Dec/2026:07:01:02 +0000] \"GET /cart?id=1 HTTP/1.1\" 200 1234 \"https://shop.example/\" \"curl/8 \\x22quoted\\x22\\x0A\" 0.012 0.011 3 2 4f2a\n"
        );
        let mut out = Vec::new();
        let mut e = finished(Entry::new(
            Fields {
                request_id: None,
                referer: None,
                ..fields()
            },
            true,
        ));
        e.upstream = None;
        combined(&e, &mut out);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("\"-\" \"curl/8 \\x22quoted\\x22\\x0A\" 0.012 - - - -\n")
        );
    }

    #[test]
    fn json_is_one_object_per_line() {
        let mut out = Vec::new();
        json(&entry(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["time"], "2026-12-03T07:01:02.000Z");
        assert_eq!(v["status"], 200);
        assert_eq!(v["worker"], 3);
        assert_eq!(v["generation"], 2);
        assert_eq!(v["scheme"], "https");
        assert_eq!(v["user_agent"], "curl/8 \"quoted\"\n");
    }

    #[test]
    fn seconds_with_milliseconds() {
        let at = |d: Duration| {
            let mut out = Vec::new();
            seconds(d, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(Duration::ZERO), "0.000");
        assert_eq!(at(Duration::from_micros(1_499)), "0.001");
        assert_eq!(at(Duration::from_micros(1_500)), "0.002");
        assert_eq!(at(Duration::from_millis(12_345)), "12.345");
        assert_eq!(at(Duration::from_micros(999_600)), "1.000");
    }

    #[test]
    fn dates_of_the_common_log_format() {
        let at = |s: u64| {
            let mut out = Vec::new();
            clf_time(SystemTime::UNIX_EPOCH + Duration::from_secs(s), &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(at(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(at(4_107_542_399), "28/Feb/2100:23:59:59 +0000");
        assert_eq!(at(4_133_980_799), "31/Dec/2100:23:59:59 +0000");
    }

    #[test]
    fn lines_from_many_threads_are_written_whole_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let config = LogConfig {
            access: AccessTarget::File(path.clone()),
            format: AccessFormat::Combined,
            queue: 1 << 20,
            request_id: None,
        };
        let dropped = Arc::new(AtomicU64::new(0));
        let log = Arc::new(
            AccessLog::start(&config, "t", dropped.clone())
                .unwrap()
                .unwrap(),
        );
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        log.log(finished(Entry::new(
                            Fields {
                                request_id: Some(format!("{t}-{i}")),
                                ..fields()
                            },
                            true,
                        )));
                        if i == 2_500 {
                            // Across a reopen, as logrotate does.
                            log.reopen();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.close(Duration::from_secs(10));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut ids: Vec<&str> = text
            .lines()
            .map(|l| {
                assert!(l.starts_with("192.0.2.7 - - ["), "{l}");
                l.rsplit(' ').next().unwrap()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 40_000);
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_never_waits() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            access: AccessTarget::File(dir.path().join("access.log")),
            format: AccessFormat::Combined,
            queue: 1,
            request_id: None,
        };
        let dropped = Arc::new(AtomicU64::new(0));
        let log = AccessLog::start(&config, "t", dropped.clone())
            .unwrap()
            .unwrap();
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            log.log(entry());
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        log.close(Duration::from_secs(10));
        let lines = std::fs::read_to_string(dir.path().join("access.log"))
            .unwrap()
            .lines()
            .count() as u64;
        assert_eq!(lines + dropped.load(Ordering::Relaxed), 10_000);
    }
}

#[cfg(test)]
mod cost {
    //! `cargo test --release --lib access::cost -- --ignored --nocapture`: what the log costs
    //! a narrow-path request on the proxy's thread, in nanoseconds, without the machine's noise
    //! of a whole proxy under load.
    use super::*;

    #[test]
    #[ignore]
    fn nanoseconds_per_request() {
        let head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
        let limits = crate::policy::Limits {
            max_head: 8192,
            max_body: 0,
        };
        let client = http::HeaderValue::from_static("127.0.0.1");
        let lines = Lines::new(usize::MAX);
        let n = 2_000_000u32;
        for ids in [false, true] {
            let mut out = Vec::new();
            let c = crate::policy::Client {
                ip: Some(b"127.0.0.1"),
                trusted: false,
                https: false,
                request_id: ids.then_some(b"0123456789abcdef0123456789abcdef".as_slice()),
            };
            let t = std::time::Instant::now();
            for _ in 0..n {
                let r = crate::h1::request(head, c, &limits, 0, &mut out);
                std::hint::black_box(&r);
            }
            let parse = t.elapsed() / n;
            let mut input = bytes::BytesMut::new();
            let t = std::time::Instant::now();
            for i in 0..n {
                if input.capacity() - input.len() < 1024 {
                    input.reserve(4096);
                }
                input.extend_from_slice(head);
                let crate::h1::Request::Simple(s) =
                    crate::h1::request(&input, c, &limits, 0, &mut out)
                else {
                    panic!()
                };
                let mut e = Entry::from_head(
                    input.split_to(s.len).freeze(),
                    s.spans,
                    Some(&client),
                    false,
                    c.request_id,
                );
                e.status = 200;
                e.bytes = 13;
                e.duration = Duration::from_micros(250);
                lines.push(&e, AccessFormat::Combined);
                if i % 1000 == 0 {
                    lines.take(&mut Vec::new(), &mut Vec::new());
                }
            }
            let logged = t.elapsed() / n;
            println!(
                "request ids {ids}: h1::request {parse:?}, with the log's entry and line {logged:?}"
            );
        }
    }
}
