//! One policy: the narrow HTTP/1.1 path, hyper's and HTTP/2 make the same decision about
//! whatever a client or a worker sends. Every case below goes through a real baton proxy
//! served each way (see `differential/harness.rs`), and the worker and the client must see
//! the same thing.
//! The cases are the request heads of `tests/isolation.rs`, the header lookalikes, the
//! edges of RFC 9110/9112 and the worker answers that made the two paths disagree before
//! they shared one policy. Each case that HTTP/2 can carry is also sent over HTTPS as
//! HTTP/1.1 and as HTTP/2 (`http2_makes_the_same_decisions_as_http1`); `NO_H2` names the
//! others and why. The fuzz target `differential` runs the same comparison on
//! arbitrary bytes; `BATON_WRITE_CORPUS=DIR cargo test --test differential` writes these
//! cases there as its seed corpus.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    reason = "a test crate: a panic is the test failing, with its message, and a scenario reads \
              as one story from setup to the last check"
)]

#[path = "differential/harness.rs"]
mod harness;

use harness::{Harness, OK, SEPARATOR, no_h2};

/// Request heads (and bodies), each answered with `OK`.
const REQUESTS: &[&str] = &[
    "GET / HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET /a?b=1&c=%20 HTTP/1.1\r\nHost: app.example:8080\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
    "HEAD /x HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET /four HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
    "GET /undo HTTP/1.1\r\nHost: app\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    "DELETE /x HTTP/1.1\r\nHost: app\r\n\r\n",
    "OPTIONS /x HTTP/1.1\r\nHost: app\r\n\r\n",
    "PROPFIND /dav HTTP/1.1\r\nHost: app\r\n\r\n",
    "POST /two HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nhi",
    "POST /empty HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n",
    "POST /none HTTP/1.1\r\nHost: app\r\n\r\n",
    "PUT /x HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n",
    "PUT /x HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello",
    "PATCH /x HTTP/1.1\r\nHost: app\r\nContent-Length:  3 \r\n\r\nabc",
    "GET /body HTTP/1.1\r\nHost: app\r\nContent-Length: 3\r\n\r\nabc",
    "POST /three HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "POST /te HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "POST /gzip HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip\r\n\r\n",
    "POST /two-lengths HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
    "POST /two-lengths HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
    "POST /list HTTP/1.1\r\nHost: app\r\nContent-Length: 2, 2\r\n\r\nhi",
    "POST /sign HTTP/1.1\r\nHost: app\r\nContent-Length: +2\r\n\r\nhi",
    "POST /no-length HTTP/1.1\r\nHost: app\r\nContent-Length: \r\n\r\n",
    "POST /large HTTP/1.1\r\nHost: app\r\nContent-Length: 70000\r\n\r\n",
    "POST /expect HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi",
    "GET /expect HTTP/1.1\r\nHost: app\r\nExpect: 100-continue\r\n\r\n",
    // Targets and hosts (tests/isolation.rs).
    "GET abc HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET example.org:80 HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET http://app/abs?x=1 HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET http://app HTTP/1.1\r\nHost: app\r\n\r\n",
    // The target's authority is the Host (issue 37; one that differs from its Host is
    // decided differently over HTTP/2 by design, RFC 9113 8.3.1: policy's unit tests).
    "GET http://APP/x HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET http://victim@evil.example/ HTTP/1.0\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET * HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET / HTTP/1.1\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
    "GET / HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\n\r\n",
    "POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
    "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n",
    // Found by the differential fuzz target: over HTTP/2 a Host unlike :authority was refused
    // before CONNECT was (a 400 where HTTP/1.1 gives 405).
    "CONNECT example.org:443 HTTP/1.1\r\nHost: example.orgtent-Length: 2\r\nX-App: a\r\n\r\nok",
    "TRACE / HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: evil.com/x?y @z\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a@b\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
    "GET / HTTP/1.1\r\nHost:\r\n\r\n",
    "GET /\x7f HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET /\"{}| HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET /a?q=\"x\" HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET /a#frag HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET /a`b?c`d HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET /a<b> HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET /a{b}|c\\d^e HTTP/1.1\r\nHost: app\r\n\r\n",
    "GET / HTTP/1.1\r\nHost : app\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\n folded\r\n\r\n",
    "garbage\r\n\r\n",
    // Connection lists and hop-by-hop headers.
    "GET /headers HTTP/1.1\r\nHost: app.example\r\nConnection: host, cookie, authorization, close\r\nCookie: a=1\r\nAuthorization: Basic eA==\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-For: 10.8.8.8\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nForwarded: for=10.9.9.9\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nX-Kept: 2\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nConnection: x-a\r\nConnection: x-b, set-cookie\r\nX-A: 1\r\nX-B: 2\r\nSet-Cookie: s=1\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nProxy-Authorization: Basic eA==\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    // An upgrade beside a body: an ordinary request with Connection: close (issue 37).
    "POST /up HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi",
    "POST /h2c HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    // Forwarding headers and lookalikes (tests/isolation.rs, h1's and policy's tests).
    "POST /headers HTTP/1.1\r\nHost: app\r\nConnection: close\r\nX-Forwarded-Ssl: on\r\nX-Forwarded-Port: 443\r\nX_Forwarded_For: 10.9.9.9\r\nX-Forwarded_Proto: https\r\nTransfer_Encoding: chunked\r\nX_Api_Key: k\r\nContent-Length: 2\r\n\r\nhi",
    "GET /headers HTTP/1.1\r\nHost: app\r\nConnection: close\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: on\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: \r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Client-Cert: x\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nContent_Length: 5\r\nKeep_Alive: 1\r\nX_Real_IP: 6.6.6.6\r\nX-Forwarded-Client_Cert: x\r\nX_FORWARDED_SOMETHING_LONG_ENOUGH: 1\r\nH_ost: h\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-Host: other\r\n\r\n",
];

/// Requests that are not UTF-8.
const RAW_REQUESTS: &[&[u8]] = &[
    b"GET /latin HTTP/1.1\r\nHost: app\r\nConnection: x-\xe9t\xe9, close\r\n\r\n",
    b"GET /latin HTTP/1.1\r\nHost: app\r\nX-Name: caf\xe9\r\n\r\n",
];

/// Worker answers, each to a `GET`, a `HEAD` and a `POST` with a body.
const ANSWERS: &[&str] = &[
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: a\r\n\r\nok",
    // The example: Connection lists Set-Cookie.
    "HTTP/1.1 200 OK\r\nConnection: set-cookie\r\nSet-Cookie: session=1\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 200 OK\r\nConnection: a, b, c, d, e, f, g, h, i\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    "HTTP/1.1 200 OK\r\n\r\nuntil close",
    "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    "HTTP/1.1 404 Not Found\r\nDate: Tue, 01 Dec 2026 00:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    "HTTP/1.1 999 What\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\ncut",
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray",
    "HTTP/1.1 200 OK\r\nX-Reason-Free: 1\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok",
    "hello\r\n\r\n",
    "",
];

const TO_EACH_ANSWER: &[&str] = &[
    "GET / HTTP/1.1\r\nHost: app\r\n\r\n",
    "HEAD / HTTP/1.1\r\nHost: app\r\n\r\n",
    "POST /form HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nhi",
];

fn cases() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut cases: Vec<(Vec<u8>, Vec<u8>)> = REQUESTS
        .iter()
        .map(|r| r.as_bytes())
        .chain(RAW_REQUESTS.iter().copied())
        .map(|r| (r.to_vec(), OK.to_vec()))
        .collect();
    for answer in ANSWERS {
        for request in TO_EACH_ANSWER {
            cases.push((request.as_bytes().to_vec(), answer.as_bytes().to_vec()));
        }
    }
    // A head at the limit, over it as the policy counts a head, and over it as bytes.
    for v in [100, 129, 140] {
        let fields: String = (0..60)
            .map(|i| format!("X-{i:02}:{}\r\n", "v".repeat(v)))
            .collect();
        let req = format!("GET / HTTP/1.1\r\nHost: app\r\n{fields}\r\n");
        cases.push((req.into_bytes(), OK.to_vec()));
    }
    // One long field: a head at the limit, and one byte over it, as the policy counts a
    // head (over HTTP/2, `:authority` counts as the Host field it stands for).
    for v in [8156, 8157] {
        let req = format!(
            "GET / HTTP/1.1\r\nHost: app\r\nX-Pad: {}\r\n\r\n",
            "v".repeat(v)
        );
        cases.push((req.into_bytes(), OK.to_vec()));
    }
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: app\r\n\r\n", "a".repeat(8200));
    cases.push((long_target.into_bytes(), OK.to_vec()));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_codecs_give_the_worker_and_the_client_the_same() {
    let cases = cases();
    if let Some(dir) = std::env::var_os("BATON_WRITE_CORPUS") {
        std::fs::create_dir_all(&dir).unwrap();
        for (i, (req, answer)) in cases.iter().enumerate() {
            let mut file = req.clone();
            file.extend_from_slice(SEPARATOR);
            file.extend_from_slice(answer);
            std::fs::write(
                std::path::Path::new(&dir).join(format!("seed-case-{i:03}")),
                file,
            )
            .unwrap();
        }
    }
    let harness = Harness::start().await;
    let mut differ = Vec::new();
    for (req, answer) in &cases {
        if let Err(e) = harness.compare(req, answer).await {
            differ.push(e);
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} cases differ:\n{}",
        differ.len(),
        cases.len(),
        differ.join("\n\n")
    );
}

/// The cases that have no HTTP/2 form, and why (`harness::no_h2`): the HTTP/2 arm skips
/// them. Every other case is sent over HTTP/2 too.
const NO_H2: &[(&str, &str)] = &[
    ("GET / HTTP/1.0\r\n\r\n", no_h2::HTTP10),
    (
        "GET / HTTP/1.0\r\nHost: app\r\nConnection: keep-alive\r\n\r\n",
        no_h2::HTTP10,
    ),
    (
        "POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
        no_h2::HTTP10,
    ),
    (
        "POST /gzip HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip\r\n\r\n",
        no_h2::CODING,
    ),
    (
        "GET /ws HTTP/1.1\r\nHost: app\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        no_h2::UPGRADE,
    ),
    (
        "POST /up HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\nhi",
        no_h2::UPGRADE,
    ),
    (
        "POST /h2c HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        no_h2::UPGRADE,
    ),
    (
        "GET http://victim@evil.example/ HTTP/1.0\r\n\r\n",
        no_h2::HTTP10,
    ),
    ("GET abc HTTP/1.1\r\nHost: app\r\n\r\n", no_h2::TARGET_FORM),
    (
        "GET example.org:80 HTTP/1.1\r\nHost: app\r\n\r\n",
        no_h2::TARGET_FORM,
    ),
    ("GET /a?q=\"x\" HTTP/1.1\r\nHost: app\r\n\r\n", no_h2::URI),
    ("GET /a`b?c`d HTTP/1.1\r\nHost: app\r\n\r\n", no_h2::URI),
    ("GET /a<b> HTTP/1.1\r\nHost: app\r\n\r\n", no_h2::URI),
    ("GET /\x7f HTTP/1.1\r\nHost: app\r\n\r\n", no_h2::MALFORMED),
    ("GET / HTTP/1.1\r\nHost : app\r\n\r\n", no_h2::MALFORMED),
    (
        "GET / HTTP/1.1\r\nHost: app\r\n folded\r\n\r\n",
        no_h2::MALFORMED,
    ),
    ("garbage\r\n\r\n", no_h2::MALFORMED),
];

/// Every way in makes the same decision: each case with an HTTP/2 form goes to the
/// narrow-then-hyper proxy over HTTPS as HTTP/1.1 and as HTTP/2, and the worker and the
/// client must see the same thing (modulo what HTTP/2 cannot carry; see
/// `Harness::compare_h2`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_makes_the_same_decisions_as_http1() {
    let harness = Harness::start().await;
    let (mut differ, mut skipped, mut sent) = (Vec::new(), 0, 0);
    for (req, answer) in &cases() {
        let named = NO_H2
            .iter()
            .find(|(r, _)| r.as_bytes() == req.as_slice())
            .map(|(_, why)| *why);
        match (harness::h2_form(req), named) {
            (Err(why), Some(named)) if why == named => {
                skipped += 1;
                continue;
            }
            (Err(why), _) => {
                differ.push(format!(
                    "no HTTP/2 form ({why}) for {:?}: name it in NO_H2",
                    String::from_utf8_lossy(req)
                ));
                continue;
            }
            (Ok(_), Some(named)) => {
                differ.push(format!(
                    "NO_H2 says {named:?}, but it has an HTTP/2 form: {:?}",
                    String::from_utf8_lossy(req)
                ));
                continue;
            }
            (Ok(_), None) => {}
        }
        sent += 1;
        if let Err(e) = harness.compare_h2(req, answer).await {
            differ.push(e);
        }
    }
    eprintln!("HTTP/2 arm: {sent} cases sent, {skipped} without an HTTP/2 form");
    assert!(
        differ.is_empty(),
        "{} of {sent} cases differ or are not named:\n{}",
        differ.len(),
        differ.join("\n\n")
    );
}

/// The harness sees what it should: a request the narrow path takes reaches the worker, the
/// worker's answer reaches the client (so agreement is not two silences).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_sees_requests_and_answers() {
    let harness = Harness::start().await;
    let (req, _) = harness::split(b"GET /seen HTTP/1.1\r\nHost: app\r\n\r\n");
    let outcomes = harness.all_outcomes(req, OK).await;
    for o in outcomes {
        assert_eq!(o.worker.len(), 1, "{o:#?}");
        assert_eq!(o.worker[0].line, "GET /seen HTTP/1.1");
        match &o.client {
            harness::Got::Answer { status, body, .. } => {
                assert_eq!((*status, body.as_str()), (200, "ok"))
            }
            other => panic!("{other:?}"),
        }
    }
}
