"""Change records: every mutation of a profile's state is one of these.

The same records are applied to memory and appended to the journal, so replaying the journal
over a snapshot rebuilds exactly what was in memory. Records that touch a conversation carry
the store's sequence number; replay skips those a snapshot already contains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.config import StoreSettings
from bridge.conversations import ConversationMode, Message
from bridge.templates import Template


@dataclass(frozen=True, slots=True)
class MessageAdded:
    """A user message received or an assistant reply produced.

    `received_ms` is when the bridge received it (ms). Only that time decides anything (the
    dedupe horizon, retention, the 24-hour window): the timestamp inside a delivery is the
    sender's word, and a message stamped 1970 or 2100 must neither leave the seen-set early
    nor keep a conversation from expiring. None (records of older versions, imports) means
    the message's own timestamp.
    """

    key: str
    message: Message
    contact_name: str | None = None
    received_ms: int | None = None

    @property
    def at_ms(self) -> int:
        return self.message.timestamp if self.received_ms is None else self.received_ms


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """A reply's delivery state moved (our send, or Meta's status webhook)."""

    message_id: str  # our local id or one of Meta's wamids of the reply
    status: str
    error: str | None = None
    wamids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConversationDeleted:
    """One user's conversation erased (operator's `delete`, retention, a data request).

    `upto` bounds the erasure to what the decision saw: the first `upto` messages ever
    appended to the conversation (its `appended` count when the decision was made). A
    message acknowledged between the decision and this record reaching the journal comes
    later in that count and survives it. None erases everything (records of older versions).
    """

    key: str
    upto: int | None = None


@dataclass(frozen=True, slots=True)
class IdentityLinked:
    """A business-scoped user id seen together with a phone: both are one person, whose
    conversation is keyed by the phone. Applying it also moves a conversation kept under the
    user id (a username-only user who later showed a phone) into the phone's one."""

    user_id: str
    key: str  # the phone: the conversation key


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A reply waiting to be sent; it stays queued until sent or failed for good.

    With `template` (an operator's template message) the item sends that template and no
    text (`text` is empty); it may go out after the 24-hour window, free text may not."""

    id: str  # the assistant message's local id
    key: str  # conversation key
    to: str  # recipient: phone, else the business-scoped user id
    text: str
    created_ms: int
    template: Template | None = None


@dataclass(frozen=True, slots=True)
class OutboxQueued:
    item: OutboxItem


@dataclass(frozen=True, slots=True)
class OutboxDone:
    item_id: str


@dataclass(frozen=True, slots=True)
class OutboxUncertain:
    """A send of this reply may have reached Meta without our hearing back (a timeout, a
    dropped connection, a crash while sending): before sending it again, wait for Meta's
    status webhook that names it. Cleared by OutboxDone."""

    item_id: str


@dataclass(frozen=True, slots=True)
class OutboxConfirmed:
    """Meta's status webhook named part `part` of this queued reply (the part's
    `biz_opaque_callback_data`), as message `wamid`: that part reached Meta. Recorded by
    whichever process (replica) received the status, in the commit before its 200, so an
    outbox anywhere, or after a crash, that is unsure whether the part went out learns that
    it did instead of sending it again. Applies only while the reply is queued; cleared by
    OutboxDone."""

    item_id: str
    part: int
    wamid: str


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """The store's shaping settings from now on (the service's configured ones, committed
    when it opens a store that holds others, or none). A lower cap trims every conversation
    here, so replay trims exactly where the service did."""

    settings: StoreSettings


@dataclass(frozen=True, slots=True)
class ModeChanged:
    """A conversation's mode set by an operator (pause, resume, an operator's message) or by
    the user (a handoff, opt-out or opt-in keyword), with who, when and why (bridge/modes.py).
    Guarded by the conversation's seq like a message; a conversation that no longer exists
    (erased meanwhile) ignores it."""

    key: str
    mode: ConversationMode


@dataclass(frozen=True, slots=True)
class MediaUpdated:
    """What the media work (bridge/media/worker.py) learnt about an inbound message's media:
    stored (encrypted, in the profile's `media/`), failed for good, transcribed, or its
    bytes dropped by media retention. `media` replaces the message's `extra["media"]`;
    `content`, when set, its readable content (`[voice 0:07] quiero fotos de salado`).

    A message with media and no `state` in it is work still to do: that is what makes the
    work durable (the message itself is the queue entry, journaled before the 200)."""

    key: str
    message_id: str
    media: Mapping[str, Any]
    content: str | None = None


Record = (
    MessageAdded
    | StatusChanged
    | ConversationDeleted
    | OutboxQueued
    | OutboxDone
    | OutboxUncertain
    | OutboxConfirmed
    | IdentityLinked
    | SettingsChanged
    | ModeChanged
    | MediaUpdated
)


def settings_to_dict(settings: StoreSettings) -> dict[str, int]:
    return {"max_messages": settings.max_messages, "retention_days": settings.retention_days}


def settings_from_dict(data: dict[str, Any]) -> StoreSettings:
    """ValueError/KeyError/TypeError when malformed (StoreSettings checks the values)."""
    return StoreSettings(data["max_messages"], data["retention_days"])


def template_from_dict(data: Any) -> Template:
    """A stored template (journal, snapshot); ValueError when malformed, like any record."""
    try:
        return Template.from_stored(data)
    except ValueError as exc:
        raise ValueError(f"outbox item: {exc}") from None


def record_to_dict(record: Record) -> dict[str, Any]:
    """A compact JSON-able dict with a one-letter kind tag."""
    match record:
        case MessageAdded(key, message, contact_name, received_ms):
            out: dict[str, Any] = {"t": "m", "k": key, "m": message.to_dict()}
            if contact_name:
                out["n"] = contact_name
            if received_ms is not None:
                out["r"] = received_ms
            return out
        case StatusChanged(message_id, status, error, wamids):
            return {"t": "s", "i": message_id, "s": status, "e": error, "w": list(wamids)}
        case ConversationDeleted(key, upto):
            return {"t": "d", "k": key} if upto is None else {"t": "d", "k": key, "u": upto}
        case OutboxQueued(item):
            out = {
                "t": "q",
                "i": item.id,
                "k": item.key,
                "to": item.to,
                "x": item.text,
                "c": item.created_ms,
            }
            if item.template is not None:
                out["tp"] = item.template.to_dict()  # absent in records of older versions
            return out
        case OutboxDone(item_id):
            return {"t": "o", "i": item_id}
        case OutboxUncertain(item_id):
            return {"t": "u", "i": item_id}
        case OutboxConfirmed(item_id, part, wamid):
            return {"t": "f", "i": item_id, "p": part, "w": wamid}
        case IdentityLinked(user_id, key):
            return {"t": "l", "u": user_id, "k": key}
        case SettingsChanged(settings):
            return {"t": "c", **settings_to_dict(settings)}
        case ModeChanged(key, mode):
            return {"t": "mo", "k": key, **mode.to_dict()}
        case MediaUpdated(key, message_id, media, content):
            out = {"t": "a", "k": key, "i": message_id, "x": dict(media)}
            if content is not None:
                out["m"] = content
            return out
    raise TypeError(f"not a record: {record!r}")


def record_from_dict(data: dict[str, Any]) -> Record:
    """Inverse of record_to_dict; KeyError/ValueError/TypeError mean a corrupt record."""
    kind = data["t"]
    if kind == "m":
        received = data.get("r")
        return MessageAdded(
            data["k"],
            Message.from_dict(data["m"]),
            data.get("n"),
            None if received is None else int(received),
        )
    if kind == "s":
        return StatusChanged(data["i"], data["s"], data.get("e"), tuple(data.get("w", ())))
    if kind == "d":
        upto = data.get("u")
        return ConversationDeleted(data["k"], None if upto is None else int(upto))
    if kind == "q":
        template = data.get("tp")
        return OutboxQueued(
            OutboxItem(
                data["i"],
                data["k"],
                data["to"],
                data["x"],
                int(data["c"]),
                None if template is None else template_from_dict(template),
            )
        )
    if kind == "o":
        return OutboxDone(data["i"])
    if kind == "u":
        return OutboxUncertain(data["i"])
    if kind == "f":
        return OutboxConfirmed(str(data["i"]), int(data["p"]), str(data["w"]))
    if kind == "l":
        return IdentityLinked(str(data["u"]), str(data["k"]))
    if kind == "c":
        return SettingsChanged(settings_from_dict(data))
    if kind == "mo":
        return ModeChanged(str(data["k"]), ConversationMode.from_dict(data))
    if kind == "a":
        media, content = data["x"], data.get("m")
        if type(media) is not dict or not (content is None or type(content) is str):
            raise ValueError("media update: malformed media or content")
        return MediaUpdated(str(data["k"]), str(data["i"]), media, content)
    raise ValueError(f"unknown record kind {kind!r}")


def encode(seq: int, record: Record) -> bytes:
    """One journal payload: the sequence number and the record, as JSON."""
    return orjson.dumps({"q": seq, **record_to_dict(record)})


def decode(payload: bytes) -> tuple[int, Record]:
    data = orjson.loads(payload)
    return int(data["q"]), record_from_dict(data)
