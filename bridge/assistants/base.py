"""The assistant interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bridge.whatsapp.sender import OutboundMedia

if TYPE_CHECKING:
    from bridge.media.store import MediaStore


class TurnLike(Protocol):
    """What an assistant reads of a history entry. Stored messages qualify as they are, so
    the replier hands over a slice of the conversation instead of copying every turn."""

    @property
    def role(self) -> str: ...  # "user" or "assistant"

    @property
    def content(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Turn:
    """A history entry built by hand (tests, tools)."""

    role: str  # "user" or "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply that sends files too: its text (may be empty), then each file by link, each
    a message of its own (bridge/outbox.py)."""

    text: str
    media: tuple[OutboundMedia, ...] = ()


def reply_parts(answer: str | Reply) -> tuple[str, tuple[OutboundMedia, ...]]:
    return (answer, ()) if isinstance(answer, str) else (answer.text, answer.media)


class Assistant(ABC):
    """Produces the reply to the last user turn of `history` (oldest first): text, or a
    `Reply` with media to send by link.

    Raises AssistantError on failure or timeout; the caller decides about a fallback reply.
    Returning an empty string means "no reply".
    """

    kind: str = "?"
    # The profile's stored media, for backends that send images or files along (vision).
    media: MediaStore | None = None

    def attach_media(self, media: MediaStore) -> None:
        """Where the history's stored media can be read from (set when the profile is wired)."""
        self.media = media

    @abstractmethod
    async def reply(self, key: str, history: Sequence[TurnLike]) -> str | Reply: ...

    def health_url(self) -> str | None:
        """Where the health monitor checks that the backend is reachable; None: nothing to
        check (embedded)."""
        return None

    async def close(self) -> None:
        """Release connections; called once at shutdown."""
