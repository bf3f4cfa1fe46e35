"""EchoAssistant: the deterministic, offline default."""

from __future__ import annotations

from bridge.assistants.base import Turn
from bridge.assistants.echo import EchoAssistant


async def test_echoes_the_last_user_turn() -> None:
    history = [Turn("user", "first"), Turn("assistant", "Echo: first"), Turn("user", "second")]
    assert await EchoAssistant().reply("34600000001", history) == "Echo: second"


async def test_echoes_the_last_user_turn_when_an_assistant_turn_follows_it() -> None:
    history = [Turn("user", "question"), Turn("assistant", "partial answer")]
    assert await EchoAssistant().reply("k", history) == "Echo: question"


async def test_same_history_gives_the_same_reply() -> None:
    history = [Turn("user", "ping")]
    echo = EchoAssistant()
    assert {await echo.reply("a", history), await echo.reply("b", history)} == {"Echo: ping"}


async def test_no_user_turn_means_no_reply() -> None:
    assert await EchoAssistant().reply("k", [Turn("assistant", "hello")]) == ""
    assert await EchoAssistant().reply("k", []) == ""


async def test_prefix_is_configurable() -> None:
    assert await EchoAssistant(prefix="> ").reply("k", [Turn("user", "hi")]) == "> hi"


async def test_close_is_a_harmless_no_op() -> None:
    echo = EchoAssistant()
    await echo.close()
    assert await echo.reply("k", [Turn("user", "still here")]) == "Echo: still here"
