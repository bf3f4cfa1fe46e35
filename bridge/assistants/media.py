"""The stored media a backend may be given along with the history (vision, `send_media`).

Only the most recent `max_items` stored files of the history go, each at most `max_bytes`
(a model's context, a request's size and the time to read and encode are all bounded), read
and decrypted from the profile's media store in a thread, never from the network again.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from bridge.assistants.base import TurnLike
from bridge.conversations import Message
from bridge.errors import BridgeError
from bridge.media.entry import media_of, stored_file
from bridge.media.store import MediaStore
from bridge.ops.logs import get_logger

# Image types every vision model takes (OpenAI: png, jpeg, webp, non-animated gif).
VISION_MIME_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")


@dataclass(frozen=True, slots=True)
class Attachment:
    """One stored file of a history turn, decrypted."""

    type: str  # the message type: image, audio, video, document, sticker
    mime_type: str
    data: bytes
    caption: str | None = None
    filename: str | None = None

    def data_url(self) -> str:
        mime = self.mime_type.split(";")[0].strip()
        return f"data:{mime};base64,{base64.b64encode(self.data).decode()}"

    def as_json(self) -> dict[str, str]:
        """The `http` protocol's media item."""
        out = {
            "type": self.type,
            "mime_type": self.mime_type,
            "data": base64.b64encode(self.data).decode(),
        }
        if self.caption:
            out["caption"] = self.caption
        if self.filename:
            out["filename"] = self.filename
        return out


async def attachments(
    history: Sequence[TurnLike],
    files: MediaStore | None,
    *,
    types: Collection[str],
    max_items: int,
    max_bytes: int,
    images_only: bool = False,
) -> dict[int, Attachment]:
    """Index in `history` -> the stored file of that turn, for the newest `max_items`
    turns with one (of `types`, at most `max_bytes`). A file that is gone or damaged is left
    out (and logged): the turn's text still says what it was."""
    if files is None or max_items <= 0:
        return {}
    chosen: list[tuple[int, Message, str]] = []
    for index in range(len(history) - 1, -1, -1):
        turn = history[index]
        if not isinstance(turn, Message) or turn.type not in types:
            continue
        name = stored_file(turn)
        media = media_of(turn)
        if name is None or media is None:
            continue
        size = media.get("size")
        if isinstance(size, int) and size > max_bytes:
            continue
        mime = str(media.get("mime_type") or "application/octet-stream").split(";")[0].strip()
        if images_only and mime not in VISION_MIME_TYPES:
            continue
        chosen.append((index, turn, name))
        if len(chosen) >= max_items:
            break
    out: dict[int, Attachment] = {}
    for index, turn, name in chosen:
        media = media_of(turn) or {}
        try:
            data = await files.load(name, turn.id, max_bytes)  # fetched first, on a replica
        except BridgeError as exc:  # gone, damaged, or the shared copy out of reach
            get_logger(profile=files.slug).warning(
                "media_not_attached", message_id=turn.id, error=str(exc)
            )
            continue
        mime = str(media.get("mime_type") or "application/octet-stream")
        caption, filename = media.get("caption"), media.get("filename")
        out[index] = Attachment(
            type=turn.type or "document",
            mime_type=mime,
            data=data,
            caption=caption if isinstance(caption, str) else None,
            filename=filename if isinstance(filename, str) else None,
        )
    return out
