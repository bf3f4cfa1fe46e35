"""/metrics in Prometheus text format: it parses, counters move, the token is enforced."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bridge import simulate
from bridge.ops import logs
from tests.conftest import Bridge, StartBridge


async def scrape(
    bridge: Bridge, headers: dict[str, str] | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await bridge.client.get("/metrics", headers=headers or {})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_counters_move_with_traffic(bridge: Bridge) -> None:
    body = simulate.delivery(simulate.change_value([simulate.text_message("m", "34600000001")]))
    await bridge.post(body)
    await bridge.post(body)  # duplicate
    await bridge.post(body, secret="wrong")
    await bridge.post(b"{", secret="test-app-secret")
    await bridge.settle()
    m = await scrape(bridge)
    p = (("profile", "default"),)
    assert m[("whatsapp_bridge_deliveries_total", (("outcome", "ok"),))] == 2
    assert m[("whatsapp_bridge_deliveries_total", (("outcome", "bad_signature"),))] == 1
    assert m[("whatsapp_bridge_deliveries_total", (("outcome", "bad_request"),))] == 1
    assert m[("whatsapp_bridge_messages_recorded_total", p)] == 1
    assert m[("whatsapp_bridge_duplicates_total", p)] == 1
    assert m[("whatsapp_bridge_webhook_seconds_count", ())] == 4
    assert m[("whatsapp_bridge_assistant_seconds_count", p)] == 1
    assert (
        m[("whatsapp_bridge_sends_total", (("code", ""), ("profile", "default"), ("result", "ok")))]
        == 1
    )
    assert m[("whatsapp_bridge_conversations", p)] == 1
    assert m[("whatsapp_bridge_messages", p)] == 2
    assert m[("whatsapp_bridge_outbox", p)] == 0


async def test_metrics_token_is_required_when_configured(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bridge = await start_bridge(metrics_token="s3cret")
    assert (await bridge.client.get("/metrics")).status == 401
    assert (
        await bridge.client.get("/metrics", headers={"Authorization": "Bearer nope"})
    ).status == 401
    samples = await scrape(bridge, {"Authorization": "Bearer s3cret"})
    assert ("whatsapp_bridge_outbox", (("profile", "default"),)) in samples


async def test_an_event_loop_stall_shows_in_metrics(bridge: Bridge) -> None:
    await asyncio.sleep(0.05)  # the watch is ticking
    time.sleep(0.08)  # block the loop, as a slow callback would
    await asyncio.sleep(0.05)  # let the watch wake up late and record it
    m = await scrape(bridge)
    assert m[("whatsapp_bridge_event_loop_lag_max_seconds", ())] >= 0.07
    assert m[("whatsapp_bridge_event_loop_lag_seconds_count", ())] >= 3
    assert (
        m[("whatsapp_bridge_event_loop_lag_seconds_bucket", (("le", "0.05"),))]
        < m[("whatsapp_bridge_event_loop_lag_seconds_bucket", (("le", "0.1"),))]
    )


async def test_lost_log_lines_are_counted(bridge: Bridge) -> None:
    before = (await scrape(bridge))[("whatsapp_bridge_log_lines_lost_total", ())]
    stream = io.StringIO()
    logs.configure("json", "info", stream)
    try:
        stream.close()  # every write now fails
        logs.get_logger().info("lost_line")
    finally:
        logs.configure("console", "info")  # as tests/conftest.py sets it up
    assert (await scrape(bridge))[("whatsapp_bridge_log_lines_lost_total", ())] == before + 1
