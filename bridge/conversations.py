"""Conversations in memory: per user, capped, in the seed's JSON shape when written out.

The seed stored `{"messages": [{"role", "content", "timestamp"}], "lastActivity",
"firstInteraction"}` per phone; we keep that shape and add optional fields (id, type, status,
extra) that the seed's tools ignore.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

# Delivery states of an outgoing message, in the order Meta reports them. Meta may deliver
# statuses out of order (a "delivered" after a "read"); we never move a message backwards.
# "logged": no access token, the reply was written to the log instead of sent (final).
STATUS_RANK = {"pending": 0, "logged": 1, "sent": 1, "delivered": 2, "read": 3}
TERMINAL_STATUSES = ("failed", "expired", "undeliverable")


@dataclass(frozen=True, slots=True)
class Message:
    """One history entry; frozen so views can share it without copying."""

    role: str  # "user" or "assistant"
    content: str
    timestamp: int  # ms since the epoch
    id: str | None = None  # inbound wamid, or our local id for an assistant reply
    type: str | None = None  # WhatsApp message type of an inbound message
    status: str | None = None  # delivery state of an assistant reply
    error: str | None = None  # why a reply failed, e.g. "131047: Re-engagement message"
    wamids: tuple[str, ...] = ()  # Meta's ids of the sent parts of a reply
    reply_to: str | None = None  # the user message a reply answers (its wamid)
    # Structured fields of an inbound message that its readable `content` cannot carry:
    # reply ids and payloads, referral (ad), context, media ids, ... (whatsapp/content.py).
    # A small JSON-able dict, shared and never mutated.
    extra: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The seed's three fields first, optional ones only when set."""
        out: dict[str, Any] = {
            "role": self.role,
            "content": self.content,
            "timestamp": self.timestamp,
        }
        if self.id is not None:
            out["id"] = self.id
        if self.type is not None:
            out["type"] = self.type
        if self.status is not None:
            out["status"] = self.status
        if self.error is not None:
            out["error"] = self.error
        if self.wamids:
            out["wamids"] = list(self.wamids)
        if self.reply_to is not None:
            out["replyTo"] = self.reply_to
        if self.extra:
            out["extra"] = self.extra
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        return cls(
            role=str(data["role"]),
            content=str(data["content"]),
            timestamp=int(data["timestamp"]),
            id=data.get("id"),
            type=data.get("type"),
            status=data.get("status"),
            error=data.get("error"),
            wamids=tuple(data.get("wamids", ())),
            reply_to=data.get("replyTo"),
            extra=extra if isinstance(extra := data.get("extra"), dict) and extra else None,
        )


@dataclass(frozen=True, slots=True)
class ConversationView:
    """A read-only copy handed out by the store; later changes do not show through it."""

    key: str
    messages: tuple[Message, ...]
    first_interaction: int
    last_activity: int
    last_user_message: int | None
    contact_name: str | None


class Conversation:
    """The mutable per-user record inside the store; never handed out directly."""

    __slots__ = (
        "appended",
        "contact_name",
        "first_interaction",
        "key",
        "last_activity",
        "last_user_message",
        "messages",
        "seq",
    )

    def __init__(self, key: str, cap: int, now_ms: int) -> None:
        self.key = key
        self.messages: deque[Message] = deque(maxlen=cap)
        self.first_interaction = now_ms
        self.last_activity = now_ms
        self.last_user_message: int | None = None
        self.contact_name: str | None = None
        # Sequence number of the last change applied; replay skips changes at or below it.
        self.seq = 0
        # Messages ever appended, including those the cap dropped: message i of `messages`
        # is number `appended - len(messages) + i`. A bounded erasure names a count.
        self.appended = 0

    def append(self, message: Message, at_ms: int | None = None) -> None:
        """Add a message received (or produced) at `at_ms` (default: its own timestamp); the
        deque's maxlen drops the oldest past the cap."""
        at = message.timestamp if at_ms is None else at_ms
        self.messages.append(message)
        self.appended += 1
        self.last_activity = max(self.last_activity, at)
        self.first_interaction = min(self.first_interaction, message.timestamp)
        if message.role == "user":
            # The 24-hour customer service window opens/renews on each user message.
            self.last_user_message = max(self.last_user_message or 0, at)

    def erase_before(self, upto: int) -> list[Message]:
        """Drop the messages numbered below `upto` (see `appended`); returns them."""
        count = min(len(self.messages), upto - (self.appended - len(self.messages)))
        return [self.messages.popleft() for _ in range(max(0, count))]

    def update_status(
        self, message_id: str, status: str, error: str | None, wamids: tuple[str, ...]
    ) -> bool:
        """Move a reply's delivery state forward; search from the end, where replies are."""
        for index in range(len(self.messages) - 1, -1, -1):
            message = self.messages[index]
            if message.id != message_id:
                continue
            new_status = message.status
            if status in TERMINAL_STATUSES or STATUS_RANK.get(status, -1) > STATUS_RANK.get(
                message.status or "", -1
            ):
                new_status = status
            if message.status in TERMINAL_STATUSES and status not in TERMINAL_STATUSES:
                new_status = message.status
            self.messages[index] = replace(
                message,
                status=new_status,
                error=error or message.error,
                wamids=message.wamids + tuple(w for w in wamids if w not in message.wamids),
            )
            return True
        return False

    def unanswered(self) -> Message | None:
        """The newest user message if no reply answers it or any user message after the
        newest one answered: the one to answer (with the run before it as history) after a
        crash or a stop interrupted the replier."""
        answered = {m.reply_to for m in self.messages if m.role == "assistant" and m.reply_to}
        last_user: Message | None = None
        for message in reversed(self.messages):
            if message.role != "user":
                if message.reply_to is None and last_user is None:
                    return None  # a reply of an older version: it answered what preceded it
                continue
            if message.id in answered:
                return last_user
            last_user = last_user or message
        return last_user

    def view(self) -> ConversationView:
        return ConversationView(
            key=self.key,
            messages=tuple(self.messages),
            first_interaction=self.first_interaction,
            last_activity=self.last_activity,
            last_user_message=self.last_user_message,
            contact_name=self.contact_name,
        )

    def to_seed(self) -> dict[str, Any]:
        """The seed's conversation object, plus our optional fields."""
        out: dict[str, Any] = {
            "messages": [m.to_dict() for m in self.messages],
            "lastActivity": self.last_activity,
            "firstInteraction": self.first_interaction,
        }
        if self.last_user_message is not None:
            out["lastUserMessage"] = self.last_user_message
        if self.contact_name is not None:
            out["name"] = self.contact_name
        if self.seq:
            out["seq"] = self.seq
        if self.appended != len(self.messages):
            out["appended"] = self.appended
        return out

    @classmethod
    def from_seed(cls, key: str, data: dict[str, Any], cap: int) -> Conversation:
        messages = [Message.from_dict(m) for m in data.get("messages", [])]
        first = int(data.get("firstInteraction") or (messages[0].timestamp if messages else 0))
        conv = cls(key, cap, first)
        conv.messages.extend(messages)
        conv.last_activity = int(data.get("lastActivity") or first)
        user_times = [m.timestamp for m in messages if m.role == "user"]
        last_user = data.get("lastUserMessage")
        conv.last_user_message = int(last_user) if last_user else max(user_times, default=None)
        conv.contact_name = data.get("name")
        conv.seq = int(data.get("seq") or 0)
        conv.appended = max(len(conv.messages), int(data.get("appended") or 0))
        return conv
