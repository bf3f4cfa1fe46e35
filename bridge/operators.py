"""What a person can do to a conversation: pause the assistant, resume it, write as themselves,
erase it.

Transport-free: the HTTP API (bridge/http/api.py), `sessions-admin` (on the store of a
stopped bridge) and the control channel all call these same functions on a `Store`, so each
way does exactly the same thing. Every action is one journal commit: durable when it
returns, and atomic (an operator's message, its outbox item and the pause it starts are
written together or not at all).

An operator's message is recorded with role `assistant` and `extra.operator` = the
operator's name, so the assistant sees it as context later, and goes out through the durable
outbox like any reply (split, retried, failures recorded on it). It pauses its conversation
for the profile's `handoff_minutes`, so the assistant does not talk over a person.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.config import ProfileConfig
from bridge.conversations import (
    ASSISTANT,
    OPTED_OUT,
    PAUSED,
    Conversation,
    ConversationMode,
    Message,
)
from bridge.errors import BridgeError
from bridge.identities import normalize_key
from bridge.modes import OPERATOR, current_mode
from bridge.ops.logs import get_logger, mask
from bridge.records import MessageAdded, ModeChanged, OutboxItem, OutboxQueued, Record
from bridge.state import State
from bridge.store.base import Store
from bridge.templates import Template

# WhatsApp's customer service window: free-form messages only within 24 h of the user's last
# message; after it only (paid, approved) template messages (`send_template`).
WINDOW_MS = 24 * 3600 * 1000
# An operator's message: WhatsApp takes 4096 characters a message; longer ones go out in
# parts, up to this many characters in all.
MAX_TEXT = 16_384
MAX_NAME = 64
MAX_REASON = 500
MAX_PAUSE_MS = 366 * 24 * 3600 * 1000
# The key of an operator's template message's `extra`: {"name", "language", "params"}.
TEMPLATE = "template"


class OperatorError(BridgeError):
    """An operator's request that cannot be done as asked (HTTP 400)."""


class NoSuchConversation(OperatorError):
    """No conversation under that key (HTTP 404)."""


class ModeConflict(OperatorError):
    """The conversation's mode forbids the request (HTTP 409)."""


class WindowClosed(OperatorError):
    """The 24-hour window is closed: WhatsApp would refuse a free-form message (HTTP 409)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def window_closes_at(conv: Conversation) -> int | None:
    """When the conversation's 24-hour window closes (or closed); None: the user never wrote."""
    last = conv.last_user_message
    return None if last is None else last + WINDOW_MS


def mode_json(mode: ConversationMode | None, now: int) -> dict[str, Any]:
    """A conversation's mode as the API and `--json` show it: the mode in effect now, and
    the last change with who, when and why (absent if none was ever made)."""
    out: dict[str, Any] = {"mode": current_mode(mode, now)}
    if mode is not None:
        out["set"] = mode.to_dict()
    return out


@dataclass(frozen=True, slots=True)
class ModeOutcome:
    key: str
    mode: ConversationMode | None  # the conversation's mode after the request
    changed: bool  # False: it already was what was asked (nothing written)

    def to_json(self, now: int) -> dict[str, Any]:
        return {"key": self.key, "changed": self.changed, **mode_json(self.mode, now)}


@dataclass(frozen=True, slots=True)
class SendOutcome:
    key: str
    id: str  # the message's id, which is its outbox item's id
    mode: ConversationMode | None  # after the send (paused for handoff_minutes, usually)

    def to_json(self, now: int) -> dict[str, Any]:
        return {"key": self.key, "id": self.id, "status": "pending", **mode_json(self.mode, now)}


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    key: str
    messages: int  # how many were erased

    def to_json(self, now: int) -> dict[str, Any]:
        return {"key": self.key, "deleted": True, "messages": self.messages}


def _encodable(text: str, what: str) -> str:
    """Text that can be stored: a command line can carry bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise OperatorError(f"{what} is not valid UTF-8 text") from None
    return text


def _name(who: str) -> str:
    name = " ".join(_encodable(who, "an operator's name").split())
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise OperatorError(f"an operator's name is 1 to {MAX_NAME} printable characters")
    return name


def _reason(why: str | None) -> str | None:
    if why is None or not _encodable(why, "a reason").strip():
        return None
    if len(why) > MAX_REASON:
        raise OperatorError(f"a reason is at most {MAX_REASON} characters")
    return why.strip()


class Operators:
    """The operator actions on one profile's store. `on_queued(key)` is told of a message
    queued for sending (the bridge's outbox, to send it now; nothing without a bridge: the
    next start sends it); `on_action(name)` of every action done (metrics)."""

    def __init__(
        self,
        store: Store,
        profile: ProfileConfig,
        *,
        on_queued: Callable[[str], None] | None = None,
        on_action: Callable[[str], None] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self._profile = profile
        self._on_queued = on_queued
        self._on_action = on_action
        self._clock = clock
        self._log = get_logger(profile=profile.slug)

    def _done(self, action: str, key: str, **fields: Any) -> None:
        self._log.info(f"operator_{action}", key=mask(key), **fields)
        if self._on_action is not None:
            self._on_action(action)

    def conversation(self, typed: str, state: State | None = None) -> Conversation:
        """The conversation for a key as an operator typed it (a phone in any notation, a
        user id, or a user id linked to a phone); NoSuchConversation if there is none."""
        state = self._store.state if state is None else state
        key = state.resolve(normalize_key(typed))
        conv = state.conversations.get(key)
        if conv is None:
            raise NoSuchConversation(f"no conversation {key!r} in profile {self._profile.slug!r}")
        return conv

    async def _found(self, typed: str) -> Conversation:
        """`conversation`, on the state with what other replicas committed brought in (a
        conversation another replica just recorded exists here too). Each action decides
        again on the settled state, when it commits (`Store.commit_decided`)."""
        await self._store.refresh()
        return self.conversation(typed)

    async def pause(
        self, key: str, *, until_ms: int | None = None, who: str, why: str | None = None
    ) -> ModeOutcome:
        """A person takes over: the assistant stops answering, until `until_ms` if given
        (then it answers new messages again by itself), else until `resume`."""
        await self._found(key)  # a missing one is said first, before any other mistake
        now = self._clock()
        if until_ms is not None and not now < until_ms <= now + MAX_PAUSE_MS:
            raise OperatorError("a pause must end in the future, and within a year")
        mode = ConversationMode(PAUSED, now, _name(who), _reason(why), until_ms)

        def decide(state: State) -> list[Record]:
            conv = self.conversation(key, state)
            if current_mode(conv.mode, now) == OPTED_OUT:
                raise ModeConflict(
                    f"conversation {conv.key!r} is opted out (the user asked for no messages); "
                    "resume it first if they asked to come back"
                )
            return [ModeChanged(conv.key, mode)]

        (record,) = await self._store.commit_decided(decide)
        assert isinstance(record, ModeChanged)
        self._done("pause", record.key, by=mode.by, until=until_ms)
        return ModeOutcome(record.key, mode, True)

    async def resume(self, key: str, *, who: str, why: str | None = None) -> ModeOutcome:
        """The assistant answers again, from the next message on (what came in meanwhile was
        the person's to answer). Also ends an opt-out: the operator's decision."""
        await self._found(key)
        now = self._clock()
        mode = ConversationMode(ASSISTANT, now, _name(who), _reason(why))
        found: list[Conversation] = []

        def decide(state: State) -> list[Record]:
            conv = self.conversation(key, state)
            found.append(conv)
            if current_mode(conv.mode, now) == ASSISTANT:
                return []
            return [ModeChanged(conv.key, mode)]

        if not await self._store.commit_decided(decide):
            return ModeOutcome(found[0].key, found[0].mode, False)
        self._done("resume", found[0].key, by=mode.by)
        return ModeOutcome(found[0].key, mode, True)

    async def send(
        self, key: str, text: str, *, operator: str, request_key: str | None = None
    ) -> SendOutcome:
        """Queue a message written by `operator` into the conversation; it goes out through
        the outbox. WindowClosed (nothing written) when WhatsApp would refuse it. With a
        `request_key` (the API's Idempotency-Key) a repeat of the request queues nothing."""
        await self._found(key)
        name = _name(operator)
        if not _encodable(text, "the message").strip():
            raise OperatorError("nothing to send: the message is empty")
        if len(text) > MAX_TEXT:
            raise OperatorError(f"a message is at most {MAX_TEXT} characters, got {len(text)}")
        now = self._clock()

        def window_open(conv: Conversation) -> None:
            closes = window_closes_at(conv)
            if closes is None or now >= closes:
                when = (
                    "has never written"
                    if closes is None
                    else f"last wrote {iso(closes - WINDOW_MS)}"
                )
                raise WindowClosed(
                    f"the 24-hour window of conversation {conv.key!r} is closed (the user "
                    f"{when}): WhatsApp accepts only approved template messages then "
                    "(sessions-admin send KEY --template NAME --lang CODE, or the API's "
                    '"template"); nothing was sent'
                )

        return await self._queue(key, name, now, text, None, window_open, request_key)

    async def send_template(
        self, key: str, template: Template, *, operator: str, request_key: str | None = None
    ) -> SendOutcome:
        """Queue an approved template message (bridge/whatsapp/template.py), inside or
        outside the 24-hour window: templates are what WhatsApp delivers after it closes.
        Recorded in the history as `[template NAME] param | param`."""
        await self._found(key)
        name = _name(operator)
        return await self._queue(key, name, self._clock(), "", template, None, request_key)

    async def _queue(
        self,
        key: str,
        name: str,
        now: int,
        text: str,
        template: Template | None,
        check: Callable[[Conversation], None] | None = None,
        request_key: str | None = None,
    ) -> SendOutcome:
        """One commit: the message, its outbox item and the handoff pause it starts,
        decided on the settled state (`Store.commit_decided`): with replicas, this one's
        memory may not have the user's latest message (the window) or mode yet.

        A `request_key` names the message (its id is derived from it): a request repeated
        because its answer was lost, even when its commit went in and the answer was a 503
        (a database crash at that moment), finds the message and queues nothing again."""
        message_id = "op." + (
            hashlib.sha256(request_key.encode()).hexdigest()[:24]
            if request_key is not None
            else secrets.token_hex(12)
        )
        extra: dict[str, Any] = {OPERATOR: name}
        if template is not None:
            extra[TEMPLATE] = template.to_dict()
        message = Message(
            role="assistant",
            content=text if template is None else template.readable(),
            timestamp=now,
            id=message_id,
            status="pending",
            extra=extra,
        )
        found: list[tuple[Conversation, ConversationMode | None]] = []
        repeated: list[bool] = []

        def decide(state: State) -> list[Record]:
            conv = self.conversation(key, state)
            if request_key is not None and (done := state.reply_ref(message_id)) is not None:
                if done[0] != conv.key:
                    raise OperatorError(
                        "this Idempotency-Key was used for a message to another conversation"
                    )
                found.append((conv, None))
                repeated.append(True)
                return []
            if check is not None:
                check(conv)
            records: list[Record] = [
                MessageAdded(conv.key, message),
                OutboxQueued(OutboxItem(message_id, conv.key, conv.key, text, now, template)),
            ]
            mode = self._handoff_pause(conv, name, now)
            if mode is not None:
                records.append(ModeChanged(conv.key, mode))
            found.append((conv, mode))
            return records

        await self._store.commit_decided(decide)
        conv, mode = found[0]
        if repeated:
            self._log.info("operator_send_repeated", key=mask(conv.key), item=message_id)
            return SendOutcome(conv.key, message_id, conv.mode)
        fields: dict[str, Any] = (
            {"chars": len(text)} if template is None else {"template": template.name}
        )
        self._done(
            "send",
            conv.key,
            by=name,
            item=message_id,
            paused_until=mode and mode.until_ms,
            **fields,
        )
        if self._on_queued is not None:
            self._on_queued(conv.key)
        return SendOutcome(conv.key, message_id, mode or conv.mode)

    def _handoff_pause(self, conv: Conversation, name: str, now: int) -> ConversationMode | None:
        """The pause an operator's message starts (handoff_minutes), unless the conversation
        is opted out or already paused at least that long."""
        minutes = self._profile.handoff_minutes
        if minutes <= 0:
            return None
        until = now + minutes * 60_000
        current = conv.mode
        mode = current_mode(current, now)
        if mode == OPTED_OUT:
            return None
        if (
            mode == PAUSED
            and current is not None
            and (current.until_ms is None or current.until_ms >= until)
        ):
            return None
        return ConversationMode(PAUSED, now, name, "operator message", until)

    async def delete(self, key: str, *, who: str) -> DeleteOutcome:
        """Erase the conversation as it is now (history, mode and queued replies); a message
        received while this is being written survives it (bounded erasure)."""
        await self._found(key)
        name = _name(who)
        counted: list[tuple[str, int]] = []

        def decide(state: State) -> list[Record]:
            conv = self.conversation(key, state)
            deletion = state.deletion(conv.key)
            if deletion is None:  # pragma: no cover - conversation() found it just now
                raise NoSuchConversation(f"no conversation {conv.key!r}")
            counted.append((conv.key, len(conv.messages)))
            return [deletion]

        await self._store.commit_decided(decide)
        erased, count = counted[0]
        self._done("delete", erased, by=name, messages=count)
        return DeleteOutcome(erased, count)
