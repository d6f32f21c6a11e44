//! The narrow HTTP/1.1 path, as bytes: the common request (no chunked or large body, no
//! upgrade, no `Expect`, HTTP/1.1 with an origin-form target) is rewritten for the worker head
//! to head, and the worker's answer head is rewritten for the client (on every path), without
//! building header maps, URIs or boxed bodies.
//!
//! What a request may be and what the worker gets is decided by [`crate::policy`], the same
//! code hyper's path asks; this module is only the codec. Everything here decides on a whole
//! head before anything is sent, so that whatever the narrow path does not take
//! ([`Request::Other`]) is served by hyper from its first byte, and hyper stays the one that
//! parses, answers and rejects anything unusual (chunked or large bodies, upgrades, `Expect`,
//! HTTP/1.0, malformed or oversized heads, and every request baton answers itself). The
//! parser is `httparse`, the one hyper uses, with the same strictness. No I/O and no state:
//! `proxy` drives it, and the fuzz targets `h1` and `differential` feed it arbitrary bytes.

use crate::policy::{self, Body, Client, Name, RequestHead, Sent, Target, classify, header, trim};
use std::ops::Range;

/// Headers read from one head; a head with more goes to hyper (which answers 431).
pub const MAX_HEADERS: usize = 64;
/// Longest answer head from a worker.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A client's request head, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// Not all there yet.
    Partial,
    /// Anything the narrow path does not take: hyper serves the connection from here.
    Other,
    /// Taken: the head for the worker was written to `out`.
    Simple(Simple),
}

/// A request the narrow path forwards.
#[derive(Debug, PartialEq, Eq)]
pub struct Simple {
    /// Length of the client's head in its buffer.
    pub len: usize,
    /// A `HEAD`: the answer has no body, whatever its headers say.
    pub head: bool,
    /// The client said `Connection: close`.
    pub close: bool,
    /// Length of the body (its `Content-Length`, 0 without one), whose bytes follow the head.
    pub body: usize,
    /// See [`policy::Admitted::retryable`].
    pub retryable: bool,
    /// Where the access log's fields are in the head.
    pub spans: Spans,
}

/// Where the fields an access log writes are in a request head (ranges of its bytes), found
/// by the one parse that classified it, so that the log need not parse the head again nor copy
/// its fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spans {
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// The first `Host`.
    pub host: Option<Range<usize>>,
    /// The last `Referer` and `User-Agent`, as nginx logs them.
    pub referer: Option<Range<usize>>,
    pub user_agent: Option<Range<usize>>,
    /// The client's own `X-Request-Id` when baton passes it on (request ids on, and a valid
    /// one, [`policy::request_id`]); else the worker got baton's.
    pub request_id: Option<Range<usize>>,
}

impl Spans {
    /// Find the fields of a head parsed out of `buf`. `ids`: request ids are on.
    fn find(
        buf: &[u8],
        method: &str,
        path: &str,
        fields: &[httparse::Header<'_>],
        ids: bool,
    ) -> Spans {
        // httparse's slices are of `buf`: their places in it are their pointers' distance.
        let at = |part: &[u8]| {
            let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
            start..start.wrapping_add(part.len())
        };
        let mut spans = Spans {
            method: at(method.as_bytes()),
            target: at(path.as_bytes()),
            ..Spans::default()
        };
        for f in fields {
            let n = f.name.as_bytes();
            match n.len() {
                4 if spans.host.is_none() && eq(n, "host") => spans.host = Some(at(f.value)),
                7 if eq(n, "referer") => spans.referer = Some(at(f.value)),
                10 if eq(n, "user-agent") => spans.user_agent = Some(at(f.value)),
                _ => {}
            }
        }
        if ids {
            spans.request_id = policy::request_id(fields).map(at);
        }
        spans
    }
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// Classify the request head at the start of `buf`; when it is taken, write the worker's
/// head to `out` (cleared first). `limits`: the policy's (its `max_head` also bounds what is
/// waited for); `max_body`: the longest body the narrow path takes (0: none), which need not
/// be in `buf` yet.
pub fn request(
    buf: &[u8],
    client: Client<'_>,
    limits: &policy::Limits,
    max_body: usize,
    out: &mut Vec<u8>,
) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_head => return Request::Partial,
        _ => return Request::Other,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Request::Other;
    };
    // Origin-form only, and only bytes that every URI parser takes as they are: not `#`
    // (the http crate, and so hyper's path, cuts a fragment off), nor `"`, `<`, `>` and
    // `` ` `` (which it refuses in a path or a query); hyper decides those.
    if len > limits.max_head
        || !path.starts_with('/')
        || !path
            .bytes()
            .all(|b| (b'!'..=b'~').contains(&b) && !matches!(b, b'"' | b'#' | b'<' | b'>' | b'`'))
    {
        return Request::Other;
    }
    let head = RequestHead {
        method,
        target: Target::Path(path),
        target_len: path.len(),
        http10: false,
        authority: None,
        body_follows: None,
        fields: &*req.headers,
    };
    // What baton answers itself, hyper's path answers.
    let Ok(adm) = policy::admit(&head, limits) else {
        return Request::Other;
    };
    // An upgrade, or an `Expect` (hyper answers `100 Continue` first): hyper's.
    if adm.upgrade_field || adm.expect {
        return Request::Other;
    }
    let (body, sent) = match adm.body {
        Body::None => (0, Sent::None),
        Body::Length(n) => match usize::try_from(n) {
            Ok(len) if len <= max_body => (len, Sent::Length(n)),
            // Large: hyper's path spools it to a file.
            _ => return Request::Other,
        },
        // Chunked, or a length that is not one: hyper reads it, or refuses it.
        Body::Chunked | Body::Unclear => return Request::Other,
    };
    policy::worker_head(&head, &adm, client, sent, out);
    Request::Simple(Simple {
        len,
        head: adm.head,
        close: adm.close,
        body,
        retryable: adm.retryable(),
        spans: Spans::find(buf, method, path, head.fields, client.request_id.is_some()),
    })
}

/// A worker's answer head, classified.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not all there yet.
    Partial,
    /// An interim answer (`100 Continue`, `103 Early Hints`) of this length: skipped.
    Interim(usize),
    /// Not an answer baton forwards (the worker is at fault: a 502).
    Bad(&'static str),
    /// The final answer; the client's head was written to `out`.
    Final(Final),
}

/// A worker's final answer head.
#[derive(Debug, PartialEq, Eq)]
pub struct Final {
    /// Length of the worker's head in its buffer.
    pub len: usize,
    pub status: u16,
    /// How the body that follows the head ends.
    pub body: Framing,
    /// The worker closes the connection after this answer.
    pub close: bool,
}

/// How a worker's answer body is delimited (RFC 9112 6.3).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Framing {
    /// No body (an answer to `HEAD`, 204, 304).
    None,
    /// `Content-Length`: this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`: the client gets it chunked too.
    Chunked,
    /// Neither: the body ends when the worker closes; the client gets it chunked.
    UntilClose,
}

/// Classify the answer head at the start of `buf` to a request (`head`: it was a `HEAD`), and
/// write the client's head to `out` (cleared first): the worker's headers without the hop-by-hop
/// ones, a `Date` when the worker gave none (`date`: the current one), `Transfer-Encoding:
/// chunked` when the client's body is chunked, and `Connection: close` when `close`.
#[allow(
    clippy::too_many_lines,
    reason = "one pass over the worker's answer head, on every answer's path: each header is \
              classified and copied in the same loop, and the framing rules (RFC 9112 6.3) read \
              together"
)]
pub fn answer(buf: &[u8], head: bool, date: &[u8], close: bool, out: &mut Vec<u8>) -> Answer {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Answer::Partial,
        Ok(httparse::Status::Partial) => return Answer::Bad("its answer head is over 64 KiB"),
        Err(httparse::Error::TooManyHeaders) => {
            return Answer::Bad("its answer has over 64 headers");
        }
        Err(_) => return Answer::Bad("its answer is not valid HTTP/1.1"),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Answer::Bad("its answer is not valid HTTP/1.1");
    };
    if !(100..=599).contains(&status) {
        return Answer::Bad("its answer has an invalid status");
    }
    if status == 101 {
        return Answer::Bad("it switched protocols unasked");
    }
    if status < 200 {
        return Answer::Interim(len);
    }
    let mut lengths = None::<u64>;
    let mut chunked = false;
    let mut worker_close = version == 0;
    let mut keep_alive_1_0 = false;
    let mut said_close = false;
    let mut has_date = false;
    // Names the worker's `Connection:` lists are hop-by-hop too; at most a few.
    let mut listed = [policy::Token::default(); 8];
    let mut nlisted = 0;
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        if eq(n, "content-length") {
            // The policy's rule, so a length a client may not send is not taken from a worker.
            let Some(v) = policy::content_length(h.value) else {
                return Answer::Bad("its Content-Length is not a number");
            };
            if lengths.is_some_and(|l| l != v) {
                return Answer::Bad("it sent two different Content-Lengths");
            }
            lengths = Some(v);
        } else if eq(n, "transfer-encoding") {
            // Only `chunked`, alone and last, is a framing baton knows.
            if !eq(trim(h.value), "chunked") || chunked {
                return Answer::Bad("its Transfer-Encoding is not chunked");
            }
            chunked = true;
        } else if eq(n, "connection") {
            for t in policy::connection_tokens(h.value) {
                if t.is(b"close") {
                    worker_close = true;
                    said_close = true;
                } else if t.is(b"keep-alive") {
                    keep_alive_1_0 = true;
                } else {
                    if nlisted == listed.len() {
                        return Answer::Bad("its Connection header lists too many names");
                    }
                    listed[nlisted] = t;
                    nlisted += 1;
                }
            }
        } else if eq(n, "date") {
            has_date = true;
        }
    }
    // An HTTP/1.0 worker keeps the connection only when it says so, and not also `close`.
    if version == 0 && keep_alive_1_0 && !said_close && !chunked && lengths.is_some() {
        worker_close = false;
    }
    let no_body = head || status == 204 || status == 304;
    let body = if no_body {
        Framing::None
    } else if chunked {
        // Both: the length is a lie (RFC 9112 6.3); chunked wins, the connection closes.
        if lengths.is_some() {
            worker_close = true;
        }
        Framing::Chunked
    } else if let Some(n) = lengths {
        Framing::Length(n)
    } else {
        worker_close = true;
        Framing::UntilClose
    };

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    // 200..=599: three digits.
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    out.push(b' ');
    match resp.reason {
        Some(r) if !r.is_empty() && r.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) => {
            out.extend_from_slice(r.as_bytes())
        }
        _ => out.extend_from_slice(
            http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Unknown")
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
    let mut sent_length = false;
    for h in resp.headers.iter() {
        let n = h.name.as_bytes();
        let kind = classify(n);
        if kind.is_hop_by_hop()
            || (listed[..nlisted].iter().any(|l| l.is(n)) && !kind.is_protected())
        {
            continue;
        }
        // A chunked body's length is the chunks', never a header's; a 204 has none at all
        // (RFC 9110 8.6), and a client that believed one would take the next answer for it.
        // Several equal lengths are one (RFC 9112 6.3), sent once: hyper's server refuses to
        // send an answer with two.
        if kind == Name::ContentLength {
            if matches!(body, Framing::Chunked) || status == 204 || sent_length {
                continue;
            }
            sent_length = true;
        }
        header(out, n, h.value);
    }
    if !has_date {
        header(out, b"date", date);
    }
    if matches!(body, Framing::Chunked | Framing::UntilClose) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Answer::Final(Final {
        len,
        status,
        body,
        close: worker_close,
    })
}

/// A worker's `101 Switching Protocols` to a request that asked for one: its head goes to the
/// client as it is (its `Connection` and `Upgrade` are the switch itself), and the stream
/// becomes a tunnel. `None` for any other answer, or one not all there yet.
pub fn switched(buf: &[u8], out: &mut Vec<u8>) -> Option<Final> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = resp.parse(buf) else {
        return None;
    };
    if resp.code != Some(101) {
        return None;
    }
    out.clear();
    out.extend_from_slice(&buf[..len]);
    Some(Final {
        len,
        status: 101,
        body: Framing::None,
        close: true,
    })
}

/// Reading a chunked body (RFC 9112 7.1): sizes, extensions and trailers are framing, only
/// the data is given out. A line may end in a bare LF, as nginx reads a worker's answer (RFC
/// 9112 2.2 allows a recipient that): `0\r\n\n` ends a body rather than leaving it open.
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    /// Data left in the current chunk.
    left: u64,
    /// Bytes of framing (size line, trailers) read since the last data: bounded.
    framing: usize,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum State {
    #[default]
    Size,
    /// After the size: `;ext` or whitespace, up to the line's end.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the empty line that ends the body).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// A chunked body is not valid.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("its chunked body is malformed: {0}")]
pub struct ChunkError(&'static str);

/// Framing bytes allowed between two pieces of data.
const MAX_FRAMING: usize = 16 * 1024;

impl Chunked {
    /// Read from `input`: how many bytes were used, and which of them (a range of `input`)
    /// are data. Call again with the rest until [`Chunked::is_done`].
    #[allow(
        clippy::too_many_lines,
        reason = "the chunked decoder's one loop over the input, byte by byte through its states: \
                  a state machine reads whole"
    )]
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Range<usize>>), ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.state != State::Data {
                self.framing += 1;
                if self.framing > MAX_FRAMING {
                    return Err(ChunkError("too much framing between data"));
                }
            }
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                        self.left = self
                            .left
                            .checked_mul(16)
                            .and_then(|l| l.checked_add(d))
                            .ok_or(ChunkError("a chunk size overflows"))?;
                        self.framing_digits()?;
                    }
                    b';' | b' ' | b'\t' if self.framing > 1 => self.state = State::Extension,
                    b'\r' if self.framing > 1 => self.state = State::SizeLf,
                    b'\n' if self.framing > 1 => self.end_size_line(),
                    _ => return Err(ChunkError("a chunk size is not hexadecimal")),
                },
                State::Extension => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => {}
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("a chunk size line does not end in CRLF"));
                    }
                    self.end_size_line();
                }
                State::Data => {
                    let n = usize::try_from(self.left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    self.left -= n as u64;
                    if self.left == 0 {
                        self.state = State::DataCr;
                    }
                    self.framing = 0;
                    return Ok((i + n, Some(i..i + n)));
                }
                State::DataCr => match b {
                    b'\r' => self.state = State::DataLf,
                    b'\n' => {
                        self.state = State::Size;
                        self.framing = 0;
                    }
                    _ => return Err(ChunkError("a chunk's data is longer than its size")),
                },
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("a chunk does not end in CRLF"));
                    }
                    self.state = State::Size;
                    self.framing = 0;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b'\n' => {
                        self.state = State::Done;
                        return Ok((i + 1, None));
                    }
                    _ => self.state = State::Trailer,
                },
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf,
                    b'\n' => self.state = State::TrailerStart,
                    _ => {}
                },
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError("a trailer line does not end in CRLF"));
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("the last chunk does not end in CRLF"));
                    }
                    self.state = State::Done;
                    return Ok((i + 1, None));
                }
                State::Done => return Ok((i, None)),
            }
            i += 1;
        }
        Ok((i, None))
    }

    /// After a chunk's size line: its data, or the trailers after the last chunk.
    fn end_size_line(&mut self) {
        self.state = if self.left == 0 {
            State::TrailerStart
        } else {
            State::Data
        };
    }

    /// Sixteen hex digits hold any u64; more are padding an attacker sends.
    fn framing_digits(&self) -> Result<(), ChunkError> {
        if self.framing > 17 {
            return Err(ChunkError("a chunk size has too many digits"));
        }
        Ok(())
    }

    /// The last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Client<'static> = Client {
        ip: Some(b"192.0.2.7"),
        trusted: false,
        https: false,
        request_id: None,
    };
    const LIMITS: policy::Limits = policy::Limits {
        max_head: 8192,
        max_body: 1 << 20,
    };

    fn take(raw: &str, client: Client<'_>) -> (Request, String) {
        let mut out = Vec::new();
        let r = request(raw.as_bytes(), client, &LIMITS, 1024, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_plain_get_is_rewritten_head_to_head() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\nGET /next";
        let (r, out) = take(raw, CLIENT);
        assert_eq!(
            r,
            Request::Simple(Simple {
                len: raw.len() - "GET /next".len(),
                head: false,
                close: false,
                body: 0,
                retryable: true,
                spans: Spans {
                    method: 0..3,
                    target: 4..10,
                    host: Some(27..38),
                    ..Spans::default()
                },
            })
        );
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-host: example.com\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn a_trusted_proxys_forwarding_headers_are_extended() {
        let trusted = Client {
            ip: Some(b"10.0.0.1"),
            trusted: true,
            https: false,
            request_id: None,
        };
        let raw = "HEAD / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2 \r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";
        let (r, out) = take(raw, trusted);
        assert!(matches!(
            r,
            Request::Simple(Simple {
                head: true,
                close: true,
                ..
            })
        ));
        assert_eq!(
            out,
            "HEAD / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.1\r\nx-forwarded-host: h\r\n\r\n"
        );
    }

    #[test]
    fn the_policy_rewrites_what_the_narrow_path_takes() {
        // An untrusted client's forwarding headers, lookalikes, hop-by-hop headers and the
        // names its Connection lists: dropped here as on hyper's path (one policy).
        let (r, out) = take(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\nContent_Length: 5\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nTE: trailers\r\nX_Api_Key: k\r\n\r\n",
            CLIENT,
        );
        assert!(matches!(r, Request::Simple(_)), "{r:?}");
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: h\r\nX_Api_Key: k\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-host: h\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn a_small_body_of_known_length_is_taken() {
        let simple = |raw: &str| match take(raw, CLIENT) {
            (Request::Simple(s), out) => (s, out),
            other => panic!("{raw:?}: {other:?}"),
        };
        // The body need not be there yet: the narrow path reads it.
        let (s, out) = simple("POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nab");
        assert_eq!((s.body, s.retryable), (5, false));
        assert_eq!(
            out,
            "POST /form HTTP/1.1\r\nHost: h\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-host: h\r\nx-forwarded-proto: http\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
            "a request that cannot be sent again has a stream of its own"
        );
        // Idempotent without a body: retryable; with one, or not idempotent: not.
        let (s, _) = simple("DELETE /x HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((s.body, s.retryable), (0, true));
        let (s, out) = simple("PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((s.body, s.retryable), (0, true));
        assert!(out.contains("content-length: 0\r\n"), "{out}");
        let (s, _) = simple("PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 1024\r\n\r\n");
        assert_eq!((s.body, s.retryable), (1024, false));
        let (s, _) = simple("POST /x HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!((s.body, s.retryable), (0, false));
        let (s, _) = simple("PATCH /x HTTP/1.1\r\nHost: h\r\nContent-Length:  7 \r\n\r\n");
        assert_eq!((s.body, s.retryable), (7, false));
        let (s, _) = simple("GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n");
        assert_eq!((s.body, s.retryable), (3, false));
        // Larger than the narrow path keeps in memory, two lengths, or a length that is not
        // a plain number: hyper's.
        for raw in [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1025\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert_eq!(take(raw, CLIENT).0, Request::Other, "{raw:?}");
        }
        // Without room for bodies (request buffering off), only body-less requests.
        let mut out = Vec::new();
        let raw = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(request(raw, CLIENT, &LIMITS, 0, &mut out), Request::Other);
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        for raw in [
            "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: evil.com/x?y @z\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
            "TRACE / HTTP/1.1\r\nHost: h\r\n\r\n",
            "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer_Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : h\r\n\r\n",
            "GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert_eq!(take(raw, CLIENT).0, Request::Other, "{raw:?}");
        }
        assert_eq!(
            take("GET / HTTP/1.1\r\nHost: h\r\n", CLIENT).0,
            Request::Partial
        );
        // Too long to be all there within the limit: hyper answers it (431).
        let long = format!("GET / HTTP/1.1\r\nHost: h\r\nX-A: {}\r\n", "a".repeat(9000));
        assert_eq!(take(&long, CLIENT).0, Request::Other);
        let many: String = (0..70).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n");
        assert_eq!(take(&raw, CLIENT).0, Request::Other);
        // Within the limit as bytes, over it as the policy counts a head (what hyper's path
        // sees): hyper answers it, the same 431.
        let tight: String = (0..60)
            .map(|i| format!("X-{i:02}:{}\r\n", "v".repeat(129)))
            .collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: h\r\n{tight}\r\n");
        assert!(raw.len() <= 8192, "{}", raw.len());
        assert_eq!(take(&raw, CLIENT).0, Request::Other);
    }

    fn answer_of(raw: &str, head: bool, close: bool) -> (Answer, String) {
        let mut out = Vec::new();
        let a = answer(
            raw.as_bytes(),
            head,
            b"Tue, 01 Dec 2026 00:00:00 GMT",
            close,
            &mut out,
        );
        (a, String::from_utf8(out).unwrap())
    }

    #[test]
    fn an_answer_loses_its_hop_by_hop_headers_and_gets_a_date() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-App: a\r\n\r\nhi";
        let (a, out) = answer_of(raw, false, false);
        assert_eq!(
            a,
            Answer::Final(Final {
                len: raw.len() - 2,
                status: 200,
                body: Framing::Length(2),
                close: false
            })
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: a\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\n"
        );
        let (_, out) = answer_of(
            "HTTP/1.1 404 Not Found\r\nDate: x\r\nContent-Length: 0\r\n\r\n",
            false,
            true,
        );
        assert_eq!(
            out,
            "HTTP/1.1 404 Not Found\r\nDate: x\r\nContent-Length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |raw: &str, head: bool| match answer_of(raw, head, false).0 {
            Answer::Final(f) => (f.body, f.close),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            (Framing::None, false)
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", false),
            (Framing::None, false)
        );
        assert_eq!(
            framing("HTTP/1.1 304 Not Modified\r\n\r\n", false),
            (Framing::None, false)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            (Framing::Chunked, false)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            (Framing::Chunked, true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", false),
            (Framing::UntilClose, true)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            (Framing::Length(1), true)
        );
        assert_eq!(
            framing(
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            (Framing::Length(1), false)
        );
        assert_eq!(
            framing(
                "HTTP/1.0 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            (Framing::Length(1), true)
        );
        // A 204 loses a Content-Length it should not have had.
        let (_, out) = answer_of(
            "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nDate: x\r\n\r\n",
            false,
            false,
        );
        assert_eq!(out, "HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n");
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n",
                false
            ),
            (Framing::Length(7), false)
        );
        let (_, out) = answer_of(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
            false,
        );
        assert!(
            !out.to_ascii_lowercase().contains("content-length"),
            "{out}"
        );
        assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
    }

    #[test]
    fn answers_baton_does_not_forward() {
        assert_eq!(
            answer_of("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", false, false).0,
            Answer::Interim(25)
        );
        for raw in [
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            // The policy's 19 digits, as for a request: a u64, and not padded past it.
            "HTTP/1.1 200 OK\r\nContent-Length: 00000000000000000001\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 999 What\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "hello\r\n\r\n",
        ] {
            assert!(
                matches!(answer_of(raw, false, false).0, Answer::Bad(_)),
                "{raw:?}"
            );
        }
        assert_eq!(
            answer_of("HTTP/1.1 200 OK\r\n", false, false).0,
            Answer::Partial
        );
    }

    fn dechunk(mut input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut c = Chunked::default();
        let mut data = Vec::new();
        let total = input.len();
        while !input.is_empty() && !c.is_done() {
            let (used, d) = c.decode(input)?;
            if let Some(r) = d {
                data.extend_from_slice(&input[r]);
            }
            input = &input[used..];
        }
        Ok((data, total - input.len(), c.is_done()))
    }

    #[test]
    fn a_chunked_body_is_decoded_in_any_pieces() {
        let body = b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (data, used, done) = dechunk(body).unwrap();
        assert_eq!(data, b"hello 0123456789");
        assert_eq!(used, body.len() - 4);
        assert!(done);
        // Byte by byte, the same.
        let mut c = Chunked::default();
        let mut data = Vec::new();
        for i in 0..body.len() - 4 {
            let (used, d) = c.decode(&body[i..=i]).unwrap();
            assert_eq!(used, 1);
            if let Some(r) = d {
                data.extend_from_slice(&body[i..=i][r]);
            }
        }
        assert!(c.is_done());
        assert_eq!(data, b"hello 0123456789");
    }

    #[test]
    fn a_line_may_end_in_a_bare_lf_as_nginx_reads_it() {
        for body in [
            &b"5\r\nhello\r\n0\r\n\n"[..],
            b"5\nhello\n0\n\n",
            b"5;x\nhello\r\n0\r\nX-T: 1\n\n",
            b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        ] {
            let (data, used, done) = dechunk(body).unwrap();
            assert_eq!(
                (&data[..], used, done),
                (&b"hello"[..], body.len(), true),
                "{body:?}"
            );
        }
    }

    #[test]
    fn a_malformed_chunked_body_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"11111111111111111\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\n\r\r",
        ] {
            assert!(dechunk(bad).is_err(), "{bad:?}");
        }
        let padding = vec![b'0'; 20];
        assert!(dechunk(&padding).is_err());
        let mut ext = b"1;".to_vec();
        ext.extend(std::iter::repeat_n(b'a', MAX_FRAMING));
        assert!(dechunk(&ext).is_err());
    }
}
