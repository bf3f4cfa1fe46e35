"""Webhook latency while a snapshot of a large state runs, against the same load without one.

The bridge starts on a prepared profile of N conversations x M messages (10,000 x 250 by
default: 2.5 million messages). Two server runs on the same data and the same wrk load
(signed deliveries with unique ids over 1,000 phones, as in webhook_load; server on core 0,
wrk on core 1):

- baseline: the snapshot interval is an hour, so no snapshot runs during the window;
- snapshotting: the interval is one second, so APScheduler (coalesce, one at a time) starts
  the next snapshot as soon as the previous one ends and the whole window is covered.

Reported per run: requests/s, p50, p99 and max latency, the longest event-loop stall (the
bridge's own /metrics loop watch) and how many snapshots finished in the window (a snapshot
of 2.5 million messages under this load takes several seconds, hence a 20 s window). Two runs
rather than one run with a snapshot in the middle, so that neither window mixes both cases;
the snapshot thread shares core 0 with the event loop, as it would on a one-core host.

Usage: python -m tests.bench.load_during_snapshot [--conversations N] [--messages M]
       [--seconds S] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from bridge.config import ProfileConfig
from bridge.ops.logs import configure
from bridge.store.durable import DurableStore
from tests.bench.stallbench import build_state
from tests.bench.webhook_load import LUA, SECRET, free_port, run_wrk, write_deliveries
from tests.load import publish


async def prepare(var: Path, conversations: int, messages: int) -> None:
    """A profile directory as `bridge serve` finds it: key file, snapshot, empty journal."""
    store = DurableStore(ProfileConfig(slug="default", state_dir=var / "profiles" / "default"))
    await store.open()
    build_state(store, conversations, messages, seen=0)
    await store.close()  # writes the snapshot


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        found = re.match(r"(whatsapp_bridge_[a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if found:
            out[found.group(1) + (found.group(2) or "")] = float(found.group(3))
    return out


def wait_ready(port: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"bridge on {port} was not ready after {timeout:.0f} s")


def window_max_lag(before: dict[str, float], after: dict[str, float]) -> tuple[float, bool]:
    """The longest stall inside the window in seconds, and whether it is exact.

    Exact when the max gauge rose during the window; otherwise an upper bound: the smallest
    histogram bucket that holds every sample of the window (buckets are cumulative)."""
    name = "whatsapp_bridge_event_loop_lag_max_seconds"
    if after[name] > before[name]:
        return after[name], True
    count = "whatsapp_bridge_event_loop_lag_seconds_count"
    total = after[count] - before[count]
    prefix = 'whatsapp_bridge_event_loop_lag_seconds_bucket{le="'
    bounds = sorted(
        float(key[len(prefix) : -2])
        for key, value in after.items()
        if key.startswith(prefix) and value - before.get(key, 0.0) >= total
    )
    return (bounds[0] if bounds else after[name]), False


def run(
    var: Path, interval: float, scripts: tuple[Path, Path], seconds: int, log: Path
) -> dict[str, float]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env |= {
        "BRIDGE_APP_SECRET": SECRET,
        "BRIDGE_VERIFY_TOKEN": "v",
        "BRIDGE_VAR_DIR": str(var),
        "BRIDGE_PORT": str(port),
        "BRIDGE_LOG_FORMAT": "json",
        "BRIDGE_SNAPSHOT_INTERVAL": str(interval),
        "BRIDGE_REPLY_DEBOUNCE_SECONDS": "0",
        # Every stall over 15 ms logged with where it was spent (bridge/ops/stalltrace.py).
        "BRIDGE_STALL_LOG_MS": str(STALL_LOG_MS),
    }
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "bridge", "serve"]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=fh)
    try:
        wait_ready(port)
        run_wrk(port, scripts[0], 3, 32)  # warm-up, its own deliveries
        before = scrape(port)
        window = time.time()
        result = run_wrk(port, scripts[1], seconds, 32)
        result["from"], result["to"] = window, time.time()
        after = scrape(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
    snaps = 'whatsapp_bridge_snapshot_seconds_count{profile="default"}'
    lag, exact = window_max_lag(before, after)
    result["stall_ms"] = lag * 1000
    result["stall_exact"] = float(exact)
    result["snapshots"] = after.get(snaps, 0.0) - before.get(snaps, 0.0)
    # Since start (warm-up included): the part of the longest stall the process was running.
    result["cpu_stall_ms"] = after.get("whatsapp_bridge_event_loop_lag_cpu_max_seconds", 0) * 1000
    gc_pause = 'whatsapp_bridge_gc_pause_max_seconds{generation="%d"}'
    result["gc_ms"] = max(after.get(gc_pause % g, 0.0) for g in range(3)) * 1000
    return result


STALL_LOG_MS = 15


def stalls(log: Path, result: dict[str, float], top: int = 5) -> list[str]:
    """The longest stalls the bridge logged in the measured window, as markdown lines:
    length, time on CPU, and the innermost frames the loop was in (or the busy threads')."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if '"event_loop_stalled"' not in line:
            continue
        event = json.loads(line)
        at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        if result["from"] <= at <= result["to"]:
            found.append(event)
    found.sort(key=lambda e: -float(e["loop_cpu_ms"]))
    out = [f"{len(found)} stalls over {STALL_LOG_MS} ms logged in the window"]
    if found:
        out[0] += "; the longest by the loop thread's own CPU:"
    for event in found[:top]:
        where = event["loop"][:2] or ["(one C call: no frame seen)"]
        busy = ", ".join(f"{name}: {frames[0]}" for name, frames in event["busy"].items() if frames)
        out.append(
            f"- {event['ms']} ms (the loop's thread ran {event['loop_cpu_ms']}, the process "
            f"{event['cpu_ms']}; collections: "
            f"{', '.join(event['collections']) or 'none'}): loop in {' < '.join(where)}"
            + (f"; busy: {busy}" if busy else "")
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=250)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    configure("console", "warning")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        scripts = []
        for part, count in (("warm-up", 20_000), ("measured", 80_000)):
            (tmp / part).mkdir()
            bodies, sigs = write_deliveries(tmp / part, count)
            script = tmp / f"{part}.lua"
            script.write_text(LUA % {"bodies": bodies, "sigs": sigs})
            scripts.append(script)
        started = time.monotonic()
        asyncio.run(prepare(tmp / "var", args.conversations, args.messages))
        print(f"state prepared in {time.monotonic() - started:.0f} s", file=sys.stderr)
        pair = (scripts[0], scripts[1])
        # Same prepared data for both runs (the first run's messages are added to it).
        quiet = run(tmp / "var", 3600, pair, args.seconds, tmp / "quiet.log")
        busy = run(tmp / "var", 1, pair, args.seconds, tmp / "busy.log")
        quiet_stalls = stalls(tmp / "quiet.log", quiet)
        busy_stalls = stalls(tmp / "busy.log", busy)
    state = f"{args.conversations:,} conversations x {args.messages} messages"
    lines = [
        f"{state}; wrk -t1 -c32 -d{args.seconds}s, server on core 0, wrk on core 1",
        "",
        "| window | requests/s | p50 ms | p99 ms | max ms | longest loop stall ms "
        "| of which on CPU, ms | longest collection ms | snapshots in window |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in (("no snapshot", quiet), ("snapshots back to back", busy)):
        lines.append(
            f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.1f} "
            f"| {'' if r['stall_exact'] else '≤ '}{r['stall_ms']:.1f} | {r['cpu_stall_ms']:.1f} "
            f"| {r['gc_ms']:.1f} | {r['snapshots']:.0f} |"
        )
    lines.append(f"| **p99 ratio** | | | **{busy['p99'] / quiet['p99']:.2f}x** | | | | | |")
    for name, found in (("no snapshot", quiet_stalls), ("snapshots back to back", busy_stalls)):
        lines += ["", f"**{name}**: " + found[0], *found[1:]]
    table = "\n".join(lines)
    publish(table, args.out)


if __name__ == "__main__":
    main()
