"""The webhook over real HTTP: handshake, signatures, bad input, batching, dedupe, the cap."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from bridge import simulate
from bridge.records import Record
from bridge.runtime import durable_store
from bridge.state import State
from bridge.store.memory import MemoryStore
from tests.conftest import (
    APP_SECRET,
    VERIFY_TOKEN,
    Bridge,
    StartBridge,
    make_profile,
)


async def test_verification_echoes_challenge_for_right_token(bridge: Bridge) -> None:
    resp = await bridge.client.get(
        "/webhook",
        params={
            "hub.mode": "subscribe",
            "hub.verify_token": VERIFY_TOKEN,
            "hub.challenge": "1158201444",
        },
    )
    assert resp.status == 200
    assert await resp.text() == "1158201444"


async def test_verification_refuses_wrong_token(bridge: Bridge) -> None:
    resp = await bridge.client.get(
        "/webhook",
        params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"},
    )
    assert resp.status == 403


async def test_verification_refuses_wrong_mode(bridge: Bridge) -> None:
    resp = await bridge.client.get(
        "/webhook",
        params={"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
    )
    assert resp.status == 403


async def test_text_message_is_recorded_with_timestamps(bridge: Bridge) -> None:
    message = simulate.text_message("Hola", "34600000001", timestamp=1_700_000_000)
    body = simulate.delivery(simulate.change_value([message], names={"34600000001": "Ana"}))
    before = int(time.time() * 1000)
    resp = await bridge.post(body)
    after = int(time.time() * 1000)
    assert resp.status == 200
    assert await resp.json() == {"recorded": 1, "duplicates": 0}
    conv = bridge.state().get("34600000001")
    assert conv is not None
    first = conv.messages[0]
    assert (first.role, first.content, first.timestamp, first.type) == (
        "user",
        "Hola",
        1_700_000_000_000,
        "text",
    )
    assert first.id == message["id"]
    assert conv.first_interaction == 1_700_000_000_000
    # The 24-hour window and retention count from when we received it, not from the stamp.
    assert conv.last_user_message is not None and before <= conv.last_user_message <= after
    assert before <= conv.last_activity <= after
    assert conv.contact_name == "Ana"


async def test_unsigned_delivery_is_401_and_not_recorded(bridge: Bridge) -> None:
    resp = await bridge.post_text("hi", secret=None)
    assert resp.status == 401
    assert "error" in await resp.json()
    assert bridge.state().conversations == {}


async def test_wrongly_signed_delivery_is_403_and_not_recorded(bridge: Bridge) -> None:
    resp = await bridge.post_text("hi", secret="another-secret")
    assert resp.status == 403
    assert bridge.state().conversations == {}


async def test_signature_over_other_bytes_is_403(bridge: Bridge) -> None:
    raw = simulate.encode(
        simulate.delivery(simulate.change_value([simulate.text_message("a", "34600000001")]))
    )
    headers = simulate.signed_headers(raw + b" ", APP_SECRET)
    resp = await bridge.client.post("/webhook", data=raw, headers=headers)
    assert resp.status == 403
    assert bridge.state().conversations == {}


async def test_malformed_json_is_400_with_json_error(bridge: Bridge) -> None:
    resp = await bridge.post(b'{"object": "whatsapp_business_account", "entry": [')
    assert resp.status == 400
    assert (await resp.json())["error"] == "body is not valid JSON"
    assert bridge.state().conversations == {}


async def test_one_bad_message_does_not_sink_its_delivery(bridge: Bridge) -> None:
    good = simulate.text_message("kept", "34600000001")
    body = simulate.delivery(simulate.change_value([good, {"from": "34600000002"}]))
    resp = await bridge.post(body)
    assert resp.status == 200
    assert await resp.json() == {"recorded": 1, "duplicates": 0, "skipped": 1}
    conv = bridge.state().get("34600000001")
    assert conv is not None and conv.messages[0].content == "kept"
    assert bridge.state().get("34600000002") is None


async def test_nothing_usable_is_400_naming_the_problem(bridge: Bridge) -> None:
    body = simulate.delivery(simulate.change_value([{"from": "34600000002"}]))
    resp = await bridge.post(body)
    assert resp.status == 400
    assert "messages[0] has no id" in (await resp.json())["error"]
    assert bridge.state().conversations == {}


async def test_other_object_is_400(bridge: Bridge) -> None:
    resp = await bridge.post({"object": "page", "entry": []})
    assert resp.status == 400


async def test_body_over_limit_is_413(start_bridge: StartBridge) -> None:
    small = await start_bridge(max_body_bytes=2048)
    resp = await small.post_text("x" * 4000)
    assert resp.status == 413
    assert small.state().conversations == {}


async def test_batched_delivery_records_every_entry_change_and_message(bridge: Bridge) -> None:
    def value(*senders: str) -> dict[str, object]:
        return simulate.change_value([simulate.text_message(f"from {s}", s) for s in senders])

    body = simulate.delivery(value("111", "222"), value("333"))
    body["entry"].append(simulate.delivery(value("444", "111"))["entry"][0])
    resp = await bridge.post(body)
    assert await resp.json() == {"recorded": 5, "duplicates": 0}
    state = bridge.state()
    assert sorted(state.conversations) == ["111", "222", "333", "444"]
    user_turns = [m for m in state.conversations["111"].messages if m.role == "user"]
    assert [m.content for m in user_turns] == ["from 111", "from 111"]


async def test_redelivered_message_is_acknowledged_and_recorded_once(bridge: Bridge) -> None:
    body = simulate.delivery(simulate.change_value([simulate.text_message("once", "555")]))
    first = await bridge.post(body)
    second = await bridge.post(body)
    assert (first.status, second.status) == (200, 200)
    assert await second.json() == {"recorded": 0, "duplicates": 1}
    await bridge.settle()
    conv = bridge.state().get("555")
    assert conv is not None
    assert [m.content for m in conv.messages if m.role == "user"] == ["once"]


class SlowCommitStore(MemoryStore):
    """A memory store whose commits take a while, so concurrent copies overlap in flight."""

    async def commit(self, records: Sequence[Record]) -> None:
        await asyncio.sleep(0.05)
        await super().commit(records)


async def test_concurrent_copies_are_recorded_once(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bridge = await start_bridge(store_factory=lambda p: SlowCommitStore(State(p.store_settings)))
    body = simulate.delivery(simulate.change_value([simulate.text_message("race", "666")]))
    responses = await asyncio.gather(*(bridge.post(body) for _ in range(20)))
    assert [r.status for r in responses] == [200] * 20
    bodies = [await r.json() for r in responses]
    assert sum(b["recorded"] for b in bodies) == 1
    assert sum(b["duplicates"] for b in bodies) == 19
    await bridge.settle()
    conv = bridge.state().get("666")
    assert conv is not None
    assert [m.content for m in conv.messages if m.role == "user"] == ["race"]


async def test_same_message_twice_in_one_delivery_is_recorded_once(bridge: Bridge) -> None:
    message = simulate.text_message("twice", "777")
    resp = await bridge.post(simulate.delivery(simulate.change_value([message, message])))
    assert await resp.json() == {"recorded": 1, "duplicates": 1}


async def test_conversation_is_capped_keeping_the_newest(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bridge = await start_bridge([make_profile(tmp_path, max_messages=10)])
    for i in range(8):
        messages = [simulate.text_message(f"m{i}-{j}", "888") for j in range(3)]
        assert (await bridge.post(simulate.delivery(simulate.change_value(messages)))).status == 200
    await bridge.settle()
    conv = bridge.state().get("888")
    assert conv is not None
    assert len(conv.messages) == 10
    contents = [m.content for m in conv.messages]
    assert "m7-2" in contents and "Echo: m7-2" in contents
    assert "m0-0" not in contents


async def test_message_with_only_user_id_is_keyed_by_user_id(bridge: Bridge) -> None:
    message = simulate.text_message("no phone", "x")
    del message["from"]
    message["user_id"] = "US.13491208655302741918"
    body = simulate.delivery(simulate.change_value([message]))
    body["entry"][0]["changes"][0]["value"]["contacts"] = [
        {"profile": {"name": "Bo"}, "user_id": "US.13491208655302741918"}
    ]
    resp = await bridge.post(body)
    assert resp.status == 200
    conv = bridge.state().get("US.13491208655302741918")
    assert conv is not None and conv.contact_name == "Bo"


async def test_healthz_and_readyz_answer(bridge: Bridge) -> None:
    assert (await bridge.client.get("/healthz")).status == 200
    ready = await bridge.client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["profiles"]["default"]["ready"] is True


async def test_non_message_fields_are_acknowledged_and_ignored(bridge: Bridge) -> None:
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [{"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}],
            }
        ],
    }
    resp = await bridge.post(body)
    assert resp.status == 200
    assert bridge.state().conversations == {}


async def test_storage_failure_is_503_and_redelivery_records_once_healed(
    start_bridge: StartBridge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = await start_bridge(store_factory=durable_store)
    real_fsync = os.fsync

    def read_only(fd: int) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    body = simulate.delivery(simulate.change_value([simulate.text_message("keep me", "999")]))
    monkeypatch.setattr(os, "fsync", read_only)
    failed = await bridge.post(body)
    assert failed.status == 503
    assert bridge.state().get("999") is None
    assert (await bridge.client.get("/healthz")).status == 200  # still serving
    monkeypatch.setattr(os, "fsync", real_fsync)
    healed = await bridge.post(body)  # Meta's redelivery
    assert await healed.json() == {"recorded": 1, "duplicates": 0}
    conv = bridge.state().get("999")
    assert conv is not None and [m.content for m in conv.messages][0] == "keep me"
