"""The sender interface for outgoing WhatsApp messages, and a log-only sender for development."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.errors import BridgeError
from bridge.ops.logs import get_logger, mask
from bridge.templates import Template

# WhatsApp's limit for a text message body.
MAX_TEXT = 4096


class SendError(BridgeError):
    """A send failed. `retryable`: try again later; else record the failure and drop it.

    `auth` marks an expired or invalid token (Graph error 190): keep the reply queued and alert.
    `uncertain` marks a request that may have reached Meta although no answer came back (a
    timeout, a connection dropped after the request was written): sending it again could
    deliver it twice, so the outbox first waits for Meta's status webhook about it.
    """

    def __init__(
        self,
        message: str,
        code: int | None = None,
        retryable: bool = False,
        auth: bool = False,
        *,
        uncertain: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.auth = auth
        self.uncertain = uncertain


# What WhatsApp sends by link (Cloud API "Media messages"): type -> whether it takes a caption.
OUTBOUND_MEDIA_TYPES = {"image": True, "video": True, "document": True, "audio": False}


@dataclass(frozen=True, slots=True)
class OutboundMedia:
    """A file a reply sends by link: one message of its own, after the reply's text."""

    type: str  # image, document, audio, video
    url: str
    caption: str | None = None
    filename: str | None = None  # documents: the name the user sees

    def as_dict(self) -> dict[str, str]:
        out = {"type": self.type, "url": self.url}
        if self.caption:
            out["caption"] = self.caption
        if self.filename:
            out["filename"] = self.filename
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutboundMedia | None:
        """None unless `data` names a type WhatsApp sends and an http(s) URL."""
        kind, url = data.get("type"), data.get("url")
        if kind not in OUTBOUND_MEDIA_TYPES or not isinstance(url, str):
            return None
        if not url.startswith(("https://", "http://")):
            return None
        caption, filename = data.get("caption"), data.get("filename")
        return cls(
            str(kind),
            url,
            caption if isinstance(caption, str) and caption else None,
            filename if isinstance(filename, str) and filename else None,
        )

    def readable(self) -> str:
        """How the part reads in the history: `[image] Salado`."""
        label = self.caption or self.filename
        return f"[{self.type}] {label}" if label else f"[{self.type}]"


def text_parts(text: str) -> list[str]:
    """The text messages of a reply: none for a reply that is only media."""
    return split_text(text) if text else []


def part_tag(tag: str, index: int) -> str:
    """What a sent part carries as Meta's `biz_opaque_callback_data`, which Meta echoes in
    every status webhook about that message: the reply's id and the part's index."""
    return f"{tag}:{index}"


def parse_part_tag(data: str) -> tuple[str, int] | None:
    """Inverse of `part_tag`; None for anything we did not write."""
    tag, _, index = data.rpartition(":")
    if not tag or not index.isdigit() or len(index) > 6:
        return None
    return tag, int(index)


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Split a long reply into parts of at most `limit` characters, at a paragraph, line or
    word break when one falls in the second half of the part."""
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = -1
        for sep in ("\n\n", "\n", " "):
            cut = rest.rfind(sep, limit // 2, limit)
            if cut != -1:
                break
        if cut == -1:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest or not parts:
        parts.append(rest)
    return parts


class Sender(ABC):
    """Sends one text reply (split as needed); returns Meta's message id of each part sent.

    `skip_parts` resumes a reply whose first parts already went out, so a retry never sends a
    part twice. `tag` (the reply's id) goes out with each part as `part_tag(tag, index)`.
    """

    # Whether status webhooks echo `tag` for what this sender sends, so that a send whose
    # outcome is unknown can be confirmed instead of repeated.
    confirms_by_status = False
    # The longest one send may take before it gives up (seconds); a stop waits longer.
    timeout = 0.0
    # The delivery state a reply gets once this sender took it: "sent" for the Graph API;
    # the log-only sender says "logged", so nobody mistakes a logged reply for a sent one.
    outcome: str = "sent"

    @abstractmethod
    async def send_text(
        self, to: str, text: str, skip_parts: int = 0, tag: str | None = None
    ) -> list[str]: ...

    async def send_media(
        self, to: str, media: OutboundMedia, index: int, tag: str | None = None
    ) -> list[str]:
        """Send one media part (part `index` of reply `tag`) by link; its wamid."""
        raise SendError(f"{type(self).__name__} cannot send media", retryable=False)

    async def send_template(
        self, to: str, template: Template, index: int = 0, tag: str | None = None
    ) -> list[str]:
        """Send one template message (part `index` of reply `tag`); its wamid."""
        raise SendError(f"{type(self).__name__} cannot send templates", retryable=False)

    async def mark_read(self, message_id: str) -> None:
        """Mark a user's message read and show the typing indicator while the reply is
        made (it clears when the reply arrives, or after 25 s). Best effort."""

    async def close(self) -> None:
        """Release connections; called once at shutdown."""


class LogSender(Sender):
    """Used when no access token is configured: replies are recorded and logged, not sent.

    It returns no message ids (Meta assigned none) and its outcome is "logged", which is what
    the reply's status, `sessions-admin show` and the log then say.
    """

    outcome = "logged"

    def __init__(self, profile: str) -> None:
        self._log = get_logger(profile=profile, sender="log")

    async def send_text(
        self, to: str, text: str, skip_parts: int = 0, tag: str | None = None
    ) -> list[str]:
        parts = split_text(text)[skip_parts:]
        self._log.info("reply_not_sent_no_token", to=mask(to), parts=len(parts), chars=len(text))
        return []

    async def send_media(
        self, to: str, media: OutboundMedia, index: int, tag: str | None = None
    ) -> list[str]:
        self._log.info("reply_not_sent_no_token", to=mask(to), media=media.type)
        return []

    async def send_template(
        self, to: str, template: Template, index: int = 0, tag: str | None = None
    ) -> list[str]:
        self._log.info("reply_not_sent_no_token", to=mask(to), template=template.name)
        return []
