"""What the reply debounce buys and costs, side by side on the same burst pattern.

Users write the way people do on WhatsApp: most send one message, many send two to four in
a row, 0.3 to 1.5 s apart. The same pattern goes to a real `bridge serve` with the debounce
off (a reply per message, as before) and on (the default 2 s, max 8 s); replies go to a
local fake Graph API that notes when each arrives. Reported per run: assistant calls (one
per reply), calls per message, and the latency from a user's last message to the reply
that answers it (median, p90, max).

Usage: python -m tests.bench.bursts [--users 120] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from tests.bench.webhook_load import free_port, wait_ready
from tests.fakes.graph import TOKEN, FakeGraph
from tests.fakes.threaded import serve_in_thread
from tests.load import post_text, publish, start_bridge_quietly

SECRET = "bursts-app-secret"
SIZES = (1, 1, 1, 1, 2, 2, 2, 3, 3, 4)  # messages per burst: 40% one, 30% two, ...


def pattern(users: int, seed: int = 7) -> list[tuple[float, str, str]]:
    """(seconds from start, phone, text) for every message, sorted by time."""
    rng = random.Random(seed)
    out = []
    for n in range(users):
        phone = f"3468{n:07d}"
        at = rng.uniform(0, 5)
        for k in range(rng.choice(SIZES)):
            out.append((at, phone, f"u{n} m{k}"))
            at += rng.uniform(0.3, 1.5)
    return sorted(out)


async def play(port: int, messages: Sequence[tuple[float, str, str]]) -> dict[str, float]:
    """Post the pattern on time; returns the monotonic post time of each text."""
    posted: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        start = time.monotonic()
        tasks = []
        for at, phone, text in messages:
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            posted[text] = time.monotonic()
            tasks.append(asyncio.create_task(post_text(session, port, SECRET, text, phone)))
        acked = await asyncio.gather(*tasks)
    assert all(acked), "a delivery was not acknowledged"
    return posted


def run(debounce: str, messages: Sequence[tuple[float, str, str]], tmp: Path) -> dict[str, float]:
    graph = FakeGraph()
    with serve_in_thread(graph.app()) as graph_url:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            BRIDGE_APP_SECRET=SECRET,
            BRIDGE_VERIFY_TOKEN="v",
            BRIDGE_VAR_DIR=str(tmp / f"var-{debounce}"),
            BRIDGE_PORT=str(port),
            BRIDGE_LOG_LEVEL="warning",
            BRIDGE_ACCESS_TOKEN=TOKEN,
            BRIDGE_PHONE_NUMBER_ID="100000000000001",
            BRIDGE_GRAPH_URL=graph_url,
            BRIDGE_REPLY_DEBOUNCE_SECONDS=debounce,
        )
        proc = start_bridge_quietly(env)
        try:
            wait_ready(port)
            posted = asyncio.run(play(port, messages))
            last = {}  # phone -> its burst's last text
            for _at, phone, text in messages:
                last[phone] = text
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                bodies = [m["text"]["body"] for m in graph.sent]
                if all(any(t in b for b in bodies) for t in last.values()):
                    break
                time.sleep(0.2)
            arrivals = list(zip(graph.arrivals, graph.sent, strict=False))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    latencies = []
    for text in last.values():
        answered = [at for at, body in arrivals if text in body["text"]["body"]]
        latencies.append(min(answered) - posted[text])
    latencies.sort()
    return {
        "messages": len(messages),
        "users": len(last),
        "calls": len(graph.sent),
        "p50": statistics.median(latencies),
        "p90": latencies[int(len(latencies) * 0.9) - 1],
        "max": latencies[-1],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    messages = pattern(args.users)
    with tempfile.TemporaryDirectory() as tmp_name:
        off = run("0", messages, Path(tmp_name))
        on = run("2", messages, Path(tmp_name))
    rows = [
        ("messages (users)", f"{off['messages']:.0f} ({off['users']:.0f})", "same"),
        ("assistant calls = replies", f"{off['calls']:.0f}", f"{on['calls']:.0f}"),
        (
            "calls per message",
            f"{off['calls'] / off['messages']:.2f}",
            f"{on['calls'] / on['messages']:.2f}",
        ),
        *(
            (f"last message → its reply, {k}", f"{off[k]:.2f} s", f"{on[k]:.2f} s")
            for k in ("p50", "p90", "max")
        ),
    ]
    table = "| measure | debounce off | debounce 2 s (max 8 s) |\n|---|---|---|\n" + "\n".join(
        f"| {a} | {b} | {c} |" for a, b, c in rows
    )
    publish(table, args.out)


if __name__ == "__main__":
    main()
