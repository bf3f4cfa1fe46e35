"""`sessions-admin delete` erases a user's queued replies: not on disk, never sent afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.config import ProfileConfig
from tests.admin.support import admin
from tests.conftest import eventually
from tests.fakes.graph import FakeGraph
from tests.fakes.threaded import serve_in_thread
from tests.persistence.test_erasure import plaintext_on_disk
from tests.test_cli import graph_env, run, start_serve

ANA = "34600000001"
BEN = "34600000002"


def test_deleted_users_queued_reply_is_erased_and_never_sent(tmp_path: Path) -> None:
    var = tmp_path / "var"
    graph = FakeGraph()
    graph.fail_next(500, times=10_000, to=ANA)  # Graph keeps failing for Ana: reply queued
    with serve_in_thread(graph.app()) as graph_url:
        env = graph_env(var, graph_url)
        server = start_serve(var, env=env)
        assert run(["simulate", "my private question", "--from", ANA], env).returncode == 0

        async def attempted(to: str) -> None:
            await eventually(
                lambda: any(r["to"] == to for r in graph.requests), timeout=10, what="a send"
            )

        asyncio.run(attempted(ANA))
        code, _ = server.stop()
        assert code == 0

        deleted = admin(["delete", ANA], env)
        assert deleted.returncode == 0, deleted.stderr
        profile = ProfileConfig(slug="default", state_dir=var / "profiles" / "default")
        on_disk = plaintext_on_disk(profile)
        assert ANA.encode() not in on_disk and b"my private question" not in on_disk

        attempts = len(graph.requests)
        again = start_serve(var, env=env)
        assert run(["simulate", "hello", "--from", BEN], env).returncode == 0
        asyncio.run(attempted(BEN))  # the outbox ran, and had Ana's reply been queued...
        code, _ = again.stop()
        assert code == 0
    assert [r["to"] for r in graph.requests[attempts:]] == [BEN]
    assert ANA.encode() not in plaintext_on_disk(profile)
