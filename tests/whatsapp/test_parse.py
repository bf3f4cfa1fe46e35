"""The delivery parser: every message type becomes readable text; bad shapes are PayloadError."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from bridge import simulate
from bridge.errors import PayloadError
from bridge.whatsapp.parse import parse_body, parse_delivery

SENDER = "34600000001"

# (type, the type's body as Meta sends it, the content we record)
CASES: list[tuple[str, Any, str]] = [
    ("text", {"body": "Hola, ¿qué tal? 👋"}, "Hola, ¿qué tal? 👋"),
    (
        "image",
        {"caption": "my receipt", "mime_type": "image/jpeg", "sha256": "x", "id": "m1"},
        "[image] my receipt",
    ),
    ("image", {"mime_type": "image/jpeg", "id": "m1"}, "[image]"),
    ("video", {"caption": "look", "mime_type": "video/mp4", "id": "m2"}, "[video] look"),
    (
        "document",
        {"caption": "invoice", "filename": "inv.pdf", "mime_type": "application/pdf", "id": "m3"},
        "[document] inv.pdf invoice",
    ),
    ("audio", {"mime_type": "audio/ogg; codecs=opus", "id": "m4", "voice": True}, "[voice]"),
    ("audio", {"mime_type": "audio/mpeg", "id": "m5"}, "[audio]"),
    ("sticker", {"mime_type": "image/webp", "id": "m6", "animated": False}, "[sticker]"),
    (
        "location",
        {"latitude": 40.4168, "longitude": -3.7038, "name": "Sol", "address": "Madrid"},
        "[location] 40.4168,-3.7038 Sol Madrid",
    ),
    (
        "interactive",
        {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes please"}},
        "Yes please",
    ),
    (
        "interactive",
        {
            "type": "list_reply",
            "list_reply": {"id": "r1", "title": "Table for 2", "description": "8pm"},
        },
        "Table for 2 — 8pm",
    ),
    ("button", {"payload": "STOP", "text": "Stop promotions"}, "Stop promotions"),
    ("reaction", {"message_id": "wamid.ABC", "emoji": "👍"}, "[reaction] 👍"),
    ("reaction", {"message_id": "wamid.ABC"}, "[reaction removed]"),
    (
        "order",
        {
            "catalog_id": "c1",
            "text": "asap",
            "product_items": [
                {"product_retailer_id": "sku1", "quantity": 2, "item_price": 9.5, "currency": "EUR"}
            ],
        },
        "[order] 1 item(s): 2x sku1 @ 9.5 EUR asap",
    ),
    (
        "system",
        {"body": "User A changed from 1 to 2", "new_wa_id": "2", "type": "user_changed_number"},
        "[system] User A changed from 1 to 2",
    ),
]


def _parse_one(message: dict[str, Any]) -> Any:
    delivery = parse_delivery(simulate.delivery(simulate.change_value([message])))
    (change,) = delivery.changes
    (parsed,) = change.messages
    return parsed


@pytest.mark.parametrize(("mtype", "body", "content"), CASES)
def test_message_type_becomes_readable_content(mtype: str, body: Any, content: str) -> None:
    parsed = _parse_one(simulate.typed_message(mtype, body, SENDER, "wamid.X", 1_700_000_000))
    assert parsed.type == mtype
    assert parsed.content == content
    assert parsed.key == SENDER
    assert parsed.timestamp_ms == 1_700_000_000_000


def test_contacts_message_lists_names_and_phones() -> None:
    message = {
        "from": SENDER,
        "id": "wamid.C",
        "timestamp": "1700000000",
        "type": "contacts",
        "contacts": [
            {
                "name": {"formatted_name": "Ana Ruiz", "first_name": "Ana"},
                "phones": [{"phone": "+34 600 111 222", "type": "CELL"}],
            }
        ],
    }
    assert _parse_one(message).content == "[contacts] Ana Ruiz (+34 600 111 222)"


def test_unsupported_message_keeps_meta_error_text() -> None:
    message = {
        "from": SENDER,
        "id": "wamid.U",
        "timestamp": "1700000000",
        "type": "unsupported",
        "errors": [
            {
                "code": 131051,
                "title": "Message type unknown",
                "error_data": {"details": "Message type is currently not supported."},
            }
        ],
    }
    assert _parse_one(message).content == (
        "[unsupported] 131051: Message type unknown (Message type is currently not supported.)"
    )


def test_unknown_type_is_recorded_not_dropped() -> None:
    parsed = _parse_one({"from": SENDER, "id": "wamid.N", "type": "hologram", "hologram": {"x": 1}})
    assert (parsed.type, parsed.content) == ("hologram", "[hologram]")


def test_reply_context_is_kept() -> None:
    message = simulate.text_message("yes", SENDER)
    message["context"] = {"from": "15550000000", "id": "wamid.PREV"}
    assert _parse_one(message).context_id == "wamid.PREV"


def test_statuses_parse_with_first_error() -> None:
    value = simulate.change_value(
        statuses=[
            simulate.status("wamid.OUT1", "delivered", SENDER),
            simulate.status("wamid.OUT2", "failed", SENDER, error_code=131047),
        ]
    )
    (change,) = parse_delivery(simulate.delivery(value)).changes
    assert [(s.message_id, s.status) for s in change.statuses] == [
        ("wamid.OUT1", "delivered"),
        ("wamid.OUT2", "failed"),
    ]
    assert change.statuses[1].error == "131047: error"


def test_missing_timestamp_means_now() -> None:
    message = simulate.text_message("t", SENDER)
    del message["timestamp"]
    assert _parse_one(message).timestamp_ms > 1_700_000_000_000


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[1, 2]", "body must be a JSON object"),
        (b'{"object": "page", "entry": []}', "'object' must be 'whatsapp_business_account'"),
        (b'{"object": "whatsapp_business_account"}', "body.entry must be a list"),
        (b"\xff\xfe", "body is not valid JSON"),
    ],
)
def test_a_wrong_envelope_names_the_problem(body: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_body(body)
    assert str(caught.value) == reason


@pytest.mark.parametrize(
    ("body", "skipped"),
    [
        (b'{"object": "whatsapp_business_account", "entry": [1]}', ("entry", "not_an_object")),
        (
            b'{"object": "whatsapp_business_account", "entry": [{"changes": {}}]}',
            ("entry", "no_changes"),
        ),
        (
            b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages"}]}]}',
            ("change", "no_value"),
        ),
        (
            b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages",'
            b' "value": {"messages": []}}]}]}',
            ("change", "no_metadata"),
        ),
    ],
)
def test_a_wrong_part_below_the_envelope_is_skipped_with_its_reason(
    body: bytes, skipped: tuple[str, str]
) -> None:
    delivery = parse_body(body)
    assert [(s.what, s.reason) for s in delivery.skipped] == [skipped]
    assert delivery.usable == 0


def test_a_message_without_sender_is_skipped_and_its_neighbour_kept() -> None:
    orphan = simulate.typed_message(
        "system", {"type": "user_changed_user_id", "user_id": "ES.2", "body": "User A changed"}, "x"
    )
    del orphan["from"]
    good = simulate.text_message("kept", SENDER)
    delivery = parse_delivery(simulate.delivery(simulate.change_value([good, orphan])))
    assert [m.content for m in delivery.changes[0].messages] == ["kept"]
    (skipped,) = delivery.skipped
    assert (skipped.what, skipped.reason, skipped.type) == ("message", "no_sender", "system")
    assert skipped.where == "entry[0].changes[0].value.messages[1]"
    assert delivery.usable == 1


def test_username_only_sender_is_keyed_by_user_id_and_finds_its_contact() -> None:
    message = {"from_user_id": "ES.42", "id": "wamid.U1", "type": "text", "text": {"body": "hi"}}
    value = simulate.change_value([message])
    value["contacts"] = [{"profile": {"name": "Vera", "username": "@vera"}, "user_id": "ES.42"}]
    parsed = parse_delivery(simulate.delivery(value)).changes[0].messages[0]
    assert (parsed.key, parsed.phone, parsed.user_id) == ("ES.42", None, "ES.42")
    assert parsed.contact_name == "Vera"
    assert parsed.extra == {"username": "@vera"}


def test_phone_sender_keeps_its_user_id_from_the_contact_card() -> None:
    value = simulate.change_value([simulate.text_message("hi", SENDER, "wamid.P1")])
    value["contacts"] = [{"profile": {"name": "Xavi"}, "wa_id": SENDER, "user_id": "ES.7"}]
    parsed = parse_delivery(simulate.delivery(value)).changes[0].messages[0]
    assert (parsed.key, parsed.phone, parsed.user_id) == (SENDER, SENDER, "ES.7")
    assert parsed.extra == {"user_id": "ES.7"}


def test_flow_answers_become_label_value_lines() -> None:
    body = {
        "type": "nfm_reply",
        "nfm_reply": {
            "name": "flow",
            "body": "Sent",
            "response_json": '{"screen_0_Rating_0": "4", "flow_token": "t", "ok": false}',
        },
    }
    parsed = _parse_one(simulate.typed_message("interactive", body, SENDER))
    assert parsed.content == "[form] Sent\nRating: 4\nok: no"
    assert parsed.extra["flow"]["response"] == {
        "screen_0_Rating_0": "4",
        "flow_token": "t",
        "ok": False,
    }


def test_flow_with_invalid_response_json_keeps_the_text() -> None:
    body = {"type": "nfm_reply", "nfm_reply": {"body": "Sent", "response_json": "{oops"}}
    parsed = _parse_one(simulate.typed_message("interactive", body, SENDER))
    assert parsed.content == "[form] Sent"
    assert parsed.extra == {"flow": {"body": "Sent", "response": "{oops"}}


def test_deeply_nested_unknown_body_is_bounded_so_it_always_serializes() -> None:
    deep: Any = "bottom"
    for _ in range(400):
        deep = [deep]
    deep_json = '{"a": ' + "[" * 400 + "1" + "]" * 400 + "}"
    flow = {"type": "nfm_reply", "nfm_reply": {"response_json": deep_json}}
    for message in (
        simulate.typed_message("hologram", {"x": deep}, SENDER),
        simulate.typed_message("interactive", flow, SENDER),
        simulate.typed_message("edit", {"message": {"type": "edit", "edit": {"x": deep}}}, SENDER),
    ):
        parsed = _parse_one(message)
        orjson.dumps(parsed.extra)  # would raise past orjson's 254 levels
