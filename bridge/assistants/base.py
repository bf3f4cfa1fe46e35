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

    def health_url(self) -> str | None:
        """Where the health monitor checks that the backend is reachable; None: nothing to
        check (embedded)."""
        return None

    async def close(self) -> None:
        """Release connections; called once at shutdown."""
