"""The embedded default assistant: echoes the last user message, with no network and no cost.

It makes `make run` and the end-to-end tests work without a model, and its replies are
deterministic, so a test can assert exactly what the user gets back.
"""

from __future__ import annotations

from collections.abc import Sequence

from bridge.assistants.base import Assistant, TurnLike


class EchoAssistant(Assistant):
    """Replies `Echo: <last user message>`; an empty string (no reply) when there is none."""

    kind = "echo"

    def __init__(self, prefix: str = "Echo: ") -> None:
        self.prefix = prefix

    async def reply(self, key: str, history: Sequence[TurnLike]) -> str:
        # Scan from the end: the turn being answered is normally the last one.
        for turn in reversed(history):
            if turn.role == "user":
                return f"{self.prefix}{turn.content}"
        # Nothing to answer (only assistant turns, or none): "no reply" per the interface.
        return ""
