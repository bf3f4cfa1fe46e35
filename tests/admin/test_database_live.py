"""sessions-admin restore, pause, resume and send on the PostgreSQL store while a real
`bridge serve` replica runs on it: the replica reloads a restored state within a poll, a
paused conversation gets no reply, and a message an operator queued goes out through the
replica (its takeover sweep finds queued replies nobody owns)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bridge import simulate
from bridge.persistence.crypto import Keyring
from bridge.persistence.keys import encode_key, new_key, parse_keys
from bridge.persistence.snapshot import read_snapshot
from bridge.state import State
from bridge.store.postgres import read_database_state
from tests.admin.support import admin, admin_json
from tests.conftest import APP_SECRET, make_profile
from tests.fakes.graph import FakeGraph
from tests.fakes.threaded import serve_in_thread
from tests.test_cli import Served, clean_env, graph_env, parse_log, start_serve

pytestmark = pytest.mark.slow

ANA, BEA = "34611000001", "34611000002"


@dataclass
class Replica:
    served: Served
    graph: FakeGraph
    admin_env: dict[str, str]  # sessions-admin on another host: no profile directory shared

    def events(self, name: str) -> int:
        return sum(e["event"] == name for e in parse_log(self.served.log_path.read_text()))

    async def post(self, raw: bytes) -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{self.served.port}/webhook",
                data=raw,
                headers=simulate.signed_headers(raw, APP_SECRET),
            ) as resp,
        ):
            return resp.status

    async def say(self, text: str, phone: str) -> bytes:
        """A user's message, acknowledged by the replica; its raw delivery (to post again)."""
        message = simulate.text_message(text, phone)
        raw = simulate.encode(simulate.delivery(simulate.change_value([message])))
        assert await self.post(raw) == 200
        return raw

    async def admin(self, *args: str) -> tuple[int, str, str]:
        result = await asyncio.to_thread(admin, list(args), self.admin_env)
        return result.returncode, result.stdout, result.stderr


async def until(check: Callable[[], bool], timeout: float) -> float:
    """Wait for `check`; how long it took (AssertionError after `timeout`)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
async def replica(tmp_path: Path, database_url: str) -> AsyncIterator[Replica]:
    graph = FakeGraph()
    key = encode_key(new_key())
    with serve_in_thread(graph.app()) as url:
        env = graph_env(
            tmp_path / "replica",
            url,
            BRIDGE_STORE="postgres",
            BRIDGE_DATABASE_URL=database_url,
            BRIDGE_KEY=key,
        )
        served = await asyncio.to_thread(start_serve, tmp_path / "replica", env=env)
        admin_env = clean_env(
            BRIDGE_VAR_DIR=str(tmp_path / "admin"),
            BRIDGE_STORE="postgres",
            BRIDGE_DATABASE_URL=database_url,
            BRIDGE_KEY=key,
        )
        try:
            yield Replica(served, graph, admin_env)
        finally:
            await asyncio.to_thread(served.stop)


async def test_restore_replaces_the_state_under_a_running_replica_within_a_poll(
    replica: Replica, tmp_path: Path
) -> None:
    graph = replica.graph
    await replica.say("antes", ANA)
    await until(lambda: "Echo: antes" in graph.bodies(), 10)
    code, out, err = await replica.admin("backup", "--to", str(tmp_path / "archives"))
    assert code == 0, err
    archive = out.strip()
    after_backup = await replica.say("despues", BEA)
    await until(lambda: "Echo: despues" in graph.bodies(), 10)

    code, out, err = await replica.admin("restore", archive)
    assert code == 0, err
    restored_at = time.monotonic()
    assert f"restored profile 'default' from {archive}: 1 conversations" in out
    kept = out.split("previous state kept in ")[1].split(")")[0]
    assert Path(kept).is_file() and "/pre-restore-" in kept
    # The replica reloads at its next poll (every 0.5 s).
    await until(lambda: replica.events("store_reloaded_behind_compaction") == 1, 5)
    assert time.monotonic() - restored_at < 1.5
    assert {row["key"] for row in admin_json(["list"], replica.admin_env)} == {ANA}
    # What the restore replaced is in the archive it kept, whole.
    code, out, err = await replica.admin("verify", kept)
    assert code == 0 and "2 conversations, 4 messages" in out, out + err

    # A message received after the backup, delivered again by Meta: still a duplicate.
    assert await replica.post(after_backup) == 200
    # The replica goes on with the restored state: records, answers, sends.
    await replica.say("otra vez", ANA)
    await until(lambda: "Echo: otra vez" in graph.bodies(), 10)
    shown = admin_json(["show", ANA], replica.admin_env)
    assert [m["content"] for m in shown["messages"]] == [
        "antes",
        "Echo: antes",
        "otra vez",
        "Echo: otra vez",
    ]
    assert {row["key"] for row in admin_json(["list"], replica.admin_env)} == {ANA}
    assert graph.bodies().count("Echo: despues") == 1
    assert replica.events("store_reloaded_behind_compaction") == 1  # once, not at every poll


async def test_pause_send_and_resume_on_the_database_reach_a_running_replica(
    replica: Replica,
) -> None:
    graph = replica.graph
    await replica.say("hola", ANA)
    await until(lambda: "Echo: hola" in graph.bodies(), 10)

    code, out, err = await replica.admin("pause", "+34 611 000 001", "--reason", "queja")
    assert code == 0, err
    assert "paused until resumed" in out
    await replica.say("quiero hablar con alguien", ANA)
    await asyncio.sleep(3)
    assert graph.bodies() == ["Echo: hola"]  # a person has it: the assistant is quiet

    code, out, err = await replica.admin("send", ANA, "Hola, soy Ana", "--as", "ana")
    assert code == 0, err
    assert "a running replica sends it within about 15 s" in out
    took = await until(lambda: "Hola, soy Ana" in graph.bodies(), 15)
    assert took < 20  # 3 s unowned, then up to 10 s waiting for a confirmation (README)
    assert graph.bodies().count("Hola, soy Ana") == 1

    code, out, err = await replica.admin("resume", ANA)
    assert code == 0 and "answers new messages again" in out, err
    await replica.say("gracias", ANA)
    await until(lambda: any("gracias" in b for b in graph.bodies()), 10)
    await asyncio.sleep(1.5)
    assert graph.bodies().count("Hola, soy Ana") == 1  # sent once
    modes = admin_json(["show", ANA], replica.admin_env)
    assert modes["mode"] == "assistant"


async def test_send_outside_the_window_and_pause_of_nobody_are_refused_on_the_database(
    replica: Replica,
) -> None:
    code, _out, err = await replica.admin("pause", "34699999999")
    assert code == 1 and "no conversation" in err
    code, _out, err = await replica.admin("rotate-key")  # one key configured: nothing to do
    assert code == 2 and "which rotate-key does not write" in err


async def test_a_restore_under_load_loses_no_acknowledged_message(
    replica: Replica, tmp_path: Path
) -> None:
    """Every message the replica acknowledged is in the state the restore replaced (its
    pre-restore archive, exact as of the restore) or in the database after it."""
    code, out, err = await replica.admin("backup", "--to", str(tmp_path / "archives"))
    assert code == 0, err
    archive = out.strip()
    acked: set[str] = set()

    async def load(count: int) -> None:
        for n in range(count):
            message = simulate.text_message(f"carga {n}", f"3465{n % 20:07d}")
            raw = simulate.encode(simulate.delivery(simulate.change_value([message])))
            if await replica.post(raw) == 200:
                acked.add(str(message["id"]))
            await asyncio.sleep(0.02)

    loading = asyncio.create_task(load(150))
    await asyncio.sleep(1.0)
    code, out, err = await replica.admin("restore", archive)
    assert code == 0, err
    kept = Path(out.split("previous state kept in ")[1].split(")")[0])
    await loading
    await asyncio.sleep(1.0)
    before = State()
    keyring = Keyring(parse_keys(replica.admin_env["BRIDGE_KEY"], "BRIDGE_KEY"))
    read_snapshot(kept, keyring, "default", before)
    profile = make_profile(tmp_path / "reader", key=replica.admin_env["BRIDGE_KEY"])
    after = await read_database_state(profile, replica.admin_env["BRIDGE_DATABASE_URL"])

    def ids(state: State) -> set[str]:
        return {m.id for c in state.conversations.values() for m in c.messages if m.id}

    assert len(acked) == 150
    assert ids(before) & acked and ids(after) & acked  # the restore landed mid-load
    assert acked <= ids(before) | ids(after), "acknowledged, then in neither state"
    assert not ids(before) & ids(after) & acked  # and none recorded twice
