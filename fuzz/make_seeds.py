#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets `h2` and `tls` (corpus/h2/seed-*,
corpus/tls/seed-*): HTTP/2 frames after the preface (HPACK literals, no Huffman) and, for
`tls`, ClientHellos made by Python's ssl (OpenSSL) plus the `h2` seeds and a few HTTP/1.1
requests behind a mode byte (see fuzz_targets/tls.rs). Run from fuzz/: python3 make_seeds.py
"""
import os
import ssl
import struct


def integer(n, prefix, first=0):
    top = (1 << prefix) - 1
    if n < top:
        return bytes([first | n])
    out = [first | top]
    n -= top
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    out.append(n)
    return bytes(out)


def string(s):
    if isinstance(s, str):
        s = s.encode()
    return integer(len(s), 7) + s


def hpack(fields):
    # Literal header field without indexing, new name (RFC 7541 6.2.2).
    return b"".join(b"\x00" + string(n) + string(v) for n, v in fields)


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


DATA, HEADERS, PRIORITY, RST, SETTINGS, PING, GOAWAY, WINDOW, CONT = 0, 1, 2, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, PADDED, PRIO = 0x1, 0x4, 0x8, 0x20


def req(method="GET", path="/", authority="localhost", extra=(), scheme="https"):
    f = [(":method", method)]
    if scheme:
        f.append((":scheme", scheme))
    if path is not None:
        f.append((":path", path))
    if authority is not None:
        f.append((":authority", authority))
    return hpack(f + list(extra))


def get(stream=1, **kw):
    return frame(HEADERS, END_STREAM | END_HEADERS, stream, req(**kw))


H2 = {
    "get": get(),
    "head": get(method="HEAD"),
    "three-streams": get(1, path="/status/404") + get(3, path="/stream") + get(5, path="/drop"),
    "host-field": get(authority=None, extra=[("host", "app.example")]),
    "no-authority": get(authority=None),
    "two-hosts": get(authority=None, extra=[("host", "a"), ("host", "b")]),
    "bad-authority": get(authority="evil.com@x"),
    "post-length": frame(HEADERS, END_HEADERS, 1, req("POST", "/echo", extra=[("content-length", "5")]))
    + frame(DATA, END_STREAM, 1, b"hello"),
    "post-no-length": frame(HEADERS, END_HEADERS, 1, req("POST", "/echo"))
    + frame(DATA, 0, 1, b"one ")
    + frame(DATA, END_STREAM, 1, b"two"),
    "length-mismatch": frame(HEADERS, END_HEADERS, 1, req("POST", "/echo", extra=[("content-length", "9")]))
    + frame(DATA, END_STREAM, 1, b"hello"),
    "too-large": frame(HEADERS, END_HEADERS, 1, req("PUT", "/x", extra=[("content-length", "70000")])),
    "trailers": frame(HEADERS, END_HEADERS, 1, req("POST", "/echo", extra=[("te", "trailers")]))
    + frame(DATA, 0, 1, b"body")
    + frame(HEADERS, END_STREAM | END_HEADERS, 1, hpack([("x-trailer", "1")])),
    "continuation": frame(HEADERS, END_STREAM, 1, req()[:7])
    + frame(CONT, 0, 1, req()[7:20])
    + frame(CONT, END_HEADERS, 1, req()[20:] + hpack([("x-a", "b")])),
    "connection-header": get(extra=[("connection", "keep-alive")]),
    "te-gzip": get(extra=[("te", "gzip")]),
    "upgrade": get(extra=[("upgrade", "websocket")]),
    "uppercase": get(extra=[("X-Upper", "1")]),
    "cookies": get(extra=[("cookie", "a=1"), ("cookie", "b=2"), ("x-forwarded-for", "6.6.6.6"), ("x_forwarded_for", "1")]),
    "connect": frame(HEADERS, END_STREAM | END_HEADERS, 1, req("CONNECT", None, "example.org:443", scheme=None)),
    "trace": get(method="TRACE"),
    "options-star": get(method="OPTIONS", path="*"),
    "absolute-path": get(path="http://other/x"),
    "empty-path": get(path=""),
    "long-header": get(extra=[("x-long", "v" * 9000)]),
    "many-headers": get(extra=[(f"x-{i:02}", "v" * 100) for i in range(60)]),
    "padded-priority": frame(HEADERS, END_STREAM | END_HEADERS | PADDED | PRIO, 1,
                             b"\x04" + struct.pack(">I", 0) + b"\x10" + req() + b"\0\0\0\0"),
    "reset": frame(HEADERS, END_HEADERS, 1, req("POST", "/echo")) + frame(RST, 0, 1, struct.pack(">I", 8)),
    "control": frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 1 << 20) + struct.pack(">HI", 5, 1 << 14))
    + frame(SETTINGS, 1, 0)
    + frame(PING, 0, 0, b"12345678")
    + frame(WINDOW, 0, 0, struct.pack(">I", 1 << 20))
    + frame(PRIORITY, 0, 3, struct.pack(">I", 1) + b"\x10")
    + get(),
    "goaway": get() + frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0)),
    "even-stream": get(stream=2),
    "stream-zero": get(stream=0),
}

H1 = {
    "get": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "post": b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    "chunked": b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "pipelined": b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\nGET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "upgrade": b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    "garbage": b"\x16\x03\x01garbage\r\n\r\n",
}


def client_hello(alpn, sni, versions=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if versions:
        ctx.minimum_version, ctx.maximum_version = versions
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def write(target, name, data):
    d = os.path.join("corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"seed-{name}"), "wb") as f:
        f.write(data)


for name, data in H2.items():
    write("h2", name, data)
    write("tls", f"h2-{name}", b"\x02" + data)
for name, data in H1.items():
    write("tls", f"http1-{name}", b"\x01" + data)
hellos = {
    "hello-h2": client_hello(["h2", "http/1.1"], "localhost"),
    "hello-http1": client_hello(["http/1.1"], "localhost"),
    "hello-no-alpn": client_hello(None, "localhost"),
    "hello-other-name": client_hello(["h2"], "other.example"),
    "hello-no-sni": client_hello(["h2"], None),
    "hello-tls12": client_hello(["h2"], "localhost", (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2)),
}
for name, data in hellos.items():
    write("tls", name, b"\x00" + data)
write("tls", "garbage", b"\x00GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
