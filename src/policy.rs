//! One HTTP policy for every way into baton: the narrow HTTP/1.1 path (`h1`), hyper's, and
//! any front to come. What a client's request head may be, what baton answers itself, what
//! the worker gets instead of it, and the tables of header names these rules rest on, each
//! written once.
//!
//! Pure: no I/O, no tokio, no pool, and no allocation, so the narrow path stays as cheap as
//! it was. A codec builds a [`RequestHead`] from what it parsed (httparse's array, hyper's
//! `HeaderMap`), asks [`admit`], and writes the worker's head with [`worker_head`]: the same
//! decision and the same bytes, whichever way the request came. What a worker may answer is
//! read by one parser for every path (`h1::answer`), on the tables here. The differential
//! test (`tests/differential.rs`) and fuzz target (`fuzz/fuzz_targets/differential.rs`) hold
//! the codecs to it.

/// What a header name is to baton. One table, for requests and answers alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    /// The other hop-by-hop headers (RFC 9110 7.6.1): `Keep-Alive`, `Proxy-Connection`, `TE`,
    /// `Trailer`, `Proxy-Authenticate`, `Proxy-Authorization`.
    HopByHop,
    ForwardedFor,
    ForwardedHost,
    ForwardedProto,
    /// Any other forwarding header: what a proxy says of the client (`X-Forwarded-*` of any
    /// kind, `Forwarded`, `X-Real-IP`). Frameworks believe `X-Forwarded-Ssl`, `-Scheme`,
    /// `-Port` and `-Prefix` as much as `-Proto`.
    Forwarding,
    /// A name with a `_` that reads, with `_` as `-`, as one baton frames by, sets or strips
    /// (`Content_Length`, `Transfer_Encoding`, `X_Forwarded_For`, `Keep_Alive`...). CGI-style
    /// servers (Rack's Puma and Unicorn, PHP) make the same variable of both spellings, so
    /// such a header would reach the app as the real one: an untrusted client's address, or
    /// a body framed otherwise than baton framed it. Dropped, anyone's (nginx drops every
    /// name with a `_`; these are the ones that matter).
    Lookalike,
    /// `Cookie`: protected, and several are one (an HTTP/2 client sends each cookie apart;
    /// an HTTP/1.1 worker gets them joined, RFC 9113 8.2.3).
    Cookie,
    /// An end-to-end header baton, the worker or the browser relies on, which a
    /// `Connection:` list cannot remove (`Connection: set-cookie` would log a visitor out):
    /// `Content-Type`, `Content-Encoding`, `Set-Cookie`, `Authorization`, `Date`.
    Protected,
    Other,
}

impl Name {
    /// A `Connection:` list cannot remove it.
    pub fn is_protected(self) -> bool {
        matches!(
            self,
            Name::Host
                | Name::ContentLength
                | Name::Expect
                | Name::ForwardedFor
                | Name::ForwardedHost
                | Name::ForwardedProto
                | Name::Forwarding
                | Name::Cookie
                | Name::Protected
        )
    }

    /// It describes one hop, not the message (RFC 9110 7.6.1); no path passes it on as it is.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Name::Connection | Name::Upgrade | Name::TransferEncoding | Name::HopByHop
        )
    }

    /// A forwarding header of any kind.
    pub fn is_forwarding(self) -> bool {
        matches!(
            self,
            Name::ForwardedFor | Name::ForwardedHost | Name::ForwardedProto | Name::Forwarding
        )
    }
}

/// What a header name is to baton (case-insensitive).
pub fn classify(n: &[u8]) -> Name {
    let is = |s: &str| n.eq_ignore_ascii_case(s.as_bytes());
    match n.len() {
        2 if is("te") => Name::HopByHop,
        4 if is("host") => Name::Host,
        4 if is("date") => Name::Protected,
        6 if is("cookie") => Name::Cookie,
        6 if is("expect") => Name::Expect,
        7 if is("upgrade") => Name::Upgrade,
        7 if is("trailer") => Name::HopByHop,
        9 if is("forwarded") || is("x-real-ip") => Name::Forwarding,
        10 if is("connection") => Name::Connection,
        10 if is("keep-alive") => Name::HopByHop,
        10 if is("set-cookie") => Name::Protected,
        12 if is("content-type") => Name::Protected,
        13 if is("authorization") => Name::Protected,
        14 if is("content-length") => Name::ContentLength,
        15 if is("x-forwarded-for") => Name::ForwardedFor,
        16 if is("x-forwarded-host") => Name::ForwardedHost,
        16 if is("content-encoding") => Name::Protected,
        16 if is("proxy-connection") => Name::HopByHop,
        17 if is("transfer-encoding") => Name::TransferEncoding,
        17 if is("x-forwarded-proto") => Name::ForwardedProto,
        18 if is("proxy-authenticate") => Name::HopByHop,
        19 if is("proxy-authorization") => Name::HopByHop,
        len if len > 12 && n[..12].eq_ignore_ascii_case(b"x-forwarded-") => Name::Forwarding,
        _ if is_lookalike(n) => Name::Lookalike,
        _ => Name::Other,
    }
}

/// See [`Name::Lookalike`].
fn is_lookalike(n: &[u8]) -> bool {
    if !n.contains(&b'_') {
        return false;
    }
    // The name as a CGI server reads it, in a buffer long enough for every name compared.
    let mut norm = [0u8; 24];
    let len = n.len().min(norm.len());
    for (d, c) in norm.iter_mut().zip(n) {
        *d = if *c == b'_' { b'-' } else { *c };
    }
    let norm = &norm[..len];
    if len > 12 && norm[..12].eq_ignore_ascii_case(b"x-forwarded-") {
        return true;
    }
    // `norm` has no `_`: this does not come back here.
    let kind = classify(norm);
    n.len() == len && (kind.is_hop_by_hop() || kind.is_forwarding() || kind == Name::ContentLength)
}

/// A `Content-Length` value: digits only (no sign, no list, no more than 19), as RFC 9110
/// 8.6 has it; anything else is not a length. The one rule for a client's request and a
/// worker's answer: 19 digits always fit a u64, so no value is cut or wrapped, and a length
/// padded with zeros past that is refused by both rather than by one only.
pub fn content_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A Host is a reg-name (letters, digits and the unreserved and sub-delims bytes), an
/// IPv4 address or a bracketed IP literal, `:` and digits; empty when the target has
/// no authority. Nothing that would end or change a URL built from it (`/`, `?`, `#`, `@`,
/// white space, control bytes): applications build links and redirects from it, and nginx
/// refuses the same.
pub fn is_valid_host(v: &[u8]) -> bool {
    let (host, port) = host_and_port(v);
    let port_ok = port.len() <= 5 && port.iter().all(u8::is_ascii_digit);
    let host_ok = if let Some(literal) = host.strip_prefix(b"[") {
        literal.strip_suffix(b"]").is_some_and(|l| {
            !l.is_empty()
                && l.iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'))
        })
    } else {
        host.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        })
    };
    // A port needs a host before it.
    host_ok && port_ok && (port.is_empty() || !host.is_empty())
}

pub(crate) fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// One option of a `Connection:` field: a token, or a header name it lists. Options are
/// compared without case (RFC 9110 7.6.1), so the bytes are only reached through [`Token::is`],
/// and a request and an answer read `Close` and `close` alike.
#[derive(Debug, Default, Clone, Copy)]
pub struct Token<'a>(&'a [u8]);

impl<'a> Token<'a> {
    /// This option is `name` (in any case).
    pub fn is(self, name: &[u8]) -> bool {
        self.0.eq_ignore_ascii_case(name)
    }
}

/// The options of one `Connection:` field value: comma-separated, white space trimmed, empty
/// ones (`close, , x`) skipped. The one reading of the field for requests and answers alike.
pub fn connection_tokens(v: &[u8]) -> impl Iterator<Item = Token<'_>> {
    v.split(|b| *b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
        .map(Token)
}

/// The options of every `Connection:` field in `fields`.
fn connection_options<F: Fields + ?Sized>(fields: &F) -> impl Iterator<Item = Token<'_>> {
    fields
        .each()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, v)| connection_tokens(v))
}

/// The client's `Connection:` says `close` (on any of its lines).
pub fn asks_close<F: Fields + ?Sized>(fields: &F) -> bool {
    connection_options(fields).any(|t| t.is(b"close"))
}

/// The header fields of a head, in the order they came, as each codec holds them.
pub trait Fields {
    fn each(&self) -> impl Iterator<Item = (&[u8], &[u8])>;
}

impl Fields for [httparse::Header<'_>] {
    fn each(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter().map(|h| (h.name.as_bytes(), h.value))
    }
}

impl Fields for http::HeaderMap {
    fn each(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    }
}

/// A client's request target, as a codec read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// The path and query the worker gets: an origin-form target (`/path?q`), or the one in an
    /// absolute-form target (`http://host/path`, `/` when it has none).
    Path(&'a str),
    /// `*`: a question about the server (`OPTIONS *`).
    Asterisk,
    /// Anything else (`abc`, `host:80`): nothing a worker could be given without guessing.
    Invalid,
}

/// A request head as a codec parsed it.
pub struct RequestHead<'a, F: Fields + ?Sized> {
    pub method: &'a str,
    pub target: Target<'a>,
    /// The target's length as the client sent it (its authority included; HTTP/2's
    /// `:authority` is apart).
    pub target_len: usize,
    /// HTTP/1.0 (which may go without a Host).
    pub http10: bool,
    /// HTTP/2's `:authority`, or the authority of an HTTP/1.1 absolute-form target (not in
    /// `target_len`): the Host the worker gets, whatever Host field the client sent.
    pub authority: Option<&'a str>,
    /// HTTP/2: whether a body follows its HEADERS (a stream that did not end with them), which
    /// needs no `Content-Length`. `None` on HTTP/1, where the headers frame the body.
    pub body_follows: Option<bool>,
    pub fields: &'a F,
}

impl<F: Fields + ?Sized> Clone for RequestHead<'_, F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Fields + ?Sized> Copy for RequestHead<'_, F> {}

/// The limits a request head is held to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// `[listen] max_header_size`: the target alone, and the whole head.
    pub max_head: usize,
    /// `[listen] max_body_size`: a body that says it is longer is refused before it is read.
    pub max_body: u64,
}

/// The request body as the client's head frames it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// None (no framing).
    None,
    /// `Content-Length`: this many bytes (0 is no body, but said so).
    Length(u64),
    /// `Transfer-Encoding` (its length is known only at its end).
    Chunked,
    /// A `Content-Length` that is not a plain number, or several: the codec refuses it (hyper
    /// does, with a 400) or takes another way (the narrow path hands it to hyper).
    Unclear,
}

/// What the policy says of a request baton forwards. Plain data: the codec keeps its head and
/// gives it back to [`worker_head`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// A `HEAD`: the answer has no body, whatever its headers say.
    pub head: bool,
    /// An idempotent method (RFC 9110 9.2.2).
    pub idempotent: bool,
    pub body: Body,
    /// The client asks to switch protocols (`Upgrade` and `Connection: upgrade`), and the
    /// worker gets the `Upgrade` and `Connection: upgrade`.
    pub upgrade: bool,
    /// The client said `Connection: close`.
    pub close: bool,
    /// The client sent `Expect` (hyper answers `100 Continue` before it reads the body).
    pub expect: bool,
    /// An `Upgrade` field, whether or not its `Connection:` says so.
    pub upgrade_field: bool,
    /// The client's `Connection:` lists names beyond `keep-alive`, `close` and `upgrade`:
    /// those headers are hop-by-hop too, and dropped (unless protected).
    pub lists_names: bool,
    forwarded_host: bool,
    forwarded_proto: bool,
    /// `Cookie` fields: several are joined into one for the worker.
    cookies: u16,
}

impl Admitted {
    /// Idempotent and without a body: it may go on a reused worker stream, and be sent again
    /// to another worker when the first gave no answer. Any other request goes on a stream of
    /// its own, with `Connection: close`, and is sent again only if it never left baton.
    pub fn retryable(&self) -> bool {
        self.idempotent && !self.has_body() && !self.upgrade
    }

    /// A body follows the head (`Content-Length: 0` is none).
    pub fn has_body(&self) -> bool {
        !matches!(self.body, Body::None | Body::Length(0))
    }
}

/// What baton answers itself rather than forwarding a request; each is a plain-text answer
/// with its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OwnAnswer {
    /// `OPTIONS *`: a question about the server (200, with `Allow`).
    #[error("baton: the methods it forwards are {ALLOWED}")]
    Options,
    #[error(
        "baton: bad request target (origin-form \"/path\" or absolute-form \"http://host/path\")"
    )]
    BadTarget,
    #[error("baton: a request needs exactly one Host header")]
    NoHost,
    #[error("baton: the Host header is not a host name or address with an optional port")]
    BadHost,
    #[error("baton: CONNECT is not supported (baton is a reverse proxy, not a forward proxy)")]
    Connect,
    #[error(
        "baton: TRACE is not supported (it would echo the request, credentials included, to the page that sent it)"
    )]
    Trace,
    #[error("baton: the request target is {0} bytes; the limit is {1} (listen.max_header_size)")]
    UriTooLong(usize, usize),
    #[error("baton: the request head is {0} bytes; the limit is {1} (listen.max_header_size)")]
    HeadTooLarge(usize, usize),
    #[error("baton: the request body is larger than {0} bytes (listen.max_body_size)")]
    BodyTooLarge(u64),
    /// An HTTP/2 request whose `Content-Length` is not one plain number ([`Body::Unclear`]):
    /// hyper's HTTP/1.1 server refuses such a head itself, `h2` lets some through (an empty
    /// value).
    #[error("baton: the Content-Length is not one plain number")]
    BadLength,
}

/// The methods baton forwards, for `Allow`.
pub const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

impl OwnAnswer {
    pub fn status(self) -> u16 {
        match self {
            OwnAnswer::Options => 200,
            OwnAnswer::BadTarget
            | OwnAnswer::NoHost
            | OwnAnswer::BadHost
            | OwnAnswer::BadLength => 400,
            OwnAnswer::Connect | OwnAnswer::Trace => 405,
            OwnAnswer::UriTooLong(..) => 414,
            OwnAnswer::HeadTooLarge(..) => 431,
            OwnAnswer::BodyTooLarge(_) => 413,
        }
    }

    /// The `Allow` header it carries, if any.
    pub fn allow(self) -> Option<&'static str> {
        matches!(
            self,
            OwnAnswer::Options | OwnAnswer::Connect | OwnAnswer::Trace
        )
        .then_some(ALLOWED)
    }

    /// The connection cannot go on after it: a body that follows was not read.
    pub fn closes(self) -> bool {
        matches!(self, OwnAnswer::BodyTooLarge(_))
    }
}

/// Decide on a request head: forwarded (how), or answered by baton (why).
#[allow(
    clippy::too_many_lines,
    reason = "one pass over the request's headers, each rule (framing, Host, hop-by-hop, upgrade) \
              decided from the counts the pass keeps: the policy every way in shares, read whole \
              when it is audited"
)]
pub fn admit<F: Fields + ?Sized>(
    req: &RequestHead<'_, F>,
    limits: &Limits,
) -> Result<Admitted, OwnAnswer> {
    if req.target_len > limits.max_head {
        return Err(OwnAnswer::UriTooLong(req.target_len, limits.max_head));
    }
    // The whole request line counts: method, target and version.
    let mut size = req.method.len() + req.target_len + " HTTP/1.1\r\n ".len();
    let mut hosts = 0;
    let mut host: &[u8] = b"";
    let mut lengths = 0;
    let mut length = None;
    let mut same_lengths = true;
    let mut te = false;
    let mut adm = Admitted {
        head: req.method == "HEAD",
        idempotent: matches!(req.method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE"),
        body: Body::None,
        upgrade: false,
        close: false,
        expect: false,
        upgrade_field: false,
        lists_names: false,
        forwarded_host: false,
        forwarded_proto: false,
        cookies: 0,
    };
    let mut asks_upgrade = false;
    for (n, v) in req.fields.each() {
        size += n.len() + v.len() + 4;
        match classify(n) {
            Name::Host => {
                hosts += 1;
                host = v;
            }
            Name::ContentLength => {
                let n = content_length(v);
                // Several lines of one length are one length (RFC 9110 8.6).
                same_lengths &= lengths == 0 || n == length;
                lengths += 1;
                length = n;
            }
            Name::TransferEncoding => te = true,
            Name::Connection => {
                for t in connection_tokens(v) {
                    if t.is(b"close") {
                        // What `asks_close` says too.
                        adm.close = true;
                    } else if t.is(b"upgrade") {
                        asks_upgrade = true;
                    } else if !t.is(b"keep-alive") {
                        adm.lists_names = true;
                    }
                }
            }
            Name::Upgrade => adm.upgrade_field = true,
            Name::Expect => adm.expect = true,
            Name::ForwardedHost => adm.forwarded_host = true,
            Name::ForwardedProto => adm.forwarded_proto = true,
            Name::Cookie => adm.cookies = adm.cookies.saturating_add(1),
            _ => {}
        }
    }
    // HTTP/2's `:authority` counts as the Host field it stands for, or beside a Host field
    // as the authority of an absolute-form target: a head is as large over HTTP/2 as over
    // HTTP/1.1.
    // Refused below, after the checks every way in makes first (the head's size, CONNECT).
    let mut other_host = false;
    if let Some(authority) = req.authority {
        size += authority.len();
        let h2 = req.body_follows.is_some();
        if hosts == 0 && h2 {
            hosts = 1;
            host = authority.as_bytes();
            size += "host".len() + 4;
        } else if hosts == 1 && h2 && !host.eq_ignore_ascii_case(authority.as_bytes()) {
            // RFC 9113 8.3.1: a Host that names another server than `:authority` is malformed;
            // a worker routing by Host would be told one thing and baton's log another.
            other_host = true;
        } else if !h2 {
            // RFC 9112 3.2.2: the authority of an absolute-form target wins over Host (which
            // HTTP/1.1 still requires below; HTTP/1.0 may go without), and is checked as one.
            host = authority.as_bytes();
        }
    }
    if size > limits.max_head {
        return Err(OwnAnswer::HeadTooLarge(size, limits.max_head));
    }
    match req.method {
        "CONNECT" => return Err(OwnAnswer::Connect),
        "TRACE" => return Err(OwnAnswer::Trace),
        _ => {}
    }
    if other_host {
        return Err(OwnAnswer::BadHost);
    }
    // HTTP/1.1 needs exactly one Host (RFC 9112 3.2); HTTP/1.0 may go without.
    if hosts > 1 || (hosts == 0 && !req.http10) {
        return Err(OwnAnswer::NoHost);
    }
    if !is_valid_host(host) {
        return Err(OwnAnswer::BadHost);
    }
    match req.target {
        Target::Path(_) => {}
        Target::Asterisk if req.method == "OPTIONS" => return Err(OwnAnswer::Options),
        Target::Asterisk | Target::Invalid => return Err(OwnAnswer::BadTarget),
    }
    adm.body = match (te, lengths, length) {
        (true, _, _) => Body::Chunked,
        // An HTTP/2 body without a length: its end is the stream's.
        (false, 0, _) if req.body_follows == Some(true) => Body::Chunked,
        (false, 0, _) => Body::None,
        (false, 1, Some(n)) => Body::Length(n),
        // HTTP/2: the same length on several lines is that length, as hyper's HTTP/1.1
        // server reads it; anything else is refused here, since `h2` lets some through (an
        // empty value). HTTP/1.1's codecs refuse it (hyper) or hand it to hyper (the narrow
        // path).
        (false, _, Some(n)) if req.body_follows.is_some() && same_lengths => Body::Length(n),
        _ if req.body_follows.is_some() => return Err(OwnAnswer::BadLength),
        _ => Body::Unclear,
    };
    // Too large by its own account: refused before it is read (and before a `100 Continue`).
    if let Body::Length(n) = adm.body
        && n > limits.max_body
    {
        return Err(OwnAnswer::BodyTooLarge(limits.max_body));
    }
    // A request that carries a body is never switched: what follows its head is its body, and
    // a worker that answers it without switching (or without reading it) must not take the
    // body for its next request on a stream kept open for the new protocol. It goes as an
    // ordinary request, without `Upgrade`, on a stream of its own with `Connection: close`
    // (RFC 9110 7.8 lets a server ignore `Upgrade`; nginx forwards the body and closes too).
    adm.upgrade = asks_upgrade && adm.upgrade_field && !adm.has_body();
    Ok(adm)
}

/// What baton knows of the client, for the forwarding headers.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// The client's IP, as text; `None` on a Unix socket.
    pub ip: Option<&'a [u8]>,
    /// Its forwarding headers are believed (`[listen] trusted_proxies`, or a Unix socket);
    /// anyone else's are replaced by what baton saw.
    pub trusted: bool,
    /// It came over TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
    /// `[log] request_id`: the request keeps its own valid `X-Request-Id`, else gets this one.
    pub request_id: Option<&'a [u8]>,
}

/// The client's own `X-Request-Id`, when it is one baton passes on: 1 to 200 bytes of
/// letters, digits and `-_.:+/=` (what request ids are made of; anything else could smuggle
/// text into logs).
pub fn request_id<F: Fields + ?Sized>(fields: &F) -> Option<&[u8]> {
    fields
        .each()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"x-request-id"))
        .map(|(_, v)| v)
        .filter(|v| is_request_id(v))
}

fn is_request_id(v: &[u8]) -> bool {
    (1..=200).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

/// How the body follows the head the worker gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    None,
    /// `Content-Length`: the exact length (a buffered body, however the client framed it).
    Length(u64),
    /// Chunked, as it comes (a streamed body of unknown length).
    Chunked,
}

/// Write the head the worker gets for an admitted request (`out` is cleared first): the
/// method and the target's path, HTTP/1.1; the client's headers without the hop-by-hop ones
/// (those its `Connection:` lists too, unless protected), lookalikes, and an untrusted
/// client's forwarding headers; `X-Forwarded-For` (a trusted proxy's list, then this client),
/// `-Host` and `-Proto` as baton saw them; the body's framing; and `Connection: close` for a
/// request whose stream must carry nothing else (a worker that does not read a body must not
/// take it for a next request), or `Connection: upgrade`.
#[allow(
    clippy::too_many_lines,
    reason = "one pass over the client's headers writing the worker's head, each decision beside \
              the header it is about: the policy every way in shares, read whole when it is \
              audited"
)]
pub fn worker_head<F: Fields + ?Sized>(
    req: &RequestHead<'_, F>,
    adm: &Admitted,
    client: Client<'_>,
    body: Sent,
    out: &mut Vec<u8>,
) {
    out.clear();
    let path = match req.target {
        Target::Path(p) => p,
        Target::Asterisk | Target::Invalid => "/",
    };
    out.extend_from_slice(req.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = None;
    let mut cookie_name: &[u8] = b"cookie";
    let own_id = client.request_id.and_then(|_| request_id(req.fields));
    for (n, v) in req.fields.each() {
        if client.request_id.is_some() && n.eq_ignore_ascii_case(b"x-request-id") {
            // One id, written below: the client's own valid one, or baton's.
            continue;
        }
        let kind = classify(n);
        let dropped = match kind {
            // The request's authority (an absolute-form target's, HTTP/2's) is the Host the
            // worker gets, written below.
            Name::Host if req.authority.is_some() => true,
            Name::Host => {
                host = host.or(Some(v));
                false
            }
            Name::Cookie if adm.cookies > 1 => {
                cookie_name = n;
                true
            }
            Name::Cookie => false,
            // Framed and listed by baton, below.
            Name::ContentLength
            | Name::TransferEncoding
            | Name::Connection
            | Name::HopByHop
            | Name::ForwardedFor
            | Name::Lookalike => true,
            Name::Upgrade => !adm.upgrade,
            Name::ForwardedHost | Name::ForwardedProto | Name::Forwarding => !client.trusted,
            Name::Expect | Name::Protected => false,
            Name::Other => adm.lists_names && connection_options(req.fields).any(|t| t.is(n)),
        };
        if !dropped {
            header(out, n, v);
        }
    }
    if host.is_none()
        && let Some(authority) = req.authority
    {
        header(out, b"host", authority.as_bytes());
        host = Some(authority.as_bytes());
    }
    if adm.cookies > 1 {
        out.extend_from_slice(cookie_name);
        out.extend_from_slice(b": ");
        let mut first = true;
        for (_, v) in req
            .fields
            .each()
            .filter(|(n, _)| classify(n) == Name::Cookie)
        {
            if !first {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v);
            first = false;
        }
        out.extend_from_slice(b"\r\n");
    }
    // X-Forwarded-For: a trusted proxy's list (several lines are one list, RFC 9110 5.3),
    // then this client. An empty line adds nobody to the list.
    let mut prior = 0;
    if client.trusted {
        for (_, v) in req
            .fields
            .each()
            .filter(|(n, _)| classify(n) == Name::ForwardedFor)
        {
            let v = trim(v);
            if v.is_empty() {
                continue;
            }
            out.extend_from_slice(if prior == 0 {
                b"x-forwarded-for: "
            } else {
                b", "
            });
            out.extend_from_slice(v);
            prior += 1;
        }
    }
    match (prior, client.ip) {
        (0, Some(ip)) => header(out, b"x-forwarded-for", ip),
        (_, Some(ip)) => {
            out.extend_from_slice(b", ");
            out.extend_from_slice(ip);
            out.extend_from_slice(b"\r\n");
        }
        (0, None) => {}
        (_, None) => out.extend_from_slice(b"\r\n"),
    }
    if !(client.trusted && adm.forwarded_host)
        && let Some(host) = host
    {
        header(out, b"x-forwarded-host", host);
    }
    if !(client.trusted && adm.forwarded_proto) {
        let proto: &[u8] = if client.https { b"https" } else { b"http" };
        header(out, b"x-forwarded-proto", proto);
    }
    if let Some(id) = own_id.or(client.request_id) {
        header(out, b"x-request-id", id);
    }
    match body {
        Sent::None => {}
        Sent::Length(n) => {
            let mut digits = itoa::Buffer::new();
            header(out, b"content-length", digits.format(n).as_bytes());
        }
        Sent::Chunked => header(out, b"transfer-encoding", b"chunked"),
    }
    if adm.upgrade {
        header(out, b"connection", b"upgrade");
    } else if !adm.retryable() {
        header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// A Host value's name and port (empty when it has none). A bracketed IPv6 literal keeps its
/// colons: the port is what follows the last `]:`, or the last `:` of any other name. The
/// check of a Host and the redirect to HTTPS split it here, so the redirect never keeps a part
/// the check took for a port.
fn host_and_port(v: &[u8]) -> (&[u8], &[u8]) {
    match v.iter().rposition(|b| *b == b':') {
        Some(i) if !v.starts_with(b"[") || v[..i].ends_with(b"]") => (&v[..i], &v[i + 1..]),
        _ => (v, &b""[..]),
    }
}

/// Where plain HTTP is sent when `[tls] redirect_http` is on: the same host (its port
/// replaced by HTTPS's, none for 443) and target, on `https://`.
pub fn https_location(host: &[u8], path: &str, port: u16, out: &mut Vec<u8>) {
    let (name, _) = host_and_port(host);
    out.extend_from_slice(b"https://");
    out.extend_from_slice(name);
    if port != 443 {
        out.push(b':');
        out.extend_from_slice(itoa::Buffer::new().format(port).as_bytes());
    }
    out.extend_from_slice(path.as_bytes());
}

/// One header line.
pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(
        method: &'a str,
        path: &'a str,
        fields: &'a [httparse::Header<'a>],
    ) -> RequestHead<'a, [httparse::Header<'a>]> {
        RequestHead {
            method,
            target: Target::Path(path),
            target_len: path.len(),
            http10: false,
            authority: None,
            body_follows: None,
            fields,
        }
    }

    fn h<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    const LIMITS: Limits = Limits {
        max_head: 8192,
        max_body: 1024,
    };
    const CLIENT: Client<'static> = Client {
        ip: Some(b"192.0.2.7"),
        trusted: false,
        https: false,
        request_id: None,
    };

    fn rewrite(method: &str, fields: &[httparse::Header<'_>], client: Client<'_>) -> String {
        let req = head(method, "/", fields);
        let adm = admit(&req, &LIMITS).unwrap();
        let sent = match adm.body {
            Body::Length(n) => Sent::Length(n),
            Body::Chunked => Sent::Chunked,
            Body::None | Body::Unclear => Sent::None,
        };
        let mut out = Vec::new();
        worker_head(&req, &adm, client, sent, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn names_are_classified_once() {
        for n in [
            "Connection",
            "Keep-Alive",
            "Proxy-Connection",
            "TE",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Proxy-Authenticate",
            "Proxy-Authorization",
        ] {
            assert!(classify(n.as_bytes()).is_hop_by_hop(), "{n}");
        }
        for n in [
            "X-Forwarded-For",
            "x-forwarded-host",
            "X-Forwarded-Proto",
            "X-Forwarded-Ssl",
            "X-Forwarded-Scheme",
            "X-Forwarded-Port",
            "X-Forwarded-Prefix",
            "Forwarded",
            "X-Real-IP",
        ] {
            assert!(classify(n.as_bytes()).is_forwarding(), "{n}");
        }
        for n in ["X-Forwarded-", "X-Forwarder", "Forwarded-For", "Host-X"] {
            assert_eq!(classify(n.as_bytes()), Name::Other, "{n}");
        }
        for n in [
            "Content_Length",
            "Transfer_Encoding",
            "X_Forwarded_For",
            "x_forwarded_ssl",
            "X-Forwarded_Client-Cert-Chain-Of-Many-Names",
            "Keep_Alive",
            "X_Real_IP",
            "Proxy_Connection",
        ] {
            assert_eq!(classify(n.as_bytes()), Name::Lookalike, "{n}");
        }
        for n in ["X_Api_Key", "Content_Type", "my_header", "_"] {
            assert_eq!(classify(n.as_bytes()), Name::Other, "{n}");
        }
    }

    #[test]
    fn connection_options_are_trimmed_tokens_of_any_case() {
        let seen = |v: &[u8]| {
            connection_tokens(v)
                .map(|t| String::from_utf8_lossy(t.0).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            seen(b" Close ,, x-Hop,\tkeep-alive "),
            ["Close", "x-Hop", "keep-alive"]
        );
        assert!(seen(b"").is_empty() && seen(b" , ,").is_empty());
        let first = connection_tokens(b"UPGRADE, close").next();
        assert!(first.is_some_and(|t| t.is(b"upgrade") && !t.is(b"upgrad")));
    }

    #[test]
    fn a_host_splits_at_its_last_colon_outside_brackets() {
        for (v, host, port) in [
            (&b"example.com"[..], &b"example.com"[..], &b""[..]),
            (b"example.com:8080", b"example.com", b"8080"),
            (b"example.com:", b"example.com", b""),
            (b"[::1]", b"[::1]", b""),
            (b"[::1]:443", b"[::1]", b"443"),
            (b"[::1", b"[::1", b""),
            (b"a:b:c", b"a:b", b"c"),
            (b"", b"", b""),
        ] {
            assert_eq!(host_and_port(v), (host, port), "{v:?}");
        }
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b" 42 "), Some(42));
        assert_eq!(content_length(b"\t7\t"), Some(7));
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"0000000000000000042"), Some(42));
        assert_eq!(
            content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"   ",
            b"+1",
            b"-1",
            b"1,1",
            b"1, 1",
            b"1 1",
            b"0x1",
            b"1.0",
            b"\xd9\xa1",
            // 20 digits: refused even when the value would fit (u64::MAX has 20).
            b"00000000000000000001",
            b"18446744073709551615",
            b"18446744073709551616",
            b"99999999999999999999",
        ] {
            assert_eq!(content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_plain_get_is_rewritten_for_the_worker() {
        let out = rewrite(
            "GET",
            &[h("Host", "example.com"), h("Connection", "keep-alive")],
            CLIENT,
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: example.com\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-host: example.com\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_and_listed_headers_are_dropped_but_not_protected_ones() {
        let out = rewrite(
            "GET",
            &[
                h("Host", "h"),
                h(
                    "Connection",
                    "keep-alive, x-secret, cookie, host, set-cookie",
                ),
                h("X-Secret", "1"),
                h("Cookie", "a=1"),
                h("Set-Cookie", "b=2"),
                h("Keep-Alive", "timeout=5"),
                h("TE", "trailers"),
                h("Proxy-Authorization", "Basic x"),
                h("Upgrade", "websocket"),
            ],
            CLIENT,
        );
        assert!(!out.contains("X-Secret"), "{out}");
        for kept in ["Host: h\r\n", "Cookie: a=1\r\n", "Set-Cookie: b=2\r\n"] {
            assert!(out.contains(kept), "{kept}: {out}");
        }
        for gone in [
            "Keep-Alive",
            "TE:",
            "Proxy-Authorization",
            "Upgrade",
            "Connection",
        ] {
            assert!(!out.contains(gone), "{gone}: {out}");
        }
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade() {
        let fields = [
            h("Host", "h"),
            h("Connection", "Upgrade"),
            h("Upgrade", "websocket"),
        ];
        let req = head("GET", "/ws", &fields);
        let adm = admit(&req, &LIMITS).unwrap();
        assert!(adm.upgrade && !adm.retryable());
        let mut out = Vec::new();
        worker_head(&req, &adm, CLIENT, Sent::None, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("Upgrade: websocket\r\n"), "{out}");
        assert!(out.ends_with("connection: upgrade\r\n\r\n"), "{out}");
    }

    #[test]
    fn the_authority_of_the_request_is_the_host_the_worker_gets() {
        // HTTP/1.1 absolute-form: the target's authority wins over Host (RFC 9112 3.2.2),
        // which is still required.
        let fields = [h("Host", "b.example"), h("X-Other", "1")];
        let mut req = head("GET", "/x", &fields);
        req.authority = Some("a.example");
        let adm = admit(&req, &LIMITS).unwrap();
        let mut out = Vec::new();
        worker_head(&req, &adm, CLIENT, Sent::None, &mut out);
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("host: a.example\r\n"), "{out}");
        assert!(out.contains("x-forwarded-host: a.example\r\n"), "{out}");
        assert!(!out.contains("b.example"), "{out}");
        let none: [httparse::Header<'_>; 0] = [];
        let mut req = head("GET", "/x", &none);
        req.authority = Some("a.example");
        assert_eq!(admit(&req, &LIMITS), Err(OwnAnswer::NoHost));
        // HTTP/1.0 may go without Host; its target's authority is checked as a Host is.
        req.http10 = true;
        assert!(admit(&req, &LIMITS).is_ok());
        req.authority = Some("victim@evil.example");
        assert_eq!(admit(&req, &LIMITS), Err(OwnAnswer::BadHost));
        // HTTP/2: `:authority` and a Host that agree are one; that differ, malformed (RFC
        // 9113 8.3.1).
        for (host, ok) in [("A.example", true), ("b.example", false)] {
            let fields = [h("host", host)];
            let mut req = head("GET", "/x", &fields);
            req.authority = Some("a.example");
            req.body_follows = Some(false);
            match admit(&req, &LIMITS) {
                Ok(adm) => {
                    assert!(ok, "{host}");
                    let mut out = Vec::new();
                    worker_head(&req, &adm, CLIENT, Sent::None, &mut out);
                    let out = String::from_utf8(out).unwrap();
                    assert_eq!(out.matches("\nhost: ").count(), 1, "{out}");
                    assert!(out.contains("host: a.example\r\n"), "{out}");
                }
                Err(e) => {
                    assert!(!ok, "{host}");
                    assert_eq!(e, OwnAnswer::BadHost);
                }
            }
        }
        // Refused as HTTP/1.1 refuses it first: a CONNECT is a CONNECT whatever its Host.
        let fields = [h("host", "b.example")];
        let mut req = head("CONNECT", "/", &fields);
        req.authority = Some("a.example:443");
        req.body_follows = Some(false);
        assert_eq!(admit(&req, &LIMITS), Err(OwnAnswer::Connect));
    }

    #[test]
    fn an_upgrade_that_carries_a_body_goes_as_an_ordinary_request_and_closes() {
        for (framing, value) in [("Content-Length", "52"), ("Transfer-Encoding", "chunked")] {
            for token in ["websocket", "h2c", "anything"] {
                let out = rewrite(
                    "POST",
                    &[
                        h("Host", "h"),
                        h("Connection", "Upgrade"),
                        h("Upgrade", token),
                        h(framing, value),
                    ],
                    CLIENT,
                );
                assert!(!out.contains("Upgrade"), "{out}");
                assert!(!out.contains("upgrade"), "{out}");
                assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
            }
        }
    }

    /// The property behind "no body is ever run as a request": over every combination of
    /// method, framing, `Connection` tokens and `Upgrade`, a request that has a body or cannot
    /// be sent again leaves `worker_head` with `Connection: close` as its last field, and only
    /// a body-less upgrade keeps `Connection: upgrade`.
    #[test]
    fn every_request_with_a_body_or_not_retryable_closes_its_stream() {
        let methods = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get",
        ];
        let framings: [&[(&str, &str)]; 6] = [
            &[],
            &[("Content-Length", "0")],
            &[("Content-Length", "5")],
            &[("Transfer-Encoding", "chunked")],
            &[("Transfer-Encoding", "gzip, chunked")],
            &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
        ];
        let connections = [
            None,
            Some("upgrade"),
            Some("keep-alive, Upgrade"),
            Some("close"),
        ];
        let upgrades = [None, Some("websocket"), Some("h2c")];
        let mut seen = 0;
        for method in methods {
            for framing in framings {
                for connection in connections {
                    for upgrade in upgrades {
                        let mut fields = vec![h("Host", "h")];
                        fields.extend(framing.iter().map(|(n, v)| h(n, v)));
                        fields.extend(connection.map(|v| h("Connection", v)));
                        fields.extend(upgrade.map(|v| h("Upgrade", v)));
                        let req = head(method, "/", &fields);
                        let Ok(adm) = admit(&req, &LIMITS) else {
                            continue;
                        };
                        let sent = match adm.body {
                            Body::Length(n) => Sent::Length(n),
                            Body::Chunked => Sent::Chunked,
                            Body::None | Body::Unclear => Sent::None,
                        };
                        let mut out = Vec::new();
                        worker_head(&req, &adm, CLIENT, sent, &mut out);
                        let out = String::from_utf8(out).unwrap();
                        let what = format!("{method} {framing:?} {connection:?} {upgrade:?}");
                        if adm.has_body() || !adm.retryable() && !adm.upgrade {
                            assert!(out.ends_with("connection: close\r\n\r\n"), "{what}: {out}");
                        }
                        if adm.upgrade {
                            assert!(!adm.has_body(), "{what}");
                            assert!(out.ends_with("connection: upgrade\r\n\r\n"), "{what}");
                        } else {
                            assert!(
                                !out.to_ascii_lowercase().contains("upgrade"),
                                "{what}: {out}"
                            );
                        }
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 400, "{seen}");
    }

    #[test]
    fn forwarding_headers_are_baton_s_unless_a_trusted_proxy_sent_them() {
        let fields = [
            h("Host", "example.org"),
            h("X-Forwarded-For", "10.0.0.1"),
            h("x-forwarded-for", " "),
            h("X-Forwarded-For", "10.0.0.2"),
            h("X-Forwarded-Proto", "https"),
            h("X-Forwarded-Ssl", "on"),
            h("Forwarded", "for=10.0.0.1"),
            h("X_Forwarded_For", "6.6.6.6"),
        ];
        let untrusted = rewrite("GET", &fields, CLIENT);
        assert_eq!(
            untrusted,
            "GET / HTTP/1.1\r\nHost: example.org\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-host: example.org\r\nx-forwarded-proto: http\r\n\r\n"
        );
        let trusted = Client {
            ip: Some(b"192.0.2.7"),
            trusted: true,
            https: false,
            request_id: None,
        };
        let out = rewrite("GET", &fields, trusted);
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: example.org\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: on\r\nForwarded: for=10.0.0.1\r\nx-forwarded-for: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\nx-forwarded-host: example.org\r\n\r\n"
        );
        // On a Unix socket: a trusted local process, no address of its own.
        let local = Client {
            ip: None,
            trusted: true,
            https: false,
            request_id: None,
        };
        let out = rewrite(
            "GET",
            &[h("Host", "h"), h("X-Forwarded-For", "1.1.1.1")],
            local,
        );
        assert!(out.contains("x-forwarded-for: 1.1.1.1\r\n"), "{out}");
        let out = rewrite("GET", &[h("Host", "h")], local);
        assert!(!out.contains("x-forwarded-for"), "{out}");
    }

    #[test]
    fn a_request_that_cannot_be_sent_again_has_a_stream_of_its_own() {
        for (method, fields, retryable) in [
            ("GET", &[h("Host", "h")][..], true),
            ("PUT", &[h("Host", "h"), h("Content-Length", "0")][..], true),
            ("DELETE", &[h("Host", "h")][..], true),
            ("POST", &[h("Host", "h")][..], false),
            (
                "PUT",
                &[h("Host", "h"), h("Content-Length", "3")][..],
                false,
            ),
            (
                "GET",
                &[h("Host", "h"), h("Transfer-Encoding", "chunked")][..],
                false,
            ),
            ("PROPFIND", &[h("Host", "h")][..], false),
        ] {
            let req = head(method, "/", fields);
            let adm = admit(&req, &LIMITS).unwrap();
            assert_eq!(adm.retryable(), retryable, "{method} {fields:?}");
            let out = rewrite(method, fields, CLIENT);
            assert_eq!(
                out.ends_with("connection: close\r\n\r\n"),
                !retryable,
                "{out}"
            );
        }
    }

    #[test]
    fn baton_answers_what_it_does_not_forward() {
        let refused = |method: &str, target: Target<'_>, fields: &[httparse::Header<'_>]| {
            let req = RequestHead {
                method,
                target,
                target_len: 1,
                http10: false,
                authority: None,
                body_follows: None,
                fields,
            };
            admit(&req, &LIMITS).unwrap_err()
        };
        let host = [h("Host", "h")];
        assert_eq!(
            refused("OPTIONS", Target::Asterisk, &host),
            OwnAnswer::Options
        );
        assert_eq!(
            refused("GET", Target::Asterisk, &host),
            OwnAnswer::BadTarget
        );
        assert_eq!(refused("GET", Target::Invalid, &host), OwnAnswer::BadTarget);
        assert_eq!(
            refused("CONNECT", Target::Invalid, &host),
            OwnAnswer::Connect
        );
        assert_eq!(refused("TRACE", Target::Path("/"), &host), OwnAnswer::Trace);
        assert_eq!(refused("GET", Target::Path("/"), &[]), OwnAnswer::NoHost);
        assert_eq!(
            refused("GET", Target::Path("/"), &[h("Host", "a"), h("Host", "b")]),
            OwnAnswer::NoHost
        );
        assert_eq!(
            refused("GET", Target::Path("/"), &[h("Host", "evil.com/x?y @z")]),
            OwnAnswer::BadHost
        );
        assert_eq!(
            refused(
                "POST",
                Target::Path("/"),
                &[h("Host", "h"), h("Content-Length", "1025")]
            ),
            OwnAnswer::BodyTooLarge(1024)
        );
        let long = "a".repeat(9000);
        assert_eq!(
            refused("GET", Target::Path("/"), &[h("Host", "h"), h("X-A", &long)]),
            OwnAnswer::HeadTooLarge(9000 + 3 + 4 + 5 + 4 + 3 + 1 + 12, 8192)
        );
        // HTTP/1.0 may go without a Host.
        let req = RequestHead {
            method: "GET",
            target: Target::Path("/"),
            target_len: 1,
            http10: true,
            authority: None,
            body_follows: None,
            fields: &[][..],
        };
        assert!(admit(&req, &LIMITS).is_ok());
        for own in [
            OwnAnswer::Options,
            OwnAnswer::Trace,
            OwnAnswer::HeadTooLarge(1, 0),
        ] {
            assert!(own.status() >= 200);
        }
    }

    #[test]
    fn an_http2_request_gets_its_authority_as_host_and_its_cookies_joined() {
        let fields = [h("cookie", "a=1"), h("accept", "*/*"), h("cookie", "b=2")];
        let req = RequestHead {
            method: "GET",
            target: Target::Path("/x"),
            target_len: 2,
            http10: false,
            authority: Some("shop.example"),
            body_follows: Some(false),
            fields: &fields[..],
        };
        let adm = admit(&req, &LIMITS).unwrap();
        let tls = Client {
            ip: Some(b"192.0.2.7"),
            trusted: false,
            https: true,
            request_id: None,
        };
        let mut out = Vec::new();
        worker_head(&req, &adm, tls, Sent::None, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x HTTP/1.1\r\naccept: */*\r\nhost: shop.example\r\ncookie: a=1; b=2\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-host: shop.example\r\nx-forwarded-proto: https\r\n\r\n"
        );
        assert_eq!(adm.body, Body::None);
        // A body that follows the HEADERS needs no length: it ends with its stream.
        let upload = RequestHead {
            body_follows: Some(true),
            ..req
        };
        assert_eq!(admit(&upload, &LIMITS).map(|a| a.body), Ok(Body::Chunked));
        // Without a Host or an authority: refused, as an HTTP/1.1 request without Host is.
        let bare = RequestHead {
            authority: None,
            ..req
        };
        assert_eq!(admit(&bare, &LIMITS), Err(OwnAnswer::NoHost));
        // A single cookie stays where it was.
        let one = [h("Cookie", "a=1"), h("Host", "h")];
        assert!(
            rewrite("GET", &one, CLIENT)
                .starts_with("GET / HTTP/1.1\r\nCookie: a=1\r\nHost: h\r\n")
        );
    }

    #[test]
    fn plain_http_is_sent_to_the_same_host_and_path_on_https() {
        let at = |host: &str, port| {
            let mut out = Vec::new();
            https_location(host.as_bytes(), "/a?b=1", port, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at("shop.example", 443), "https://shop.example/a?b=1");
        assert_eq!(at("shop.example:8080", 443), "https://shop.example/a?b=1");
        assert_eq!(
            at("shop.example:8080", 8443),
            "https://shop.example:8443/a?b=1"
        );
        assert_eq!(at("[::1]:80", 443), "https://[::1]/a?b=1");
        assert_eq!(at("[::1]", 8443), "https://[::1]:8443/a?b=1");
    }

    #[test]
    fn a_host_is_a_name_or_address_and_a_port() {
        for good in [
            &b"example.org"[..],
            b"example.org:8080",
            b"127.0.0.1",
            b"[::1]:443",
            b"[fe80::1]",
            b"xn--bcher-kva.example",
            b"",
        ] {
            assert!(is_valid_host(good), "{}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"evil.com/x?y @z"[..],
            b"a b",
            b"host:port",
            b"host:123456",
            b"user@host",
            b"host#frag",
            b"[::1",
            b":80",
            b"a\tb",
        ] {
            assert!(!is_valid_host(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
