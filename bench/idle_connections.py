"""Hold N idle client connections to a proxy, then close them; print the proxy's RSS with them
open and after (JSON). bench/run.sh calls it:

    PORT N PIDS               plain TCP connections; RSS held and 3 s after they closed
    PORT N PIDS --tls h1|h2   TLS connections that completed the handshake (ALPN http/1.1, or
                              h2 with the client's connection preface and SETTINGS sent), then
                              idle; RSS before they opened and while they are held

PIDS is one process id or several joined by commas (nginx's workers): their RSS is summed."""
import json
import resource
import socket
import ssl
import sys
import time

port, n, pids = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
tls = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--tls" else None
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1000, n + 1000))


def rss():
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


GET = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"

if tls is None:
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    time.sleep(2)
    held = rss()
    # They all count: the last one opened still gets an answer.
    socks[-1].sendall(GET)
    socks[-1].settimeout(10)
    answered = socks[-1].recv(64).startswith(b"HTTP/1.1 200")
    for s in socks:
        s.close()
    time.sleep(3)
    print(json.dumps({"connections": n, "rss_held_bytes": held, "rss_after_bytes": rss(),
                      "last_answered": answered}))
    sys.exit(0)

ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"] if tls == "h2" else ["http/1.1"])
# HTTP/2's client connection preface and an empty SETTINGS frame: what a browser sends at once.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
start = rss()
socks = []
for _ in range(n):
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)))  # handshake done here
    if tls == "h2":
        assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()
        s.sendall(PREFACE)
    socks.append(s)
time.sleep(2)
held = rss()
answered = None
if tls == "h1":
    socks[-1].sendall(GET)
    socks[-1].settimeout(10)
    answered = socks[-1].recv(64).startswith(b"HTTP/1.1 200")
for s in socks:
    s.close()
print(json.dumps({"connections": n, "alpn": "h2" if tls == "h2" else "http/1.1",
                  "rss_start_bytes": start, "rss_held_bytes": held,
                  "bytes_per_connection": round((held - start) / n),
                  "last_answered": answered}))
