"""Where a message's CPU goes inside the bridge, without HTTP on either side.

The webhook benchmark (webhook_load.py) measures the whole path through sockets; this one
takes the sockets away and adds the bridge's own steps one at a time, each run on a fresh
profile with the durable store (encrypted journal, fsync) and the echo assistant:

1. parse: the signed body decoded into messages (verify is 2 µs and left out);
2. acknowledge: + the message deduplicated and committed (the journal record, fsynced),
   i.e. everything before the 200;
3. reply: + the echo reply produced and committed with its outbox item, and the outbox's
   worker up to the send (the sender never answers, so no outcome is recorded);
4. send: + the send (a sender that answers at once, no HTTP) and its outcome committed.

The difference between two rows is what that step costs; what webhook_load.py measures on
top of row 4 is HTTP in and out, the kernel's sockets and the two log lines' writer thread.
Each row is the median of `--rounds` runs, interleaved; CPU is the process's user and system
time (from /proc), so another busy core matters less than for wall-clock figures.

Usage: python -m tests.bench.core_cost [--messages 8000] [--rounds 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import uvloop

from bridge import simulate
from bridge.ops import logs
from bridge.runtime import ProfileRuntime, durable_store
from bridge.whatsapp.parse import parse_body
from bridge.whatsapp.sender import Sender
from tests.conftest import make_profile
from tests.load import publish

STAGES = ("parse", "acknowledge", "reply", "send")
CONCURRENCY = 32  # deliveries in flight, as wrk's connections in webhook_load.py


class InstantSender(Sender):
    """Every text send succeeds at once with a new wamid; with `hold`, none ever returns."""

    def __init__(self, hold: bool) -> None:
        self._hold = hold
        self._count = 0

    async def send_text(
        self, to: str, text: str, skip_parts: int = 0, tag: str | None = None
    ) -> list[str]:
        if self._hold:
            await asyncio.Event().wait()
        self._count += 1
        return [f"wamid.CORE{self._count}"]


def bodies(count: int, run: int) -> list[bytes]:
    """One text message per delivery, each from a phone of its own (as webhook_load.py)."""
    return [
        simulate.encode(
            simulate.simulated_text(
                f"hello {n}", f"34{run:02d}{n:07d}", f"ES.{run:04d}{n:016d}", "100000000000001"
            )
        )
        for n in range(count)
    ]


async def run_stage(stage: str, raws: list[bytes], directory: Path) -> float:
    """CPU µs per message for `stage` (see the module docstring)."""
    sender = InstantSender(hold=stage == "reply")
    config = make_profile(directory, read_receipts=False)
    runtime = ProfileRuntime.build(config, store_factory=durable_store, sender=sender)
    await runtime.start()
    logs.batch_on(asyncio.get_running_loop())  # as the server: lines handed over per turn
    gate = asyncio.Semaphore(CONCURRENCY)

    async def deliver(raw: bytes) -> None:
        async with gate:
            delivery = parse_body(raw)
            if stage == "parse":
                return
            change = delivery.changes[0]
            result = await runtime.ingestor.ingest(change.messages, change.statuses)
            if stage != "acknowledge":
                runtime.acknowledged(result)

    def settled() -> bool:
        state = runtime.store.state
        if stage == "reply":
            return not runtime.replier.busy and len(state.outbox) == len(raws)
        return stage != "send" or (not runtime.replier.busy and not state.outbox)

    started = time.process_time()
    await asyncio.gather(*(deliver(raw) for raw in raws))
    while not settled():
        await asyncio.sleep(0.001)
    spent = time.process_time() - started
    await runtime.stop(0.5)
    if stage != "parse" and len(runtime.store.state.conversations) != len(raws):
        raise SystemExit(f"{stage}: not every message was recorded")
    return spent / len(raws) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    # The server's logging: JSON at info, written by a thread (here to /dev/null).
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    logs.configure("json", "info", devnull, cache=True, background=True)
    results: dict[str, list[float]] = {stage: [] for stage in STAGES}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for stage in STAGES:
                raws = bodies(args.messages, len(results[stage]) + round_ * len(STAGES))
                directory = Path(tmp) / f"{stage}-{round_}"
                us = uvloop.run(run_stage(stage, raws, directory))
                results[stage].append(us)
                print(f"round {round_ + 1} {stage:12} {us:6.1f} µs CPU/message", flush=True)
    lines = [
        f"{args.messages} text messages per run, {CONCURRENCY} at a time, durable store, echo "
        f"assistant, no HTTP; median of {args.rounds} rounds",
        "",
        "| up to | µs CPU per message | this step |",
        "|---|---|---|",
    ]
    before = 0.0
    for stage in STAGES:
        us = statistics.median(results[stage])
        lines.append(f"| {stage} | {us:.0f} | +{us - before:.0f} |")
        before = us
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
