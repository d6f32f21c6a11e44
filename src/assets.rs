//! Static files (`[static]`), served by baton from each generation's pinned release without
//! waking a worker, as nginx's `root` + `try_files $uri =404` + `gzip_static` would.
//!
//! During a roll, a page rendered by a new worker asks for `/assets/app-NEW.css` and one
//! rendered by an old worker for `/assets/app-OLD.css`: a file is looked up in the newest
//! generation's release first, then in the older ones still serving, then in those whose last
//! worker stopped less than `keep_old` ago. Each generation's directory is held open (a file
//! descriptor taken when it was pinned), so the release's files are found by where they were
//! pinned, whatever `current` points to since; a release directory deleted is gone, though.
//!
//! Nothing outside the directory is ever opened: the URL path is decoded once and refused
//! with `..`, `.`, dotfiles, NUL or a backslash in it, and the file is opened beneath the
//! directory with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so a symlink that leads
//! out fails in the kernel. Directories are never listed. At most `max_open_files` files
//! are open for answers at once.
//!
//! This module decides the answer (status, headers, which bytes of which file); the proxy
//! turns it into a response.

use crate::config::StaticConfig;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// The served directories of the generations, newest first, and the rules they are served by.
pub struct Assets {
    prefixes: Vec<String>,
    directory: PathBuf,
    keep_old: Duration,
    /// `None` only if the pattern does not compile (the config's check refuses that).
    immutable: Option<regex_lite::Regex>,
    roots: RwLock<Vec<Root>>,
    open: Arc<tokio::sync::Semaphore>,
    wait: Duration,
    /// Files already found, by path and the encodings the client took, with their headers
    /// made: a hit costs no trip to the blocking pool, no system call and no formatting
    /// (nginx's `open_file_cache`, with the bytes of small files).
    cache: RwLock<Cache>,
    /// Open descriptors the cache may hold (each holds one of `max_open_files`' permits).
    cache_open: usize,
}

/// The files served lately. Emptied whenever the generations served change; an entry older
/// than [`REVALIDATE`] is looked up again (a file edited in place is seen within that).
#[derive(Default)]
struct Cache {
    files: std::collections::HashMap<String, [Option<Cached>; 8]>,
    /// Bytes of small files held.
    bytes: usize,
    /// Descriptors of larger files held.
    open: usize,
    /// Counts the emptyings: a lookup begun before one is not remembered after it.
    epoch: u64,
}

impl Cache {
    fn forget(&mut self, old: &Cached) {
        match &old.ready.held {
            Held::Memory(d) => self.bytes = self.bytes.saturating_sub(d.len()),
            Held::Open(_) => self.open = self.open.saturating_sub(1),
        }
    }
}

#[derive(Clone)]
struct Cached {
    ready: Arc<Ready>,
    checked: Instant,
}

/// A file as baton serves it: its headers made once, its bytes in memory or an open
/// descriptor. Shared by every answer that sends it.
pub struct Ready {
    len: u64,
    /// Last modified, in seconds since the epoch (what the ETag and the date say).
    secs: u64,
    etag: String,
    /// `ETag`, `Last-Modified`, `Cache-Control`, `Vary`: what a 304 says too.
    validators: Vec<(HeaderName, HeaderValue)>,
    /// `Content-Type`, `Content-Encoding`, `Accept-Ranges`.
    representation: Vec<(HeaderName, HeaderValue)>,
    /// The same fields as HTTP/1.1 lines, ready to be copied into a head.
    validators_h1: Vec<u8>,
    representation_h1: Vec<u8>,
    held: Held,
}

/// Where a file's bytes are.
enum Held {
    /// A small file, read whole when it was found.
    Memory(bytes::Bytes),
    /// A larger one, kept open.
    Open(Arc<OpenFile>),
}

/// An open file with the permit that bounds open files: the permit is given back when the
/// last answer sending it and the cache are done with it.
pub struct OpenFile {
    file: std::fs::File,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Bytes of file contents the cache holds at most.
const CACHE_BYTES: usize = 32 << 20;
/// How long a cached file is served without a look at the file system.
const REVALIDATE: Duration = Duration::from_secs(5);

/// One generation's static directory.
struct Root {
    generation: u64,
    dir: Arc<OwnedFd>,
    /// When its last worker stopped (`None`: it serves, or has not started yet).
    retired: Option<Instant>,
    /// It had a ready worker at some point: only then are its files served.
    served: bool,
}

/// Why a static request is answered with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A malformed path (bad `%` escape, NUL, `.` or `..` segment): 400.
    BadPath,
    /// No such file in any generation (or a name that is never served): 404.
    NotFound,
    /// Not `GET` or `HEAD`: 405.
    Method,
    /// No file could be opened within the wait: 503.
    Busy,
}

/// What baton answers to a static request.
pub struct Answer {
    pub status: u16,
    ready: Arc<Ready>,
    /// `Content-Range` of a 206 or a 416.
    content_range: Option<String>,
    /// The bytes to send (none for `HEAD`, 304, 416).
    pub body: Option<Content>,
    /// The length the answer's `Content-Length` says.
    pub length: u64,
}

impl Answer {
    /// The answer's header fields but `Content-Length` (and `Date`, the connection's).
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let whole = self.status != 304;
        let range = self
            .content_range
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
            .map(|v| (header::CONTENT_RANGE, v));
        self.ready
            .validators
            .iter()
            .chain(self.ready.representation.iter().filter(move |_| whole))
            .cloned()
            .chain(range)
    }

    /// The same fields as [`Answer::headers`], as HTTP/1.1 lines appended to `out`.
    pub fn write_h1(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.ready.validators_h1);
        if self.status != 304 {
            out.extend_from_slice(&self.ready.representation_h1);
        }
        if let Some(range) = &self.content_range {
            out.extend_from_slice(b"content-range: ");
            out.extend_from_slice(range.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// What an answer's body is made of.
pub enum Content {
    /// A small file, read whole when it was opened (one read, no file kept open).
    Memory(bytes::Bytes),
    /// A larger one, sent from its open descriptor as the client takes it.
    File(Slice),
}

/// Files up to this size are read whole at once.
const SMALL: u64 = 64 * 1024;

/// Bytes `offset..offset+len` of an open file (which holds its open-file permit).
#[derive(Clone)]
pub struct Slice {
    file: Arc<OpenFile>,
    pub offset: u64,
    pub len: u64,
}

impl Slice {
    pub fn file(&self) -> &std::fs::File {
        &self.file.file
    }

    /// Up to `max` bytes from `offset` on, read in the blocking pool (a file's read may wait
    /// for the disk). Fewer than asked only at the slice's end; a file that shrank since it
    /// was opened is an error, so the answer is cut rather than padded.
    pub async fn read(&self, offset: u64, max: usize) -> std::io::Result<bytes::Bytes> {
        let end = self.offset + self.len;
        let want = usize::try_from(end.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(max);
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0; want];
            file.file.read_exact_at(&mut buf, offset)?;
            Ok(bytes::Bytes::from(buf))
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// Precompressed siblings, in the order baton prefers them.
const ENCODINGS: [(&str, &str); 3] = [("br", ".br"), ("zstd", ".zst"), ("gzip", ".gz")];
/// Longest URL path served from files.
const MAX_PATH: usize = 1024;

impl Assets {
    /// `None` when `[static]` serves nothing.
    pub fn new(config: &StaticConfig, wait: Duration) -> Option<Assets> {
        let directory = config.directory.clone()?;
        Some(Assets {
            prefixes: config.prefixes.clone(),
            directory,
            keep_old: config.keep_old.get(),
            immutable: regex_lite::Regex::new(&config.immutable).ok(),
            roots: RwLock::new(Vec::new()),
            open: Arc::new(tokio::sync::Semaphore::new(config.max_open_files)),
            wait,
            cache: RwLock::new(Cache::default()),
            cache_open: config.max_open_files / 2,
        })
    }

    /// A new generation's release (resolved, pinned): its directory is held from now on.
    /// Its files are served once one of its workers is ready ([`Assets::serving`]).
    pub fn pin(&self, generation: u64, release: &Path) -> std::io::Result<()> {
        let path = release.join(&self.directory);
        let dir: OwnedFd = std::fs::File::open(&path)?.into();
        let mut roots = self.roots.write().unwrap_or_else(|e| e.into_inner());
        roots.retain(|r| r.generation != generation);
        roots.push(Root {
            generation,
            dir: Arc::new(dir),
            retired: None,
            served: false,
        });
        roots.sort_by_key(|r| std::cmp::Reverse(r.generation));
        Ok(())
    }

    /// The generations that have a ready (or draining) worker now: theirs are served; the
    /// others' files go on being served for `keep_old` after they stopped.
    pub fn serving(&self, alive: &[u64]) {
        let now = Instant::now();
        let changed = {
            let roots = self.roots.read().unwrap_or_else(|e| e.into_inner());
            roots.iter().any(|r| {
                let live = alive.contains(&r.generation);
                live == r.retired.is_some()
                    || (live && !r.served)
                    || r.retired
                        .is_some_and(|t| now.duration_since(t) > self.keep_old)
            })
        };
        if !changed {
            return;
        }
        {
            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
            let epoch = cache.epoch + 1;
            *cache = Cache {
                epoch,
                ..Cache::default()
            };
        }
        let mut roots = self.roots.write().unwrap_or_else(|e| e.into_inner());
        for r in roots.iter_mut() {
            if alive.contains(&r.generation) {
                r.served = true;
                r.retired = None;
            } else if r.served && r.retired.is_none() {
                r.retired = Some(now);
            }
        }
        roots.retain(|r| {
            r.retired
                .is_none_or(|t| now.duration_since(t) <= self.keep_old)
        });
    }

    /// The URL path is beneath one of the prefixes: baton answers it from files.
    pub fn claims(&self, path: &[u8]) -> bool {
        let path = path.split(|b| *b == b'?').next().unwrap_or(path);
        self.prefixes.iter().any(|p| {
            let p = p.trim_end_matches('/').as_bytes();
            path.starts_with(p) && (path.len() == p.len() || path[p.len()] == b'/' || p.is_empty())
        })
    }

    /// Answer a request that [`Assets::claims`]: a file of the newest generation that has it.
    pub async fn answer(
        &self,
        method: &http::Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Answer, Refusal> {
        let head = method == http::Method::HEAD;
        if method != http::Method::GET && !head {
            return Err(Refusal::Method);
        }
        let rel = relative(path)?;
        let accepted = accepted_encodings(headers);
        let mask = accepted
            .iter()
            .map(|e| match *e {
                "br" => 1,
                "zstd" => 2,
                _ => 4,
            })
            .fold(0usize, |m, b| m | b);
        let (hit, epoch) = {
            let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
            let hit = cache
                .files
                .get(rel.as_str())
                .and_then(|v| v[mask].as_ref())
                .filter(|c| c.checked.elapsed() < REVALIDATE)
                .map(|c| c.ready.clone());
            (hit, cache.epoch)
        };
        if let Some(ready) = hit {
            return Ok(respond(ready, headers, head));
        }
        let dirs: Vec<Arc<OwnedFd>> = {
            let roots = self.roots.read().unwrap_or_else(|e| e.into_inner());
            // Serving generations newest first, then the retired ones, latest retired first.
            let mut order: Vec<&Root> = roots.iter().filter(|r| r.served).collect();
            order.sort_by_key(|r| {
                (
                    r.retired.is_some(),
                    std::cmp::Reverse(r.retired),
                    std::cmp::Reverse(r.generation),
                )
            });
            order.iter().map(|r| r.dir.clone()).collect()
        };
        let permit = tokio::time::timeout(self.wait, self.open.clone().acquire_owned())
            .await
            .map_err(|_| Refusal::Busy)?
            .map_err(|_| Refusal::Busy)?;
        let key = rel.clone();
        let found = tokio::task::spawn_blocking(move || find(&dirs, &rel, &accepted))
            .await
            .map_err(|_| Refusal::Busy)?;
        let Some(found) = found else {
            return Err(Refusal::NotFound);
        };
        let ready = Arc::new(self.ready(found, permit));
        self.remember(key, mask, epoch, &ready);
        Ok(respond(ready, headers, head))
    }

    fn remember(&self, key: String, mask: usize, epoch: u64, ready: &Arc<Ready>) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.epoch != epoch {
            // The generations served changed while this was looked up.
            return;
        }
        if let Some(old) = cache.files.get_mut(&key).and_then(|v| v[mask].take()) {
            cache.forget(&old);
        }
        let (bytes, open) = match &ready.held {
            Held::Memory(d) => (d.len(), 0),
            Held::Open(_) => (0, 1),
        };
        if open > self.cache_open {
            // Open files are not kept when `max_open_files` is too small to share.
            return;
        }
        if cache.bytes + bytes > CACHE_BYTES || cache.open + open > self.cache_open {
            // Full: start again rather than track ages (the files asked for come back).
            cache.files.clear();
            cache.bytes = 0;
            cache.open = 0;
        }
        cache.bytes += bytes;
        cache.open += open;
        let entry = cache.files.entry(key).or_default();
        entry[mask] = Some(Cached {
            ready: ready.clone(),
            checked: Instant::now(),
        });
    }

    /// A file found, with its headers made once for all the answers that send it.
    fn ready(&self, found: Found, permit: tokio::sync::OwnedSemaphorePermit) -> Ready {
        let Found {
            file,
            len,
            modified,
            encoding,
            name,
            data,
        } = found;
        let secs = modified
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let etag = match encoding {
            Some(e) => format!("\"{secs:x}-{len:x}-{e}\""),
            None => format!("\"{secs:x}-{len:x}\""),
        };
        let last_modified =
            httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        let cache_control = if self.immutable.as_ref().is_some_and(|re| re.is_match(&name)) {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        let mut validators: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(4);
        let add = |out: &mut Vec<(HeaderName, HeaderValue)>, n: HeaderName, v: &str| {
            if let Ok(v) = HeaderValue::from_str(v) {
                out.push((n, v));
            }
        };
        add(&mut validators, header::ETAG, &etag);
        add(&mut validators, header::LAST_MODIFIED, &last_modified);
        add(&mut validators, header::CACHE_CONTROL, cache_control);
        add(&mut validators, header::VARY, "Accept-Encoding");
        let mut representation = Vec::with_capacity(3);
        add(
            &mut representation,
            header::CONTENT_TYPE,
            &content_type(&name),
        );
        if let Some(e) = encoding {
            add(&mut representation, header::CONTENT_ENCODING, e);
        }
        add(&mut representation, header::ACCEPT_RANGES, "bytes");
        let h1 = |fields: &[(HeaderName, HeaderValue)]| {
            let mut out = Vec::new();
            for (n, v) in fields {
                out.extend_from_slice(n.as_str().as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out
        };
        let held = match (data, file) {
            (Some(d), _) => Held::Memory(d),
            (None, Some(file)) => Held::Open(Arc::new(OpenFile {
                file,
                _permit: permit,
            })),
            // Not made: a file is either read whole or open.
            (None, None) => Held::Memory(bytes::Bytes::new()),
        };
        Ready {
            len,
            secs,
            etag,
            validators_h1: h1(&validators),
            representation_h1: h1(&representation),
            validators,
            representation,
            held,
        }
    }
}

/// By the file's own name: not the URL's, which may carry a query.
fn content_type(name: &str) -> String {
    let mime = mime_guess::from_path(name)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let text = mime.starts_with("text/")
        || mime == "application/javascript"
        || mime == "application/json"
        || mime == "image/svg+xml";
    if text {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_owned()
    }
}

/// The answer to one request for a file found: 200, 206, 304 or 416, by its conditions.
fn respond(ready: Arc<Ready>, headers: &HeaderMap, head: bool) -> Answer {
    let len = ready.len;
    if not_modified(headers, &ready.etag, ready.secs) {
        return Answer {
            status: 304,
            ready,
            content_range: None,
            body: None,
            length: 0,
        };
    }
    let (status, offset, length, content_range) = match range(headers, len, &ready.etag, ready.secs)
    {
        Range::Whole => (200, 0, len, None),
        Range::Part(start, end) => (
            206,
            start,
            end - start + 1,
            Some(format!("bytes {start}-{end}/{len}")),
        ),
        Range::Unsatisfiable => {
            return Answer {
                status: 416,
                ready,
                content_range: Some(format!("bytes */{len}")),
                body: None,
                length: 0,
            };
        }
    };
    let body = if head || length == 0 {
        None
    } else {
        Some(match &ready.held {
            Held::Memory(d) => {
                Content::Memory(d.slice(offset as usize..(offset + length) as usize))
            }
            Held::Open(file) => Content::File(Slice {
                file: file.clone(),
                offset,
                len: length,
            }),
        })
    };
    Answer {
        status,
        ready,
        content_range,
        body,
        length,
    }
}

/// The file found for a request.
struct Found {
    /// Open when it is not read whole.
    file: Option<std::fs::File>,
    len: u64,
    modified: SystemTime,
    /// The `Content-Encoding` of a precompressed sibling.
    encoding: Option<&'static str>,
    /// The file's own name (the one asked for, not the sibling's).
    name: String,
    /// The whole file, when it is small.
    data: Option<bytes::Bytes>,
}

impl Found {
    fn new(
        file: std::fs::File,
        meta: &std::fs::Metadata,
        encoding: Option<&'static str>,
        name: String,
    ) -> Found {
        use std::os::unix::fs::FileExt;
        let len = meta.len();
        let data = (len <= SMALL).then(|| {
            let mut buf = vec![0; len as usize];
            file.read_exact_at(&mut buf, 0)
                .ok()
                .map(|_| bytes::Bytes::from(buf))
        });
        let data = data.flatten();
        Found {
            file: data.is_none().then_some(file),
            len,
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            encoding,
            name,
            data,
        }
    }
}

/// The URL path, decoded once, as a path beneath the directory; refused when it could name
/// anything but a file of it (`..`, `.`, NUL, a backslash) or a hidden file (a dotfile).
pub fn relative(path: &str) -> Result<String, Refusal> {
    let path = path.split('?').next().unwrap_or(path);
    if !path.starts_with('/') {
        return Err(Refusal::BadPath);
    }
    if path.len() > MAX_PATH {
        return Err(Refusal::NotFound);
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                bytes.get(i + 1).and_then(|c| hex(*c)),
                bytes.get(i + 2).and_then(|c| hex(*c)),
            ) {
                (Some(h), Some(l)) => decoded.push((h * 16 + l) as u8),
                _ => return Err(Refusal::BadPath),
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    if decoded.contains(&0) || decoded.contains(&b'\\') {
        return Err(Refusal::BadPath);
    }
    let decoded = String::from_utf8(decoded).map_err(|_| Refusal::NotFound)?;
    let mut parts = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" => {}
            "." | ".." => return Err(Refusal::BadPath),
            s if s.starts_with('.') => return Err(Refusal::NotFound),
            s if s.len() > 255 => return Err(Refusal::NotFound),
            s => parts.push(s),
        }
    }
    if parts.is_empty() {
        return Err(Refusal::NotFound);
    }
    Ok(parts.join("/"))
}

/// The encodings the client takes (`Accept-Encoding`, q > 0), of those baton has siblings for.
fn accepted_encodings(headers: &HeaderMap) -> Vec<&'static str> {
    let mut ok = Vec::new();
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(v) = value.to_str() else { continue };
        for item in v.split(',') {
            let mut it = item.split(';');
            let name = it.next().unwrap_or("").trim();
            let refused = it.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .is_some_and(|q| q.trim().parse::<f32>().map_or(true, |q| q <= 0.0))
            });
            if refused {
                continue;
            }
            for (e, _) in ENCODINGS {
                if name.eq_ignore_ascii_case(e) && !ok.contains(&e) {
                    ok.push(e);
                }
            }
        }
    }
    ok
}

/// Open `rel` beneath one directory: a regular file, or nothing.
fn open_beneath(dir: &OwnedFd, rel: &str) -> Option<(std::fs::File, std::fs::Metadata)> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = nix::fcntl::openat2(dir, rel, how).ok()?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().ok()?;
    meta.is_file().then_some((file, meta))
}

/// The first directory that has `rel`, with the best precompressed sibling the client takes.
fn find(dirs: &[Arc<OwnedFd>], rel: &str, accepted: &[&'static str]) -> Option<Found> {
    let name = rel.rsplit('/').next().unwrap_or(rel).to_owned();
    for dir in dirs {
        let Some((file, meta)) = open_beneath(dir, rel) else {
            continue;
        };
        for (encoding, suffix) in ENCODINGS {
            if !accepted.contains(&encoding) {
                continue;
            }
            if let Some((f, m)) = open_beneath(dir, &format!("{rel}{suffix}")) {
                return Some(Found::new(f, &m, Some(encoding), name));
            }
        }
        return Some(Found::new(file, &meta, None, name));
    }
    None
}

/// `If-None-Match` (weak comparison, RFC 9110 13.1.2), else `If-Modified-Since`.
fn not_modified(headers: &HeaderMap, etag: &str, modified: u64) -> bool {
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        let Ok(v) = v.to_str() else { return false };
        return v
            .split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == etag);
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .is_some_and(|since| modified <= since.as_secs())
}

#[derive(Debug, PartialEq, Eq)]
enum Range {
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `Range: bytes=...` (RFC 9110 14.2); several ranges, a malformed one or an `If-Range`
/// that does not match get the whole file, as the RFC allows.
fn range(headers: &HeaderMap, len: u64, etag: &str, modified: u64) -> Range {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Range::Whole;
    };
    if let Some(cond) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let cond = cond.trim();
        let same = if cond.starts_with('"') {
            cond == etag
        } else {
            httpdate::parse_http_date(cond)
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .is_some_and(|t| t.as_secs() == modified)
        };
        if !same {
            return Range::Whole;
        }
    }
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) => Range::Unsatisfiable,
            Some(n) if len > 0 => Range::Part(len.saturating_sub(n), len - 1),
            Some(_) => Range::Unsatisfiable,
            None => Range::Whole,
        },
        (first, "") => match num(first) {
            Some(f) if f < len => Range::Part(f, len - 1),
            Some(_) => Range::Unsatisfiable,
            None => Range::Whole,
        },
        (first, last) => match (num(first), num(last)) {
            (Some(f), Some(l)) if f <= l && f < len => Range::Part(f, l.min(len - 1)),
            (Some(f), Some(l)) if f <= l => Range::Unsatisfiable,
            _ => Range::Whole,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_leave_the_directory_are_refused() {
        assert_eq!(relative("/assets/app.css").unwrap(), "assets/app.css");
        assert_eq!(
            relative("/assets//a%20b.css?v=1").unwrap(),
            "assets/a b.css"
        );
        for bad in [
            "/assets/../etc/passwd",
            "/assets/%2e%2e/etc/passwd",
            "/assets/%2E%2E%2Fetc%2Fpasswd",
            "/assets/./app.css",
            "/assets/a%00.css",
            "/assets/a%5c..%5cb",
            "/assets/%zz",
            "/assets/%2",
            "assets/app.css",
        ] {
            assert_eq!(relative(bad), Err(Refusal::BadPath), "{bad}");
        }
        for hidden in ["/assets/.env", "/.git/config", "/assets/%2egit/HEAD", "/"] {
            assert_eq!(relative(hidden), Err(Refusal::NotFound), "{hidden}");
        }
        // Decoded once: %252e is the name "%2e", not "..".
        assert_eq!(relative("/assets/%252e%252e/x").unwrap(), "assets/%2e%2e/x");
        assert_eq!(
            relative(&format!("/{}", "a".repeat(2000))),
            Err(Refusal::NotFound)
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn ranges() {
        let r = |v: &str| range(&headers(&[("range", v)]), 1000, "\"e\"", 7);
        assert_eq!(r("bytes=0-99"), Range::Part(0, 99));
        assert_eq!(r("bytes=900-"), Range::Part(900, 999));
        assert_eq!(r("bytes=-100"), Range::Part(900, 999));
        assert_eq!(r("bytes=-5000"), Range::Part(0, 999));
        assert_eq!(r("bytes=990-2000"), Range::Part(990, 999));
        assert_eq!(r("bytes=1000-"), Range::Unsatisfiable);
        assert_eq!(r("bytes=-0"), Range::Unsatisfiable);
        assert_eq!(r("bytes=5-1"), Range::Whole);
        assert_eq!(r("bytes=0-1,5-6"), Range::Whole);
        assert_eq!(r("items=0-1"), Range::Whole);
        assert_eq!(r("bytes=+1-2"), Range::Whole);
        assert_eq!(
            range(
                &headers(&[("range", "bytes=0-1"), ("if-range", "\"other\"")]),
                1000,
                "\"e\"",
                7
            ),
            Range::Whole
        );
        assert_eq!(
            range(
                &headers(&[("range", "bytes=0-1"), ("if-range", "\"e\"")]),
                1000,
                "\"e\"",
                7
            ),
            Range::Part(0, 1)
        );
        assert_eq!(
            range(&headers(&[("range", "bytes=0-1")]), 0, "\"e\"", 7),
            Range::Unsatisfiable
        );
    }

    #[test]
    fn conditional_requests() {
        assert!(not_modified(
            &headers(&[("if-none-match", "\"a\", W/\"e\"")]),
            "\"e\"",
            7
        ));
        assert!(not_modified(
            &headers(&[("if-none-match", "*")]),
            "\"e\"",
            7
        ));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"a\"")]),
            "\"e\"",
            7
        ));
        let date = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        assert!(not_modified(
            &headers(&[("if-modified-since", &date)]),
            "\"e\"",
            1_000_000
        ));
        assert!(!not_modified(
            &headers(&[("if-modified-since", &date)]),
            "\"e\"",
            1_000_001
        ));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"a\""), ("if-modified-since", &date)]),
            "\"e\"",
            7
        ));
    }

    #[test]
    fn encodings_the_client_takes() {
        assert_eq!(
            accepted_encodings(&headers(&[("accept-encoding", "gzip, deflate, br, zstd")])),
            ["gzip", "br", "zstd"]
        );
        assert_eq!(
            accepted_encodings(&headers(&[("accept-encoding", "br;q=0, gzip;q=0.5")])),
            ["gzip"]
        );
        assert!(accepted_encodings(&headers(&[])).is_empty());
    }

    #[test]
    fn prefixes_claim_their_paths_only() {
        let config = StaticConfig {
            directory: Some("public".into()),
            prefixes: vec!["/assets".into(), "/packs/".into()],
            ..StaticConfig::default()
        };
        let a = Assets::new(&config, Duration::from_secs(1)).unwrap();
        assert!(a.claims(b"/assets/app.css"));
        assert!(a.claims(b"/assets"));
        assert!(a.claims(b"/packs/x.js?v=2"));
        assert!(!a.claims(b"/assetsfoo/app.css"));
        assert!(!a.claims(b"/"));
        assert!(!a.claims(b"/cart"));
    }

    #[tokio::test]
    async fn open_files_are_bounded_and_the_cache_shares_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("public");
        std::fs::create_dir(&public).unwrap();
        for name in ["a.bin", "b.bin", "c.bin"] {
            std::fs::write(public.join(name), vec![b'x'; 100_000]).unwrap();
        }
        let config = StaticConfig {
            directory: Some("public".into()),
            prefixes: vec!["/".into()],
            max_open_files: 2,
            ..StaticConfig::default()
        };
        let assets = Assets::new(&config, Duration::from_millis(200)).unwrap();
        assets.pin(1, dir.path()).unwrap();
        assets.serving(&[1]);
        let none = HeaderMap::new();
        let get = |path: &'static str| assets.answer(&http::Method::GET, path, &none);
        let is_file = |a: &Answer| matches!(a.body, Some(Content::File(_)));
        // Two files sent at once hold both permits (the cache keeps the later one open).
        let a = get("/a.bin").await.unwrap();
        let b = get("/b.bin").await.unwrap();
        assert!(is_file(&a) && is_file(&b));
        // A third waits for one, then is refused.
        assert_eq!(get("/c.bin").await.err(), Some(Refusal::Busy));
        // The file the cache holds open is sent again without a permit of its own.
        let b2 = get("/b.bin").await.unwrap();
        assert!(is_file(&b2));
        // An answer done gives its permit back.
        drop(a);
        let c = get("/c.bin").await.unwrap();
        assert_eq!(c.length, 100_000);
        let Some(Content::File(slice)) = &c.body else {
            panic!("a large file is sent from its descriptor")
        };
        assert_eq!(slice.read(99_990, 1 << 20).await.unwrap().len(), 10);
    }

    #[test]
    fn fingerprinted_names_are_immutable() {
        let re = regex_lite::Regex::new(StaticConfig::FINGERPRINT).unwrap();
        for yes in [
            "app-3f2a9c1d.css",
            "main.8f3a2b1c.js",
            "application-0123456789abcdef0123456789abcdef.css",
        ] {
            assert!(re.is_match(yes), "{yes}");
        }
        for no in [
            "app.css",
            "jquery-datatables.js",
            "logo.png",
            "app-3f2a9c1.css",
        ] {
            assert!(!re.is_match(no), "{no}");
        }
    }
}
