"""The embedded default assistant: echoes the last user message, with no network and no cost.

It makes `make run` and the end-to-end tests work without a model, and its replies are
deterministic, so a test can assert exactly what the user gets back.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.assistants.base import Assistant, TurnLike
from bridge.conversations import Message
from bridge.events import expects_reply


class EchoAssistant(Assistant):
    """Replies `Echo: <the user messages since the last reply>`, joined by " / " (a burst
    answered at once, or the one message a reply answers when the debounce is off); an empty
    string (no reply) when there is none."""

    kind = "echo"

    def __init__(self, prefix: str = "Echo: ") -> None:
        self.prefix = prefix

    async def reply(self, key: str, history: Sequence[TurnLike]) -> str:
        # Scan from the end: the turns being answered are the last ones.
        burst: list[str] = []
        for turn in reversed(history):
            if turn.role == "user":
                # Events (a reaction, a sticker, a deletion) are context, not what is answered.
                if not isinstance(turn, Message) or expects_reply(turn, reactions=True):
                    burst.append(turn.content)
            elif burst:
                break
        # Nothing to answer (only assistant turns, or none): "no reply" per the interface.
        return f"{self.prefix}{' / '.join(reversed(burst))}" if burst else ""
