#!/usr/bin/env python3
"""Checks of the deployment files in deploy/ against the real corecast binary
(scripts/check-deploy.sh runs this; scripts/test.sh runs that as a stage).

Every check prints `ok`, `FAIL` (with the reason) or `skip` (with what is missing),
then one line `deploy: N passed, N failed, N skipped`; the exit status is 1 when
any check failed. Environment: CORECAST_BIN (default target/release/corecast).

- Dockerfile: stages, toolchain = rust-toolchain.toml, non-root user, what is
  copied where; its ENTRYPOINT + CMD started with the real binary (image paths
  mapped to the repository's files, the listen address to a loopback port) until
  its HEALTHCHECK command passes; .dockerignore.
- seccomp profile: format, io_uring allowed, every syscall strace sees the server
  make in a smoke run (deploy/seccomp-syscalls.py trace) is allowed, and the same
  smoke run passes with the server under the profile (libseccomp, as runc loads it).
- compose file: three corecast nodes + Redis, each with the seccomp profile,
  nofile/memlock ulimits, TCP+UDP ports, /readyz health check; its config passes
  check-config, and one node's command runs in cluster mode against a
  throw-away redis-server until /readyz is 200.
- systemd unit: limits, signals, stop timeout above the drain timeout,
  `systemd-analyze verify`, and its SystemCallFilter allows every syscall seen.
- The image itself, built and run, only when `docker info` reaches a daemon.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
PROFILE = DEPLOY / "seccomp-corecast.json"
COMPOSE = DEPLOY / "docker-compose.yml"
UNIT = DEPLOY / "corecast.service"
HEALTHCHECK = DEPLOY / "healthcheck.sh"
BIN = Path(os.environ.get("CORECAST_BIN") or ROOT / "target" / "release" / "corecast").absolute()
IO_URING = {"io_uring_setup", "io_uring_enter", "io_uring_register"}


class Skip(Exception):
    pass


RESULTS = {"ok": 0, "FAIL": 0, "skip": 0}
STRACE_LOGS: list[Path] = []  # filled by the seccomp smoke run, used by the systemd check
TMPDIRS: list[Path] = []


def check(name: str):
    def wrap(fn):
        def run():
            try:
                fn()
                status, note = "ok", ""
            except Skip as e:
                status, note = "skip", f": {e}"
            except Exception as e:  # a malformed file must fail its check, not end the run
                status, note = "FAIL", f": {'' if isinstance(e, AssertionError) else type(e).__name__ + ': '}{e}"
            RESULTS[status] += 1
            print(f"{status:4} {name}{note}", flush=True)

        return run

    return wrap


# --- helpers ---------------------------------------------------------------------


def seccomp_tool():
    """deploy/seccomp-syscalls.py as a module (its name has a dash)."""
    if str(DEPLOY) not in sys.path:
        sys.path.insert(0, str(DEPLOY))
    from importlib import import_module

    return import_module("seccomp-syscalls")


def free_port() -> int:
    """A port free for TCP and UDP at once (WebTransport shares the TCP port)."""
    return seccomp_tool().free_port()


def healthcheck(port: int, path: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(HEALTHCHECK), path],
        env=dict(os.environ, CORECAST_HEALTH_PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=15,
    )


def run_until_healthy(argv: list[str], port: int, path: str, env: dict | None = None) -> None:
    """Start argv, wait until deploy/healthcheck.sh PATH passes on port, SIGTERM it
    and expect a clean exit (the drain)."""
    out = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        last = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            last = healthcheck(port, path)
            if last.returncode == 0:
                break
            time.sleep(0.1)
        if proc.poll() is not None or last is None or last.returncode != 0:
            out.seek(0)
            text = re.sub(r"\x1b\[[0-9;]*m", "", out.read().decode(errors="replace"))  # log colours
            log = text.strip().splitlines()[-8:]
            raise AssertionError(
                f"{' '.join(argv)}: healthcheck {path} never passed "
                f"({(last.stdout.strip() if last else '') or 'no answer'}); exit {proc.poll()}; log: {' | '.join(log)}"
            )
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(20)
        assert rc == 0, f"exit status {rc} after SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        out.close()


def need_bin() -> None:
    if not os.access(BIN, os.X_OK):
        raise AssertionError(f"{BIN} not found: build it (cargo build --release -p corecast) or set CORECAST_BIN")


# --- Dockerfile --------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, cur = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    st: list[list[tuple[str, str]]] = []
    for ins in dockerfile_instructions():
        if ins[0] == "FROM":
            st.append([])
        if st:
            st[-1].append(ins)
    return st


def final(instr: str) -> list[str]:
    return [a for i, a in stages()[-1] if i == instr]


def exec_form(args: str) -> list[str]:
    # HEALTHCHECK's options come before CMD.
    if args.startswith("--") or args.startswith("CMD"):
        args = args[args.index("CMD") + 3 :].strip()
    v = json.loads(args)
    assert isinstance(v, list) and all(isinstance(x, str) for x in v), f"not an exec form: {args}"
    return v


def copies() -> dict[str, str]:
    """Final stage COPY destination -> source (repository path, or stage:path)."""
    out = {}
    for a in final("COPY"):
        parts = a.split()
        src_stage = next((p.split("=", 1)[1] for p in parts if p.startswith("--from=")), None)
        paths = [p for p in parts if not p.startswith("--")]
        assert len(paths) == 2, f"COPY {a}: expected one source"
        out[paths[1]] = f"{src_stage}:{paths[0]}" if src_stage else paths[0]
    return out


@check("Dockerfile: multi-stage, builder on the pinned toolchain with the BoringSSL tools")
def dockerfile_stages() -> None:
    st = stages()
    assert len(st) >= 2, f"{len(st)} FROM line(s), expected a build and a runtime stage"
    channel = re.search(r'^channel\s*=\s*"([^"]+)"', (ROOT / "rust-toolchain.toml").read_text(), re.M).group(1)
    args = dict(
        (a.split("=", 1) + [""])[:2] for i, a in dockerfile_instructions() if i == "ARG" and "=" in a
    )
    assert args.get("RUST_VERSION") == channel, (
        f"ARG RUST_VERSION={args.get('RUST_VERSION')} but rust-toolchain.toml pins {channel}"
    )
    assert st[0][0][1].startswith("rust:${RUST_VERSION}"), f"builder FROM {st[0][0][1]}"
    runs = " ".join(a for i, a in st[0] if i == "RUN")
    for pkg in ("cmake", "clang", "libclang-dev"):
        assert re.search(rf"\b{re.escape(pkg)}\b", runs), f"builder does not install {pkg}"
    assert re.search(r"cargo build --release --locked -p corecast --bin corecast", runs), "no cargo build --release --locked -p corecast"
    assert not st[-1][0][1].startswith("rust:"), "the runtime stage is the Rust image"


@check("Dockerfile: runtime stage runs as a non-root user and copies binary, config, health check")
def dockerfile_runtime() -> None:
    users = final("USER")
    assert users, "no USER in the final stage (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("0", "root"), f"USER {users[-1]}"
    if user.isdigit():
        runs = " ".join(final("RUN"))
        assert re.search(rf"--uid {user}\b", runs), f"USER {user}, but no user created with that uid"
    entry = exec_form(final("ENTRYPOINT")[-1])
    cp = copies()
    assert cp.get(entry[0], "").endswith("corecast"), f"ENTRYPOINT {entry[0]} is not the copied binary ({cp})"
    named = [a.split()[-1] for a in (st[0][1] for st in stages()[:-1]) if " AS " in a.upper()]
    assert cp[entry[0]].split(":")[0] in named, f"the binary is not copied from a build stage ({cp[entry[0]]})"
    cfg = entry[entry.index("-c") + 1] if "-c" in entry else entry[entry.index("--config") + 1]
    assert cp.get(cfg) == "config.yaml", f"-c {cfg} is not COPY config.yaml ({cp})"
    hc = exec_form(final("HEALTHCHECK")[-1])
    assert cp.get(hc[0]) == "deploy/healthcheck.sh", f"HEALTHCHECK runs {hc[0]}, not the copied deploy/healthcheck.sh"
    cmd = exec_form(final("CMD")[-1])
    port = (entry + cmd)[(entry + cmd).index("--listen") + 1].rsplit(":", 1)[1]
    exposed = " ".join(final("EXPOSE")).split()
    for proto in ("tcp", "udp"):
        assert f"{port}/{proto}" in exposed, f"EXPOSE lacks {port}/{proto} (WebTransport is UDP on the TCP port)"
    env = " ".join(final("ENV"))
    assert f"CORECAST_HEALTH_PORT={port}" in env, f"ENV CORECAST_HEALTH_PORT is not the listen port {port}"


@check("Dockerfile: ENTRYPOINT + CMD start the real binary until the HEALTHCHECK passes")
def dockerfile_runs() -> None:
    need_bin()
    entry = exec_form(final("ENTRYPOINT")[-1])
    cmd = exec_form(final("CMD")[-1])
    cp = copies()
    port = free_port()
    argv = []
    for a in entry + cmd:
        if a == entry[0]:
            a = str(BIN)
        elif a in cp:
            a = str(ROOT / cp[a])  # the image's /etc/corecast/config.yaml is config.yaml
        elif re.fullmatch(r"0\.0\.0\.0:\d+", a):
            a = f"127.0.0.1:{port}"
        argv.append(a)
    argv += ["--shards", "1"]
    hc = exec_form(final("HEALTHCHECK")[-1])
    run_until_healthy(argv, port, hc[1] if len(hc) > 1 else "/healthz")
    # The probe must be able to fail: nothing listens there any more.
    assert healthcheck(port, "/healthz").returncode != 0, "healthcheck passed with no server"


@check(".dockerignore keeps build output, reports and test environments out of the context")
def dockerignore() -> None:
    lines = {l.strip().rstrip("/") for l in (ROOT / ".dockerignore").read_text().splitlines()}
    for want in ("target", "reports", "**/node_modules", "**/.venv"):
        assert want in lines, f".dockerignore lacks {want}"


# --- seccomp -----------------------------------------------------------------------


def load_profile() -> dict:
    return json.loads(PROFILE.read_text())


def profile_covers(profile: dict) -> set[str]:
    return seccomp_tool().covered(profile)


@check("seccomp profile: allow-list format, io_uring allowed, clone without namespaces")
def seccomp_format() -> None:
    p = load_profile()
    assert p.get("defaultAction") == "SCMP_ACT_ERRNO", f"defaultAction {p.get('defaultAction')}"
    arches = {a["architecture"] for a in p.get("archMap", [])}
    assert {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"} <= arches, f"archMap {sorted(arches)}"
    actions = {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_LOG", "SCMP_ACT_TRACE"}
    unconditional = set()
    for r in p["syscalls"]:
        assert r.get("action") in actions, f"rule {r.get('names')}: action {r.get('action')}"
        assert r.get("names") and all(re.fullmatch(r"[a-z0-9_]+", n) for n in r["names"]), f"bad names {r.get('names')}"
        if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args"):
            dup = unconditional & set(r["names"])
            assert not dup, f"listed twice: {sorted(dup)}"
            unconditional |= set(r["names"])
    missing = IO_URING - unconditional
    assert not missing, f"io_uring not allowed: {sorted(missing)}"
    # clone unconditionally allowed would defeat the namespace-flag check.
    assert "clone" not in unconditional, "clone is allowed without its flag check"
    assert any(r["names"] == ["clone"] and r.get("args") for r in p["syscalls"]), "no conditional clone rule"
    for banned in ("unshare", "setns", "mount", "ptrace", "bpf", "kexec_load", "init_module"):
        assert banned not in unconditional, f"{banned} allowed"


@check("seccomp profile: allows every syscall strace sees in a smoke run of the server")
def seccomp_strace() -> None:
    need_bin()
    if not shutil.which("strace"):
        raise Skip("strace not installed (scripts/setup-test-deps.sh installs it): syscall coverage not checked")
    outdir = Path(tempfile.mkdtemp(prefix="corecast-deploy-strace-"))
    TMPDIRS.append(outdir)  # kept for the systemd check, removed at the end
    r = subprocess.run(
        [sys.executable, str(DEPLOY / "seccomp-syscalls.py"), "trace", str(BIN), str(outdir)],
        capture_output=True, text=True, timeout=180,
    )
    print(r.stdout.rstrip())
    if r.returncode != 0:
        if "Operation not permitted" in r.stderr and "ptrace" in r.stderr:
            raise Skip("strace cannot trace here (ptrace refused): syscall coverage not checked")
        raise AssertionError(f"trace failed: {r.stderr.strip().splitlines()[-1:]}")
    STRACE_LOGS.extend(sorted(outdir.glob("*.strace")))
    c = subprocess.run(
        [sys.executable, str(DEPLOY / "seccomp-syscalls.py"), "check", str(PROFILE), *map(str, STRACE_LOGS)],
        capture_output=True, text=True,
    )
    print(c.stdout.rstrip())
    assert c.returncode == 0, "the server makes syscalls the profile refuses (see above)"


@check("seccomp profile: the server runs under it (loaded with libseccomp as runc does) and serves every client")
def seccomp_enforced() -> None:
    need_bin()
    if not seccomp_tool().seccomp_python():
        raise Skip("no Python with libseccomp's binding (apt-get install python3-seccomp): profile not enforced")
    r = subprocess.run(
        [sys.executable, str(DEPLOY / "seccomp-syscalls.py"), "enforce", str(PROFILE), str(BIN)],
        capture_output=True, text=True, timeout=180,
    )
    print(r.stdout.rstrip())
    err = re.sub(r"\x1b\[[0-9;]*m", "", r.stderr).strip().splitlines()[-3:]
    assert r.returncode == 0, f"under the profile: {' | '.join(err)}"


# --- compose -------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def corecast_services(doc: dict) -> dict[str, dict]:
    return {n: s for n, s in doc["services"].items() if "redis" not in str(s.get("image", ""))}


def port_list(svc: dict) -> list[tuple[str, str, str]]:
    out = []
    for p in svc.get("ports", []):
        m = re.fullmatch(r"(?:[\d.]+:)?(\d+):(\d+)(?:/(tcp|udp))?", str(p))
        assert m, f"port {p!r}: use HOST:CONTAINER/PROTO"
        out.append((m.group(1), m.group(2), m.group(3) or "tcp"))
    return out


@check("compose: three corecast nodes and Redis, each node with seccomp, limits, TCP+UDP, /readyz")
def compose_structure() -> None:
    doc = compose()
    services = doc["services"]
    redis = [n for n, s in services.items() if str(s.get("image", "")).startswith("redis:7")]
    assert len(redis) == 1, f"Redis services: {redis}"
    nodes = corecast_services(doc)
    assert len(nodes) == 3, f"corecast services: {sorted(nodes)}"
    hostnames, host_ports = set(), set()
    for name, s in nodes.items():
        seccomp = [o.split("=", 1)[1] for o in s.get("security_opt", []) if o.startswith("seccomp=")]
        assert seccomp, f"{name}: no security_opt seccomp="
        assert (COMPOSE.parent / seccomp[0]).resolve() == PROFILE.resolve(), f"{name}: seccomp={seccomp[0]} is not {PROFILE.name}"
        ul = s.get("ulimits", {})
        nofile = ul.get("nofile", {})
        nofile = {"soft": nofile, "hard": nofile} if isinstance(nofile, int) else nofile
        assert min(nofile.get("soft", 0), nofile.get("hard", 0)) >= 65536, f"{name}: ulimits.nofile {nofile}"
        memlock = ul.get("memlock")
        memlock = {"soft": memlock, "hard": memlock} if isinstance(memlock, int) else (memlock or {})
        assert memlock.get("soft") == -1 and memlock.get("hard") == -1, f"{name}: ulimits.memlock {memlock}"
        cmd = s.get("command", [])
        listen_port = cmd[cmd.index("--listen") + 1].rsplit(":", 1)[1]
        ports = port_list(s)
        for proto in ("tcp", "udp"):
            assert any(c == listen_port and pr == proto for _, c, pr in ports), f"{name}: no {proto} mapping to {listen_port}"
        host_ports |= {(h, pr) for h, _, pr in ports}
        test = " ".join(s.get("healthcheck", {}).get("test", []))
        assert "/readyz" in test, f"{name}: healthcheck {test!r} does not probe /readyz"
        dep = s.get("depends_on", {})
        assert all(r in dep for r in redis), f"{name}: depends_on {dep}"
        assert "redis://" + redis[0] in str(s.get("environment", {}).get("CORECAST_REDIS_URL", "")), f"{name}: CORECAST_REDIS_URL"
        if s.get("read_only"):
            assert any(str(t).split(":")[0] == "/tmp" for t in s.get("tmpfs", [])), f"{name}: read_only without a /tmp tmpfs (webtransport.cert: auto writes there)"
        hostnames.add(s.get("hostname"))
        grace = str(s.get("stop_grace_period", "10s"))
        assert int(re.fullmatch(r"(\d+)s", grace).group(1)) * 1000 > drain_ms(), f"{name}: stop_grace_period {grace} not above the drain timeout"
    assert len(hostnames) == 3 and None not in hostnames, f"hostnames (node ids) not distinct: {hostnames}"
    assert len(host_ports) == 6, f"host ports clash: {sorted(host_ports)}"


def drain_ms() -> int:
    return int(yaml.safe_load((ROOT / "config.yaml").read_text())["shutdown"]["drain_timeout_ms"])


def compose_node() -> tuple[str, dict, Path]:
    name, svc = sorted(corecast_services(compose()).items())[0]
    vols = [v for v in svc.get("volumes", []) if v.split(":")[1] == "/etc/corecast/config.yaml"]
    assert vols, f"{name}: no config mounted at /etc/corecast/config.yaml"
    return name, svc, (COMPOSE.parent / vols[0].split(":")[0]).resolve()


@check("compose: the nodes' mounted config passes corecast check-config")
def compose_config() -> None:
    need_bin()
    name, svc, cfg = compose_node()
    env = dict(os.environ, **{k: str(v) for k, v in svc.get("environment", {}).items()})
    r = subprocess.run([str(BIN), "check-config", str(cfg)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, f"check-config {cfg.name}: {r.stderr.strip()}"
    c = yaml.safe_load(cfg.read_text())
    assert c.get("cluster", {}).get("broker") == "redis", "the nodes' config is not in cluster mode"


@check("compose: a node's command and config run in cluster mode until /readyz is 200")
def compose_node_runs() -> None:
    need_bin()
    exe = shutil.which("redis-server")
    if not exe:
        raise Skip("redis-server not installed (scripts/setup-test-deps.sh installs it)")
    name, svc, cfg = compose_node()
    rport, port = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="corecast-deploy-redis-")
    redis = subprocess.Popen(
        [exe, "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        env = dict(os.environ, **{k: str(v) for k, v in svc.get("environment", {}).items()})
        env["CORECAST_REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
        args = [f"127.0.0.1:{port}" if re.fullmatch(r"0\.0\.0\.0:\d+", a) else a for a in svc["command"]]
        run_until_healthy([str(BIN), "serve", "-c", str(cfg), *args], port, "/readyz", env)
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(tmp, ignore_errors=True)


# --- systemd -------------------------------------------------------------------------


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read_string(UNIT.read_text())
    return cp


def size(v: str) -> float:
    return float("inf") if v == "infinity" else float(v)


@check("systemd unit: limits, user, signals, stop timeout above the drain timeout")
def systemd_fields() -> None:
    s = unit()["Service"]
    assert size(s.get("LimitNOFILE", "0").split(":")[-1]) >= 65536, f"LimitNOFILE={s.get('LimitNOFILE')}"
    assert s.get("LimitMEMLOCK") == "infinity", f"LimitMEMLOCK={s.get('LimitMEMLOCK')}"
    assert s.get("DynamicUser") == "yes" or s.get("User", "root") not in ("root", "0"), "runs as root"
    assert "-HUP $MAINPID" in s.get("ExecReload", ""), f"ExecReload={s.get('ExecReload')}"
    assert s.get("KillSignal", "SIGTERM") == "SIGTERM", f"KillSignal={s.get('KillSignal')}"
    stop = re.fullmatch(r"(\d+)s?", s.get("TimeoutStopSec", ""))
    assert stop and int(stop.group(1)) * 1000 > drain_ms(), f"TimeoutStopSec={s.get('TimeoutStopSec')} not above shutdown.drain_timeout_ms={drain_ms()}"
    assert s.get("Restart") == "on-failure", f"Restart={s.get('Restart')}"
    assert s.get("AmbientCapabilities", "") == "", "AmbientCapabilities granted"
    start = shlex.split(s["ExecStart"])
    assert start[1] == "serve", f"ExecStart={s['ExecStart']}"


def syscall_groups() -> dict[str, list[str]]:
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    cur = None
    for line in out.splitlines():
        s = line.strip()
        if line.startswith("@"):
            cur = s
            groups[cur] = []
        elif cur and s and not s.startswith("#"):
            groups[cur].append(s)
    return groups


def expand(names: list[str], groups: dict[str, list[str]], seen: set[str] | None = None) -> set[str]:
    seen = set() if seen is None else seen
    out: set[str] = set()
    for n in names:
        if n.startswith("@"):
            if n not in seen:
                seen.add(n)
                out |= expand(groups.get(n, []), groups, seen)
        else:
            out.add(n)
    return out


@check("systemd unit: systemd-analyze verify, and SystemCallFilter allows what the server calls")
def systemd_verify() -> None:
    need_bin()
    if not shutil.which("systemd-analyze"):
        raise Skip("systemd-analyze not installed: unit not verified")
    text = UNIT.read_text()
    start = shlex.split(unit()["Service"]["ExecStart"])[0]
    with tempfile.TemporaryDirectory() as d:
        # verify wants ExecStart's binary to exist; point it at the built one.
        copy = Path(d) / UNIT.name
        copy.write_text(text.replace(start, str(BIN)))
        r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
        # verify also reports unrelated units of the host; keep lines about ours.
        ours = [l for l in (r.stdout + r.stderr).splitlines() if UNIT.name in l]
        assert r.returncode == 0 and not ours, f"systemd-analyze verify: {' | '.join(ours) or r.returncode}"
    filt = unit()["Service"].get("SystemCallFilter", "").split()
    if not filt:
        return
    assert not filt[0].startswith("~"), "SystemCallFilter is a deny-list; check it by hand"
    allowed = expand(filt, syscall_groups())
    assert IO_URING <= allowed, f"SystemCallFilter refuses {sorted(IO_URING - allowed)}"
    serve_logs = [p for p in STRACE_LOGS if p.name in ("serve.strace", "cert.strace", "check-config.strace")]
    if serve_logs:
        names_in = seccomp_tool().names_in
        seen = set().union(*(names_in(p) for p in serve_logs))
        missing = sorted(seen - allowed)
        assert not missing, f"SystemCallFilter refuses syscalls the server makes: {missing}"


# --- docker --------------------------------------------------------------------------


@check("docker: build the image and run it with the seccomp profile and limits")
def docker_image() -> None:
    if not shutil.which("docker"):
        raise Skip("docker not installed: image not built")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        raise Skip("docker daemon not available: image not built")
    tag = f"corecast-check-deploy:{os.getpid()}"
    name = f"corecast-check-deploy-{os.getpid()}"
    subprocess.run(["docker", "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)], check=True, timeout=3600)
    try:
        subprocess.run(
            ["docker", "run", "-d", "--name", name, "--security-opt", f"seccomp={PROFILE}",
             "--ulimit", "nofile=65536:65536", "--ulimit", "memlock=-1:-1",
             "-p", "127.0.0.1::8080/tcp", tag],
            check=True, capture_output=True,
        )
        port = int(subprocess.run(["docker", "port", name, "8080/tcp"], capture_output=True, text=True,
                                  check=True).stdout.split(":")[-1])
        deadline = time.monotonic() + 30
        while healthcheck(port, "/healthz").returncode != 0:
            if time.monotonic() > deadline:
                logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
                raise AssertionError(f"/healthz never answered 200: {(logs.stdout + logs.stderr)[-600:]}")
            time.sleep(0.5)
        user = subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True, text=True).stdout.strip()
        assert user not in ("", "0"), f"container runs as uid {user!r}"
        subprocess.run(["docker", "stop", name], check=True, capture_output=True, timeout=30)
        code = subprocess.run(["docker", "inspect", "-f", "{{.State.ExitCode}}", name], capture_output=True, text=True).stdout.strip()
        assert code == "0", f"exit code {code} after docker stop (SIGTERM drain)"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
        subprocess.run(["docker", "rmi", tag], capture_output=True)


def main() -> int:
    print(f"binary: {BIN}")
    try:
        for c in (dockerfile_stages, dockerfile_runtime, dockerfile_runs, dockerignore,
                  seccomp_format, seccomp_strace, seccomp_enforced,
                  compose_structure, compose_config, compose_node_runs,
                  systemd_fields, systemd_verify, docker_image):
            c()
    finally:
        for d in TMPDIRS:
            shutil.rmtree(d, ignore_errors=True)
    print(f"deploy: {RESULTS['ok']} passed, {RESULTS['FAIL']} failed, {RESULTS['skip']} skipped")
    return 1 if RESULTS["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
