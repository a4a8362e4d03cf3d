#!/usr/bin/env python3
"""Run the Autobahn WebSocket testsuite cases (via kosoku) against corecast's
/ws/echo endpoint and compare the verdicts with tests/autobahn/expected.json.

Usage (normally through tests/autobahn/run.sh):
    autobahn.py [--cases GLOB ...] [--exclude GLOB ...] [--update] [--parallelism N]

Fails (exit 1) when any case is FAILED/ERROR/UNCLEAN/WRONG CODE, differs from
its expected verdict, has no expectation, or was expected but did not run.
--update rewrites expected.json from this run (review the diff before
committing; FAILED cases are never written as expected).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

from corecast_harness import Server  # noqa: E402

EXPECTED = HERE / "expected.json"
REPORTS = ROOT / "reports" / "autobahn"
# Autobahn's case groups 1-13 (there are no groups 8 and 11; kosoku rejects a
# glob that matches nothing).
ALL_CASES = [f"{n}.*" for n in (1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 13)]
# With compression off the server declines permessage-deflate, so the 12.*/13.*
# cases (which need it) would only report UNIMPLEMENTED: that run covers 1-10.
NO_COMPRESSION_CASES = [g for g in ALL_CASES if g not in ("12.*", "13.*")]

# Strict mode: every verdict must be one of these, or be explained in
# expected.json's "explained" map (case id -> why).
STRICT_OK = {"OK", "INFORMATIONAL"}

# Verdicts that are never acceptable, whatever expected.json says.
BAD_BEHAVIOR = {"FAILED", "ERROR"}
BAD_CLOSE = {"FAILED", "FAILED BY CLIENT", "UNCLEAN", "WRONG CODE", "NO_CLOSE"}


def case_key(case_id: str) -> list[int]:
    return [int(p) for p in case_id.split(".")]


def selected(case_id: str, include: list[str], exclude: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(case_id, g) for g in include) and not any(
        fnmatch.fnmatchcase(case_id, g) for g in exclude
    )


def dump_expected(doc: dict) -> str:
    """expected.json text: one line per case, so diffs stay readable."""
    lines = ["{"]
    for key, value in doc.items():
        if key != "cases":
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)},")
    lines.append('  "cases": {')
    items = list(doc.get("cases", {}).items())
    for i, (cid, verdict) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        lines.append(f"    {json.dumps(cid)}: {json.dumps(verdict, sort_keys=True)}{comma}")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def kosoku_cmd() -> list[str]:
    """kosoku's CLI, through the small Python 3 compatibility wrapper."""
    return [sys.executable, str(HERE / "kosoku_compat.py")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", action="append", help="case id/glob to run (default: 1.* .. 13.*)")
    ap.add_argument("--exclude", action="append", default=[], help="case id/glob to skip")
    ap.add_argument("--update", action="store_true", help="rewrite expected.json from this run")
    ap.add_argument("--parallelism", type=int, default=2, help="kosoku cases in parallel")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--outdir", default=None, help="default: reports/autobahn[-nocompression]")
    ap.add_argument("--compression", choices=("on", "off"), default="on",
                    help="websocket.enable_compression of the server under test")
    args = ap.parse_args()
    compression = args.compression == "on"
    include = args.cases or (ALL_CASES if compression else NO_COMPRESSION_CASES)
    outdir = Path(args.outdir or (REPORTS if compression else REPORTS.with_name("autobahn-nocompression")))
    outdir.mkdir(parents=True, exist_ok=True)
    index_path = outdir / "index.json"
    if index_path.exists():
        index_path.unlink()

    # The server under test: default config with compression on (12.*/13.*) or
    # off, and limits large enough for the 9.* cases (16 MiB messages).
    big = str(64 * 1024 * 1024)
    overrides = {
        "websocket__enable_compression": "true" if compression else "false",
        "websocket__max_message_size": big,
        "websocket__max_frame_size": big,
        "websocket__outbound_queue_bytes": big,
    }
    cmd_tail = []
    for g in include:
        cmd_tail += ["-i", g]
    for g in args.exclude:
        cmd_tail += ["-x", g]
    started = time.monotonic()
    with Server(shards=args.shards, **overrides) as server:
        url = server.url("/ws/echo")
        cmd = [*kosoku_cmd(), *cmd_tail, "-p", str(args.parallelism), "-o", str(outdir), url]
        print("autobahn: " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        alive = server.proc is not None and server.proc.poll() is None
        server_output = "".join(server.output)
    elapsed = time.monotonic() - started
    (outdir / "kosoku.log").write_text(proc.stdout + proc.stderr)
    (outdir / "server.log").write_text(server_output)
    print(f"autobahn (compression {args.compression}): kosoku exited {proc.returncode} after {elapsed:.1f}s; reports in {outdir}/")
    if not alive:
        print("autobahn: FAIL: the server died during the run; its output:\n" + server_output[-4000:])
        return 1
    if proc.returncode not in (0, 1) or not index_path.exists():
        print("autobahn: FAIL: kosoku did not produce a report:\n" + proc.stdout[-4000:] + proc.stderr[-4000:])
        return 1

    index = json.loads(index_path.read_text())
    results: dict[str, dict] = {}
    for agent_cases in index.values():
        results.update(agent_cases)
    got = {
        cid: {"behavior": r["behavior"], "behaviorClose": r["behaviorClose"]}
        for cid, r in sorted(results.items(), key=lambda kv: case_key(kv[0]))
    }

    expected_doc = json.loads(EXPECTED.read_text()) if EXPECTED.exists() else {"cases": {}}
    expected: dict[str, dict] = expected_doc.get("cases", {})

    problems: list[str] = []
    for cid, r in got.items():
        if r["behavior"] in BAD_BEHAVIOR or r["behaviorClose"] in BAD_CLOSE:
            rep = results[cid].get("reportfile", "")
            problems.append(
                f"  {cid:10} FAILED: behavior={r['behavior']} close={r['behaviorClose']} "
                f"(remote close code {results[cid].get('remoteCloseCode')}; {outdir / rep})"
            )
    if args.update:
        if problems:
            print("autobahn: refusing to record FAILED cases as expected:")
            print("\n".join(problems))
            return 1
        for cid, r in got.items():
            old = expected.get(cid)
            if old != r:
                was = f"{old['behavior']}/{old['behaviorClose']}" if old else "(none)"
                print(f"  {cid:10} {was} -> {r['behavior']}/{r['behaviorClose']}")
        merged = dict(expected)
        merged.update(got)
        expected_doc["cases"] = dict(sorted(merged.items(), key=lambda kv: case_key(kv[0])))
        EXPECTED.write_text(dump_expected(expected_doc))
        print(f"autobahn: wrote {len(got)} verdicts to {EXPECTED}")
        return 0

    explained: dict[str, str] = expected_doc.get("explained", {})
    for cid, r in got.items():
        if (r["behavior"] not in STRICT_OK or r["behaviorClose"] not in STRICT_OK) and cid not in explained:
            problems.append(
                f"  {cid:10} not strict: {r['behavior']}/{r['behaviorClose']} "
                "(only OK/INFORMATIONAL, or an entry in expected.json's \"explained\")"
            )
    for cid, r in got.items():
        want = expected.get(cid)
        if want is None:
            problems.append(f"  {cid:10} no expectation in expected.json (got {r['behavior']}/{r['behaviorClose']})")
        elif want != r:
            problems.append(
                f"  {cid:10} expected {want['behavior']}/{want['behaviorClose']}, "
                f"got {r['behavior']}/{r['behaviorClose']}"
            )
    missing = [
        cid for cid in expected
        if selected(cid, include, args.exclude) and cid not in got
    ]
    for cid in sorted(missing, key=case_key):
        problems.append(f"  {cid:10} expected but not run")

    counts: dict[str, int] = {}
    for r in got.values():
        counts[r["behavior"]] = counts.get(r["behavior"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    slow = sorted(results.items(), key=lambda kv: -kv[1].get("duration", 0))[:5]
    print("autobahn: slowest cases: " + ", ".join(f"{c} {r.get('duration', 0)}ms" for c, r in slow))
    failed_ids = {p.split()[0] for p in problems}
    if problems:
        print(f"autobahn: {len(problems)} case(s) differ from tests/autobahn/expected.json "
              "(expected -> actual):")
        print("\n".join(problems))
        print(f"autobahn: {len(set(got) - failed_ids)} passed, {len(failed_ids)} failed")
        return 1
    print(f"autobahn: all {len(got)} cases as expected, strict, compression {args.compression} ({summary})")
    print(f"autobahn: {len(got)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
