"""Snapshot and start-up of a large store, and how long the event loop stalls meanwhile.

Builds 10,000 conversations x 250 messages in memory, then measures, in one run:
- the longest event-loop stall while `DurableStore.snapshot()` runs (a 1 ms ticker records
  how late it wakes up), the snapshot's duration and size;
- the floor for the same data: orjson.dumps + one AES-GCM encrypt + write + fsync;
- start-up (`DurableStore.open()`: read, decrypt, parse, rebuild) against its floor:
  read + decrypt + orjson.loads;
- a snapshot of the store as loaded (conversations untouched since the start), and again
  after a new message in every tenth conversation;
- RSS growth of opening the store in a fresh interpreter (what a restarted bridge holds), and
  of the state as built in memory, against a plain list of dicts of the same messages;
- the snapshot's size against its JSON (zstd before encryption).

CPU seconds (all threads) are shown beside the wall times: on a shared machine they say
more about a change than the wall time, which other processes stretch.

With `--chat` the messages are realistic Spanish/English chats (tests/chattext.py: varied
text, Meta-like random ids) instead of one repeated sentence; the RSS comparison is then
left out (the plain list would need the same text).

Usage: python -m tests.bench.snapshot_stall [--conversations N] [--messages M] [--chat]
       [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bridge.config import ProfileConfig
from bridge.conversations import Conversation, Message
from bridge.ops.logs import configure
from bridge.records import MessageAdded
from bridge.store.durable import DurableStore
from tests import chattext


def build(store: DurableStore, conversations: int, messages: int, chat: bool = False) -> None:
    now = int(time.time() * 1000)
    state = store.state
    if chat:
        rnd = random.Random(15)
        for c in range(conversations):
            conv = chattext.conversation(c, messages, now, rnd)
            conv.seq = c + 1
            state.add_conversation(conv)
        return
    for c in range(conversations):
        key = f"34{c:09d}"
        conv = Conversation(key, 250, now)
        for m in range(messages):
            role = "user" if m % 2 == 0 else "assistant"
            conv.append(
                Message(
                    role,
                    f"message {m} of conversation {c}: some typical text of a customer chat",
                    now - (messages - m) * 1000,
                    id=f"wamid.{c}.{m}" if role == "user" else f"out.{c}.{m}",
                    type="text" if role == "user" else None,
                    status=None if role == "user" else "read",
                )
            )
        conv.seq = c + 1
        state.add_conversation(conv)


CPU_LATE: list[float] = []  # per tick: the part of the lateness the process was running


async def stalls_during(work: asyncio.Future[object] | asyncio.Task[object]) -> list[float]:
    """Lateness (ms) of a 1 ms ticker until `work` is done; `CPU_LATE` gets the same counted
    only while this process was on a CPU (a shared machine also delays us by running others)."""
    late: list[float] = []
    CPU_LATE.clear()
    loop = asyncio.get_running_loop()
    while not work.done():
        expected = loop.time() + 0.001
        cpu = time.process_time()
        await asyncio.sleep(0.001)
        lateness = (loop.time() - expected) * 1000
        late.append(lateness)
        CPU_LATE.append(min(lateness, (time.process_time() - cpu) * 1000))
    return late


PLAIN = """
import sys, time
def rss_kb():  # current RSS: ru_maxrss would start at the parent's peak (kept across exec)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
conversations, messages = int(sys.argv[1]), int(sys.argv[2])
before = rss_kb()
now = int(time.time() * 1000)
plain = []
for c in range(conversations):
    for m in range(messages):
        user = m % 2 == 0
        plain.append({
            "role": "user" if user else "assistant",
            "content": f"message {m} of conversation {c}: some typical text of a customer chat",
            "timestamp": now - (messages - m) * 1000,
            "id": f"wamid.{c}.{m}" if user else f"out.{c}.{m}",
            "type": "text" if user else None,
            "status": None if user else "read",
        })
print((rss_kb() - before) / 1024)
"""


def plain_rss_mb(conversations: int, messages: int) -> float:
    """RSS growth of the same messages as one plain list of dicts, in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", PLAIN, str(conversations), str(messages)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out)


LOADED = """
import asyncio, gc, sys
from dataclasses import dataclass
from pathlib import Path
from bridge.config import ProfileConfig
from bridge.ops.logs import configure
from bridge.records import MessageAdded
from bridge.store.durable import DurableStore
def rss_kb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
async def main():
    configure("console", "warning")
    profile = ProfileConfig(slug="bench", state_dir=Path(sys.argv[1]))
    store = DurableStore(profile)
    before = rss_kb()
    await store.open()
    gc.collect()
    print((rss_kb() - before) / 1024)
    await store.close()
asyncio.run(main())
"""


def loaded_rss_mb(profile: ProfileConfig) -> float:
    """RSS growth of opening the store in a fresh interpreter: what a restarted bridge holds."""
    out = subprocess.run(
        [sys.executable, "-c", LOADED, str(profile.state_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


@dataclass
class Timed:
    seconds: float
    cpu: float
    longest_stall_ms: float
    size: int
    cpu_stall_ms: float

    def row(self) -> str:
        return (
            f"{self.seconds:.2f} s ({self.cpu:.2f} s CPU), {self.size / 1e6:.1f} MB; "
            f"longest stall {self.longest_stall_ms:.1f} ms ({self.cpu_stall_ms:.1f} on CPU)"
        )


async def timed_snapshot(store: DurableStore) -> Timed:
    started = time.perf_counter()
    cpu_started = time.process_time()
    task = asyncio.ensure_future(store.snapshot())
    late = await stalls_during(task)
    await task
    size = (store.profile.state_dir / "snapshot.wab").stat().st_size
    return Timed(
        time.perf_counter() - started,
        time.process_time() - cpu_started,
        max(late),
        size,
        max(CPU_LATE),
    )


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(conversations: int, messages: int, out: Path | None, chat: bool = False) -> None:
    configure("console", "warning")
    with tempfile.TemporaryDirectory() as tmp:
        profile = ProfileConfig(slug="bench", state_dir=Path(tmp) / "profiles" / "bench")
        store = DurableStore(profile)
        await store.open()
        rss_before = rss_mb()
        build(store, conversations, messages, chat)
        gc.collect()
        rss_loaded = rss_mb()
        total = store.state.message_count()

        started = time.perf_counter()
        cpu_started = time.process_time()
        task = asyncio.ensure_future(store.snapshot())
        late = await stalls_during(task)
        first_cpu_stall = max(CPU_LATE)
        await task
        snapshot_s = time.perf_counter() - started
        snapshot_cpu = time.process_time() - cpu_started
        size = (profile.state_dir / "snapshot.wab").stat().st_size

        # Floor, same data: one dumps, one encrypt, one write + fsync.
        dump = [[k, c.to_seed()] for k, c in store.state.conversations.items()]
        key = AESGCM(os.urandom(32))
        nonce = os.urandom(12)
        floor_path = Path(tmp) / "floor.bin"
        started = time.perf_counter()
        plain = orjson.dumps([[k, c.to_seed()] for k, c in store.state.conversations.items()])
        sealed = key.encrypt(nonce, plain, b"")
        with floor_path.open("wb") as fh:
            fh.write(sealed)
            fh.flush()
            os.fsync(fh.fileno())
        floor_save_s = time.perf_counter() - started
        json_bytes = len(plain)
        started = time.perf_counter()
        orjson.loads(key.decrypt(nonce, floor_path.read_bytes(), b""))
        floor_load_s = time.perf_counter() - started
        await store.close()
        del store, dump, plain, sealed
        # The built state goes when the last callback holding the closed store has run:
        # let that happen now, not inside the next measurement (2.5 M objects: 0.3 s).
        await asyncio.sleep(0.1)
        gc.collect()

        started = time.perf_counter()
        cpu_started = time.process_time()
        reopened = DurableStore(profile)
        await reopened.open()
        load_s = time.perf_counter() - started
        load_cpu = time.process_time() - cpu_started
        assert reopened.state.message_count() == total

        # The loaded store as a running bridge has it: most conversations untouched since
        # the start. A snapshot of it as it is, then after a new message in every tenth.
        cold_snapshot = await timed_snapshot(reopened)
        now = int(time.time() * 1000)
        touched = list(reopened.state.conversations)[::10]
        for n, conv_key in enumerate(touched):
            message = Message("user", f"one more message {n}", now, id=f"wamid.more.{n}")
            await reopened.commit([MessageAdded(conv_key, message, received_ms=now)])
        warm_snapshot = await timed_snapshot(reopened)
        await reopened.close()
        loaded_mb = loaded_rss_mb(profile)
    plain_mb = plain_rss_mb(conversations, messages) if not chat else 0.0
    rows = [
        ("state", f"{conversations:,} conversations x {messages} messages = {total:,} messages"),
        (
            "longest event-loop stall during snapshot",
            f"{max(late):.1f} ms ({first_cpu_stall:.1f} ms of it on CPU)",
        ),
        (
            "p99 / median ticker lateness",
            f"{statistics.quantiles(late, n=100)[98]:.2f} / {statistics.median(late):.2f} ms",
        ),
        (
            "snapshot (sliced, incl. fsync)",
            f"{snapshot_s:.2f} s ({snapshot_cpu:.2f} s CPU), {size / 1e6:.1f} MB",
        ),
        (
            "snapshot size / its JSON",
            f"{size / 1e6:.1f} / {json_bytes / 1e6:.0f} MB = {size / json_bytes:.3f}x",
        ),
        (
            "floor: dumps + encrypt + write + fsync",
            f"{floor_save_s:.2f} s  (ratio {snapshot_s / floor_save_s:.2f}x)",
        ),
        (
            "start-up: open (read, decrypt, parse, rebuild)",
            f"{load_s:.2f} s ({load_cpu:.2f} s CPU)",
        ),
        (
            "floor: read + decrypt + loads",
            f"{floor_load_s:.2f} s  (ratio {load_s / floor_load_s:.2f}x)",
        ),
        ("snapshot of the loaded store, untouched", cold_snapshot.row()),
        (f"snapshot after a new message in {len(touched):,} of them", warm_snapshot.row()),
        ("RSS growth with the state built in memory", f"{rss_loaded - rss_before:.0f} MB"),
        ("RSS growth with the store loaded (fresh process, open)", f"{loaded_mb:.0f} MB"),
    ]
    if not chat:
        rows.append(
            (
                "same messages as a plain list of dicts (fresh process)",
                f"{plain_mb:.0f} MB  (loaded store / plain {loaded_mb / plain_mb:.2f}x)",
            )
        )
    table = "| measure | result |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=250)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--chat", action="store_true", help="realistic Spanish/English chats")
    args = parser.parse_args()
    asyncio.run(main(args.conversations, args.messages, args.out, args.chat))
