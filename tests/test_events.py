"""Events that are not questions: a deletion, an edit, a reaction or a number change changes
what it is about and gets no reply; only a message that says something is answered."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from bridge import simulate
from bridge.conversations import ConversationView
from tests.conftest import PHONE_NUMBER_ID, Bridge, StartBridge, make_profile

ANA = "34600000001"


async def post(
    bridge: Bridge, mtype: str, body: Any, sender: str = ANA, wamid: str | None = None
) -> str:
    message = simulate.typed_message(mtype, body, sender, wamid)
    value = simulate.change_value([message], phone_number_id=PHONE_NUMBER_ID)
    response = await bridge.post(simulate.delivery(value))
    assert response.status == 200, await response.text()
    await bridge.settle()
    return str(message["id"])


def conversation(bridge: Bridge, key: str = ANA) -> ConversationView:
    view = bridge.state().get(key)
    assert view is not None
    return view


def replies(bridge: Bridge, key: str = ANA) -> list[str]:
    return [m.content for m in conversation(bridge, key).messages if m.role == "assistant"]


async def test_a_deleted_message_loses_its_text_and_gets_no_reply(bridge: Bridge) -> None:
    original = await post(bridge, "text", {"body": "my card is 4111 1111"})
    await post(bridge, "revoke", {"original_message_id": original})
    messages = conversation(bridge).messages
    assert [m.content for m in messages] == [
        "[deleted]",
        "Echo: my card is 4111 1111",
        "[deleted a message]",
    ]
    assert messages[0].extra == {"revoked": True}
    assert replies(bridge) == ["Echo: my card is 4111 1111"]  # no reply to the deletion


async def test_an_edit_changes_the_original_and_keeps_the_previous_text_aside(
    bridge: Bridge,
) -> None:
    original = await post(bridge, "text", {"body": "quiero 2 kilos"})
    edit = {
        "original_message_id": original,
        "message": {"type": "text", "text": {"body": "quiero 3 kilos"}},
    }
    await post(bridge, "edit", edit)
    first = conversation(bridge).messages[0]
    assert first.content == "quiero 3 kilos"
    assert first.extra is not None and first.extra["edited"]["previous"] == "quiero 2 kilos"
    assert replies(bridge) == ["Echo: quiero 2 kilos"]


async def test_a_reaction_attaches_to_our_reply_and_gets_no_answer(bridge: Bridge) -> None:
    await post(bridge, "text", {"body": "gracias"})
    reply = conversation(bridge).messages[-1]
    assert reply.role == "assistant"
    target = reply.wamids[0] if reply.wamids else reply.id
    await post(bridge, "reaction", {"message_id": target, "emoji": "👍"})
    reacted = conversation(bridge).messages[1]
    assert reacted.extra is not None and reacted.extra["reaction"] == "👍"
    await post(bridge, "reaction", {"message_id": target, "emoji": ""})
    assert "reaction" not in (conversation(bridge).messages[1].extra or {})
    assert replies(bridge) == ["Echo: gracias"]


async def test_reactions_are_answered_when_configured(
    start_bridge: StartBridge, tmp_path: Path
) -> None:
    bridge = await start_bridge(profiles=[replace(make_profile(tmp_path), reply_to_reactions=True)])
    original = await post(bridge, "text", {"body": "hola"})
    await post(bridge, "reaction", {"message_id": original, "emoji": "❤️"})
    assert replies(bridge) == ["Echo: hola", "Echo: [reaction] ❤️"]


async def test_a_number_change_moves_the_conversation_and_gets_no_reply(bridge: Bridge) -> None:
    await post(bridge, "text", {"body": "hola"})
    new = "34600000099"
    notice = {
        "body": f"User changed from {ANA} to {new}",
        "new_wa_id": new,
        "type": "user_changed_number",
    }
    await post(bridge, "system", notice)
    assert bridge.state().get(ANA) is None
    moved = conversation(bridge, new)
    assert [m.content for m in moved.messages][:2] == ["hola", "Echo: hola"]
    assert moved.messages[-1].type == "system"
    assert replies(bridge, new) == ["Echo: hola"]
    await post(bridge, "text", {"body": "soy yo, nuevo número"}, sender=new)
    assert replies(bridge, new)[-1] == "Echo: soy yo, nuevo número"


async def test_only_messages_that_say_something_are_answered(bridge: Bridge) -> None:
    await post(bridge, "sticker", {"id": "1", "mime_type": "image/webp"})
    await post(bridge, "unsupported", {"type": "video_note"})
    await post(
        bridge,
        "interactive",
        {"type": "call_permission_reply", "call_permission_reply": {"response": "accept"}},
    )
    assert replies(bridge) == []
    await post(
        bridge, "interactive", {"type": "button_reply", "button_reply": {"id": "b1", "title": "Sí"}}
    )
    assert replies(bridge) == ["Echo: Sí"]
