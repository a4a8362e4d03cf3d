"""Server CPU per GET /metrics, for comparing two corecast binaries (the
exposition encoder is the only difference when the rest is equal).

    python3 benches/scrape_cost.py BINARY [SCRAPES]

Starts BINARY on the default config (shards 2, WebTransport off) pinned to
core 0, scrapes /metrics SCRAPES times sequentially from this process (one
connection per scrape, as Prometheus without keep-alive), and prints one JSON line:
server CPU (utime+stime from /proc) per scrape in microseconds, the body size, and
scrapes per second. Compare binaries alternately in one session."""

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main() -> None:
    binary, scrapes = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    port = free_port()
    # A partial file, merged over the embedded default config.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("webtransport:\n  enabled: false\n")
        path = f.name
    srv = subprocess.Popen(["taskset", "-c", "0", binary, "serve", "--config", path,
                            "--listen", f"127.0.0.1:{port}", "--shards", "2"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        size = 0
        for _ in range(50):  # warm-up
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/metrics")
            size = len(c.getresponse().read())
            c.close()
        t0, c0 = time.monotonic(), ticks(srv.pid)
        for _ in range(scrapes):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/metrics")
            c.getresponse().read()
            c.close()
        wall, cpu = time.monotonic() - t0, ticks(srv.pid) - c0
        hz = os.sysconf("SC_CLK_TCK")
        print(json.dumps({"binary": binary, "scrapes": scrapes, "body_bytes": size,
                          "server_cpu_us_per_scrape": round(cpu / hz / scrapes * 1e6, 1),
                          "scrapes_per_s": round(scrapes / wall)}))
    finally:
        srv.terminate()
        srv.wait()
        os.unlink(path)


if __name__ == "__main__":
    main()
