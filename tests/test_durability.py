"""Durability of a real `bridge serve` process: kill -9, SIGTERM, restarts, refusals."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp

from bridge import simulate
from bridge.config import ProfileConfig
from bridge.state import State
from bridge.store.durable import load_state
from tests.conftest import APP_SECRET, eventually
from tests.fakes.graph import FakeGraph, Received
from tests.fakes.threaded import serve_in_thread
from tests.load import post_text
from tests.test_cli import clean_env, free_port, graph_env, run, start_serve


def stored(var_dir: Path) -> State:
    return load_state(ProfileConfig(slug="default", state_dir=var_dir / "profiles" / "default"))


def user_ids(state: State) -> list[str]:
    return [
        m.id for c in state.conversations.values() for m in c.messages if m.role == "user" and m.id
    ]


async def burst(port: int, count: int, concurrency: int = 20) -> list[str]:
    """Post `count` signed single-message deliveries; returns the wamids that got a 200."""
    acked: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            async with sem:
                wamid = await post_text(
                    session, port, APP_SECRET, f"burst {i}", f"3461{i % 97:07d}"
                )
            if wamid:
                acked.append(wamid)

        await asyncio.gather(*(one(i) for i in range(count)))
    return acked


def test_kill_9_loses_no_acknowledged_message(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = clean_env(BRIDGE_APP_SECRET=APP_SECRET, BRIDGE_VERIFY_TOKEN="v", BRIDGE_VAR_DIR=str(var))
    server = start_serve(var, env={**env, "BRIDGE_PORT": str(free_port())})
    port = int(server.env["BRIDGE_PORT"])
    acked = asyncio.run(burst(port, 300))
    server.proc.kill()  # SIGKILL: no snapshot, no cleanup
    server.proc.wait()
    assert len(acked) == 300
    ids = user_ids(stored(var))
    assert sorted(ids) == sorted(acked), "every acknowledged message exactly once"
    # The restarted bridge agrees, and the seen-set survived: a redelivery is a duplicate.
    again = start_serve(var, env=server.env)
    message = simulate.text_message("burst 0", "34610000000", wamid=acked[0])
    raw = simulate.encode(simulate.delivery(simulate.change_value([message])))

    async def redeliver() -> dict[str, int]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/webhook",
                data=raw,
                headers=simulate.signed_headers(raw, APP_SECRET),
            ) as resp,
        ):
            return dict(await resp.json())

    assert asyncio.run(redeliver()) == {"recorded": 0, "duplicates": 1}
    code, _ = again.stop()
    assert code == 0


def test_sigterm_takes_a_final_snapshot(tmp_path: Path) -> None:
    server = start_serve(tmp_path / "var", "--dev")
    acked = asyncio.run(burst(server.port, 50))
    code, events = server.stop(signal.SIGTERM)
    assert code == 0
    assert "snapshot_written" in [e["event"] for e in events]
    state_dir = tmp_path / "var" / "profiles" / "default"
    assert (state_dir / "snapshot.wab").exists()
    segments = list((state_dir / "journal").iterdir())
    assert len(segments) == 1 and segments[0].stat().st_size == 0  # everything is in the snapshot
    assert sorted(user_ids(stored(tmp_path / "var"))) == sorted(acked)


def test_unsent_reply_survives_a_crash_and_is_sent_after_restart(tmp_path: Path) -> None:
    graph = FakeGraph()
    graph.fail_all = (500, None)  # Graph is down: the reply stays in the outbox
    with serve_in_thread(graph.app()) as graph_url:
        # After a crash every queued reply waits this long for Meta's status webhook.
        env = graph_env(tmp_path / "var", graph_url, BRIDGE_SEND_RECONCILE_SECONDS="0.5")
        server = start_serve(tmp_path / "var", env=env)
        result = run(["simulate", "Hola", "--from", "34600000001"], env)
        assert result.returncode == 0, result.stderr

        async def wait_attempt() -> None:
            await eventually(lambda: len(graph.requests) >= 1, timeout=10, what="a send attempt")

        asyncio.run(wait_attempt())
        server.proc.kill()
        server.proc.wait()
        assert graph.sent == []
        assert len(stored(tmp_path / "var").outbox) == 1
        graph.fail_all = None  # Graph is back
        again = start_serve(tmp_path / "var", env=env)

        async def wait_sent() -> None:
            await eventually(lambda: len(graph.sent) == 1, timeout=10, what="the reply to be sent")

        asyncio.run(wait_sent())
        time.sleep(0.3)
        code, events = again.stop()
    assert code == 0
    assert graph.sent[0]["to"] == "34600000001"
    assert graph.sent[0]["text"]["body"] == "Echo: Hola"
    state = stored(tmp_path / "var")
    assert not state.outbox
    conv = state.conversations["34600000001"]
    assert conv.messages[-1].status == "sent" and conv.messages[-1].wamids == ("wamid.FAKE000001",)


def test_corrupt_snapshot_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    server = start_serve(tmp_path / "var", "--dev")
    server.stop()
    snapshot = tmp_path / "var" / "profiles" / "default" / "snapshot.wab"
    snapshot.write_bytes(snapshot.read_bytes()[:-5])
    result = run(["serve", "--dev"], server.env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"bridge: error: {snapshot}: truncated")
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot.exists()


def test_second_process_on_one_profile_is_refused(tmp_path: Path) -> None:
    server = start_serve(tmp_path / "var", "--dev")
    env = {**server.env, "BRIDGE_PORT": str(free_port())}
    result = run(["serve", "--dev"], env)
    assert result.returncode == 2
    assert "profile 'default' is in use by another process" in result.stderr
    assert "Traceback" not in result.stderr
    code, _ = server.stop()
    assert code == 0


def message_posts(graph: FakeGraph) -> list[Received]:
    """Sends that reached the fake Graph API (not the health monitor's reads)."""
    return [r for r in graph.received if r.method == "POST" and r.path.endswith("/messages")]


async def post_users(port: int, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            assert await post_text(session, port, APP_SECRET, f"hola {i}", f"3462{i:07d}")


def test_a_status_acknowledged_just_before_kill_9_is_not_lost(tmp_path: Path) -> None:
    """Meta's status webhooks for the replies arrive (and get their 200) while the sends
    are still waiting for Graph's answer; then the bridge is killed. Meta does not send an
    acknowledged status again: the restart learns from the journal that the replies got
    through, and sends nothing again (before, the confirmation lived in memory only)."""
    graph = FakeGraph()
    graph.answer_delay = 5.0  # taken and reported at once, answered late
    with serve_in_thread(graph.app()) as graph_url:
        env = graph_env(tmp_path / "var", graph_url, BRIDGE_SEND_RECONCILE_SECONDS="5")
        graph.report_to(f"http://127.0.0.1:{env['BRIDGE_PORT']}/webhook", APP_SECRET)
        server = start_serve(tmp_path / "var", env=env)
        asyncio.run(post_users(server.port, 3))

        async def reported() -> None:
            await eventually(lambda: len(graph.reported) == 3, timeout=10, what="3 statuses")

        asyncio.run(reported())
        server.proc.kill()
        server.proc.wait()
        assert len(graph.sent) == 3
        graph.answer_delay = 0.0
        again = start_serve(tmp_path / "var", env=env)

        async def reconciled() -> None:
            await eventually(
                lambda: not stored(tmp_path / "var").outbox, timeout=15, what="an empty outbox"
            )

        asyncio.run(reconciled())
        time.sleep(0.3)
        code, events = again.stop()
    assert code == 0
    assert len(graph.sent) == 3, f"{len(graph.sent) - 3} replies sent twice"
    assert sum(e.get("reconciled") is True for e in events if e["event"] == "reply_sent") == 3
    for conv in stored(tmp_path / "var").conversations.values():
        assert conv.messages[-1].status == "sent"
        assert len(conv.messages[-1].wamids) == 1


def test_replies_in_flight_at_kill_9_are_not_sent_twice(tmp_path: Path) -> None:
    """Graph takes each reply but answers slowly; the bridge is killed while the answers are
    on their way. After the restart Meta's status webhooks (which carry each part's
    biz_opaque_callback_data) tell the bridge what got through: nothing is sent again."""
    graph = FakeGraph()
    graph.delay = 1.5
    with serve_in_thread(graph.app()) as graph_url:
        env = graph_env(tmp_path / "var", graph_url, BRIDGE_SEND_RECONCILE_SECONDS="20")
        graph.report_to(f"http://127.0.0.1:{env['BRIDGE_PORT']}/webhook", APP_SECRET)
        server = start_serve(tmp_path / "var", env=env)
        asyncio.run(post_users(server.port, 5))

        async def in_flight() -> None:
            await eventually(lambda: len(message_posts(graph)) == 5, timeout=10, what="5 sends")

        asyncio.run(in_flight())
        server.proc.kill()
        server.proc.wait()
        again = start_serve(tmp_path / "var", env=env)

        async def reconciled() -> None:
            def done() -> bool:
                state = stored(tmp_path / "var")
                return len(graph.reported) == 5 and not state.outbox

            await eventually(done, timeout=30, what="the replies to be reconciled")

        asyncio.run(reconciled())
        code, events = again.stop()
    assert code == 0
    assert len(graph.sent) == 5, f"{len(graph.sent) - 5} replies sent twice"
    assert sum(e.get("reconciled") is True for e in events if e["event"] == "reply_sent") == 5
    for conv in stored(tmp_path / "var").conversations.values():
        assert conv.messages[-1].status in ("sent", "delivered", "read")
        assert len(conv.messages[-1].wamids) == 1


def test_sigterm_lets_slow_sends_finish_instead_of_repeating_them(tmp_path: Path) -> None:
    """Graph answers after 7 s (its client times out at 15 s): a stop must wait for those
    answers, not cut the sends off at a shorter grace and repeat them after the restart."""
    graph = FakeGraph()
    graph.delay = 7
    with serve_in_thread(graph.app()) as graph_url:
        env = graph_env(tmp_path / "var", graph_url, BRIDGE_SEND_RECONCILE_SECONDS="0.5")
        server = start_serve(tmp_path / "var", env=env)
        asyncio.run(post_users(server.port, 3))

        async def in_flight() -> None:
            await eventually(lambda: len(message_posts(graph)) == 3, timeout=10, what="3 sends")

        asyncio.run(in_flight())
        code, _ = server.stop()
        assert code == 0
        assert not stored(tmp_path / "var").outbox, "the sends were cut off"
        graph.delay = 0
        again = start_serve(tmp_path / "var", env=env)
        time.sleep(1.5)  # room for a wrongful re-send after the restart
        again.stop()
    assert len(graph.sent) == 3
