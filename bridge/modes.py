"""Who answers a conversation: the gates the replier, the outbox and start-up ask.

A conversation is `assistant` (the default), `paused` (a person handles it; optionally until
a time) or `opted_out` (the user asked for no more messages). The mode is journaled
(`ModeChanged`), so it is the same after a crash, in a snapshot, a backup and an export. Its
messages are always recorded; what the mode decides is only who may send:

- the assistant answers only in `assistant` mode, checked when a reply is about to be
  produced and again just before it is committed, so a burst waiting in the debounce, or an
  assistant still thinking, never talks over a person who took over meanwhile;
- an assistant reply still in the outbox when the mode changes is not sent (`cancelled`);
  an operator's message and a keyword's automatic reply are sent in any mode (they are
  explicit, or the answer to the user's own request);
- after a restart, the assistant answers only what arrived after it last took over: the
  messages a person handled during a pause are not answered by the machine afterwards.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge.conversations import ASSISTANT, Conversation, ConversationMode, Message

if TYPE_CHECKING:
    from bridge.records import OutboxItem
    from bridge.state import State

# Marks in `Message.extra` of assistant-role messages that are not the assistant's own: an
# operator's message (`{"operator": "<name>"}`) and a keyword's automatic reply
# (`{"auto": "handoff" | "opt_out" | "opt_in"}`).
OPERATOR = "operator"
AUTO = "auto"


def current_mode(mode: ConversationMode | None, now_ms: int) -> str:
    return ASSISTANT if mode is None else mode.current(now_ms)


def assistant_may_answer(state: State, key: str, now_ms: int) -> bool:
    """May the assistant answer conversation `key` now? (The one gate of the replier.) A
    conversation that does not exist is not forbidden here: an erased one is the business
    of the code that records the reply."""
    conv = state.conversations.get(state.resolve(key))
    return conv is None or current_mode(conv.mode, now_ms) == ASSISTANT


def owed_answer(
    conv: Conversation, now_ms: int, wants_reply: Callable[[Message], bool] | None = None
) -> Message | None:
    """The user message the assistant still owes an answer after a restart, if any: the
    newest of the unanswered run (`Conversation.unanswered`), provided the assistant answers
    this conversation now and the message arrived after it took over (the receive time of
    the newest user message is `last_user_message`)."""
    since = 0 if conv.mode is None else conv.mode.assistant_since(now_ms)
    if since is None or (conv.last_user_message or 0) <= since:
        return None
    return conv.unanswered(wants_reply)


def is_assistant_reply(message: Message) -> bool:
    """An assistant-role message the assistant produced (not an operator's, not automatic)."""
    extra = message.extra
    return message.role == "assistant" and not (extra and (OPERATOR in extra or AUTO in extra))


def outbox_hold(state: State, item: OutboxItem, now_ms: int) -> str | None:
    """Why a queued item must not be sent now, or None: an assistant reply to a conversation
    that a person took over, or whose user opted out, since it was queued."""
    conv = state.conversations.get(item.key)
    if conv is None:
        return None
    mode = current_mode(conv.mode, now_ms)
    if mode == ASSISTANT:
        return None
    for message in reversed(conv.messages):
        if message.id == item.id:
            return f"not sent: conversation {mode}" if is_assistant_reply(message) else None
    return None


def normalize(text: str) -> str:
    """A message as keywords compare it: without case, accents, punctuation around it, or
    extra spaces (`  ¡Humano! ` and `HUMANO` are `humano`)."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    words = bare.split()
    if not words:
        return ""
    joined = " ".join(words)
    start, end = 0, len(joined)
    while start < end and _is_punctuation(joined[start]):
        start += 1
    while end > start and _is_punctuation(joined[end - 1]):
        end -= 1
    return joined[start:end].strip()


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


class Keywords:
    """The profile's keyword lists, normalized once; `match` names the list a whole message
    is in. Opt-out wins over the others if a word is in several (the stronger request)."""

    # Longer messages are never a keyword: no need to normalize a whole essay.
    MAX_LENGTH = 64

    def __init__(
        self, handoff: tuple[str, ...], opt_out: tuple[str, ...], opt_in: tuple[str, ...]
    ) -> None:
        self._lists = [
            ("opt_out", {normalize(w) for w in opt_out} - {""}),
            ("handoff", {normalize(w) for w in handoff} - {""}),
            ("opt_in", {normalize(w) for w in opt_in} - {""}),
        ]

    def __bool__(self) -> bool:
        return any(words for _, words in self._lists)

    def match(self, text: str) -> str | None:
        if len(text) > self.MAX_LENGTH:
            return None
        normalized = normalize(text)
        for kind, words in self._lists:
            if normalized in words:
                return kind
        return None
