"""A queued template message survives a crash (journal replay) and a snapshot, and what
older versions wrote (records and snapshot entries without a template) still loads."""

from __future__ import annotations

import pytest

from bridge.conversations import Message
from bridge.records import (
    MessageAdded,
    OutboxItem,
    OutboxQueued,
    OutboxUncertain,
    Record,
    decode,
    encode,
    record_from_dict,
)
from bridge.templates import Template
from tests.persistence.support import NOW, Opened, crash, reply, user
from tests.persistence.test_snapshot import decrypted_frames

ANA = "34600000001"
TEMPLATE = Template("pedido_listo", "es", ("Ana", "1234"))


def queued_template(key: str = ANA, rid: str = "op.tmpl") -> list[Record]:
    message = Message(
        "assistant", TEMPLATE.readable(), NOW, id=rid, status="pending", extra={"template": {}}
    )
    return [
        MessageAdded(key, message),
        OutboxQueued(OutboxItem(rid, key, key, "", NOW, TEMPLATE)),
    ]


def test_a_template_item_round_trips_through_a_journal_record() -> None:
    (_, record) = queued_template()
    seq, again = decode(encode(7, record))
    assert seq == 7 and again == record


def test_a_template_item_is_journaled_byte_for_byte_as_before() -> None:
    """The journal record pinned to the byte, key order included: where the template type
    lives (bridge/templates.py) is no part of the format."""
    (_, record) = queued_template()
    assert encode(7, record) == (
        b'{"q":7,"t":"q","i":"op.tmpl","k":"34600000001","to":"34600000001","x":"",'
        b'"c":%d,"tp":{"name":"pedido_listo","language":"es","params":["Ana","1234"]}}' % NOW
    )


def test_a_queued_record_of_an_older_version_loads_as_a_text_item() -> None:
    old = {"t": "q", "i": "r1", "k": ANA, "to": ANA, "x": "hola", "c": 5}
    assert record_from_dict(old) == OutboxQueued(OutboxItem("r1", ANA, ANA, "hola", 5))


def test_a_malformed_stored_template_is_a_corrupt_record() -> None:
    bad = {"t": "q", "i": "r1", "k": ANA, "to": ANA, "x": "", "c": 5, "tp": {"name": "x"}}
    with pytest.raises(ValueError, match="outbox item"):
        record_from_dict(bad)


def test_a_stored_template_loads_even_if_todays_checks_would_refuse_it() -> None:
    """What was queued stays loadable: checks belong before queuing, not at start-up."""
    stored = {"name": "Old-Style", "language": "es", "params": ["a\nb"]}
    record = {"t": "q", "i": "r1", "k": ANA, "to": ANA, "x": "", "c": 5, "tp": stored}
    loaded = record_from_dict(record)
    assert isinstance(loaded, OutboxQueued)
    assert loaded.item.template == Template("Old-Style", "es", ("a\nb",))


async def test_a_queued_template_survives_a_crash(opened: Opened) -> None:
    store = await opened()
    await store.commit([user(ANA, 1)])
    await store.commit(queued_template())
    await crash(store)
    again = await opened()
    assert again.state.outbox["op.tmpl"].template == TEMPLATE
    assert again.state.conversations[ANA].messages[-1].content == (
        "[template pedido_listo] Ana | 1234"
    )


@pytest.mark.parametrize("uncertain", [False, True])
async def test_a_queued_template_survives_a_snapshot(opened: Opened, uncertain: bool) -> None:
    store = await opened()
    await store.commit([user(ANA, 1), *reply(ANA, 2)])  # a text item beside it
    await store.commit(queued_template())
    if uncertain:
        await store.commit([OutboxUncertain("op.tmpl")])
    await store.snapshot()
    (outbox,) = [f["outbox"] for f in decrypted_frames(store) if "outbox" in f]
    # A text item is written as older versions wrote it; the template after the flag.
    assert outbox[0] == [f"out.{ANA}.2", ANA, ANA, "reply 2", NOW + 2]
    assert outbox[1] == [
        "op.tmpl",
        ANA,
        ANA,
        "",
        NOW,
        1 if uncertain else 0,
        {"name": "pedido_listo", "language": "es", "params": ["Ana", "1234"]},
    ]
    await store.close()
    again = await opened()
    assert list(again.state.outbox) == [f"out.{ANA}.2", "op.tmpl"]
    assert again.state.outbox[f"out.{ANA}.2"].template is None
    assert again.state.outbox["op.tmpl"].template == TEMPLATE
    assert ("op.tmpl" in again.state.uncertain) is uncertain
