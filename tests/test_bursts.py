"""One reply to a burst: the debounce waits for the user to be quiet, answers once, and a
crash in the middle of a burst still answers it exactly once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bridge.assistants.base import Assistant, TurnLike
from bridge.assistants.echo import EchoAssistant
from bridge.state import State
from tests.conftest import APP_SECRET, Bridge, StartBridge, eventually, make_profile
from tests.test_cli import clean_env, free_port, run, start_serve
from tests.test_durability import stored


class CountingEcho(EchoAssistant):
    """The burst-answering echo, counting its calls and optionally held by a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.asked = asyncio.Event()

    async def reply(self, key: str, history: Sequence[TurnLike]) -> str:
        self.calls += 1
        self.asked.set()
        if self.gate is not None:
            await self.gate.wait()
        return await super().reply(key, history)


def replies(state: State, key: str = "34600000001") -> list[str]:
    view = state.get(key)
    return [m.content for m in view.messages if m.role == "assistant"] if view else []


async def start(
    start_bridge: StartBridge,
    tmp_path: Path,
    assistant: Assistant,
    debounce: float,
    debounce_max: float = 8.0,
) -> Bridge:
    profile = replace(
        make_profile(tmp_path),
        reply_debounce_seconds=debounce,
        reply_debounce_max_seconds=debounce_max,
    )
    return await start_bridge(profiles=[profile], assistants={"default": assistant})


async def test_three_messages_in_a_second_get_one_reply_with_all_three(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    echo = CountingEcho()
    bridge = await start(start_bridge, tmp_path, echo, debounce=0.4)
    for text in ("hola", "quería preguntar", "¿tenéis salado?"):
        assert (await bridge.post_text(text)).status == 200
        await asyncio.sleep(0.1)
    await bridge.settle()
    assert echo.calls == 1
    assert replies(bridge.state()) == ["Echo: hola / quería preguntar / ¿tenéis salado?"]
    conv = bridge.state().get("34600000001")
    assert conv is not None and conv.messages[-1].reply_to == conv.messages[-2].id


async def test_a_message_during_the_reply_starts_the_next_burst(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    echo = CountingEcho()
    echo.gate = asyncio.Event()
    bridge = await start(start_bridge, tmp_path, echo, debounce=0.2)
    await bridge.post_text("uno")
    await bridge.post_text("dos")
    await asyncio.wait_for(echo.asked.wait(), 5)
    await bridge.post_text("tres")  # while the assistant is answering the first burst
    echo.gate.set()
    await bridge.settle()
    assert echo.calls == 2
    assert replies(bridge.state()) == ["Echo: uno / dos", "Echo: tres"]


async def test_a_user_who_never_stops_is_answered_after_the_maximum(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    echo = CountingEcho()
    bridge = await start(
        start_bridge,
        tmp_path,
        echo,
        debounce=0.3,
        debounce_max=0.6,
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    n = 0
    while not replies(bridge.state()) and loop.time() - began < 3:
        await bridge.post_text(f"m{n}")
        n += 1
        await asyncio.sleep(0.1)  # never quiet for 0.3 s
    assert replies(bridge.state()), "no reply although the maximum passed"
    assert loop.time() - began < 1.5


async def test_debounce_zero_answers_each_message(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    echo = EchoAssistant()
    bridge = await start(start_bridge, tmp_path, echo, debounce=0.0)
    await bridge.post_text("a")
    await bridge.post_text("b")
    await bridge.settle()
    assert replies(bridge.state()) == ["Echo: a", "Echo: b"]


def test_kill_9_in_the_middle_of_a_burst_answers_it_once_after_restart(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = clean_env(
        BRIDGE_APP_SECRET=APP_SECRET,
        BRIDGE_VERIFY_TOKEN="v",
        BRIDGE_VAR_DIR=str(var),
        BRIDGE_PORT=str(free_port()),
        BRIDGE_REPLY_DEBOUNCE_SECONDS="30",
        BRIDGE_REPLY_DEBOUNCE_MAX_SECONDS="60",
    )
    server = start_serve(var, env=env)
    for text in ("hola", "quería preguntar", "¿tenéis salado?"):
        result = run(["simulate", text, "--from", "34600000001"], env)
        assert result.returncode == 0, result.stderr
    server.proc.kill()  # before the 30 s debounce ran out: the burst is unanswered
    server.proc.wait()
    assert replies(stored(var)) == []
    again = start_serve(var, env={**env, "BRIDGE_REPLY_DEBOUNCE_SECONDS": "0.2"})

    async def answered() -> None:
        await eventually(lambda: bool(replies(stored(var))), timeout=10, what="the reply")

    asyncio.run(answered())
    code, _ = again.stop(signal.SIGTERM)
    assert code == 0
    assert replies(stored(var)) == ["Echo: hola / quería preguntar / ¿tenéis salado?"]
