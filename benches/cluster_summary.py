#!/usr/bin/env python3
"""Summarises benches/cluster.sh output.

  cluster_summary.py OUT        markdown table: medians over runs per scenario and rate
  cluster_summary.py --one DIR  one line for one run (SCENARIO-rRATE-RUN directory)

A run directory holds pub.json (the publishing loadgen), sub-NODE.json (one
listen-only loadgen per node) and cpu.txt (server-side CPU ticks over the window).
"""
import json
import os
import re
import statistics
import sys


def load(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text.splitlines()[-1]) if text else None
    except (OSError, ValueError, IndexError):
        return None


def run_stats(d):
    """The figures of one run, or None if its JSON is missing."""
    pub = load(os.path.join(d, "pub.json"))
    subs = {}
    for name in sorted(os.listdir(d)):
        m = re.fullmatch(r"sub-(\w+)\.json", name)
        if m:
            subs[m.group(1)] = load(os.path.join(d, name))
    if pub is None or not subs or any(v is None for v in subs.values()):
        return None
    cpu = {}
    ticks, window = 100, 1.0
    try:
        with open(os.path.join(d, "cpu.txt")) as f:
            for line in f:
                parts = line.split()
                if parts[0] == "ticks_per_s":
                    ticks, window = int(parts[1]), float(parts[3])
                else:
                    cpu[parts[0]] = int(parts[1])
    except OSError:
        pass
    # Loss against what the publisher counted in the window (each listen-only
    # process only sees the sequence span that reached it before its drain ended).
    expected = sum(pub["published"] * s["subscribers_at_window_start"] for s in subs.values())
    lost = max(0, expected - sum(s["deliveries"] for s in subs.values()))
    fpw = [s["server"]["frames_per_write"] for s in subs.values() if s.get("server")]
    return {
        "published": pub["published"],
        "published_seen": {n: s["published"] for n, s in subs.items()},
        "subscribers": sum(s["subscribers_at_window_start"] for s in subs.values()),
        "deliveries_per_sec": sum(s["deliveries_per_sec"] for s in subs.values()),
        "p50": {n: s["latency_us"]["p50"] for n, s in subs.items()},
        "p99": {n: s["latency_us"]["p99"] for n, s in subs.items()},
        "max": {n: s["latency_us"]["max"] for n, s in subs.items()},
        "expected": expected,
        "lost": lost,
        "loss": lost / expected if expected else 0.0,
        "gaps": sum(s["gaps"] for s in subs.values()),
        "start_late_s": max(s.get("start_late_s", 0) for s in subs.values()),
        "failed": sum(s["connected"]["failed"] for s in subs.values()),
        "frames_per_write": statistics.median(fpw) if fpw else None,
        "cpu": {k: 100.0 * v / ticks / window for k, v in cpu.items()},
    }


def ms(us):
    return "-" if us is None else f"{us / 1000:.1f}"


def one_line(d):
    r = run_stats(d)
    name = os.path.basename(d.rstrip("/"))
    if r is None:
        return f"{name}: incomplete (see the .err files in {d})"
    return (
        f"{name}: {r['subscribers']} subs, published {r['published']} (seen "
        f"{'/'.join(str(v) for v in r['published_seen'].values())}), "
        f"{r['deliveries_per_sec']:.0f} deliveries/s (window messages received "
        f"by the end of the drain), p50 "
        f"{'/'.join(ms(v) for v in r['p50'].values())} ms, p99 "
        f"{'/'.join(ms(v) for v in r['p99'].values())} ms, undelivered {r['loss']:.2%}, "
        f"frames/write {r['frames_per_write']}, cpu "
        + ", ".join(f"{k} {v:.0f}%" for k, v in r["cpu"].items())
        + (f", ramp late {r['start_late_s']}s" if r["start_late_s"] else "")
        + (f", {r['failed']} connects failed" if r["failed"] else "")
    )


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summary(out):
    groups = {}
    for name in sorted(os.listdir(out)):
        m = re.fullmatch(r"(.+)-r([\d.]+)-(\d+)", name)
        if not m or not os.path.isdir(os.path.join(out, name)):
            continue
        r = run_stats(os.path.join(out, name))
        if r is not None:
            groups.setdefault((m.group(1), float(m.group(2))), []).append(r)
    order = {"single": 0, "single-redis": 1, "cluster": 2}
    lines = [
        "| scenario | msg/s | subscribers | deliveries/s | p50 ms (per node) | p99 ms (per node) "
        "| not delivered by drain end | frames/write | server CPU % (nodes; redis) "
        "| loadgen CPU % | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (scen, rate), runs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        nodes = list(runs[0]["p99"].keys())
        p50 = "/".join(ms(med(r["p50"][n] for r in runs)) for n in nodes)
        p99 = "/".join(ms(med(r["p99"][n] for r in runs)) for n in nodes)
        cpu_keys = list(runs[0]["cpu"].keys())
        node_cpu = "/".join(
            f"{med(r['cpu'].get(k) for r in runs):.0f}" for k in cpu_keys if k.startswith("node-")
        )
        redis = med(r["cpu"].get("redis") for r in runs)
        cpu = node_cpu + (f"; {redis:.0f}" if redis is not None else "")
        lg = med(r["cpu"].get("loadgens") for r in runs)
        lost = sum(r["lost"] for r in runs)
        expected = sum(r["expected"] for r in runs)
        fpw = med(r["frames_per_write"] for r in runs)
        lines.append(
            f"| {scen} | {rate:g} | {med(r['subscribers'] for r in runs):,.0f} "
            f"| {med(r['deliveries_per_sec'] for r in runs):,.0f} | {p50} | {p99} "
            f"| {lost / expected if expected else 0:.3%} | {fpw if fpw is not None else '-'} "
            f"| {cpu} | {'-' if lg is None else f'{lg:.0f}'} | {len(runs)} |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) == 3 and argv[1] == "--one":
        print(one_line(argv[2]))
    elif len(argv) == 2:
        print(summary(argv[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
