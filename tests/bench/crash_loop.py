"""Durability under crashes: load at a steady rate, `kill -9` at a random moment, restart,
repeat; at the end every message that got a 200 must be present exactly once.

Usage: python -m tests.bench.crash_loop [--cycles 20] [--rate 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

from bridge.config import ProfileConfig
from bridge.store.durable import load_state
from tests.bench.webhook_load import free_port, wait_ready
from tests.load import post_text

SECRET = "crash-app-secret"


async def load(port: int, rate: float, stop_after: float, acked: list[str], counter: int) -> int:
    """Post single-message deliveries at `rate`/s for `stop_after` seconds (the process is
    killed meanwhile); append the ids that got a 200."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        loop = asyncio.get_running_loop()
        end = loop.time() + stop_after
        tasks: set[asyncio.Task[None]] = set()

        async def one(n: int) -> None:
            wamid = await post_text(session, port, SECRET, f"crash test {n}", f"3465{n % 500:07d}")
            if wamid:
                acked.append(wamid)

        while loop.time() < end:
            counter += 1
            task = asyncio.create_task(one(counter))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks, return_exceptions=True)
    return counter


async def kill_during_load(
    proc: subprocess.Popen[bytes],
    port: int,
    rate: float,
    kill_at: float,
    acked: list[str],
    counter: int,
) -> int:
    """Load the bridge and SIGKILL it `kill_at` seconds in, mid-traffic."""
    task = asyncio.ensure_future(load(port, rate, kill_at + 0.5, acked, counter))
    await asyncio.sleep(kill_at)
    proc.send_signal(signal.SIGKILL)
    return await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    acked: list[str] = []
    counter = 0
    with tempfile.TemporaryDirectory() as tmp_name:
        var = Path(tmp_name) / "var"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            BRIDGE_APP_SECRET=SECRET,
            BRIDGE_VERIFY_TOKEN="v",
            BRIDGE_VAR_DIR=str(var),
            BRIDGE_PORT=str(port),
            BRIDGE_LOG_LEVEL="warning",
        )
        started = time.monotonic()
        for _ in range(args.cycles):
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "serve"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_ready(port)
            kill_at = random.uniform(0.3, 2.0)
            counter = asyncio.run(kill_during_load(proc, port, args.rate, kill_at, acked, counter))
            proc.wait()
        state = load_state(ProfileConfig(slug="default", state_dir=var / "profiles" / "default"))
        seconds = time.monotonic() - started
    stored = Counter(
        m.id for c in state.conversations.values() for m in c.messages if m.role == "user" and m.id
    )
    present = sum(1 for wamid in acked if stored[wamid] >= 1)
    duplicated = sum(1 for wamid in acked if stored[wamid] > 1)
    rows = [
        ("cycles (load, kill -9 at a random moment, restart)", f"{args.cycles}"),
        ("requests sent", f"{counter}"),
        ("acknowledged (200)", f"{len(acked)}"),
        ("acknowledged and present after restarts", f"{present}"),
        ("present more than once", f"{duplicated}"),
        ("lost", f"{len(acked) - present}"),
        ("duration", f"{seconds:.0f} s"),
    ]
    table = "| measure | count |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")
    if present != len(acked) or duplicated:
        raise SystemExit("FAILED: acknowledged messages lost or duplicated")


if __name__ == "__main__":
    main()
