//! HTTP/2 as raw frames, for the fuzz targets `h2` and `tls`: a client that writes the
//! preface and the input's bytes as they are, knows from the input which streams it asked
//! for in full, and reads the server's frames until each of those streams has its end (or
//! the connection does), checking that what the server writes is framed as HTTP/2 is.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The client connection preface (RFC 9113 3.4), then an empty SETTINGS frame: the server
/// takes nothing before them, so every input starts there and the fuzzer spends its
/// mutations on what follows.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One frame's header (RFC 9113 4.1), if `b` holds one.
fn frame(b: &[u8]) -> Option<(usize, u8, u8, u32)> {
    let h = b.get(..9)?;
    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    Some((len, h[3], h[4], id))
}

/// The streams the input opens and ends, in whole frames: a header block that is complete
/// (END_HEADERS on its HEADERS or last CONTINUATION) and END_STREAM on its HEADERS or a later
/// DATA frame. The server owes each an end of its own. Other streams (a body that never
/// ends, a frame cut short, a header block never finished) are not waited for: their end is
/// a timeout's, not the server's.
pub fn ended_streams(input: &[u8]) -> Vec<u32> {
    let mut opened = Vec::new();
    let mut ended = Vec::new();
    // A header block waiting for its CONTINUATION: its stream, and END_STREAM.
    let mut block: Option<(u32, bool)> = None;
    let mut rest = input;
    while let Some((len, kind, flags, id)) = frame(rest) {
        if rest.len() < 9 + len {
            break;
        }
        rest = &rest[9 + len..];
        let end_headers = flags & END_HEADERS != 0;
        let whole = match (kind, block) {
            (HEADERS, _) if id != 0 => {
                block = (!end_headers).then_some((id, flags & END_STREAM != 0));
                end_headers.then_some((id, flags & END_STREAM != 0))
            }
            (CONTINUATION, Some((b, end))) if b == id && end_headers => {
                block = None;
                Some((id, end))
            }
            (DATA, _) if flags & END_STREAM != 0 && opened.contains(&id) => Some((id, true)),
            _ => None,
        };
        if let Some((id, end)) = whole {
            if !opened.contains(&id) {
                opened.push(id);
            }
            if end && !ended.contains(&id) {
                ended.push(id);
            }
        }
    }
    ended
}

/// What the server wrote.
#[derive(Debug, Default)]
pub struct Answers {
    /// Streams that ended with an answer (HEADERS or DATA with END_STREAM).
    pub answered: Vec<u32>,
    /// Streams the server reset.
    pub reset: Vec<u32>,
    pub goaway: bool,
    /// The connection ended (EOF or an error) before `wait` ran out.
    pub closed: bool,
    pub bytes: usize,
}

/// Read the server's frames until every stream in `awaited` has ended or was reset, a GOAWAY
/// or the end of the connection, or `wait` runs out. `Err` when the server's first frame is
/// not SETTINGS on stream 0 (its connection preface, RFC 9113 3.4).
pub async fn read_answers<R: AsyncRead + Unpin>(
    io: &mut R,
    awaited: &[u32],
    wait: Duration,
) -> Result<Answers, String> {
    let mut got = Answers::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut first = true;
    let deadline = tokio::time::Instant::now() + wait;
    let done = |got: &Answers| {
        got.goaway
            || awaited
                .iter()
                .all(|id| got.answered.contains(id) || got.reset.contains(id))
    };
    while !done(&got) {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                got.closed = true;
                break;
            }
            Ok(Ok(n)) => {
                got.bytes = got.bytes.saturating_add(n);
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(_) => break,
        }
        let mut used = 0;
        while let Some((len, kind, flags, id)) = frame(&buf[used..]) {
            if first && (kind != SETTINGS || id != 0) {
                return Err(format!(
                    "the server's first frame is type {kind} on stream {id}, not SETTINGS"
                ));
            }
            first = false;
            if buf.len() - used < 9 + len {
                break;
            }
            match kind {
                HEADERS | DATA if flags & END_STREAM != 0 => got.answered.push(id),
                RST_STREAM => got.reset.push(id),
                GOAWAY => got.goaway = true,
                _ => {}
            }
            used += 9 + len;
        }
        buf.drain(..used);
    }
    Ok(got)
}
