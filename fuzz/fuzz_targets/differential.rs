//! `differential`: one policy, whatever the bytes. An input is a client's request and, after
//! `\n--answer--\n`, the worker's answer to it (`OK` without one). The request (its first one,
//! whole: a case never leaves a proxy waiting for bytes that will not come) goes through real
//! baton proxies served by the narrow path first and by hyper's alone, in two configurations,
//! against one raw-socket worker that records what it receives and answers with the input's
//! bytes (see `tests/differential/harness.rs`, shared with `tests/differential.rs`).
//!
//! Asserts: the worker receives the same requests from both codecs (method, target, headers as
//! a multiset, body) and the client the same answer (status, headers, framing, body) or the
//! same silence. A request that has an HTTP/2 form (`harness::h2_form`: not HTTP/1.0, no
//! protocol switch, a target and fields HTTP/2 can carry) also goes, over HTTPS, to the
//! narrow-then-hyper proxy as HTTP/1.1 and as HTTP/2, which must agree too
//! (`Harness::compare_h2`). The seed corpus is the cases of `tests/differential.rs`
//! (`BATON_WRITE_CORPUS=fuzz/corpus/differential cargo test --test differential`).

#![no_main]

#[path = "../../tests/differential/harness.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct State {
    rt: tokio::runtime::Runtime,
    harness: harness::Harness,
}

fn state() -> &'static State {
    static S: OnceLock<State> = OnceLock::new();
    S.get_or_init(|| {
        // libFuzzer's C++ main leaves SIGPIPE fatal; baton's binary runs with it ignored.
        // SAFETY: setting a signal's disposition to SIG_IGN, before any thread is started here.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let harness = rt.block_on(harness::Harness::start());
        State { rt, harness }
    })
}

fuzz_target!(|input: &[u8]| {
    let (request, answer) = harness::split(input);
    let Some(request) = harness::whole_request(request) else {
        return;
    };
    if request.is_empty() {
        return;
    }
    let s = state();
    if let Err(difference) = s.rt.block_on(s.harness.compare(request, answer)) {
        panic!("{difference}");
    }
    // The HTTP/2 arm, for a request that has an HTTP/2 form.
    if harness::h2_form(request).is_ok()
        && let Err(difference) = s.rt.block_on(s.harness.compare_h2(request, answer))
    {
        panic!("{difference}");
    }
});
