//! `h1`: arbitrary bytes into the narrow path's head rewriting and chunked decoding
//! (`baton::h1`), with what they promise checked against httparse, the parser hyper and the
//! workers' servers agree with.
//!
//! The first byte chooses the client (trusted or not, TCP or a Unix socket) and whether the
//! answer is to a HEAD; the rest is the input. Asserts:
//! - a request the narrow path takes is a complete head of a method baton forwards, no longer
//!   than the input and the limit, with a body no longer than its limit, retryable only when
//!   idempotent and body-less (the policy, `baton::policy`, decides; this checks its outcome
//!   against httparse); the head written for the worker parses as
//!   one, with the same method and target, exactly one Host, `Connection: close` exactly
//!   when the request cannot be sent again (so its stream carries nothing else), no
//!   `Transfer-Encoding`, one `Content-Length` at most and saying the body's length, one
//!   `X-Forwarded-For` at most, no lookalike of a header baton sets (`Content_Length`), and
//!   an untrusted client's forwarding headers baton's alone;
//! - a final answer's head for the client parses, with the same status, and carries no
//!   hop-by-hop header but the `Transfer-Encoding: chunked` and `Connection: close` baton adds,
//!   and no `Content-Length` on a 204;
//! - a chunked body decodes to the same data and the same verdict whether it comes whole or in
//!   two pieces split anywhere, and the decoder never claims more bytes than it was given.

#![no_main]

use baton::h1::{self, Answer, Chunked, Request};
use baton::policy::{self, Client, Name};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 8192;
const BODY_LIMIT: usize = 4096;
const LIMITS: policy::Limits = policy::Limits {
    max_head: LIMIT,
    max_body: 1 << 20,
};

fuzz_target!(|input: &[u8]| {
    let Some((&choice, data)) = input.split_first() else {
        return;
    };
    let client = Client {
        ip: (choice & 1 == 0).then_some(&b"192.0.2.1"[..]),
        trusted: choice & 2 != 0,
        https: choice & 16 != 0,
        request_id: None,
    };
    check_request(data, client);
    check_answer(data, choice & 4 != 0, choice & 8 != 0);
    check_chunked(data, usize::from(choice));
});

fn check_request(data: &[u8], client: Client<'_>) {
    let mut out = Vec::new();
    let Request::Simple(simple) = h1::request(data, client, &LIMITS, BODY_LIMIT, &mut out) else {
        return;
    };
    assert!(simple.len <= data.len() && simple.len <= LIMIT);
    let mut theirs = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut theirs);
    assert!(
        matches!(req.parse(&data[..simple.len]), Ok(httparse::Status::Complete(n)) if n == simple.len)
    );
    let (method, path) = (req.method.unwrap(), req.path.unwrap());
    assert!(!["CONNECT", "TRACE"].contains(&method), "{method}");
    assert_eq!(simple.head, method == "HEAD");
    assert!(simple.body <= BODY_LIMIT);
    assert_eq!(
        simple.retryable,
        simple.body == 0 && ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"].contains(&method)
    );

    let mut ours = [httparse::EMPTY_HEADER; 128];
    let mut up = httparse::Request::new(&mut ours);
    assert_eq!(
        up.parse(&out),
        Ok(httparse::Status::Complete(out.len())),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(
        (up.method, up.path, up.version),
        (Some(method), Some(path), Some(1))
    );
    let count = |name: &str| {
        up.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    assert_eq!(count("host"), 1);
    for name in ["transfer-encoding", "upgrade", "te", "expect"] {
        assert_eq!(count(name), 0, "{name}");
    }
    let connection: Vec<&[u8]> = up
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
        .collect();
    if simple.retryable {
        assert!(connection.is_empty());
    } else {
        assert_eq!(connection, [&b"close"[..]]);
    }
    let lengths: Vec<&[u8]> = up
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| h.value)
        .collect();
    match lengths[..] {
        [] => assert_eq!(simple.body, 0),
        [v] => assert_eq!(
            std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok()),
            Some(simple.body)
        ),
        _ => panic!("two Content-Length lines"),
    }
    assert!(count("x-forwarded-for") <= 1);
    // A trusted proxy's own X-Forwarded-Host and -Proto lines are kept as it sent them.
    assert!(count("x-forwarded-proto") >= 1);
    assert!(count("x-forwarded-host") >= 1);
    for h in up.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let kind = policy::classify(name.as_bytes());
        assert_ne!(kind, Name::Lookalike, "{name}");
        if !client.trusted && kind.is_forwarding() {
            assert!(
                ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]
                    .contains(&name.as_str()),
                "{name}"
            );
        }
    }
    if !client.trusted {
        assert_eq!(count("x-forwarded-proto"), 1);
        assert_eq!(count("x-forwarded-host"), 1);
        assert_eq!(count("x-forwarded-for"), usize::from(client.ip.is_some()));
        assert_eq!(count("forwarded") + count("x-real-ip"), 0);
    }
}

fn check_answer(data: &[u8], head: bool, close: bool) {
    let mut out = Vec::new();
    let Answer::Final(fin) = h1::answer(
        data,
        head,
        b"Tue, 01 Dec 2026 00:00:00 GMT",
        close,
        &mut out,
    ) else {
        return;
    };
    assert!(fin.len <= data.len());
    assert!((200..=599).contains(&fin.status));
    let mut hs = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut hs);
    assert_eq!(
        resp.parse(&out),
        Ok(httparse::Status::Complete(out.len())),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(resp.code, Some(fin.status));
    for h in resp.headers.iter() {
        let n = h.name.to_ascii_lowercase();
        match n.as_str() {
            "connection" => assert!(close && h.value == b"close"),
            "transfer-encoding" => assert_eq!(h.value, b"chunked"),
            "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade" => panic!("{n} kept"),
            "content-length" => assert_ne!(fin.status, 204, "a 204 with a length"),
            _ => {}
        }
    }
}

/// Decode `data` as a chunked body fed in two pieces split at `at`: (data, error, done, bytes
/// used when there was no error).
fn dechunk(data: &[u8], at: usize) -> (Vec<u8>, bool, bool, usize) {
    let mut c = Chunked::default();
    let mut body = Vec::new();
    let mut used_total = 0;
    let at = at.min(data.len());
    for piece in [&data[..at], &data[at..]] {
        let mut rest = piece;
        while !rest.is_empty() && !c.is_done() {
            match c.decode(rest) {
                Ok((used, d)) => {
                    assert!(used <= rest.len());
                    if let Some(r) = d {
                        assert!(r.end <= used);
                        body.extend_from_slice(&rest[r]);
                    }
                    if used == 0 {
                        break;
                    }
                    used_total += used;
                    rest = &rest[used..];
                }
                // Where in a call the error was found is not said: only that it was.
                Err(_) => return (body, true, false, 0),
            }
        }
    }
    (body, false, c.is_done(), used_total)
}

fn check_chunked(data: &[u8], at: usize) {
    let whole = dechunk(data, data.len());
    let split = dechunk(data, at);
    assert_eq!(whole, split);
}
