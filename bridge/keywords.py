"""Keywords: a user asks for a person, opts out or opts in again by writing one word.

The profile lists the words (`handoff_keywords`, `opt_out_keywords`, `opt_in_keywords`),
compared with the whole message without case, accents or extra spaces (bridge/modes.py).
The reaction (the mode change, and the automatic reply if the profile has one) is committed
in the same journal commit as the message itself: a crash can never leave a "STOP" recorded
but not acted on, which the assistant would then answer after the restart.

- handoff: the conversation is paused until an operator resumes it (a pause with an end,
  such as the one after an operator's message, becomes open-ended); the team is told
  (`handoff_requested` in the log and metrics, `notify_url`).
- opt-out: `opted_out` in any mode: nothing is sent any more but explicit operator messages.
- opt-in: an opted-out conversation returns to the assistant. In any other mode the word is
  an ordinary message (a pause is a person's to end).

A keyword that changes nothing (a second "STOP") is an ordinary message: recorded, and left
to the replier's gate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bridge.config import ProfileConfig
from bridge.conversations import ASSISTANT, OPTED_OUT, PAUSED, ConversationMode, Message
from bridge.modes import AUTO, Keywords, current_mode
from bridge.records import MessageAdded, ModeChanged, OutboxItem, OutboxQueued, Record
from bridge.replies import new_reply_id
from bridge.state import State
from bridge.whatsapp.models import InboundMessage

# Message types whose content is what the user typed or tapped (a quick-reply button).
KEYWORD_TYPES = ("text", "button")
REASONS = {
    "handoff": "handoff requested by keyword",
    "opt_out": "opted out by keyword",
    "opt_in": "opted in by keyword",
}


@dataclass(frozen=True, slots=True)
class KeywordHit:
    """A keyword that changed its conversation's mode, as committed with its message."""

    key: str
    message_id: str
    kind: str  # "handoff", "opt_out" or "opt_in"
    text: str  # the message as the user wrote it
    contact_name: str | None
    reply_id: str | None  # the automatic reply queued with it, if the profile has one


class KeywordRules:
    """One profile's keywords and replies; `react` builds the records for one message."""

    def __init__(self, profile: ProfileConfig, recipient: Callable[[InboundMessage], str]) -> None:
        self.keywords = Keywords(
            profile.handoff_keywords, profile.opt_out_keywords, profile.opt_in_keywords
        )
        self._replies = {
            "handoff": profile.handoff_reply,
            "opt_out": profile.opt_out_reply,
            "opt_in": profile.opt_in_reply,
        }
        self._recipient = recipient

    def react(
        self,
        message: InboundMessage,
        received_ms: int,
        state: State,
        batch: dict[str, ConversationMode | None],
    ) -> tuple[list[Record], KeywordHit | None]:
        """The records to commit after `message` if it is a keyword that changes its
        conversation's mode. `batch` holds the modes set by earlier messages of the same
        commit (not applied yet), and is updated."""
        if message.type not in KEYWORD_TYPES or not self.keywords:
            return [], None
        kind = self.keywords.match(message.content)
        if kind is None:
            return [], None
        key = message.key
        if key in batch:
            mode = batch[key]
        else:
            conv = state.conversations.get(key)
            mode = conv.mode if conv is not None else None
        new = _decide(kind, mode, received_ms)
        if new is None:
            return [], None
        batch[key] = new
        records: list[Record] = [ModeChanged(key, new)]
        reply = self._replies[kind]
        reply_id = None
        if reply:
            reply_id = new_reply_id()
            records.append(
                MessageAdded(
                    key,
                    Message(
                        role="assistant",
                        content=reply,
                        timestamp=received_ms,
                        id=reply_id,
                        status="pending",
                        reply_to=message.id,
                        extra={AUTO: kind},
                    ),
                    received_ms=received_ms,
                )
            )
            records.append(
                OutboxQueued(
                    OutboxItem(reply_id, key, self._recipient(message), reply, received_ms)
                )
            )
        hit = KeywordHit(key, message.id, kind, message.content, message.contact_name, reply_id)
        return records, hit


def _decide(kind: str, mode: ConversationMode | None, now_ms: int) -> ConversationMode | None:
    """The new mode a keyword sets, or None if it changes nothing."""
    current = current_mode(mode, now_ms)
    if kind == "opt_out" and current != OPTED_OUT:
        return ConversationMode(OPTED_OUT, now_ms, "user", REASONS[kind])
    if kind == "handoff" and (
        current == ASSISTANT or (current == PAUSED and mode is not None and mode.until_ms)
    ):
        return ConversationMode(PAUSED, now_ms, "user", REASONS[kind])
    if kind == "opt_in" and current == OPTED_OUT:
        return ConversationMode(ASSISTANT, now_ms, "user", REASONS[kind])
    return None
