"""Crash loop against two replicas on PostgreSQL: kill -9 of a random replica, N times (or,
with `--database`, a crash and restart of PostgreSQL itself: `pg_ctl restart -m immediate`).

Two `bridge serve` replicas share one profile; signed deliveries go round-robin, each also
redelivered to the other replica at the same moment, and a refused one is posted again
until it gets a 200 (as Meta retries). Replies wait half a second for the user's next
message (debounce), so each kill leaves acknowledged messages unanswered. Each cycle kills
a random replica at a random moment and restarts it. At the end: every acknowledged message
present once, and how many were answered twice (a reply Meta accepted from the killed
replica before it recorded the send, and that the replica taking it over sent again).

Like Meta, the fake Graph API reports each message it accepts with a `sent` status webhook,
spread round-robin over the replicas (`--no-reports`: none, as with an app not subscribed
to statuses).

A database crash ends every session at once: the replicas' commits fail (503s, which the
load posts again), and so do their conversation locks, while their holders are still at
work on replies (the replies' commits are fenced: bridge/replies.py).

Usage: python -m tests.bench.replica_crashes [--cycles 20] [--rate 50] [--no-reports]
       [--database] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path

from bridge.persistence.keys import encode_key, new_key
from bridge.store.postgres import PostgresStore
from tests.conftest import make_profile
from tests.fakes.graph import FakeGraph
from tests.fakes.threaded import serve_in_thread
from tests.load import publish
from tests.pg import PostgresServer, find_bin_dir
from tests.test_replicas import Cluster


async def loop(
    cluster: Cluster, cycles: int, rate: float, database: PostgresServer | None = None
) -> dict[str, int]:
    """Each cycle crashes a random replica, or with `database` the database."""
    for _ in range(cycles):
        loading = asyncio.create_task(cluster.load(int(rate * 2.5), rate))
        await asyncio.sleep(random.uniform(0.3, 2.0))
        if database is not None:
            await asyncio.get_running_loop().run_in_executor(None, database.restart_immediate)
            await loading
            continue
        index = random.randrange(len(cluster.replicas))
        victim = cluster.replicas[index]
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        await asyncio.sleep(0.5)
        await asyncio.get_running_loop().run_in_executor(None, cluster.start, index)
        await loading
    await cluster.wait_answered(timeout=120)
    answers = cluster.answers()
    profile = make_profile(cluster.tmp_path / "reader", key=cluster.key)
    store = PostgresStore(profile, cluster.database_url, enforce_settings=False)
    await store.open()
    try:
        stored = Counter(
            m.id for view in store.state.views() for m in view.messages if m.role == "user"
        )
    finally:
        await store.close()
    if os.environ.get("BENCH_KEEP"):
        for wamid, text in cluster.acked.items():
            if answers[text] != 1:
                print("odd", answers[text], text, wamid)
                for view in store.state.views():
                    ids = [m.id for m in view.messages]
                    if wamid in ids:
                        i = ids.index(wamid)
                        for m in view.messages[max(0, i - 3) : i + 6]:
                            print("   ", m.role, m.content, m.id, m.reply_to, m.status, m.extra)
        print("outbox", store.state.outbox)
        for body in cluster.graph.bodies():
            if any(answers[t] > 1 for t in body.removeprefix("Echo: ").split(" / ")):
                print("body", body)
    return {
        "acknowledged": len(cluster.acked),
        "present": sum(1 for w in cluster.acked if stored[w] >= 1),
        "present twice": sum(1 for n in stored.values() if n > 1),
        "lost": sum(1 for w in cluster.acked if stored[w] == 0),
        "unanswered": sum(1 for t in cluster.acked.values() if answers[t] == 0),
        "answered twice": sum(1 for n in answers.values() if n > 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--no-reports", action="store_true", help="no status webhooks")
    parser.add_argument(
        "--database", action="store_true", help="crash and restart PostgreSQL, not a replica"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="bridge-crash-pg-"))
    tmp = Path(tempfile.mkdtemp(prefix="bridge-crash-"))
    server = PostgresServer(bin_dir, root, fsync=True)
    server.initdb()
    server.start()
    graph = FakeGraph()
    try:
        url = server.create_database("crash")
        with serve_in_thread(graph.app()) as graph_url:
            cluster = Cluster(
                tmp,
                graph,
                graph_url,
                url,
                encode_key(new_key()),
                env={
                    "BRIDGE_REPLY_DEBOUNCE_SECONDS": "0.5",
                    "BRIDGE_REPLY_DEBOUNCE_MAX_SECONDS": "1",
                },
                reports=not args.no_reports,
            )
            cluster.start(0)
            cluster.start(1)
            try:
                database = server if args.database else None
                result = asyncio.run(loop(cluster, args.cycles, args.rate, database))
            finally:
                cluster.stop()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    victim = "PostgreSQL (restart -m immediate)" if args.database else "a random replica"
    lines = [
        f"two replicas, {args.cycles} x a crash of {victim}, deliveries at {args.rate:g}/s "
        "round-robin with every one redelivered to the other replica at once, "
        + ("no status webhooks" if args.no_reports else "status webhooks round-robin"),
        "",
        "| measure | result |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in result.items()),
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
