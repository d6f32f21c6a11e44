//! The access log's line of a head hyper refuses itself. hyper's HTTP/1.1 server answers a
//! head it cannot parse (a malformed request line or field, a framing it will not read, a head
//! too large) with its own 400, 414 or 431 and ends the connection, without a call to
//! `Proxy::handle`; neither path's entry sees that answer, so the connection's end tells of it.

use super::Peer;
use crate::access::{self, AccessLog};
use http::HeaderValue;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a connection that hyper serves keeps (with an access log) to log such an answer.
pub(super) struct Refusals {
    log: Arc<AccessLog>,
    /// The request line of the first head hyper reads: the bytes the narrow path handed over
    /// ([`access::request_line`], bounded); empty when hyper had the connection from its first
    /// byte.
    line: Vec<u8>,
    served: Served,
    client: Option<HeaderValue>,
    https: bool,
}

/// Set at each request hyper hands to the service: a head refused after one is a later head,
/// whose bytes baton never saw (they are hyper's).
#[derive(Clone, Default)]
pub(super) struct Served(Option<Arc<AtomicBool>>);

impl Served {
    pub(super) fn mark(&self) {
        if let Some(s) = &self.0 {
            s.store(true, Ordering::Relaxed);
        }
    }
}

impl Refusals {
    /// For a connection hyper serves from `first` on (what the narrow path read and did not
    /// take), when there is a log.
    pub(super) fn new(log: Option<&Arc<AccessLog>>, first: &[u8], peer: &Peer) -> Option<Refusals> {
        Some(Refusals {
            log: log?.clone(),
            line: access::request_line(first).to_vec(),
            served: Served(Some(Arc::default())),
            client: peer.ip.clone(),
            https: peer.https,
        })
    }

    /// What the service marks.
    pub(super) fn served(this: Option<&Refusals>) -> Served {
        this.map(|r| r.served.clone()).unwrap_or_default()
    }

    /// The connection ended with `e`: a line when hyper answered a head it refused.
    pub(super) fn ended(&self, e: &hyper::Error) {
        let Some(status) = status(e) else {
            return;
        };
        let served = self
            .served
            .0
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed));
        let line = if served { &[][..] } else { &self.line[..] };
        let client = self.client.as_ref().map(HeaderValue::as_bytes);
        let mut entry = self
            .log
            .entry(&access::Request::refused(line, client, self.https));
        // No body; no time: hyper does not say when it began to read the head.
        entry.status = status;
        self.log.log(&entry);
    }
}

/// The status hyper 1.x's HTTP/1.1 server answered `e` with, if it answered: its
/// `Server::on_error` (proto/h1/role.rs) answers every parse error of a request head, 414
/// for a target over 65,534 bytes (`Parse::UriTooLong`), 431 for a head beyond its buffer or
/// with too many fields (`Parse::TooLarge`), 400 for the others, but nothing to an HTTP/2
/// preface (`VersionH2`), to a status (a response's error) or to its own internal error;
/// errors of other kinds (a timeout, a reset, a closed connection) get no answer either.
fn status(e: &hyper::Error) -> Option<u16> {
    if !e.is_parse() || e.is_parse_version_h2() || e.is_parse_status() {
        return None;
    }
    // hyper tells the rest apart by its message only (its `Display` is the kind's
    // description, and `tests/access_log.rs` holds these to what the client got).
    let said = e.to_string();
    if said.starts_with("internal error inside Hyper") {
        return None;
    }
    if e.is_parse_too_large() {
        return Some(if said == "URI too long" { 414 } else { 431 });
    }
    Some(400)
}
