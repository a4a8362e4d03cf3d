"""The streaming example (engine/examples/streaming) driven by the `websockets`
library with tokens from PyJWT: authentication before the upgrade, token expiry
while connected, every route and every error frame, presence counts, stream end
by `stream.end` and by the broadcaster going away, and `GET /dev/token`."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from corecast_harness import ROOT, free_port, spawn_and_wait, run

SECRET = "pytest-streaming-secret-5f0c2a-" + "0123456789abcdef" * 3
STEP = 5.0


def streaming_bin() -> Path:
    """$STREAMING_BIN, else next to $CORECAST_BIN, else under $CARGO_TARGET_DIR or
    target/ (release first)."""
    env = os.environ.get("STREAMING_BIN")
    if env:
        return Path(env)
    candidates = []
    if os.environ.get("CORECAST_BIN"):
        candidates.append(Path(os.environ["CORECAST_BIN"]).parent / "examples" / "streaming")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    for profile in ("release", "debug"):
        candidates.append(target / profile / "examples" / "streaming")
    for c in candidates:
        if c.is_file():
            return c
    raise RuntimeError(
        "streaming example not found: run "
        "`cargo build --release -p corecast --example streaming` or set STREAMING_BIN"
    )


class Example:
    """The streaming example as a child process (killed by its own PID)."""

    def __init__(self, **env: str) -> None:
        self.env = {"STREAMING_JWT_SECRET": SECRET, "STREAMING_JWT_LEEWAY_SECS": "0", **env}
        self.proc: subprocess.Popen[str] | None = None
        self.addr = ""
        self.output: list[str] = []

    def __enter__(self) -> "Example":
        port = free_port()
        try:
            self.proc, self.addr = spawn_and_wait(
                [str(streaming_bin()), f"127.0.0.1:{port}"],
                r"listening on http://(\S+?)/",
                self.output,
                env={**os.environ, **self.env},
                timeout=20,
            )
        except RuntimeError as e:
            raise RuntimeError(f"streaming example did not start: {e}") from e
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def ws_url(self, token: str | None) -> str:
        q = f"?token={token}" if token is not None else ""
        return f"ws://{self.addr}/ws/streaming{q}"

    def http_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.addr}{path}", timeout=STEP) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()


@pytest.fixture(scope="module")
def example():
    with Example() as ex:
        yield ex



def token(name: str | None = "ada", *, ttl: float = 600, secret: str = SECRET, **claims) -> str:
    now = int(time.time())
    body = {"iat": now, "exp": now + ttl, **claims}
    if name is not None:
        body["name"] = name
    return jwt.encode(body, secret, algorithm="HS256")


class Client:
    """A connection that reads frames in the background; `expect` takes the first
    frame (in arrival order) matching a predicate, keeping the others for later."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.frames: list[dict] = []
        self.changed = asyncio.Event()
        self.closed = False
        self.close_code: int | None = None
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, example: Example, name: str | None = "ada", **claims) -> "Client":
        ws = await connect(example.ws_url(token(name, **claims)), compression=None)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.frames.append(json.loads(raw))
                self.changed.set()
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code
        self.closed = True
        self.changed.set()

    async def send(self, action: str, **body) -> None:
        await self.ws.send(json.dumps({"action": action, **body}))

    async def expect(self, pred, what: str, timeout: float = STEP) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for i, f in enumerate(self.frames):
                if pred(f):
                    return self.frames.pop(i)
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or self.closed:
                raise AssertionError(f"no {what}; frames: {self.frames}; closed: {self.closed}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def expect_type(self, ty: str, **fields) -> dict:
        return await self.expect(
            lambda f: f.get("type") == ty and all(f.get(k) == v for k, v in fields.items()),
            f"{ty} {fields}",
        )

    async def error(self, code: str) -> dict:
        return await self.expect_type("error", error=code)

    async def presence(self, event: str, room: str) -> dict:
        return await self.expect_type("presence", event=event, room=room)

    async def none_of(self, ty: str, wait: float = 0.3) -> None:
        await asyncio.sleep(wait)
        assert [f for f in self.frames if f.get("type") == ty] == []

    async def close(self) -> None:
        await self.ws.close()
        await asyncio.wait_for(self.task, STEP)


async def start_stream(c: Client, title: str = "Live", description: str = "") -> str:
    await c.send("stream.start", title=title, description=description)
    started = await c.expect_type("stream.started", title=title, description=description)
    sid = started["streamId"]
    assert re.fullmatch(r"stream-[0-9a-f]{16}", sid), sid
    snap = await c.presence("snapshot", sid)
    assert snap["count"] == 1
    return sid


async def status_of(example: Example, url_token: str | None) -> int:
    with pytest.raises(InvalidStatus) as e:
        async with connect(example.ws_url(url_token), compression=None):
            pass
    return e.value.response.status_code


# --- authentication --------------------------------------------------------


@run
async def test_refused_tokens_get_401_before_the_upgrade(example):
    now = int(time.time())
    assert await status_of(example, None) == 401
    assert await status_of(example, "not-a-jwt") == 401
    assert await status_of(example, token(secret="another-secret-of-enough-length-" + "fedcba9876543210" * 3)) == 401
    expired = jwt.encode({"name": "ada", "exp": now - 5}, SECRET, algorithm="HS256")
    assert await status_of(example, expired) == 401
    no_exp = jwt.encode({"name": "ada"}, SECRET, algorithm="HS256")
    assert await status_of(example, no_exp) == 401
    hs512 = jwt.encode({"name": "ada", "exp": now + 60}, SECRET, algorithm="HS512")
    assert await status_of(example, hs512) == 401
    # Valid signature, but no name and no sub: refused by the example's `$connect`.
    assert await status_of(example, token(None)) == 401
    assert await status_of(example, token("x" * 33)) == 401


@run
async def test_expired_token_reason_is_in_the_body(example):
    now = int(time.time())
    expired = jwt.encode({"name": "ada", "exp": now - 5}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidStatus) as e:
        async with connect(example.ws_url(expired), compression=None):
            pass
    assert e.value.response.status_code == 401
    assert b"token expired" in e.value.response.body


@run
async def test_name_claim_falls_back_to_sub(example):
    a = await Client.open(example, None, sub="sub-only")
    b = await Client.open(example, "named", sub="ignored-sub")
    try:
        sid = await start_stream(a)
        await b.send("stream.join", streamId=sid)
        joined = await b.expect_type("stream.joined", streamId=sid)
        assert joined["broadcaster"] == "sub-only"
        await b.send("chat.message", streamId=sid, message="hi")
        chat = await a.expect_type("chat", streamId=sid)
        assert chat["from"] == "named"
    finally:
        await a.close()
        await b.close()


@run
async def test_token_expiring_while_connected_closes_4001(example):
    c = await Client.open(example, "brief", ttl=2)
    t0 = time.monotonic()
    await asyncio.wait_for(c.task, 10)
    assert c.close_code == 4001
    assert 0.5 < time.monotonic() - t0 < 6


# --- framing errors ----------------------------------------------------------


@run
async def test_unroutable_messages_get_error_frames_and_the_connection_stays(example):
    c = await Client.open(example)
    try:
        await c.ws.send("not json")
        await c.error("invalid_json")
        await c.ws.send("[1, 2]")
        await c.error("invalid_message")
        await c.ws.send(json.dumps({"streamId": "x"}))
        await c.error("missing_route")
        await c.ws.send(json.dumps({"action": "stream.dance", "id": 42}))
        e = await c.error("unknown_action")
        assert (e["action"], e["id"]) == ("stream.dance", 42)
        await c.ws.send(b"\x00binary")
        await c.error("binary_not_routed")
        await c.send("stream.list")
        await c.expect_type("stream.list")
    finally:
        await c.close()


@run
async def test_invalid_bodies_name_the_field(example):
    c = await Client.open(example)
    try:
        await c.ws.send(json.dumps({"action": "stream.start", "id": "r1"}))
        e = await c.error("invalid_body")
        assert "title" in e["message"] and e["action"] == "stream.start" and e["id"] == "r1"
        await c.send("stream.join")
        assert "streamId" in (await c.error("invalid_body"))["message"]
        await c.send("chat.message", streamId="stream-x")
        assert "message" in (await c.error("invalid_body"))["message"]
        await c.send("stream.leave", streamid="wrong-case")
        assert "streamId" in (await c.error("invalid_body"))["message"]
        await c.send("stream.end")
        assert "streamId" in (await c.error("invalid_body"))["message"]
        # A wrong type is an invalid_body too (serde's message names the type).
        await c.send("stream.start", title=5)
        await c.error("invalid_body")
    finally:
        await c.close()


@run
async def test_stream_start_validation(example):
    c = await Client.open(example)
    try:
        for title in ["", "   ", "t" * 101]:
            await c.send("stream.start", title=title)
            e = await c.error("invalid_body")
            assert e["message"].startswith("title:"), e
        await c.send("stream.start", title="ok", description="d" * 501)
        e = await c.error("invalid_body")
        assert e["message"].startswith("description:"), e
        await c.send("stream.start", title="bad\u0007title")
        assert (await c.error("invalid_body"))["message"].startswith("title:")
        await c.send("stream.start", title="ok", description="bell\u0007")
        assert (await c.error("invalid_body"))["message"].startswith("description:")
        # Limits are characters, not bytes; surrounding space is trimmed.
        # Descriptions may have several lines (500 characters here).
        await c.send("stream.start", title=" " + "é" * 100 + " ", description="ü" * 491 + "\nline\ttwo")
        started = await c.expect_type("stream.started")
        assert started["title"] == "é" * 100
        assert started["description"] == "ü" * 491 + "\nline\ttwo"
        await c.send("stream.start", title="second")
        await c.error("already_broadcasting")
    finally:
        await c.close()


# --- routes -------------------------------------------------------------------


@run
async def test_join_and_chat_errors(example):
    a = await Client.open(example, "ada")
    b = await Client.open(example, "bob")
    try:
        await b.send("stream.join", streamId="stream-0000000000000000")
        assert (await b.error("stream_not_found"))["action"] == "stream.join"
        await b.send("chat.message", streamId="stream-0000000000000000", message="hi")
        await b.error("stream_not_found")
        sid = await start_stream(a)
        await b.send("chat.message", streamId=sid, message="hi")
        await b.error("not_in_stream")
        await b.send("stream.leave", streamId=sid)
        await b.error("not_in_stream")
        await b.send("stream.end", streamId=sid)
        await b.error("not_broadcaster")
        await b.send("stream.join", streamId=sid)
        await b.expect_type("stream.joined", streamId=sid)
        await b.send("stream.join", streamId=sid)
        await b.error("already_in_stream")
        for message in ["", "  ", "m" * 501]:
            await b.send("chat.message", streamId=sid, message=message)
            assert (await b.error("invalid_body"))["message"].startswith("message:")
        await b.send("stream.end", streamId=sid)
        await b.error("not_broadcaster")
        await b.none_of("chat")
        await a.none_of("chat", 0)
    finally:
        await a.close()
        await b.close()


@run
async def test_full_stream_lifecycle_with_presence_chat_and_list(example):
    a = await Client.open(example, "ada")
    b = await Client.open(example, "bob")
    c = await Client.open(example, "cy")
    try:
        sid = await start_stream(a, "Morning show", "coffee and code")
        await a.presence("join", sid)

        await c.send("stream.list")
        listed = (await c.expect_type("stream.list"))["streams"]
        mine = [s for s in listed if s["streamId"] == sid]
        assert mine == [
            {
                "streamId": sid,
                "title": "Morning show",
                "description": "coffee and code",
                "broadcaster": "ada",
                "startedAt": mine[0]["startedAt"],
            }
        ]

        await b.send("stream.join", streamId=sid)
        joined = await b.expect_type("stream.joined", streamId=sid)
        assert joined == {
            "type": "stream.joined",
            "streamId": sid,
            "title": "Morning show",
            "description": "coffee and code",
            "broadcaster": "ada",
        }
        snap = await b.presence("snapshot", sid)
        assert snap["count"] == 2 and not snap["truncated"]
        assert sorted(m["meta"]["name"] for m in snap["members"]) == ["ada", "bob"]
        ev = await a.expect(
            lambda f: f.get("event") == "join" and f["member"]["meta"] == {"name": "bob"},
            "bob's join",
        )
        assert ev["count"] == 2 and ev["room"] == sid

        # Chat: everyone in the room, sender included.
        await a.send("chat.message", streamId=sid, message="welcome")
        first = await b.expect_type("chat", streamId=sid)
        await b.send("chat.message", streamId=sid, message="  thanks  ")
        second = await b.expect_type("chat", streamId=sid)
        assert (first["from"], first["message"]) == ("ada", "welcome")
        assert (second["from"], second["message"]) == ("bob", "thanks")
        assert abs(first["at"] - time.time() * 1000) < 10_000
        assert [await a.expect_type("chat", streamId=sid) for _ in range(2)] == [first, second]
        # Sent at once from two shards: whatever the order, both see the same one.
        await asyncio.gather(
            *(
                who.send("chat.message", streamId=sid, message=f"{who_name} {i}")
                for i in range(5)
                for who, who_name in ((a, "a"), (b, "b"))
            )
        )
        seen = [[(await who.expect_type("chat", streamId=sid))["message"] for _ in range(10)] for who in (a, b)]
        assert seen[0] == seen[1]
        assert sorted(seen[0]) == sorted(f"{w} {i}" for i in range(5) for w in "ab")
        await c.none_of("chat")

        # Leave: bob is told, ada sees the count drop.
        await b.send("stream.leave", streamId=sid)
        await b.expect_type("stream.left", streamId=sid)
        leave = await a.presence("leave", sid)
        assert leave["count"] == 1 and leave["member"]["meta"] == {"name": "bob"}

        # Rejoin, then the broadcaster ends the stream: everyone in it is told.
        await b.send("stream.join", streamId=sid)
        await b.expect_type("stream.joined", streamId=sid)
        await a.send("stream.end", streamId=sid)
        await a.expect_type("stream.ended", streamId=sid)
        await b.expect_type("stream.ended", streamId=sid)
        await c.none_of("stream.ended", 0)

        await c.send("stream.join", streamId=sid)
        await c.error("stream_not_found")
        await b.send("chat.message", streamId=sid, message="anyone?")
        await b.error("stream_not_found")
        await c.send("stream.list")
        assert sid not in [s["streamId"] for s in (await c.expect_type("stream.list"))["streams"]]
        # An ended stream's room can still be left; the broadcaster may start again.
        await b.send("stream.leave", streamId=sid)
        await b.expect_type("stream.left", streamId=sid)
        sid2 = await start_stream(a, "Encore")
        assert sid2 != sid
    finally:
        for x in (a, b, c):
            await x.close()


@run
async def test_broadcaster_leaving_ends_the_stream(example):
    a = await Client.open(example, "ada")
    b = await Client.open(example, "bob")
    try:
        sid = await start_stream(a)
        await b.send("stream.join", streamId=sid)
        await b.expect_type("stream.joined", streamId=sid)
        await a.send("stream.leave", streamId=sid)
        await a.expect_type("stream.left", streamId=sid)
        await b.expect_type("stream.ended", streamId=sid)
        await b.send("stream.join", streamId=sid)
        await b.error("stream_not_found")
    finally:
        await a.close()
        await b.close()


@run
async def test_broadcaster_disconnect_ends_the_stream(example):
    a = await Client.open(example, "ada")
    b = await Client.open(example, "bob")
    c = await Client.open(example, "cy")
    try:
        sid = await start_stream(a)
        await b.send("stream.join", streamId=sid)
        await b.expect_type("stream.joined", streamId=sid)
        await b.presence("snapshot", sid)
        await a.close()
        leave = await b.presence("leave", sid)
        assert leave["count"] == 1
        await b.expect_type("stream.ended", streamId=sid)
        await c.send("stream.join", streamId=sid)
        await c.error("stream_not_found")
        await c.send("stream.list")
        assert sid not in [s["streamId"] for s in (await c.expect_type("stream.list"))["streams"]]
    finally:
        await b.close()
        await c.close()


@run
async def test_viewer_disconnect_updates_the_count(example):
    a = await Client.open(example, "ada")
    viewers = [await Client.open(example, f"v{i}") for i in range(3)]
    try:
        sid = await start_stream(a)
        for i, v in enumerate(viewers):
            await v.send("stream.join", streamId=sid)
            snap = await v.presence("snapshot", sid)
            assert snap["count"] == i + 2
        await viewers[0].close()
        leave = await a.expect(
            lambda f: f.get("event") == "leave" and f["member"]["meta"] == {"name": "v0"},
            "v0's leave",
        )
        assert leave["count"] == 3
    finally:
        await a.close()
        for v in viewers[1:]:
            await v.close()


# --- HTTP routes ----------------------------------------------------------------


def test_page_and_dev_tokens(example):
    status, page = example.http_get("/")
    assert status == 200 and 'id="chat-log"' in page and "/dev/token" in page
    status, body = example.http_get("/dev/token?name=ada%20lovelace")
    assert status == 200
    answer = json.loads(body)
    claims = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
    assert claims["name"] == claims["sub"] == answer["name"] == "ada lovelace"
    assert 3590 <= claims["exp"] - time.time() <= 3610 and claims["exp"] == answer["expiresAt"]
    status, _ = example.http_get("/dev/token?name=" + "n" * 32)
    assert status == 200
    for query in ["", "?name=", "?name=%20%20", "?name=" + "n" * 33, "?name=a%07b"]:
        status, body = example.http_get("/dev/token" + query)
        assert status == 400, query
        assert json.loads(body)["error"] == "invalid_name"


@run
async def test_minted_token_connects(example):
    status, body = example.http_get("/dev/token?name=minted")
    assert status == 200
    ws = await connect(example.ws_url(json.loads(body)["token"]), compression=None)
    c = Client(ws)
    try:
        sid = await start_stream(c)
        await c.send("chat.message", streamId=sid, message="hello")
        assert (await c.expect_type("chat"))["from"] == "minted"
    finally:
        await c.close()


def test_dev_tokens_can_be_turned_off():
    with Example(STREAMING_DEV_TOKENS="0") as ex:
        status, _ = ex.http_get("/dev/token?name=ada")
        assert status == 404
        assert ex.http_get("/")[0] == 200


@run
async def test_default_leeway_accepts_a_token_expired_seconds_ago():
    with Example(STREAMING_JWT_LEEWAY_SECS="30") as ex:
        now = int(time.time())
        recent = jwt.encode({"name": "ada", "exp": now - 5}, SECRET, algorithm="HS256")
        old = jwt.encode({"name": "ada", "exp": now - 120}, SECRET, algorithm="HS256")
        assert await status_of(ex, old) == 401
        # Admitted within the leeway (the upgrade succeeds). The engine then closes it
        # at `exp` itself, which has passed, so it goes at once with 4001; whatever
        # the engine does there, a close must be 4001.
        ws = await connect(ex.ws_url(recent), compression=None)
        c = Client(ws)
        await asyncio.wait([c.task], timeout=2)
        if c.closed:
            assert c.close_code == 4001
        else:
            await c.close()


def test_default_secret_warns():
    env = {k: v for k, v in os.environ.items() if k != "STREAMING_JWT_SECRET"}
    port = free_port()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [str(streaming_bin()), f"127.0.0.1:{port}"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 20
            text = ""
            while time.monotonic() < deadline and "listening on" not in text:
                time.sleep(0.1)
                out.seek(0)
                text = out.read()
            assert "listening on" in text
            assert "WARNING: STREAMING_JWT_SECRET is not set" in text
        finally:
            proc.kill()
            proc.wait(10)
