"""Start and stop a real `corecast serve` process for the Python tests.

The binary is $CORECAST_BIN, else target/release/corecast, else
target/debug/corecast under the workspace. Each server gets its own temporary
config (a copy of config.yaml with `listen`, `shards` and any overrides
changed) and a free loopback port, and is killed (by its own PID) on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0
TEST_IO_MEMORY = 131072
_used_ports: set[int] = set()


def find_binary(name: str, env_var: str, build_hint: str) -> Path:
    """`$env_var` if set (relative: to the workspace root), else `name` under
    `$CARGO_TARGET_DIR` or `target/`, release first."""
    env = os.environ.get(env_var)
    if env:
        path = Path(env)
        if not path.is_absolute() and not path.is_file():
            path = ROOT / path
        if not path.is_file():
            raise RuntimeError(f"{env_var}={env} does not exist")
        return path
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    for profile in ("release", "debug"):
        path = target / profile / name
        if path.is_file():
            return path
    raise RuntimeError(f"{name} not found under {target}: run `{build_hint}` or set {env_var}")


def corecast_bin() -> Path:
    return find_binary(
        "corecast", "CORECAST_BIN", "cargo build --release -p corecast --bin corecast"
    )


TEST_TIMEOUT = 60.0


def run(fn):
    """Run an async test to completion with an overall timeout (TEST_TIMEOUT s)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT))

    return wrapper


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _used_ports:
            _used_ports.add(port)
            return port


def set_yaml_value(text: str, key: str, value: str) -> str:
    """Replace `key` (`name` or `section.name`) in the default config's text."""
    section, _, leaf = key.rpartition(".")
    out, in_section, done = [], not section, False
    for line in text.splitlines():
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        content = bool(stripped) and not stripped.startswith("#")
        if section and content and indent == 0:
            in_section = stripped.startswith(section + ":")
        if (
            not done
            and in_section
            and content
            and (indent > 0) == bool(section)
            and stripped.startswith(leaf + ":")
        ):
            out.append(f"{line[:indent]}{leaf}: {value}")
            done = True
        else:
            out.append(line)
    if not done:
        raise KeyError(f"config key {key} not found")
    return "\n".join(out) + "\n"


def spawn_and_wait(
    argv: list[str],
    ready_pattern: str,
    output: list[str],
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """Start `argv` (stdout and stderr merged into `output` by a reader thread) and
    wait until a line matches `ready_pattern`; returns the process and the
    pattern's first group. Raises RuntimeError (after killing the child, by its own
    PID) when the child exits or the timeout passes first."""
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready = threading.Event()
    found: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            m = re.search(ready_pattern, line)
            if m and not ready.is_set():
                found.append(m.group(1))
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + (STARTUP_TIMEOUT if timeout is None else timeout)
    while not ready.wait(0.05):
        if proc.poll() is not None or time.monotonic() > deadline:
            time.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            raise RuntimeError(
                f"no line matching {ready_pattern!r} (exit {proc.poll()}):\n" + "".join(output)
            )
    return proc, found[0]


class Server:
    """A running corecast server; use as a context manager."""

    def __init__(
        self,
        shards: int = 1,
        *,
        append: str = "",
        env: dict[str, str] | None = None,
        **overrides: str,
    ) -> None:
        """`overrides`: `section__key=value` edits of the default config; `append`:
        YAML appended to it (new top-level sections, e.g. `cluster:`); `env`: extra
        environment variables for the server process."""
        self.shards = shards
        self.append = append
        self.env = env
        self.overrides = {k.replace("__", "."): v for k, v in overrides.items()}
        self.proc: subprocess.Popen[str] | None = None
        self.addr = ""
        self.output: list[str] = []
        self._dir = tempfile.TemporaryDirectory(prefix="corecast-pytest-")

    def url(self, path: str) -> str:
        return f"ws://{self.addr}{path}"

    def __enter__(self) -> "Server":
        last = ""
        for _ in range(3):
            try:
                self._start()
                return self
            except RuntimeError as e:
                last = str(e)
                self._kill()
        raise RuntimeError(f"corecast did not start: {last}")

    def _start(self) -> None:
        port = free_port()
        listen = f"127.0.0.1:{port}"
        text = (ROOT / "config.yaml").read_text()
        text = set_yaml_value(text, "listen", listen)
        text = set_yaml_value(text, "shards", str(self.shards))
        text = set_yaml_value(text, "runtime.io_memory", str(TEST_IO_MEMORY))
        for key, value in self.overrides.items():
            text = set_yaml_value(text, key, value)
        text += self.append
        config = Path(self._dir.name) / "corecast.yaml"
        config.write_text(text)
        self.output = []
        self.proc, self.addr = spawn_and_wait(
            [str(corecast_bin()), "serve", "--config", str(config),
             "--listen", listen, "--shards", str(self.shards)],
            r"listening on ws://(\S+)",
            self.output,
            env={**os.environ, **self.env} if self.env else None,
        )

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # this child's own PID only
        if self.proc is not None:
            self.proc.wait(10)

    def __exit__(self, *exc: object) -> None:
        self._kill()
        self._dir.cleanup()


def redis_server_bin() -> str:
    """`redis-server` on PATH; a clear error naming the set-up script otherwise."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server not found on PATH: the cluster tests need a real Redis. "
            "Install it with scripts/setup-test-deps.sh (or `apt-get install redis-server`)."
        )
    return path


def resp_command(*args: str | bytes) -> bytes:
    """A RESP command: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def read_resp(f) -> object:
    """One RESP reply from a binary file object: str (simple), RedisError (error),
    int, bytes / None (bulk), list / None (array)."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError(f"bad RESP line {line!r}")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        return RedisError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        n = int(body)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:n]
    if kind == b"*":
        n = int(body)
        return None if n < 0 else [read_resp(f) for _ in range(n)]
    raise ConnectionError(f"unknown RESP type {line!r}")


class RedisError(Exception):
    """An error reply (returned, not raised, by RedisServer.command)."""


class RedisServer:
    """`redis-server --port P --bind 127.0.0.1 --save "" --appendonly no` on a free
    loopback port; a context manager. stop() sends SIGTERM to its own PID and waits,
    kill() SIGKILLs it, restart() starts it again on the same port (empty: no
    persistence)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="corecast-redis-")
        self.log = Path(self._dir.name) / "redis.log"

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> "RedisServer":
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [redis_server_bin(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self._dir.name],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                if self.command("PING") == "PONG":
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def command(self, *args: str | bytes) -> object:
        """Runs one command on a new connection and returns its reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(resp_command(*args))
            with s.makefile("rb") as f:
                return read_resp(f)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # its own PID only
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        self._dir.cleanup()


class SseClient:
    """An SSE stream read over a raw asyncio socket (an independent client: no
    library): events parsed per the WHATWG rules the tests need (data lines
    joined, `id:` and `event:` kept, default event `message`, comments and
    `retry:` skipped) and collected in `events`; `eof` once the server closes."""

    STEP = 10.0

    def __init__(self) -> None:
        self.events: list[dict[str, str]] = []
        self._task: asyncio.Task | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.eof = False

    async def open(self, addr: str, path: str, last_event_id: str | None = None) -> "SseClient":
        host, port = addr.rsplit(":", 1)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port)), self.STEP
        )
        self._writer = writer
        extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{extra}\r\n"
            .encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.STEP)
        assert head.startswith(b"HTTP/1.1 200"), head
        self._task = asyncio.create_task(self._read(reader))
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        cur: dict[str, str] = {}
        data: list[str] = []
        while True:
            line = await reader.readline()
            if not line:
                self.eof = True
                return
            text = line.decode().rstrip("\r\n")
            if text == "":
                if data:
                    cur["data"] = "\n".join(data)
                    cur.setdefault("event", "message")
                    self.events.append(cur)
                cur, data = {}, []
            elif text.startswith(":"):
                continue
            else:
                name, _, value = text.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name != "retry":
                    cur[name] = value

    async def wait_data(self, pred, timeout: float = STEP) -> dict[str, str]:
        """The first event matching `pred`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if pred(e):
                    return e
            await asyncio.sleep(0.02)
        raise AssertionError(f"SSE: no matching event; got {self.events[-5:]}")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
