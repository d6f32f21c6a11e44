"""Hold N idle client connections to baton, then close them; print baton's RSS with them open
and after (JSON). bench/run.sh calls it: PORT N BATON_PID."""
import json
import resource
import socket
import sys
import time

port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1000, n + 1000))


def rss():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
time.sleep(2)
held = rss()
# They all count: the last one opened still gets an answer.
socks[-1].sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
socks[-1].settimeout(10)
answered = socks[-1].recv(64).startswith(b"HTTP/1.1 200")
for s in socks:
    s.close()
time.sleep(3)
print(json.dumps({"connections": n, "rss_held_bytes": held, "rss_after_bytes": rss(),
                  "last_answered": answered}))
