"""Conversations in memory: per user, capped, in the seed's JSON shape when written out.

The seed stored `{"messages": [{"role", "content", "timestamp"}], "lastActivity",
"firstInteraction"}` per phone; we keep that shape and add optional fields (id, type, status,
extra, and the conversation's `mode`) that the seed's tools ignore.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from bridge.errors import CorruptStateError
from bridge.persistence import packed

# Delivery states of an outgoing message, in the order Meta reports them. Meta may deliver
# statuses out of order (a "delivered" after a "read"); we never move a message backwards.
# "logged": no access token, the reply was written to the log instead of sent (final).
STATUS_RANK = {"pending": 0, "logged": 1, "sent": 1, "delivered": 2, "read": 3}
# "cancelled": an assistant reply held back before it was sent, because a person took the
# conversation over or the user opted out meanwhile (bridge/modes.py).
TERMINAL_STATUSES = ("failed", "expired", "undeliverable", "cancelled")

# Who answers a conversation (bridge/modes.py): the assistant; nobody but a person (paused,
# optionally until a time); nobody at all (the user opted out: only explicit operator sends).
ASSISTANT, PAUSED, OPTED_OUT = "assistant", "paused", "opted_out"
MODES = (ASSISTANT, PAUSED, OPTED_OUT)


@dataclass(frozen=True, slots=True)
class ConversationMode:
    """A conversation's mode as last set, with who set it, when and why.

    A pause with `until_ms` ends by itself at that time: nothing is written then, the mode
    simply reads as `assistant` from that moment (`current`). Kept after the change that
    ended it, because the time the assistant took over again decides which messages it
    still owes an answer after a restart (`assistant_since`)."""

    mode: str
    at_ms: int  # when it was set (for a keyword: when its message was received)
    by: str  # an operator's name, "cli", "api", or "user" (a keyword)
    reason: str | None = None
    until_ms: int | None = None  # a pause's end

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.until_ms is not None and self.mode != PAUSED:
            raise ValueError(f"only a pause has an end, not mode {self.mode!r}")

    def current(self, now_ms: int) -> str:
        """The mode in effect at `now_ms`: an ended pause reads as `assistant`."""
        if self.mode == PAUSED and self.until_ms is not None and now_ms >= self.until_ms:
            return ASSISTANT
        return self.mode

    def assistant_since(self, now_ms: int) -> int | None:
        """Since when the assistant answers (ms), or None if it does not at `now_ms`."""
        if self.current(now_ms) != ASSISTANT:
            return None
        return self.until_ms if self.mode == PAUSED and self.until_ms is not None else self.at_ms

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "at": self.at_ms, "by": self.by}
        if self.reason is not None:
            out["reason"] = self.reason
        if self.until_ms is not None:
            out["until"] = self.until_ms
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConversationMode:
        """ValueError unless every field has its type."""
        mode, at, by = data.get("mode"), data.get("at"), data.get("by")
        reason, until = data.get("reason"), data.get("until")
        if type(mode) is not str or type(at) is not int or type(by) is not str:
            raise ValueError(f"malformed conversation mode: {_shown(dict(data))}")
        if (reason is not None and type(reason) is not str) or (
            until is not None and type(until) is not int
        ):
            raise ValueError(f"malformed conversation mode: {_shown(dict(data))}")
        return cls(mode, at, by, reason, until)


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
        """Parse a stored or imported message; ValueError (saying what is wrong) unless every
        field has its type. Strict, because a wrong type goes on to break what later writes
        it: an int id in the seen-set, a timestamp past 64 bits, fail every snapshot."""
        try:
            get = data.get
        except AttributeError:
            raise ValueError(f"not an object: {_shown(data)}") from None
        role, content, timestamp = get("role"), get("content"), get("timestamp")
        message_id, kind, status, error = get("id"), get("type"), get("status"), get("error")
        wamids = get("wamids") or ()
        reply_to, extra = get("replyTo"), get("extra")
        # One expression for the common case (millions of messages at start-up).
        if (
            role in ROLES
            and type(content) is str
            and type(timestamp) is int
            and INT64_MIN <= timestamp <= INT64_MAX
            and (message_id is None or (type(message_id) is str and message_id != ""))
            and (kind is None or type(kind) is str)
            and (status is None or type(status) is str)
            and (error is None or type(error) is str)
            and (not wamids or (type(wamids) is list and all(type(w) is str for w in wamids)))
            and (reply_to is None or type(reply_to) is str)
        ):
            return cls(
                role,
                content,
                timestamp,
                message_id,
                kind,
                status,
                error,
                tuple(wamids),
                reply_to,
                extra if type(extra) is dict and extra else None,
            )
        raise ValueError(_problem(data))


ROLES = ("user", "assistant")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what orjson (journal, snapshots) can write


def _problem(data: dict[str, Any]) -> str:
    """What is wrong with a message `Message.from_dict` refused, in a few words."""
    role = data.get("role")
    if role not in ROLES:
        return f"role must be 'user' or 'assistant', got {_shown(role)}"
    if type(data.get("content")) is not str:
        return f"content must be a string, got {_shown(data.get('content'))}"
    timestamp = data.get("timestamp")
    if type(timestamp) is not int or not INT64_MIN <= timestamp <= INT64_MAX:
        return f"timestamp must be whole milliseconds, got {_shown(timestamp)}"
    if data.get("id") is not None and (type(data["id"]) is not str or not data["id"]):
        return f"id must be a non-empty string, got {_shown(data['id'])}"
    for name in ("type", "status", "error", "replyTo"):
        if data.get(name) is not None and type(data[name]) is not str:
            return f"{name} must be a string, got {_shown(data[name])}"
    return f"wamids must be a list of strings, got {_shown(data.get('wamids'))}"


def _shown(value: Any) -> str:
    """A value as it reads in JSON, cut short: for one-line error messages."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = orjson.dumps(value, default=repr).decode()
        except TypeError:  # an int past 64 bits
            text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# WhatsApp's customer service window: free-form messages only within 24 h of the user's last
# message (Meta answers 131047 after it); only an approved template may be sent then.
WINDOW_MS = 24 * 3600 * 1000


def window_until(last_user_message: int | None) -> int | None:
    """When the 24-hour window that the user's last message opened closes (ms), or None."""
    return None if last_user_message is None else last_user_message + WINDOW_MS


@dataclass(frozen=True, slots=True)
class ConversationView:
    """A read-only copy handed out by the store; later changes do not show through it."""

    key: str
    messages: tuple[Message, ...]
    first_interaction: int
    last_activity: int
    last_user_message: int | None
    contact_name: str | None
    mode: ConversationMode | None = None

    @property
    def window_until(self) -> int | None:
        return window_until(self.last_user_message)

    def window_open(self, now_ms: int) -> bool:
        until = self.window_until
        return until is not None and now_ms < until


class Conversation:
    """The mutable per-user record inside the store; never handed out directly.

    A conversation loaded from a snapshot starts *cold*: its messages stay the packed bytes
    they were stored as (bridge/persistence/packed.py) until something reads `messages`,
    which decodes them once, transparently. Everything else (times, name, mode, counts) is
    plain fields, readable without decoding."""

    __slots__ = (
        "_cap",
        "_cold",
        "_count",
        "_messages",
        "_settled",
        "appended",
        "contact_name",
        "first_interaction",
        "key",
        "last_activity",
        "last_user_message",
        "mode",
        "seq",
    )

    def __init__(self, key: str, cap: int | None, now_ms: int) -> None:
        self.key = key
        self._messages: deque[Message] | None = deque(maxlen=cap)
        # Cold: the packed messages (and their count, and whether `unanswered` is None).
        self._cold: bytes | None = None
        self._cap = cap
        self._count = 0
        self._settled = False
        self.first_interaction = now_ms
        self.last_activity = now_ms
        self.last_user_message: int | None = None
        self.contact_name: str | None = None
        self.mode: ConversationMode | None = None  # None: the assistant's, as always
        # Sequence number of the last change applied; replay skips changes at or below it.
        self.seq = 0
        # Messages ever appended, including those the cap dropped: message i of `messages`
        # is number `appended - len(messages) + i`. A bounded erasure names a count.
        self.appended = 0

    @property
    def messages(self) -> deque[Message]:
        """The messages, oldest first (decoded now if the conversation was cold)."""
        messages = self._messages
        return messages if messages is not None else self._thaw()

    @messages.setter
    def messages(self, value: deque[Message]) -> None:
        self._messages, self._cold, self._cap = value, None, value.maxlen

    @property
    def cold(self) -> bytes | None:
        """The packed messages while nothing has decoded them since loading, else None."""
        return self._cold

    @property
    def count(self) -> int:
        """How many messages it holds, without decoding a cold conversation."""
        return self._count if self._messages is None else len(self._messages)

    @property
    def cap(self) -> int | None:
        return self._cap if self._messages is None else self._messages.maxlen

    def recap(self, cap: int | None) -> None:
        """Change the cap of a conversation that holds no more than `cap` messages."""
        if self._messages is None:
            self._cap = cap
        elif self._messages.maxlen != cap:
            self._messages = deque(self._messages, maxlen=cap)

    def _thaw(self) -> deque[Message]:
        assert self._cold is not None
        try:
            rows = packed.messages(self._cold)
        except packed.PackError as exc:
            raise CorruptStateError(f"conversation {self.key!r}: {exc}") from None
        messages = deque(map(Message.from_dict, rows), maxlen=self._cap)
        if len(messages) != self._count:
            raise CorruptStateError(
                f"conversation {self.key!r}: {len(messages)} messages stored, "
                f"{self._count} announced"
            )
        self._messages, self._cold = messages, None
        return messages

    @classmethod
    def frozen(cls, key: str, data: dict[str, Any], cold: bytes, cap: int | None) -> Conversation:
        """A cold conversation: `data` is its seed object without `messages` (`head`), `cold`
        its packed messages."""
        conv = cls(key, cap, 0)
        conv._messages, conv._cold = None, cold
        count = data.get("count")
        if type(count) is not int or count < 0:
            raise ValueError(f"malformed message count: {_shown(count)}")
        conv._count = count
        conv._settled = data.get("settled") is True
        conv._set_fields(data, None)
        return conv

    def head(self, settled: bool) -> dict[str, Any]:
        """The seed object without its messages, plus their `count` and, when `settled`,
        that no user message waits for an answer (`unanswered` is None): what a snapshot
        stores beside the packed messages."""
        out = self._fields()
        out["count"] = self.count
        if settled:
            out["settled"] = True
        return out

    @property
    def settled(self) -> bool:
        """Known without decoding that no user message waits for an answer (cold only)."""
        return self._messages is None and self._settled

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
        """Move a reply's delivery state forward; False if no message has `message_id`."""
        found = self._status_update(message_id, status, error, wamids)
        if found is None:
            return False
        index, updated = found
        self.messages[index] = updated
        return True

    def status_would_change(
        self, message_id: str, status: str, error: str | None, wamids: tuple[str, ...]
    ) -> bool:
        """Whether `update_status` with these would change the reply (a later state, an
        error, a new wamid), without changing it."""
        found = self._status_update(message_id, status, error, wamids)
        if found is None:
            return False
        index, updated = found
        before = self.messages[index]
        return (updated.status, updated.error, updated.wamids) != (
            before.status,
            before.error,
            before.wamids,
        )

    def _status_update(
        self, message_id: str, status: str, error: str | None, wamids: tuple[str, ...]
    ) -> tuple[int, Message] | None:
        """Where the reply is and what it becomes; search from the end, where replies are."""
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
            return index, replace(
                message,
                status=new_status,
                error=error or message.error,
                wamids=message.wamids + tuple(w for w in wamids if w not in message.wamids),
            )
        return None

    def unanswered(self, wants_reply: Callable[[Message], bool] | None = None) -> Message | None:
        """The newest user message (that `wants_reply`) if no reply answers it or any user
        message after the newest one answered: the one to answer (with the run before it as
        history) after a crash or a stop interrupted the replier."""
        if self.settled:
            return None  # known when it was packed: no need to decode it to tell
        answered = {m.reply_to for m in self.messages if m.role == "assistant" and m.reply_to}
        last_user: Message | None = None
        for message in reversed(self.messages):
            if message.role != "user":
                if message.reply_to is None and last_user is None:
                    return None  # a reply of an older version: it answered what preceded it
                continue
            if message.id in answered:
                return last_user
            if last_user is None and (wants_reply is None or wants_reply(message)):
                last_user = message
        return last_user

    def view(self) -> ConversationView:
        return ConversationView(
            key=self.key,
            messages=tuple(self.messages),
            first_interaction=self.first_interaction,
            last_activity=self.last_activity,
            last_user_message=self.last_user_message,
            contact_name=self.contact_name,
            mode=self.mode,
        )

    def to_seed(self) -> dict[str, Any]:
        """The seed's conversation object, plus our optional fields."""
        return {"messages": [m.to_dict() for m in self.messages], **self._fields()}

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "lastActivity": self.last_activity,
            "firstInteraction": self.first_interaction,
        }
        if self.last_user_message is not None:
            out["lastUserMessage"] = self.last_user_message
        if self.contact_name is not None:
            out["name"] = self.contact_name
        if self.mode is not None:
            out["mode"] = self.mode.to_dict()
        if self.seq:
            out["seq"] = self.seq
        if self.appended != self.count:
            out["appended"] = self.appended
        return out

    def _set_fields(self, data: dict[str, Any], messages: list[Message] | None) -> None:
        """The fields of a seed object; `messages` (None for a cold one) supply the defaults
        of files that predate a field."""
        first = data.get("firstInteraction") or (messages[0].timestamp if messages else 0)
        self.first_interaction = int(first)
        self.last_activity = int(data.get("lastActivity") or first)
        last_user = data.get("lastUserMessage")
        if last_user:
            self.last_user_message = int(last_user)
        elif messages is not None:
            user_times = [m.timestamp for m in messages if m.role == "user"]
            self.last_user_message = max(user_times, default=None)
        self.contact_name = data.get("name")
        mode = data.get("mode")
        if mode is not None:
            if not isinstance(mode, dict):
                raise ValueError(f"malformed conversation mode: {_shown(mode)}")
            self.mode = ConversationMode.from_dict(mode)
        self.seq = int(data.get("seq") or 0)
        self.appended = max(self.count, int(data.get("appended") or 0))

    @classmethod
    def from_seed(cls, key: str, data: dict[str, Any], cap: int | None) -> Conversation:
        messages = [Message.from_dict(m) for m in data.get("messages", [])]
        conv = cls(key, cap, 0)
        conv.messages.extend(messages)
        conv._set_fields(data, messages)
        return conv
