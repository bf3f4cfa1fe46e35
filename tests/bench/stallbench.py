"""How long a snapshot of a large store stalls the event loop, with traffic going on.

Builds N conversations x M messages (and a seen-set of S ids) in a `DurableStore`, then runs
`snapshot()` while a 1 ms ticker records how late it wakes (the stall) and a writer commits a
message every 5 ms (commit latency under a snapshot). Then closes and times a restart.

    python -m tests.bench.stallbench [--conversations 10000] [--messages 250] [--seen 0]

Or call `measure(...)` from a benchmark. Not a unit test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.config import ProfileConfig
from bridge.conversations import Conversation, Message
from bridge.ops.logs import configure
from bridge.persistence import layout
from bridge.persistence.keys import encode_key, new_key
from bridge.records import MessageAdded
from bridge.store.durable import DurableStore

TEXT = "some typical text of a customer chat, about this long, with a question or two?"


@dataclass(frozen=True, slots=True)
class StallReport:
    conversations: int
    messages: int
    seen: int
    max_stall_ms: float
    p99_stall_ms: float
    snapshot_s: float
    snapshot_bytes: int
    commits_during: int
    max_commit_ms: float
    load_s: float

    def lines(self) -> list[str]:
        return [
            f"state: {self.conversations:,} conversations x {self.messages} messages, "
            f"{self.seen:,} seen ids",
            f"longest event-loop stall during snapshot: {self.max_stall_ms:.1f} ms "
            f"(p99 {self.p99_stall_ms:.1f} ms)",
            f"snapshot: {self.snapshot_s:.2f} s, {self.snapshot_bytes / 1e6:.0f} MB",
            f"commits during the snapshot: {self.commits_during}, slowest "
            f"{self.max_commit_ms:.1f} ms",
            f"restart (open: read, decrypt, parse, replay): {self.load_s:.2f} s",
        ]


def build_state(store: DurableStore, conversations: int, messages: int, seen: int) -> None:
    """Fill the state directly: committing 2.5 M records one by one would take minutes."""
    now = int(time.time() * 1000)
    state = store.state
    for c in range(conversations):
        key = f"34{c:09d}"
        conv = Conversation(key, messages, now)
        for m in range(messages):
            role = "user" if m % 2 == 0 else "assistant"
            conv.append(
                Message(
                    role,
                    f"{m}/{c}: {TEXT}",
                    now - (messages - m) * 60_000,
                    id=f"wamid.{c}.{m}" if role == "user" else f"out.{c}.{m}",
                    type="text" if role == "user" else None,
                    status=None if role == "user" else "read",
                )
            )
        state.add_conversation(conv)
    state.seen.update({f"wamid.HBgLMzQ2MDAwMDAwMDEVAgASGBQz{i:012d}": now for i in range(seen)})


async def _ticker(done: asyncio.Future[None], late: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not done.done():
        expected = loop.time() + 0.001
        await asyncio.sleep(0.001)
        late.append((loop.time() - expected) * 1000)


async def _traffic(store: DurableStore, done: asyncio.Future[None], took: list[float]) -> None:
    n = 0
    while not done.done():
        n += 1
        message = Message("user", "new", int(time.time() * 1000), id=f"wamid.live.{n}")
        started = time.perf_counter()
        await store.commit([MessageAdded(f"34{n % 100:09d}", message)])
        took.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.005)


async def measure(
    conversations: int = 10_000, messages: int = 250, seen: int = 0, directory: Path | None = None
) -> StallReport:
    """Run the benchmark once, in `directory` (a temporary one by default)."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        profile = ProfileConfig(
            slug="bench", state_dir=Path(tmp) / "bench", key=encode_key(new_key())
        )
        store = DurableStore(profile)
        await store.open()
        build_state(store, conversations, messages, seen)
        gc.collect()
        late: list[float] = []
        took: list[float] = []
        snapshot = asyncio.ensure_future(store.snapshot())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        snapshot.add_done_callback(lambda _: done.set_result(None))
        started = time.perf_counter()
        await asyncio.gather(snapshot, _ticker(done, late), _traffic(store, done, took))
        snapshot_s = time.perf_counter() - started
        size = layout.snapshot_path(profile.state_dir).stat().st_size
        await store.close()
        del store
        gc.collect()
        started = time.perf_counter()
        reopened = DurableStore(profile)
        await reopened.open()
        load_s = time.perf_counter() - started
        await reopened.journal.close()  # no second full snapshot: nothing changed
        reopened._lock.release()
    return StallReport(
        conversations=conversations,
        messages=messages,
        seen=seen,
        max_stall_ms=max(late),
        p99_stall_ms=statistics.quantiles(late, n=100, method="inclusive")[98],
        snapshot_s=snapshot_s,
        snapshot_bytes=size,
        commits_during=len(took),
        max_commit_ms=max(took, default=0.0),
        load_s=load_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=250)
    parser.add_argument("--seen", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="where to write (default: the temp dir)")
    args = parser.parse_args()
    configure("console", "warning")
    report = asyncio.run(measure(args.conversations, args.messages, args.seen, args.dir))
    print("\n".join(report.lines()))


if __name__ == "__main__":
    main()
