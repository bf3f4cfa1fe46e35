"""Messages that are events, not questions: what they change, and which messages want a reply.

Meta delivers a deleted message (`revoke`), an edited one (`edit`) and a reaction as messages
of their own. Each stays in the history as the fact it is (`[deleted a message]`,
`[edited] ...`, `[reaction] 👍`), and changes the entry it is about:
- revoke: the original's text is dropped (content `[deleted]`, its extra reduced to the fact),
  so the assistant never sees it again and the next snapshot no longer holds it;
- edit: the original's content becomes the new text; the previous text is kept in its
  extra (`edited.previous`) for the audit trail, where the assistant does not read it;
- reaction: attached to the message it is about (`extra.reaction`), ours or the user's.

These are applied as part of the event's own `MessageAdded`, so memory, replay and snapshots
agree. None of them asks for a reply; neither does a system notice, a sticker, a call
permission answer or an unsupported or unknown type: a reply only when the user said
something.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from bridge.conversations import Conversation, Message

# Types whose message says something to answer. `interactive` only for a button or list
# choice or a Flow's answers (not a call permission answer or an unknown subtype).
SAYS_SOMETHING = frozenset(
    {"text", "image", "video", "document", "audio", "location", "contacts", "button", "order"}
)
EDIT_PREFIX = "[edited] "
EVENT_TYPES = frozenset({"revoke", "edit", "reaction"})


def expects_reply(message: Message, reactions: bool = False) -> bool:
    """Whether a user message asks for an answer (`reactions`: reply to reactions too)."""
    return message.role == "user" and says_something(message.type, message.extra, reactions)


def says_something(
    kind: str | None, extra: Mapping[str, Any] | None, reactions: bool = False
) -> bool:
    """Whether a message of this type (and structured fields) asks for an answer."""
    if kind in SAYS_SOMETHING:
        return True
    if kind == "interactive":
        return "reply" in (extra or {}) or "flow" in (extra or {})
    return reactions and kind == "reaction"


def apply_event(conv: Conversation, message: Message) -> None:
    """Change the entry an event message is about, if the conversation still holds it."""
    extra = message.extra or {}
    if message.type == "revoke":
        target = _sub(extra, "revoke").get("original_id")
        _update(conv, target, _revoked)
    elif message.type == "edit":
        target = _sub(extra, "edit").get("original_id")
        text = message.content.removeprefix(EDIT_PREFIX)
        _update(conv, target, lambda m: _edited(m, text))
    elif message.type == "reaction":
        reaction = _sub(extra, "reaction")
        emoji = reaction.get("emoji")
        _update(conv, reaction.get("message_id"), lambda m: _reacted(m, emoji))


def _sub(extra: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = extra.get(name)
    return value if isinstance(value, Mapping) else {}


def _update(conv: Conversation, target: object, change: Callable[[Message], Message]) -> None:
    """Replace the message whose id (or, for our replies, one of whose wamids) is `target`;
    search from the end, where what people react to usually is."""
    if not isinstance(target, str) or not target:
        return
    for index in range(len(conv.messages) - 1, -1, -1):
        message = conv.messages[index]
        if message.id == target or target in message.wamids:
            conv.messages[index] = change(message)
            return


def _revoked(message: Message) -> Message:
    return replace(message, content="[deleted]", extra={"revoked": True})


def _edited(message: Message, text: str) -> Message:
    extra = dict(message.extra or {})
    extra["edited"] = {"previous": message.content}
    return replace(message, content=text, extra=extra)


def _reacted(message: Message, emoji: object) -> Message:
    extra = dict(message.extra or {})
    if isinstance(emoji, str) and emoji:
        extra["reaction"] = emoji
    else:
        extra.pop("reaction", None)  # the user took the reaction back
    return replace(message, extra=extra or None)
