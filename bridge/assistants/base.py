"""The assistant interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Turn:
    """One history entry as the assistant sees it."""

    role: str  # "user" or "assistant"
    content: str


class Assistant(ABC):
    """Produces the reply to the last user turn of `history` (oldest first).

    Raises AssistantError on failure or timeout; the caller decides about a fallback reply.
    Returning an empty string means "no reply".
    """

    kind: str = "?"

    @abstractmethod
    async def reply(self, key: str, history: Sequence[Turn]) -> str: ...

    async def close(self) -> None:
        """Release connections; called once at shutdown."""
