#!/usr/bin/env python3
"""Derive and check deploy/seccomp-corecast.json from what corecast really calls.

    seccomp-syscalls.py trace BIN OUTDIR   run BIN under `strace -f -c` while real
                                           clients exercise it; one summary per process
                                           in OUTDIR (serve.strace, cert.strace, ...)
    seccomp-syscalls.py names LOG...       the syscall names those summaries saw
    seccomp-syscalls.py check PROFILE LOG...
                                           exit 1 naming every syscall seen but not
                                           covered by the profile
    seccomp-syscalls.py update PROFILE LOG...
                                           add those to the profile's "observed" rule
    seccomp-syscalls.py enforce PROFILE BIN
                                           the same clients against BIN running under
                                           PROFILE, loaded with libseccomp as runc does
                                           (needs python3-seccomp; no container needed)
    seccomp-syscalls.py exec PROFILE -- CMD...
                                           run CMD under PROFILE

`trace` starts `corecast serve` (2 shards, WebSocket + SSE + publish API + TLS +
WebTransport; cluster mode through a throw-away redis-server when one is on PATH),
drives it with real clients over loopback (raw-socket WebSocket and SSE, the HTTP
API, /healthz /readyz /stats /metrics, a TLS request, a WebTransport session through
tests/python/wt_client.py when aioquic is importable), sends SIGHUP (TLS reload),
then SIGTERM with clients connected (drain) and waits for the exit. It also traces
`corecast cert`, `corecast check-config` and deploy/healthcheck.sh (the image's
HEALTHCHECK, which runs under the same profile). Python stdlib only, apart from
the optional aioquic.

Syscalls that io_uring performs for the shards (accept, recv, send, ... submitted
as ring operations) are not syscalls of the process: seccomp never sees them and
strace does not list them. Only io_uring_enter itself is.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OBSERVED_COMMENT_PREFIX = "observed"


def log(msg: str) -> None:
    print(f"[seccomp-syscalls] {msg}", flush=True)


# --- strace summaries ---------------------------------------------------------

# `strace -c` table rows end with the syscall name; "total" is the last row.
ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+(?:\s+\d+)?\s+([a-z0-9_]+)\s*$")


def names_in(log_path: Path) -> set[str]:
    names = set()
    for line in log_path.read_text().splitlines():
        m = ROW.match(line)
        if m and m.group(1) != "total":
            names.add(m.group(1))
    if not names:
        raise SystemExit(f"{log_path}: no strace -c rows (not a strace -c summary?)")
    return names


# --- the profile ----------------------------------------------------------------


def covered(profile: dict) -> set[str]:
    """Names some rule handles: allowed (maybe with argument checks, like clone) or
    answered with a chosen errno (clone3 -> ENOSYS, so glibc falls back to clone)."""
    out = set()
    for rule in profile.get("syscalls", []):
        if rule.get("action") == "SCMP_ACT_ALLOW" or (
            rule.get("action") == "SCMP_ACT_ERRNO" and "errnoRet" in rule
        ):
            out.update(rule.get("names", []))
    return out


def observed_rule(profile: dict) -> dict:
    for rule in profile["syscalls"]:
        if rule.get("comment", "").startswith(OBSERVED_COMMENT_PREFIX):
            return rule
    raise SystemExit('profile has no rule whose comment starts with "observed"')


# --- exercising the server ------------------------------------------------------


def free_port() -> int:
    """A port free for TCP and UDP at once (WebTransport shares the TCP port)."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def http(port: int, method: str, path: str, body: bytes = b"", headers=(), tls=False) -> tuple[int, bytes]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = raw
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(raw, server_hostname="localhost")
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    for h in headers:
        head += h + "\r\n"
    sock.sendall(head.encode() + b"\r\n" + body)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    sock.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


def ws_connect(port: int, path: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise RuntimeError(f"ws {path}: closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"ws {path}: {head[:60]!r}")
    return s


def ws_send_text(s: socket.socket, text: str) -> None:
    payload = text.encode()
    assert len(payload) < 126
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))


def ws_recv_frame(s: socket.socket) -> tuple[int, bytes]:
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise RuntimeError("ws: closed mid-frame")
            buf += chunk
        return buf

    b0, b1 = exact(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(exact(2), "big")
    elif n == 127:
        n = int.from_bytes(exact(8), "big")
    return b0 & 0x0F, exact(n)


def sse_open(port: int, path: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    return s


def read_until(s: socket.socket, needle: bytes, limit: float = 10.0) -> bytes:
    data = b""
    end = time.monotonic() + limit
    while needle not in data:
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {needle!r}; got {data[-200:]!r}")
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed waiting for {needle!r}; got {data[-200:]!r}")
        data += chunk
    return data


def webtransport(port: int) -> str:
    try:
        sys.path.insert(0, str(ROOT / "tests" / "python"))
        import asyncio

        from wt_client import connect_quic  # needs aioquic
    except ImportError as e:
        return f"skipped ({e})"

    async def session() -> None:
        conn = await connect_quic("127.0.0.1", port)
        s = await conn.open_session("/wt/echo")
        assert s.status == 200, s.status
        st = s.open_bidi()
        st.send(b"hello", end=True)
        assert await st.read_to_fin() == b"hello"
        s.send_datagram(b"ping")
        await asyncio.sleep(0.2)
        await conn.aclose()

    asyncio.run(session())
    return "echo session, stream and datagram"


def start_redis(tmp: Path) -> tuple[subprocess.Popen | None, int]:
    exe = shutil.which("redis-server")
    if not exe:
        return None, 0
    port = free_port()
    p = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("redis-server did not start")


def strace_cmd(log_path: Path, argv: list[str]) -> list[str]:
    # -f: every thread (shards, bridge, signals); -c: a summary table, not a trace.
    return ["strace", "-f", "-qq", "-c", "-o", str(log_path), "--", *argv]


def tracee_pid(strace_pid: int) -> int:
    """The traced corecast: strace's child. Signals go to it, not to strace (which
    does not forward them)."""
    children = Path(f"/proc/{strace_pid}/task/{strace_pid}/children").read_text().split()
    if len(children) != 1:
        raise RuntimeError(f"strace {strace_pid} has children {children}, expected one")
    return int(children[0])


def trace(binary: Path, outdir: Path) -> None:
    if not shutil.which("strace"):
        raise SystemExit("strace not found (apt-get install strace)")
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("*.strace"):
        old.unlink()
    exercise(binary, lambda name, argv: strace_cmd(outdir / f"{name}.strace", argv), tracee_pid)
    for f in sorted(outdir.glob("*.strace")):
        log(f"{f.name}: {len(names_in(f))} syscalls")


def exercise(binary: Path, wrap, server_pid) -> None:
    """Run cert, check-config, serve and the health check through wrap(name, argv)
    and drive the server; server_pid(popen pid) is the pid to signal."""
    tmp = Path(tempfile.mkdtemp(prefix="corecast-seccomp-"))
    redis = None
    server = None
    try:
        # corecast cert: the certificate for the TLS listener below.
        certdir = tmp / "cert"
        subprocess.run(wrap("cert", [str(binary), "cert", "--out", str(certdir)]),
                       check=True, stdout=subprocess.DEVNULL)
        port, tls_port = free_port(), free_port()
        redis, redis_port = start_redis(tmp)
        cfg = [
            f"listen: 127.0.0.1:{port}",
            "tls:",
            f"  listen: 127.0.0.1:{tls_port}",
            f"  cert: {certdir / 'cert.pem'}",
            f"  key: {certdir / 'key.pem'}",
            "api:",
            "  key: env:CORECAST_API_KEY",
        ]
        if redis:
            cfg += [
                "cluster:",
                "  broker: redis",
                f"  url: redis://127.0.0.1:{redis_port}/0",
                "  node_id: seccomp-trace",
            ]
        cfg_path = tmp / "config.yaml"
        cfg_path.write_text("\n".join(cfg) + "\n")
        subprocess.run(wrap("check-config", [str(binary), "check-config", str(cfg_path)]),
                       check=True, stdout=subprocess.DEVNULL)

        env = dict(os.environ, CORECAST_API_KEY="seccomp-trace-key")
        server = subprocess.Popen(
            wrap("serve", [str(binary), "serve", "-c", str(cfg_path), "--shards", "2"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        lines: list[str] = []
        ready = threading.Event()

        def pump(stream) -> None:
            for line in stream:
                lines.append(line.rstrip())
                if line.startswith("corecast listening"):
                    ready.set()

        threading.Thread(target=pump, args=(server.stdout,), daemon=True).start()
        threading.Thread(target=pump, args=(server.stderr,), daemon=True).start()
        if not ready.wait(60):
            raise RuntimeError("server did not print its banner:\n" + "\n".join(lines[-20:]))
        # The banner comes once the listeners are bound; the shards' accept loops may
        # still be starting (/readyz says `starting`): wait for 200.
        for _ in range(200):
            try:
                if http(port, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError("/readyz never answered 200")
        pid = server_pid(server.pid)
        log(f"serve: ready on {port} (tls {tls_port}, cluster {'yes' if redis else 'no: no redis-server'})")

        for p in ("/healthz", "/stats", "/metrics"):
            assert http(port, "GET", p)[0] == 200, p
        assert http(tls_port, "GET", "/healthz", tls=True)[0] == 200
        subprocess.run(wrap("healthcheck", ["bash", str(ROOT / "deploy" / "healthcheck.sh"), "/readyz"]),
                       check=True, env=dict(os.environ, CORECAST_HEALTH_PORT=str(port)))

        a = ws_connect(port, "/ws/chat?room=trace")
        b = ws_connect(port, "/ws/chat?room=trace&envelope=1")
        echo = ws_connect(port, "/ws/echo")
        sse = sse_open(port, "/sse?room=trace")
        read_until(sse, b"\r\n\r\n")
        ws_send_text(a, "from-ws")
        assert ws_recv_frame(b)[0] == 1
        ws_send_text(echo, "echo")
        assert ws_recv_frame(echo) == (1, b"echo")
        status, _ = http(port, "POST", "/api/rooms/trace/publish", b"from-api",
                         ["Authorization: Bearer seccomp-trace-key"])
        assert status == 200, status
        read_until(sse, b"from-api")
        assert http(port, "GET", "/api/rooms/trace", headers=["X-API-Key: seccomp-trace-key"])[0] == 200
        log("websocket, sse, publish api, tls: ok")
        log(f"webtransport: {webtransport(port)}")

        os.kill(pid, signal.SIGHUP)  # re-reads tls.cert and tls.key
        time.sleep(0.5)
        assert http(tls_port, "GET", "/healthz", tls=True)[0] == 200

        os.kill(pid, signal.SIGTERM)  # the graceful drain
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if http(port, "GET", "/readyz")[0] == 503:
                    break
            except OSError:
                break
            time.sleep(0.02)
        for s in (a, b, echo):
            s.settimeout(10)
            try:
                while ws_recv_frame(s)[0] != 8:  # until the close frame (1001)
                    pass
            except (RuntimeError, OSError):
                pass
        rc = server.wait(30)
        if rc != 0:
            raise RuntimeError(f"server exited {rc}:\n" + "\n".join(lines[-20:]))
        log("SIGHUP, SIGTERM drain: ok")
        for s in (a, b, echo, sse):
            s.close()
    finally:
        if server and server.poll() is None:
            # Kill the tracee first: a killed strace detaches and leaves it running.
            try:
                os.kill(server_pid(server.pid), signal.SIGKILL)
            except (OSError, RuntimeError, ValueError):
                pass
            server.kill()
            server.wait()
        if redis:
            redis.terminate()
            redis.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# --- running under the profile ----------------------------------------------------


def exec_under(profile_path: Path, argv: list[str]) -> None:
    """Load the profile as a seccomp filter the way runc does (libseccomp; names this
    architecture does not have are skipped) and exec argv under it."""
    import seccomp  # libseccomp's binding: Debian python3-seccomp

    profile = json.loads(profile_path.read_text())
    ops = {
        "SCMP_CMP_NE": seccomp.NE, "SCMP_CMP_LT": seccomp.LT, "SCMP_CMP_LE": seccomp.LE,
        "SCMP_CMP_EQ": seccomp.EQ, "SCMP_CMP_GE": seccomp.GE, "SCMP_CMP_GT": seccomp.GT,
        "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
    }

    def action(name: str, errno: int):
        if name == "SCMP_ACT_ALLOW":
            return seccomp.ALLOW
        if name == "SCMP_ACT_ERRNO":
            return seccomp.ERRNO(errno)
        raise SystemExit(f"exec: action {name} not supported here")

    default_errno = profile.get("defaultErrnoRet", 1)
    f = seccomp.SyscallFilter(defaction=action(profile["defaultAction"], default_errno))
    default_key = (profile["defaultAction"], default_errno)
    for rule in profile["syscalls"]:
        act = action(rule["action"], rule.get("errnoRet", default_errno))
        if (rule["action"], rule.get("errnoRet", default_errno)) == default_key:
            continue  # the default already; libseccomp refuses such rules (runc skips them)
        # Docker's format: MASKED_EQ takes value as the mask, valueTwo as the datum.
        args = [seccomp.Arg(a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0)) for a in rule.get("args", [])]
        for name in rule["names"]:
            try:
                seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
            except (ValueError, RuntimeError):
                continue  # not a syscall on this architecture (runc skips these too)
            f.add_rule(act, name, *args)
    f.load()  # sets no_new_privs first, as runc with no-new-privileges does
    os.execvp(argv[0], argv)


def seccomp_python() -> str | None:
    """An interpreter that can import libseccomp's binding (often only the system one)."""
    for cand in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if cand and subprocess.run([cand, "-c", "import seccomp"], capture_output=True).returncode == 0:
            return cand
    return None


def enforce(profile_path: Path, binary: Path) -> None:
    py = seccomp_python()
    if not py:
        raise SystemExit("no Python with libseccomp's binding (apt-get install python3-seccomp)")
    me = str(Path(__file__).resolve())
    exercise(binary, lambda name, argv: [py, me, "exec", str(profile_path.resolve()), "--", *argv], lambda pid: pid)
    log(f"everything above ran under {profile_path}")


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "exec" and argv[2] == "--":
        exec_under(Path(argv[1]), argv[3:])
        return 1  # not reached: exec replaced this process
    if len(argv) == 3 and argv[0] == "enforce":
        enforce(Path(argv[1]), Path(argv[2]).resolve())
        return 0
    if len(argv) >= 3 and argv[0] == "trace":
        trace(Path(argv[1]).resolve(), Path(argv[2]))
        return 0
    if len(argv) >= 2 and argv[0] == "names":
        print("\n".join(sorted(set().union(*(names_in(Path(p)) for p in argv[1:])))))
        return 0
    if len(argv) >= 3 and argv[0] in ("check", "update"):
        profile_path = Path(argv[1])
        profile = json.loads(profile_path.read_text())
        seen = set().union(*(names_in(Path(p)) for p in argv[2:]))
        missing = sorted(seen - covered(profile))
        if argv[0] == "check":
            if missing:
                print(f"seccomp: {len(missing)} syscall(s) seen but not allowed by {profile_path}: {' '.join(missing)}")
                print("  (add them with: deploy/seccomp-syscalls.py update PROFILE LOG...)")
                return 1
            print(f"seccomp: all {len(seen)} syscalls seen are allowed by {profile_path}")
            return 0
        rule = observed_rule(profile)
        rule["names"] = sorted(set(rule["names"]) | set(missing))
        profile_path.write_text(json.dumps(profile, indent=2) + "\n")
        print(f"seccomp: added {len(missing)}: {' '.join(missing) or '(none)'}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
