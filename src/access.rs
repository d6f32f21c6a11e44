//! The access log (`[log] access`): one line per request, to a file or to the journal, in
//! nginx's `combined` format (with baton's own fields after it) or as JSON.
//!
//! A line is written in two steps. When a request's head is read, [`AccessLog::begin`] writes
//! what the request says (client, time, request line, referer, user agent, request id) into
//! the request's [`Entry`], in the log's format, from the bytes just parsed: they are in the
//! processor's cache then, where at the answer's end each field was a cache miss (most of
//! what the log used to cost the proxy). When the answer ends, [`AccessLog::log`] puts the
//! answer's fields (status, bytes, times, worker) between those pieces.
//!
//! The proxy never waits for it. To a file: the proxy's thread finishes the line straight
//! into a bounded buffer, and a thread of the log's own takes the buffer every 20 ms and
//! writes it, so no request wakes it and no line crosses a channel. To the journal: the line
//! goes into a bounded queue (`try_send`) that the same thread empties every 20 ms. When the
//! buffer or the queue holds `queue` entries (a disk that stalls, a journal that cannot keep
//! up), the entry is dropped and counted (`baton_access_log_dropped_total`), never waited
//! for. `reopen` (SIGUSR1, `baton reopen-logs`) makes the writer reopen the file by its path
//! after the lines before it are written, for logrotate without `copytruncate`: nothing is
//! lost, as lines written meanwhile go to the renamed file.

use crate::config::{AccessFormat, AccessTarget, LogConfig};
use crate::util::{HEX, HEX_UPPER};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

/// A request as the log tells it, borrowed from wherever the request is: a head the narrow
/// path has just parsed, or hyper's parts.
///
/// The client, the method and the request id are plain by construction (an address baton
/// formatted, an HTTP token its parser checked, an id baton made or checked: [`all_plain`]),
/// so a combined line takes them as they are; the target, referer and user agent are the
/// client's own bytes and are escaped.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The client's IP (none on a Unix socket).
    pub client: Option<&'a [u8]>,
    pub method: &'a [u8],
    pub target: &'a [u8],
    /// `HTTP/1.1`, `HTTP/2.0`...
    pub version: &'static str,
    pub https: bool,
    pub host: Option<&'a [u8]>,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    /// The id the worker was given (the client's own, or baton's).
    pub request_id: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// A head the narrow path took, its fields at `spans`. `generated`: the id baton gave
    /// the request, unless it had a valid one of its own.
    pub fn from_head(
        head: &'a [u8],
        spans: &crate::h1::Spans,
        client: Option<&'a [u8]>,
        https: bool,
        generated: Option<&'a [u8]>,
    ) -> Request<'a> {
        let at = |r: &Range<usize>| head.get(r.clone());
        Request {
            client,
            method: at(&spans.method).unwrap_or(b"-"),
            target: at(&spans.target).unwrap_or(b"-"),
            version: "HTTP/1.1",
            https,
            host: spans.host.as_ref().and_then(at),
            referer: spans.referer.as_ref().and_then(at),
            user_agent: spans.user_agent.as_ref().and_then(at),
            request_id: spans.request_id.as_ref().and_then(at).or(generated),
        }
    }

    /// A request hyper parsed (HTTP/2, or hyper's HTTP/1.1 path); `request_id`: the one the
    /// worker was given.
    pub fn from_parts(
        parts: &'a http::request::Parts,
        client: Option<&'a [u8]>,
        https: bool,
        request_id: Option<&'a [u8]>,
    ) -> Request<'a> {
        let header = |n: http::header::HeaderName| parts.headers.get(n).map(|v| v.as_bytes());
        let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
        Request {
            client,
            method: parts.method.as_str().as_bytes(),
            // Origin form's path and query; the authority of CONNECT's.
            target: parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().as_bytes())
                .or(authority)
                .unwrap_or(b"-"),
            version: match parts.version {
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            https,
            host: header(http::header::HOST).or(authority),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            request_id,
        }
    }
}

/// The most of a request line kept to tell of a head that no codec took ([`request_line`]).
pub const REFUSED_LINE: usize = 4096;

/// The request line at the start of `input`, the bytes a client sent: empty lines before it
/// skipped (as parsers do), up to its line feed (a CR before it left out), at most
/// [`REFUSED_LINE`] bytes of it.
pub fn request_line(input: &[u8]) -> &[u8] {
    let start = input
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(input.len());
    let input = &input[start..];
    let input = &input[..input.len().min(REFUSED_LINE)];
    let line = match input.iter().position(|&b| b == b'\n') {
        Some(n) => &input[..n],
        None => input,
    };
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// An HTTP token's byte (RFC 9110 5.6.2): a method is made of them.
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl<'a> Request<'a> {
    /// A request that no codec took (hyper's own 400, 414 or 431 to a head it could not
    /// parse), told by what its request line's bytes say (`line`, see [`request_line`]; empty
    /// when they are not known): its first word as the method when it is a token, its last as
    /// the version when it is `HTTP/1.1` or `HTTP/1.0`, the rest as the target, `-` for what
    /// is not there. The method is plain (a token), as [`Request`] requires.
    pub fn refused(line: &'a [u8], client: Option<&'a [u8]>, https: bool) -> Request<'a> {
        let (method, rest): (&[u8], &[u8]) = match line.iter().position(|&b| b == b' ') {
            Some(n) if n > 0 && line[..n].iter().all(|&b| tchar(b)) => (&line[..n], &line[n + 1..]),
            _ => (b"-", line),
        };
        let (target, version) = match rest.len().checked_sub(9).map(|n| rest.split_at(n)) {
            Some((t, b" HTTP/1.1")) => (t, "HTTP/1.1"),
            Some((t, b" HTTP/1.0")) => (t, "HTTP/1.0"),
            _ => (rest, "-"),
        };
        Request {
            client,
            method,
            target: if target.is_empty() { b"-" } else { target },
            version,
            https,
            host: None,
            referer: None,
            user_agent: None,
            request_id: None,
        }
    }
}

/// One request's line: what the request said, written when it came ([`AccessLog::begin`]),
/// and the answer's fields, set as it goes and written by [`AccessLog::log`].
///
/// The narrow path keeps one per connection, so its buffer is made once, not per request.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub status: u16,
    /// Bytes of the answer's body sent to the client.
    pub bytes: u64,
    /// From the head read to the answer's last byte written (or the connection's end).
    pub duration: Duration,
    /// The worker that answered, if one did.
    pub upstream: Option<Upstream>,
    format: AccessFormat,
    /// The request's part of the line, in the log's format, in three pieces: the answer's
    /// fields go between them, at `cuts`.
    written: Vec<u8>,
    cuts: [usize; 2],
    /// Where the request id is in `written` (a journal entry's field).
    request_id: Option<Range<usize>>,
}

/// Who answered a request, and how long its answer head took from the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub worker: u64,
    pub generation: u64,
    pub time: Duration,
}

/// A request's part of the line held at most between two requests on a connection (a huge
/// head's line does not keep its room for the connection's life).
const KEEP: usize = 4096;

impl Entry {
    /// Write what `r` says, at `time` (since the epoch), in `format`; the answer's fields are
    /// reset.
    fn begin(&mut self, format: AccessFormat, time: Duration, r: &Request<'_>) {
        self.trim();
        self.written.clear();
        self.status = 0;
        self.bytes = 0;
        self.duration = Duration::ZERO;
        self.upstream = None;
        self.format = format;
        let out = &mut self.written;
        match format {
            AccessFormat::Combined => {
                // A field that is plain by construction (see `Request`) goes through the same
                // escape as a client's bytes all the same: for a plain field that is one check
                // and a copy, and a field that breaks the promise (a codec's bug, a new way in)
                // can still not forge or break a line, in a release build too. `-` for none.
                let plain = |b: Option<&[u8]>, out: &mut Vec<u8>| escaped(b.unwrap_or(b"-"), out);
                let dash = |b: Option<&[u8]>, out: &mut Vec<u8>| match b {
                    Some(b) => escaped(b, out),
                    None => out.push(b'-'),
                };
                plain(r.client, out);
                out.extend_from_slice(b" - - [");
                clf_time_cached(time.as_secs(), out);
                out.extend_from_slice(b"] \"");
                plain(Some(r.method), out);
                out.push(b' ');
                escaped(r.target, out);
                out.push(b' ');
                out.extend_from_slice(r.version.as_bytes());
                out.extend_from_slice(b"\" ");
                self.cuts[0] = out.len();
                out.extend_from_slice(b" \"");
                dash(r.referer, out);
                out.extend_from_slice(b"\" \"");
                dash(r.user_agent, out);
                out.extend_from_slice(b"\" ");
                self.cuts[1] = out.len();
                let id = out.len();
                plain(r.request_id, out);
                self.request_id = r.request_id.map(|_| id..out.len());
                out.push(b'\n');
            }
            AccessFormat::Json => {
                out.extend_from_slice(b"{\"time\":\"");
                let at = SystemTime::UNIX_EPOCH + time;
                let _ = write!(out, "{}", humantime::format_rfc3339_millis(at));
                out.extend_from_slice(b"\",\"client\":");
                json_text(r.client, out);
                out.extend_from_slice(b",\"method\":");
                json_text(Some(r.method), out);
                out.extend_from_slice(b",\"target\":");
                json_text(Some(r.target), out);
                out.extend_from_slice(b",\"protocol\":\"");
                out.extend_from_slice(r.version.as_bytes());
                out.extend_from_slice(if r.https {
                    b"\",\"scheme\":\"https\",\"host\":"
                } else {
                    b"\",\"scheme\":\"http\",\"host\":"
                });
                json_text(r.host, out);
                out.extend_from_slice(b",\"request_id\":");
                let id = out.len();
                json_text(r.request_id, out);
                // Within its quotes (an id is plain ASCII: nothing in it is escaped).
                self.request_id = r.request_id.map(|_| id + 1..out.len() - 1);
                out.extend_from_slice(b",\"referer\":");
                json_text(r.referer, out);
                out.extend_from_slice(b",\"user_agent\":");
                json_text(r.user_agent, out);
                self.cuts = [out.len(), out.len()];
                out.extend_from_slice(b"}\n");
            }
        }
    }

    /// The whole line, the answer's fields put between the request's pieces.
    fn finish(&self, out: &mut Vec<u8>) {
        let [a, b] = self.cuts;
        let w = &self.written;
        match self.format {
            AccessFormat::Combined => {
                // The answer's fields take at most 26 + 96 bytes: one reservation, then
                // pushes and copies of a few bytes each (the common numbers have short forms).
                out.reserve(w.len() + 128);
                out.extend_from_slice(&w[..a]);
                status(self.status, out);
                out.push(b' ');
                num(self.bytes, out);
                out.extend_from_slice(&w[a..b]);
                seconds(self.duration, out);
                match self.upstream {
                    Some(u) => {
                        out.push(b' ');
                        seconds(u.time, out);
                        out.push(b' ');
                        num(u.worker, out);
                        out.push(b' ');
                        num(u.generation, out);
                        out.push(b' ');
                    }
                    None => out.extend_from_slice(b" - - - "),
                }
            }
            AccessFormat::Json => {
                out.extend_from_slice(&w[..a]);
                let up = self.upstream;
                out.extend_from_slice(b",\"status\":");
                status(self.status, out);
                out.extend_from_slice(b",\"bytes\":");
                num(self.bytes, out);
                out.extend_from_slice(b",\"duration_s\":");
                json_value(self.duration.as_secs_f64(), out);
                out.extend_from_slice(b",\"upstream_s\":");
                json_value(up.map(|u| u.time.as_secs_f64()), out);
                out.extend_from_slice(b",\"worker\":");
                json_value(up.map(|u| u.worker), out);
                out.extend_from_slice(b",\"generation\":");
                json_value(up.map(|u| u.generation), out);
                out.extend_from_slice(&w[a..b]);
            }
        }
        out.extend_from_slice(&w[b..]);
    }

    /// Between two requests: give back the room a huge head's line took (escaped, a line
    /// can be four times its head), so that an idle connection keeps what a common line needs.
    pub fn trim(&mut self) {
        if self.written.capacity() > KEEP {
            self.written = Vec::new();
        }
    }

    /// The request id, when it had one.
    fn request_id(&self) -> Option<&[u8]> {
        self.request_id.clone().and_then(|r| self.written.get(r))
    }
}

enum Message {
    Journal(Box<JournalLine>),
    Reopen,
    /// Write what is queued, then end; the sender is told when it is done.
    Close(mpsc::Sender<()>),
}

/// A line for the journal, and the fields its entry has beside it.
struct JournalLine {
    line: Vec<u8>,
    status: u16,
    upstream: Option<Upstream>,
    request_id: Option<String>,
}

impl JournalLine {
    fn of(entry: &Entry) -> JournalLine {
        let mut line = Vec::with_capacity(entry.written.len() + 64);
        entry.finish(&mut line);
        JournalLine {
            line,
            status: entry.status,
            upstream: entry.upstream,
            request_id: entry
                .request_id()
                .map(|id| String::from_utf8_lossy(id).into_owned()),
        }
    }
}

/// Bytes the lines waiting for the writer may take, per line of `queue`. A line is a few
/// hundred bytes, but one of a huge head, escaped, up to four times that head: a flood of them
/// while the disk or the journal stalls costs at most `queue` KiB, not `queue` huge lines.
const BYTES_PER_LINE: usize = 1024;

/// The queue to the writer thread.
pub struct AccessLog {
    tx: mpsc::SyncSender<Message>,
    /// The lines of a file log, formatted by the proxy's threads (`None`: the journal).
    lines: Option<Arc<Lines>>,
    /// Bytes of the journal's lines in the queue, and how many it may hold.
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
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
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            lines: lines.clone(),
            queued: queued.clone(),
            reopen: reopen.clone(),
            sink,
            app: app.to_owned(),
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
            queued,
            max_bytes: config.queue.saturating_mul(BYTES_PER_LINE),
            format: config.format,
            dropped,
            reopen,
            app: app.to_owned(),
        }))
    }

    /// Begin `entry` for a request whose head was read now: what the request says is
    /// written at once (see the module's doc), the answer's fields are reset.
    pub fn begin(&self, entry: &mut Entry, request: &Request<'_>) {
        entry.begin(self.format, now(self.format), request);
    }

    /// A new entry, begun ([`AccessLog::begin`]).
    pub fn entry(&self, request: &Request<'_>) -> Entry {
        let mut e = Entry::default();
        self.begin(&mut e, request);
        e
    }

    /// Log an entry begun by this log, its answer's fields set; when `queue` entries wait
    /// already it is dropped (and counted), never waited for.
    pub fn log(&self, entry: &Entry) {
        if entry.written.is_empty() {
            // Never begun: no request to tell of (and no line end to keep lines apart).
            return;
        }
        let kept = match &self.lines {
            Some(lines) => lines.push(entry),
            None => {
                let line = JournalLine::of(entry);
                let n = line.line.len();
                let kept = self.queued.fetch_add(n, Ordering::Relaxed) < self.max_bytes
                    && self.tx.try_send(Message::Journal(Box::new(line))).is_ok();
                if !kept {
                    self.queued.fetch_sub(n, Ordering::Relaxed);
                }
                kept
            }
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

/// A file log's lines, finished by the proxy's threads and waiting for the writer, in the
/// order their answers ended (one buffer: lines of requests made one after the other stay in
/// that order; the lock is held for one line's copy, or the writer's swap).
struct Lines {
    waiting: std::sync::Mutex<Waiting>,
    /// Lines held at most (`queue`).
    limit: usize,
    /// Bytes held at most (beyond, no line is added).
    max_bytes: usize,
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
            max_bytes: queue.saturating_mul(BYTES_PER_LINE),
        }
    }

    /// Finish the entry's line into the buffer; false when `queue` lines (or `queue` KiB)
    /// wait already.
    fn push(&self, e: &Entry) -> bool {
        // Straight into the buffer, under the lock: the request's part is written already, so
        // the lock is held for three copies and a few numbers (no copy of the line made first).
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if w.lines >= self.limit || w.buf.len() >= self.max_bytes {
            return false;
        }
        w.lines += 1;
        e.finish(&mut w.buf);
        true
    }

    /// Take the lines waiting into `out`: swapped with it when it is empty (as the writer's
    /// is after each round), so the lines are not copied and the buffer keeps `out`'s
    /// allocation.
    fn take(&self, out: &mut Vec<u8>) {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if w.lines == 0 {
            return;
        }
        if out.is_empty() {
            std::mem::swap(&mut w.buf, out);
        } else {
            out.extend_from_slice(&w.buf);
            w.buf.clear();
        }
        w.lines = 0;
    }
}

enum Sink {
    Journal,
    File { file: std::fs::File, path: PathBuf },
}

struct Writer {
    lines: Option<Arc<Lines>>,
    /// The journal's bytes in the queue (see [`AccessLog`]).
    queued: Arc<AtomicUsize>,
    reopen: Arc<AtomicBool>,
    sink: Sink,
    app: String,
}

/// Room the writer's buffer starts with.
const BATCH: usize = 64 * 1024;
/// How long the writer sleeps between two rounds of writing what was queued.
const PERIOD: Duration = Duration::from_millis(20);

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        let mut pending: Vec<u8> = Vec::with_capacity(BATCH);
        loop {
            // The lines formatted before this round, before any reopen or close asked since.
            if let Some(lines) = &self.lines {
                lines.take(&mut pending);
            }
            // Take everything queued, write it, then sleep one period: the proxy never wakes
            // this thread (a wake-up per line cost more than the line), and a line is on disk
            // within PERIOD of its answer.
            loop {
                match rx.try_recv() {
                    Ok(Message::Journal(line)) => {
                        self.journal(&line);
                        self.queued.fetch_sub(line.line.len(), Ordering::Relaxed);
                    }
                    Ok(Message::Reopen) => {}
                    Ok(Message::Close(done)) => {
                        self.last(&mut pending);
                        let _ = done.send(());
                        return;
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.last(&mut pending);
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
    fn last(&mut self, pending: &mut Vec<u8>) {
        if let Some(lines) = &self.lines {
            lines.take(pending);
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

    fn journal(&self, l: &JournalLine) {
        let line = String::from_utf8_lossy(&l.line);
        let up = l.upstream;
        tracing::info!(
            target: "baton::access",
            app = %self.app,
            status = l.status,
            worker = up.map(|u| u.worker),
            generation = up.map(|u| u.generation),
            request_id = l.request_id.as_deref(),
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

/// A byte written as it is: printable ASCII but `"` and `\`.
const fn plain(b: u8) -> bool {
    (b.wrapping_sub(0x20) < 0x5f) & (b != b'"') & (b != b'\\')
}

/// Whether every byte of `s` is [`plain`]: eight bytes at a time (most of a line's fields are
/// short, and a byte-at-a-time check of them was a quarter of what the log cost the proxy).
fn all_plain(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Whether any byte of `v` is zero (exact for the word, whichever byte it flags).
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let mut words = s.chunks_exact(8);
    let mut bad = 0;
    for w in &mut words {
        let w = w.try_into().map(u64::from_le_bytes).unwrap_or(0);
        bad |= (w.wrapping_sub(ONES * 0x20) & !w & HIGH) // a byte below 0x20
            | ((w.wrapping_add(ONES) | w) & HIGH) // 0x7f and above
            | zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')));
    }
    bad == 0 && words.remainder().iter().all(|&b| plain(b))
}

/// Printable ASCII as it is; `"`, `\` and anything else as `\xHH` (as nginx does), so a
/// line cannot be forged or broken by what a client sends.
fn escaped(s: &[u8], out: &mut Vec<u8>) {
    // Most fields have nothing to escape: checked, then copied whole.
    if all_plain(s) {
        out.extend_from_slice(s);
        return;
    }
    let mut rest = s;
    while !rest.is_empty() {
        let run = rest.iter().position(|&b| !plain(b)).unwrap_or(rest.len());
        out.extend_from_slice(&rest[..run]);
        let Some((&b, tail)) = rest[run..].split_first() else {
            break;
        };
        rest = tail;
        out.extend_from_slice(&[
            b'\\',
            b'x',
            HEX_UPPER[usize::from(b >> 4)],
            HEX_UPPER[usize::from(b & 15)],
        ]);
    }
}

/// Now, since the epoch, as precisely as `format` tells it: a combined line's date is to the
/// second, so it reads the kernel's coarse clock (the time of the last tick, no clock source
/// read per request, as nginx's cached time); JSON's is to the millisecond.
fn now(format: AccessFormat) -> Duration {
    use nix::time::{ClockId, clock_gettime};
    let coarse = match format {
        AccessFormat::Combined => {
            clock_gettime(ClockId::CLOCK_REALTIME_COARSE)
                .ok()
                .and_then(|t| {
                    let (s, ns) = (
                        u64::try_from(t.tv_sec()).ok()?,
                        u32::try_from(t.tv_nsec()).ok()?,
                    );
                    Some(Duration::new(s, ns))
                })
        }
        AccessFormat::Json => None,
    };
    coarse.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
    })
}

/// `v`'s decimal digits (one digit, a worker's or a generation's number, without `itoa`).
fn num(v: u64, out: &mut Vec<u8>) {
    if v < 10 {
        out.push(b'0' + v as u8);
    } else {
        out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }
}

/// The three digits of every number below 1000: a status, or the milliseconds of a duration,
/// in one load (they were three divisions each).
const THREE: [[u8; 3]; 1000] = {
    let mut t = [[0; 3]; 1000];
    let mut i = 0;
    while i < 1000 {
        t[i] = [
            b'0' + (i / 100) as u8,
            b'0' + (i / 10 % 10) as u8,
            b'0' + (i % 10) as u8,
        ];
        i += 1;
    }
    t
};

/// A duration in seconds with milliseconds, `12.345` (nginx's `$request_time`), rounded to
/// the nearest millisecond.
fn seconds(d: Duration, out: &mut Vec<u8>) {
    // u64 arithmetic: a u128 division per line showed in the profile.
    let ms = d.as_secs() * 1000 + u64::from((d.subsec_nanos() + 500_000) / 1_000_000);
    let (s, [a, b, c]) = (ms / 1000, THREE[(ms % 1000) as usize]);
    if s < 10 {
        // Most answers take less than ten seconds: five bytes, one copy.
        out.extend_from_slice(&[b'0' + s as u8, b'.', a, b, c]);
    } else {
        num(s, out);
        out.extend_from_slice(&[b'.', a, b, c]);
    }
}

/// A status as its digits (three, unless baton's own answer was none).
fn status(s: u16, out: &mut Vec<u8>) {
    match THREE.get(usize::from(s)) {
        Some(digits) if s >= 100 => out.extend_from_slice(digits),
        _ => num(s.into(), out),
    }
}

/// [`clf_time`] of `secs` since the epoch, remembered per thread for the second it was last
/// asked for: a busy log asks for the same second thousands of times.
fn clf_time_cached(secs: u64, out: &mut Vec<u8>) {
    /// `dd/Mon/yyyy:hh:mm:ss +0000`.
    const LEN: usize = 26;
    thread_local! {
        static LAST: std::cell::Cell<(u64, [u8; LEN])> =
            const { std::cell::Cell::new((u64::MAX, [0; LEN])) };
    }
    let (at, date) = LAST.get();
    if at == secs {
        out.extend_from_slice(&date);
        return;
    }
    let start = out.len();
    clf_time(secs, out);
    // A year of five digits is not remembered (nor met before the year 10000).
    if let Some(Ok(date)) = out.get(start..).map(<[u8; LEN]>::try_from) {
        LAST.set((secs, date));
    }
}

/// `03/Dec/2026:07:01:02 +0000` (UTC).
fn clf_time(secs: u64, out: &mut Vec<u8>) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
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

/// A JSON string of `s` (its bytes as UTF-8, each sequence that is not as one U+FFFD, as
/// `String::from_utf8_lossy` does), or `null`. Beyond what JSON requires, every other control
/// character (DEL, C1: U+0085 NEL is one) and U+2028/U+2029 are escaped as well: a reader that
/// splits lines on any Unicode line end (a JavaScript one, Python's `str.splitlines`) must see
/// one line per entry, as a combined line gives it.
fn json_text(s: Option<&[u8]>, out: &mut Vec<u8>) {
    let Some(s) = s else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'"');
    // Most fields are printable ASCII: checked eight bytes at a time, then copied whole.
    if all_plain(s) {
        out.extend_from_slice(s);
    } else {
        json_escaped(s, out);
    }
    out.push(b'"');
}

/// The bytes [`json_escaped`] copies as they are from valid UTF-8: [`plain`] ones, and those
/// of characters beyond ASCII but the lead bytes of the ones it escapes (`C2` begins U+0080 to
/// U+00BF, `E2` U+2000 to U+2FFF); a lead byte is never a continuation byte, so a run of these
/// bytes is whole characters.
const JSON_PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        t[b] = plain(byte) || (byte >= 0x80 && byte != 0xc2 && byte != 0xe2);
        b += 1;
    }
    t
};

/// [`json_text`]'s string, without its quotes, of a field that is not all [`plain`].
fn json_escaped(s: &[u8], out: &mut Vec<u8>) {
    let unicode = |c: u32, out: &mut Vec<u8>| {
        let d = |shift: u32| HEX[((c >> shift) & 15) as usize];
        out.extend_from_slice(&[b'\\', b'u', d(12), d(8), d(4), d(0)]);
    };
    for chunk in s.utf8_chunks() {
        let text = chunk.valid().as_bytes();
        let mut at = 0;
        while let Some(skip) = text[at..].iter().position(|&b| !JSON_PLAIN[usize::from(b)]) {
            out.extend_from_slice(&text[at..at + skip]);
            at += skip;
            // Bytes taken here; valid UTF-8, so a lead byte has its continuation bytes.
            let took = match text[at..] {
                [] => break,
                [b'"', ..] => {
                    out.extend_from_slice(b"\\\"");
                    1
                }
                [b'\\', ..] => {
                    out.extend_from_slice(b"\\\\");
                    1
                }
                [b'\n', ..] => {
                    out.extend_from_slice(b"\\n");
                    1
                }
                [b'\r', ..] => {
                    out.extend_from_slice(b"\\r");
                    1
                }
                [b'\t', ..] => {
                    out.extend_from_slice(b"\\t");
                    1
                }
                // C1 controls (U+0085 NEL is one): C2 80 to C2 9F.
                [0xc2, c @ 0x80..=0x9f, ..] => {
                    unicode(c.into(), out);
                    2
                }
                // U+2028, U+2029: E2 80 A8, E2 80 A9.
                [0xe2, 0x80, c @ (0xa8 | 0xa9), ..] => {
                    unicode(0x2000 + u32::from(c - 0x80), out);
                    3
                }
                // Another character's lead byte: its continuation bytes follow in the next run.
                [lead @ (0xc2 | 0xe2), ..] => {
                    out.push(lead);
                    1
                }
                // The rest of C0, and DEL.
                [c, ..] => {
                    unicode(c.into(), out);
                    1
                }
            };
            at += took;
        }
        out.extend_from_slice(&text[at..]);
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
}

/// A JSON value (a number, a string, `null` for `None`).
fn json_value(v: impl serde::Serialize, out: &mut Vec<u8>) {
    if serde_json::to_writer(&mut *out, &v).is_err() {
        // Only a float that is not a number fails, and no duration is one.
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-03T07:01:02Z.
    const AT: u64 = 1_796_281_262;

    fn request() -> Request<'static> {
        Request {
            client: Some(b"192.0.2.7"),
            method: b"GET",
            target: b"/cart?id=1",
            version: "HTTP/1.1",
            https: true,
            host: Some(b"shop.example"),
            referer: Some(b"https://shop.example/"),
            user_agent: Some(b"curl/8 \"quoted\"\n"),
            request_id: Some(b"4f2a"),
        }
    }

    #[test]
    fn fields_plain_by_construction_are_escaped_when_they_are_not() {
        // What no codec gives today: the line stays one line, in every build, and says so.
        let r = Request {
            client: Some(b"192.0.2.7\n"),
            method: b"GE\"T",
            request_id: Some(b"4f\x002a\r\n"),
            ..request()
        };
        let l = line(AccessFormat::Combined, &r);
        assert_eq!(l.split(LINE_ENDS).count(), 2, "{l:?}");
        assert!(l.is_ascii(), "{l:?}");
        assert!(l.starts_with("192.0.2.7\\x0A - - ["), "{l:?}");
        assert!(l.contains("\"GE\\x22T /cart?id=1 HTTP/1.1\""), "{l:?}");
        assert!(l.ends_with(" 4f\\x002a\\x0D\\x0A\n"), "{l:?}");
        // A plain field is as it was.
        let l = line(AccessFormat::Combined, &request());
        assert!(
            l.starts_with("192.0.2.7 - - [") && l.ends_with(" 4f2a\n"),
            "{l:?}"
        );
    }

    /// The line of `r`, answered by worker 3 of generation 2.
    fn line(format: AccessFormat, r: &Request<'_>) -> String {
        let mut e = Entry::default();
        e.begin(format, Duration::from_secs(AT), r);
        answered(&mut e);
        let mut out = Vec::new();
        e.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn answered(e: &mut Entry) {
        e.status = 200;
        e.bytes = 1234;
        e.duration = Duration::from_millis(12);
        e.upstream = Some(Upstream {
            worker: 3,
            generation: 2,
            time: Duration::from_millis(11),
        });
    }

    /// The request the narrow path makes of a head it took (request ids on, baton's `4f2a`).
    fn taken(head: &[u8], client: Option<&'static [u8]>, f: impl FnOnce(Request<'_>)) {
        let ids = crate::policy::Client {
            ip: None,
            trusted: false,
            https: true,
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
        f(Request::from_head(
            &head[..s.len],
            &s.spans,
            client,
            true,
            Some(b"4f2a"),
        ))
    }

    #[test]
    fn combined_is_nginx_s_with_baton_s_fields_after_it() {
        assert_eq!(
            line(AccessFormat::Combined, &request()),
            "192.0.2.7 - - [03/Dec/2026:07:01:02 +0000] \"GET /cart?id=1 HTTP/1.1\" 200 1234 \"https://shop.example/\" \"curl/8 \\x22quoted\\x22\\x0A\" 0.012 0.011 3 2 4f2a\n"
        );
        // Baton's own answer, to a request without a referer or an id.
        let r = Request {
            request_id: None,
            referer: None,
            ..request()
        };
        let mut e = Entry::default();
        e.begin(AccessFormat::Combined, Duration::ZERO, &r);
        e.status = 503;
        e.duration = Duration::from_millis(12);
        let mut out = Vec::new();
        e.finish(&mut out);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("\" 503 0 \"-\" \"curl/8 \\x22quoted\\x22\\x0A\" 0.012 - - - -\n")
        );
        assert_eq!(e.request_id(), None);
    }

    #[test]
    fn a_head_s_line_is_the_line_of_its_fields() {
        let head = b"GET /cart?id=1 HTTP/1.1\r\nHost: shop.example\r\nReferer: https://shop.example/\r\nUser-Agent: curl/8 \"quoted\"\xe9\r\n\r\n";
        for format in [AccessFormat::Combined, AccessFormat::Json] {
            taken(head, Some(b"192.0.2.7"), |r| {
                let want = Request {
                    user_agent: Some(b"curl/8 \"quoted\"\xe9"),
                    ..request()
                };
                assert_eq!(line(format, &r), line(format, &want));
            });
        }
        // The client's bytes, escaped, not their lossy UTF-8 form.
        taken(head, None, |r| {
            assert!(line(AccessFormat::Combined, &r).contains("\"curl/8 \\x22quoted\\x22\\xE9\""));
        });
        // The client's own valid id wins over the one baton made.
        let head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-123\r\n\r\n";
        taken(head, None, |r| {
            assert_eq!(
                (r.request_id, r.version, r.client),
                (Some(&b"abc-123"[..]), "HTTP/1.1", None)
            );
        });
    }

    #[test]
    fn hyper_s_request_is_logged_as_the_narrow_path_s() {
        let (parts, ()) = http::Request::get("/cart?id=1")
            .header("host", "shop.example")
            .header("referer", "https://shop.example/")
            .header("user-agent", "curl/8")
            .body(())
            .unwrap()
            .into_parts();
        let r = Request::from_parts(&parts, Some(b"192.0.2.7"), true, Some(b"4f2a"));
        let want = Request {
            user_agent: Some(b"curl/8"),
            ..request()
        };
        assert_eq!(
            line(AccessFormat::Combined, &r),
            line(AccessFormat::Combined, &want)
        );
        // HTTP/2: no Host, the authority instead; a user agent that is not UTF-8 written as
        // its bytes, escaped, as the narrow path writes it.
        let (mut parts, ()) = http::Request::get("https://shop.example/cart?id=1")
            .version(http::Version::HTTP_2)
            .header("user-agent", &b"curl/8 \xe9"[..])
            .body(())
            .unwrap()
            .into_parts();
        parts.headers.remove(http::header::HOST);
        let r = Request::from_parts(&parts, Some(b"192.0.2.7"), true, None);
        assert_eq!(
            line(AccessFormat::Combined, &r),
            "192.0.2.7 - - [03/Dec/2026:07:01:02 +0000] \"GET /cart?id=1 HTTP/2.0\" 200 1234 \"-\" \"curl/8 \\xE9\" 0.012 0.011 3 2 -\n"
        );
        let v: serde_json::Value = serde_json::from_str(&line(AccessFormat::Json, &r)).unwrap();
        assert_eq!(
            (&v["protocol"], &v["host"], &v["user_agent"]),
            (
                &serde_json::json!("HTTP/2.0"),
                &serde_json::json!("shop.example"),
                &serde_json::json!("curl/8 \u{fffd}")
            )
        );
        // CONNECT's target is its authority, which is its host too.
        let (parts, ()) = http::Request::connect("shop.example:443")
            .body(())
            .unwrap()
            .into_parts();
        let r = Request::from_parts(&parts, None, false, None);
        assert_eq!(
            (r.target, r.host),
            (&b"shop.example:443"[..], Some(&b"shop.example:443"[..]))
        );
    }

    #[test]
    fn json_is_one_object_per_line() {
        let text = line(AccessFormat::Json, &request());
        // The keys in the order docs/config.md gives.
        assert_eq!(
            text,
            concat!(
                r#"{"time":"2026-12-03T07:01:02.000Z","client":"192.0.2.7","method":"GET","#,
                r#""target":"/cart?id=1","protocol":"HTTP/1.1","scheme":"https","host":"shop.example","#,
                r#""request_id":"4f2a","referer":"https://shop.example/","user_agent":"curl/8 \"quoted\"\n","#,
                r#""status":200,"bytes":1234,"duration_s":0.012,"upstream_s":0.011,"worker":3,"generation":2}"#,
                "\n"
            )
        );
        // A client's quote, backslash or tab in any field stays inside its string.
        let r = Request {
            target: b"/a\"b\\c\td",
            host: Some(b"h\"},\"x\":\""),
            ..request()
        };
        let v: serde_json::Value = serde_json::from_str(&line(AccessFormat::Json, &r)).unwrap();
        assert_eq!(
            (&v["target"], &v["host"], &v["x"]),
            (
                &serde_json::json!("/a\"b\\c\td"),
                &serde_json::json!("h\"},\"x\":\""),
                &serde_json::Value::Null
            )
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2026-12-03T07:01:02.000Z",
                "client": "192.0.2.7",
                "method": "GET",
                "target": "/cart?id=1",
                "protocol": "HTTP/1.1",
                "scheme": "https",
                "host": "shop.example",
                "request_id": "4f2a",
                "referer": "https://shop.example/",
                "user_agent": "curl/8 \"quoted\"\n",
                "status": 200,
                "bytes": 1234,
                "duration_s": 0.012,
                "upstream_s": 0.011,
                "worker": 3,
                "generation": 2,
            })
        );
        // No client, no worker, bytes that are not UTF-8.
        let r = Request {
            client: None,
            user_agent: Some(b"\xff"),
            request_id: None,
            ..request()
        };
        let mut e = Entry::default();
        e.begin(AccessFormat::Json, Duration::ZERO, &r);
        e.status = 502;
        let mut out = Vec::new();
        e.finish(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (
                &v["client"],
                &v["user_agent"],
                &v["worker"],
                &v["upstream_s"],
                &v["request_id"],
                &v["status"]
            ),
            (
                &serde_json::Value::Null,
                &serde_json::json!("\u{fffd}"),
                &serde_json::Value::Null,
                &serde_json::Value::Null,
                &serde_json::Value::Null,
                &serde_json::json!(502)
            )
        );
    }

    /// Every control character (C0, DEL, C1) and U+2028, U+2029.
    fn specials() -> impl Iterator<Item = char> {
        (0..0x20)
            .chain(0x7f..0xa0)
            .chain([0x2028, 0x2029])
            .filter_map(char::from_u32)
    }

    /// Where a reader splits lines that knows Unicode's line ends (Python's `splitlines`).
    const LINE_ENDS: [char; 10] = [
        '\n', '\r', '\u{b}', '\u{c}', '\u{1c}', '\u{1d}', '\u{1e}', '\u{85}', '\u{2028}',
        '\u{2029}',
    ];

    #[test]
    fn json_escapes_every_control_character_and_line_end_in_every_field() {
        type Field = fn(&mut Request<'static>, &'static [u8]);
        let fields: [(&str, Field); 7] = [
            ("client", |r, v| r.client = Some(v)),
            ("method", |r, v| r.method = v),
            ("target", |r, v| r.target = v),
            ("host", |r, v| r.host = Some(v)),
            ("request_id", |r, v| r.request_id = Some(v)),
            ("referer", |r, v| r.referer = Some(v)),
            ("user_agent", |r, v| r.user_agent = Some(v)),
        ];
        for c in specials() {
            // Amid a word's worth of plain bytes, and alone.
            for text in [format!("/a{c}b/cdefgh"), c.to_string()] {
                let bytes: &'static [u8] = text.clone().into_bytes().leak();
                let want = match c {
                    '\n' => "\\n".to_owned(),
                    '\r' => "\\r".to_owned(),
                    '\t' => "\\t".to_owned(),
                    _ => format!("\\u{:04x}", u32::from(c)),
                };
                for (name, set) in fields {
                    let mut r = request();
                    set(&mut r, bytes);
                    let l = line(AccessFormat::Json, &r);
                    let body = l.strip_suffix('\n').unwrap();
                    assert!(
                        !body.contains(|ch: char| specials().any(|s| s == ch)),
                        "{c:?} in {name}: {l:?}"
                    );
                    assert_eq!(l.split(LINE_ENDS).count(), 2, "{c:?} in {name}: {l:?}");
                    assert!(l.contains(&want), "{c:?} in {name}: {l:?}");
                    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                    assert_eq!(v[name], serde_json::json!(text), "{c:?} in {name}");
                }
                // A combined line escapes every byte of them (`\xC2\x85`...).
                for set in [fields[2].1, fields[5].1, fields[6].1] {
                    let mut r = request();
                    set(&mut r, bytes);
                    let l = line(AccessFormat::Combined, &r);
                    assert_eq!(l.split(LINE_ENDS).count(), 2, "{c:?}: {l:?}");
                    assert!(l.is_ascii(), "{c:?}: {l:?}");
                }
            }
        }
    }

    #[test]
    fn json_strings_are_the_bytes_lossy_utf_8() {
        // Bytes that make (or break) the characters escaped and the sequences replaced.
        const BYTES: &[u8] =
            b"a~ \"\\\x00\x0b\x0c\x1f\x7f\x80\x85\x9f\xa8\xa9\xbf\xc2\xe2\xe9\xf0\x9f\xff";
        let mut rng = crate::util::Rng(0x2545_f491_4f6c_dd1d);
        let mut next = move || rng.next();
        for _ in 0..50_000 {
            let len = (next() % 24) as usize;
            let s: Vec<u8> = (0..len)
                .map(|_| match next() % 8 {
                    0 => next() as u8,
                    _ => BYTES[(next() % BYTES.len() as u64) as usize],
                })
                .collect();
            let mut out = Vec::new();
            json_text(Some(&s), &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                !text.contains(|ch: char| specials().any(|s| s == ch)),
                "{s:?}: {text:?}"
            );
            let back: String = serde_json::from_str(&text).unwrap();
            assert_eq!(back, String::from_utf8_lossy(&s), "{s:?}: {text:?}");
        }
        let mut out = Vec::new();
        json_text(None, &mut out);
        assert_eq!(out, b"null");
    }

    #[test]
    fn a_refused_head_is_told_by_its_request_line() {
        let told = |input: &'static [u8]| {
            let r = Request::refused(request_line(input), Some(b"192.0.2.7"), false);
            (
                String::from_utf8_lossy(r.method).into_owned(),
                String::from_utf8_lossy(r.target).into_owned(),
                r.version,
            )
        };
        let t = |m: &str, t: &str, v: &'static str| (m.to_owned(), t.to_owned(), v);
        assert_eq!(
            told(b"POST /a HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n"),
            t("POST", "/a", "HTTP/1.1")
        );
        assert_eq!(
            told(b"\r\nGET /a HTTP/1.0\nHost: x\n\n"),
            t("GET", "/a", "HTTP/1.0")
        );
        // What a malformed line says, as it is.
        assert_eq!(told(b"GET  /a HTTP/1.1\r\n"), t("GET", " /a", "HTTP/1.1"));
        assert_eq!(
            told(b"GET /a\rb HTTP/1.1\r\n"),
            t("GET", "/a\rb", "HTTP/1.1")
        );
        assert_eq!(
            told(b"GET /\xff HTTP/1.1\r\n"),
            t("GET", "/\u{fffd}", "HTTP/1.1")
        );
        assert_eq!(told(b"GET / HTTP/2.0\r\n"), t("GET", "/ HTTP/2.0", "-"));
        // A first word that is no method is the target's.
        assert_eq!(
            told(b"\x16\x03\x01 /a HTTP/1.1\r\n"),
            t("-", "\u{16}\u{3}\u{1} /a", "HTTP/1.1")
        );
        assert_eq!(told(b"GET"), t("-", "GET", "-"));
        assert_eq!(told(b"GET "), t("GET", "-", "-"));
        assert_eq!(told(b""), t("-", "-", "-"));
        assert_eq!(told(b"\r\n\r\n"), t("-", "-", "-"));
        // A line cut at its first 4 KiB (a 414's target).
        let long: &'static [u8] = format!("GET /{} HTTP/1.1\r\n", "a".repeat(70_000))
            .into_bytes()
            .leak();
        let (m, target, v) = told(long);
        assert_eq!(
            (m.as_str(), target.len(), v),
            ("GET", REFUSED_LINE - 4, "-")
        );
        // In either format, every field a line has, the unknown ones `-` or null.
        let r = Request::refused(b"GET  /a HTTP/1.1", Some(b"192.0.2.7"), false);
        let l = line(AccessFormat::Combined, &r);
        assert!(
            l.ends_with("] \"GET  /a HTTP/1.1\" 200 1234 \"-\" \"-\" 0.012 0.011 3 2 -\n"),
            "{l}"
        );
        let r = Request::refused(b"", None, true);
        let v: serde_json::Value = serde_json::from_str(&line(AccessFormat::Json, &r)).unwrap();
        assert_eq!(
            (
                &v["method"],
                &v["target"],
                &v["protocol"],
                &v["scheme"],
                &v["host"]
            ),
            (
                &serde_json::json!("-"),
                &serde_json::json!("-"),
                &serde_json::json!("-"),
                &serde_json::json!("https"),
                &serde_json::Value::Null
            )
        );
    }

    #[test]
    fn the_request_id_is_found_in_either_format() {
        for format in [AccessFormat::Combined, AccessFormat::Json] {
            let mut e = Entry::default();
            e.begin(format, Duration::ZERO, &request());
            assert_eq!(e.request_id(), Some(&b"4f2a"[..]), "{format:?}");
        }
    }

    #[test]
    fn an_entry_begun_again_forgets_the_last_request_and_answer() {
        // A request with an id that a worker answered, then one without either, in JSON.
        let mut e = Entry::default();
        e.begin(AccessFormat::Combined, Duration::ZERO, &request());
        answered(&mut e);
        let r = Request {
            request_id: None,
            ..request()
        };
        e.begin(AccessFormat::Json, Duration::from_secs(AT), &r);
        e.status = 404;
        assert_eq!(e.request_id(), None);
        let mut out = Vec::new();
        e.finish(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            (&v["request_id"], &v["worker"], &v["bytes"], &v["status"]),
            (
                &serde_json::Value::Null,
                &serde_json::Value::Null,
                &serde_json::json!(0),
                &serde_json::json!(404)
            )
        );
        // The journal's entry has the line and the fields beside it.
        answered(&mut e);
        let j = JournalLine::of(&e);
        assert_eq!(
            (j.status, j.upstream.map(|u| u.worker), j.request_id),
            (200, Some(3), None)
        );
        assert_eq!(j.line, line(AccessFormat::Json, &r).into_bytes());
        e.begin(AccessFormat::Json, Duration::ZERO, &request());
        assert_eq!(JournalLine::of(&e).request_id.as_deref(), Some("4f2a"));
    }

    #[test]
    fn an_entry_begun_again_is_a_new_line() {
        let mut e = Entry::default();
        let huge = vec![b'a'; 64 * 1024];
        let r = Request {
            target: &huge,
            ..request()
        };
        e.begin(AccessFormat::Combined, Duration::ZERO, &r);
        answered(&mut e);
        e.begin(AccessFormat::Combined, Duration::from_secs(AT), &request());
        // The answer's fields are reset, and a huge head's room is not kept.
        assert_eq!((e.status, e.bytes, e.upstream), (0, 0, None));
        assert!(e.written.capacity() <= KEEP);
        // Nor between two requests, once trimmed (an idle connection's).
        e.begin(AccessFormat::Combined, Duration::ZERO, &r);
        assert!(e.written.capacity() > KEEP);
        e.trim();
        assert!(e.written.capacity() <= KEEP);
        e.begin(AccessFormat::Combined, Duration::from_secs(AT), &request());
        answered(&mut e);
        let mut out = Vec::new();
        e.finish(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            line(AccessFormat::Combined, &request())
        );
    }

    #[test]
    fn the_word_check_finds_what_the_byte_check_finds() {
        // Every byte at every place of a field of plain bytes, the word's places and the tail's.
        for len in [1, 7, 8, 9, 16, 23] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert_eq!(all_plain(&s), plain(b), "{b:#x} at {at} of {len}");
                }
            }
        }
        // Two bytes that might hide each other (a borrow or a carry between them).
        for x in [0x00, 0x1f, 0x20, 0x21, 0x22, 0x5c, 0x7e, 0x7f, 0x80, 0xff] {
            for y in [0x00, 0x1f, 0x20, 0x21, 0x22, 0x5c, 0x7e, 0x7f, 0x80, 0xff] {
                for at in 0..7 {
                    let mut s = [b'a'; 8];
                    s[at] = x;
                    s[at + 1] = y;
                    assert_eq!(all_plain(&s), plain(x) && plain(y), "{x:#x} {y:#x} at {at}");
                }
            }
        }
        assert!(all_plain(b""));
    }

    #[test]
    fn escaping_is_nginx_s() {
        let at = |s: &[u8]| {
            let mut out = Vec::new();
            escaped(s, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(b"plain text/~!"), "plain text/~!");
        assert_eq!(at(b"a\"b\\c"), "a\\x22b\\x5Cc");
        assert_eq!(at(b"\x00\x1f\x7f\x80\xff"), "\\x00\\x1F\\x7F\\x80\\xFF");
        assert_eq!(at(b""), "");
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
        assert_eq!(at(Duration::from_micros(9_999_400)), "9.999");
        assert_eq!(at(Duration::from_micros(9_999_600)), "10.000");
        assert_eq!(at(Duration::from_secs(86_400 * 400)), "34560000.000");
    }

    #[test]
    fn dates_of_the_common_log_format() {
        let at = |s: u64| {
            let mut out = Vec::new();
            clf_time(s, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(at(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(at(4_107_542_399), "28/Feb/2100:23:59:59 +0000");
        assert_eq!(at(4_133_980_799), "31/Dec/2100:23:59:59 +0000");
    }

    /// A combined log to `access.log` in a new directory, `queue` lines, and its drop count.
    fn file_log(queue: usize) -> (tempfile::TempDir, AccessLog, Arc<AtomicU64>) {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            access: AccessTarget::File(dir.path().join("access.log")),
            format: AccessFormat::Combined,
            queue,
            request_id: None,
        };
        let dropped = Arc::new(AtomicU64::new(0));
        let log = AccessLog::start(&config, "t", dropped.clone())
            .unwrap()
            .unwrap();
        (dir, log, dropped)
    }

    #[test]
    fn lines_from_many_threads_are_written_whole_and_none_is_lost() {
        let (dir, log, dropped) = file_log(1 << 20);
        let path = dir.path().join("access.log");
        let log = Arc::new(log);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    // One entry per thread, begun again for each request, as a connection does.
                    let mut e = Entry::default();
                    for i in 0..5_000 {
                        let id = format!("{t}-{i}");
                        log.begin(
                            &mut e,
                            &Request {
                                request_id: Some(id.as_bytes()),
                                ..request()
                            },
                        );
                        answered(&mut e);
                        log.log(&e);
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
                assert!(l.contains(" 200 1234 \"https://shop.example/\" "), "{l}");
                l.rsplit(' ').next().unwrap()
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 40_000);
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_writer_takes_the_lines_whole_and_an_entry_never_begun_is_no_line() {
        let lines = Lines::new(10);
        let (dir, log, _) = file_log(10);
        let mut e = log.entry(&request());
        answered(&mut e);
        assert!(lines.push(&e));
        // Into a buffer that holds lines already: appended, not swapped.
        let mut out = b"before\n".to_vec();
        lines.take(&mut out);
        assert!(lines.push(&e));
        lines.take(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.starts_with("before\n192.0.2.7 - - ["));
        // A default entry (no request begun) writes nothing.
        log.log(&Entry::default());
        log.log(&e);
        log.close(Duration::from_secs(10));
        let written = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
        assert_eq!(written.lines().count(), 1, "{written:?}");
        assert!(written.ends_with("4f2a\n"));
    }

    #[test]
    fn huge_lines_are_bounded_in_bytes_too() {
        // `queue` = 16: 16 KiB. A line of a 64 KiB target is kept when nothing waits; the next
        // finds 16 KiB or more waiting and is dropped.
        let lines = Lines::new(16);
        let huge = vec![b'a'; 64 * 1024];
        let mut e = Entry::default();
        e.begin(
            AccessFormat::Combined,
            Duration::ZERO,
            &Request {
                target: &huge,
                ..request()
            },
        );
        assert!(lines.push(&e));
        assert!(!lines.push(&e));
        let mut out = Vec::new();
        lines.take(&mut out);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        // Small lines: `queue` of them.
        let e = {
            let mut e = Entry::default();
            e.begin(AccessFormat::Combined, Duration::ZERO, &request());
            e
        };
        assert_eq!((0..20).filter(|_| lines.push(&e)).count(), 16);
    }

    #[test]
    fn a_full_queue_drops_and_counts_never_waits() {
        let (dir, log, dropped) = file_log(1);
        let mut e = log.entry(&request());
        answered(&mut e);
        let started = std::time::Instant::now();
        for _ in 0..10_000 {
            log.log(&e);
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
    //! of a whole proxy under load (where the head's bytes are in the cache when the entry is
    //! begun, as here).
    use super::*;

    #[test]
    #[ignore]
    fn nanoseconds_per_request() {
        let head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
        let limits = crate::policy::Limits {
            max_head: 8192,
            max_body: 0,
        };
        let lines = Lines::new(usize::MAX);
        let n = 2_000_000u32;
        for (format, ids) in [
            (AccessFormat::Combined, false),
            (AccessFormat::Combined, true),
            (AccessFormat::Json, true),
        ] {
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
            let mut e = Entry::default();
            let t = std::time::Instant::now();
            for i in 0..n {
                let crate::h1::Request::Simple(s) =
                    crate::h1::request(head, c, &limits, 0, &mut out)
                else {
                    panic!()
                };
                let r = Request::from_head(head, &s.spans, c.ip, false, c.request_id);
                e.begin(format, now(format), &r);
                e.status = 200;
                e.bytes = 13;
                e.duration = Duration::from_micros(250);
                lines.push(&e);
                if i % 1000 == 0 {
                    lines.take(&mut Vec::new());
                }
            }
            let logged = t.elapsed() / n;
            println!(
                "{format:?}, request ids {ids}: h1::request {parse:?}, with the log's entry and line {logged:?}"
            );
        }
    }
}
