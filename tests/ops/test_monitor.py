"""The health monitor against a fake Graph API and a fake LLM that go down and come back."""

from __future__ import annotations

from pathlib import Path

from pytest_aiohttp import AiohttpServer
from structlog.testing import capture_logs

from bridge.config import AssistantConfig
from bridge.http.health import MONITOR
from tests.conftest import StartBridge, eventually, make_profile
from tests.fakes.graph import TOKEN, FakeGraph
from tests.fakes.llm import FakeLLM


async def test_degraded_and_back_up_drains_the_outbox(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    graph = FakeGraph()
    graph_server = await aiohttp_server(graph.app())
    llm = FakeLLM()
    llm_server = await aiohttp_server(llm.app())
    profile = make_profile(
        tmp_path,
        access_token=TOKEN,
        graph_url=str(graph_server.make_url("")).rstrip("/"),
        assistant=AssistantConfig(kind="openai", url=str(llm_server.make_url("")), timeout=5),
    )
    bridge = await start_bridge([profile])
    monitor = bridge.client.app[MONITOR]
    runtime = bridge.runtimes["default"]

    with capture_logs() as logs:
        assert (await monitor.check(runtime)).status == "up"
        graph.token = "revoked"  # the token stops working: sends fail with 190
        await bridge.post_text("anyone there?")
        await eventually(lambda: len(graph.requests) >= 1, what="a send attempt")
        health = await monitor.check(runtime)
        assert health.status == "degraded" and "190" in health.checks["graph"]
        ready = await (await bridge.client.get("/readyz")).json()
        assert ready["profiles"]["default"]["health"]["status"] == "degraded"
        assert len(runtime.store.state.outbox) == 1  # kept, waiting out a 5-minute backoff
        graph.token = TOKEN  # the operator fixed the token
        assert (await monitor.check(runtime)).status == "up"
        await eventually(
            lambda: not runtime.store.state.outbox, timeout=3, what="the outbox to drain"
        )
    assert [m["text"]["body"] for m in graph.sent] == ["Reply to: anyone there?"]
    changes = [(e["previous"], e["status"]) for e in logs if e["event"] == "health_changed"]
    assert changes == [("unknown", "up"), ("up", "degraded"), ("degraded", "up")]


async def test_unreachable_assistant_is_degraded(start_bridge: StartBridge, tmp_path: Path) -> None:
    profile = make_profile(
        tmp_path, assistant=AssistantConfig(kind="openai", url="http://127.0.0.1:9")
    )
    bridge = await start_bridge([profile])
    health = await bridge.client.app[MONITOR].check(bridge.runtimes["default"])
    assert health.status == "degraded"
    assert health.checks["assistant"].startswith("unreachable")
    assert health.checks["graph"].startswith("not configured")


async def test_embedded_profile_without_token_is_up() -> None:
    from bridge.ops.monitor import HealthMonitor
    from bridge.runtime import ProfileRuntime

    runtime = ProfileRuntime.build(make_profile(Path("/nonexistent")))
    monitor = HealthMonitor([runtime])
    health = await monitor.check(runtime)
    assert health.status == "up" and health.checks["assistant"] == "embedded"
    await runtime.assistant.close()
    await runtime.sender.close()
