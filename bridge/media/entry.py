"""What a history entry says about its media: the `extra["media"]` dict, read without I/O.

Inbound media messages carry `extra["media"]` from the webhook (id, mime_type, sha256,
filename, voice; whatsapp/content.py). The media work adds to it, through `MediaUpdated`:
- `state`: absent while the work is to do; `stored` (the bytes are in the profile's
  `media/`), `failed` (for good: `error` says why) or `dropped` (media retention took the
  bytes, the entry stays);
- when stored: `file` (the file's random name), `size`, `stored_ms`, `duration_ms` (audio,
  when known);
- for audio: `transcript`, or `transcript_error` when transcription failed for good.

State (no I/O, replayed) and the worker both decide from these fields alone, so the queue of
media work is the journaled messages themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bridge.conversations import Message

STORED, FAILED, DROPPED = "stored", "failed", "dropped"
# Types whose bytes are worth transcribing.
AUDIO_TYPES = ("audio",)


def media_of(message: Message) -> Mapping[str, Any] | None:
    """The media dict of an inbound message with a media id, else None."""
    if message.role != "user" or not message.extra:
        return None
    media = message.extra.get("media")
    if isinstance(media, Mapping) and isinstance(media.get("id"), str) and media["id"]:
        return media
    return None


def needs_download(media: Mapping[str, Any]) -> bool:
    return "state" not in media


def needs_transcript(message: Message, media: Mapping[str, Any]) -> bool:
    return (
        media.get("state") == STORED
        and message.type in AUDIO_TYPES
        and "transcript" not in media
        and "transcript_error" not in media
    )


def has_work(message: Message) -> bool:
    """Download or transcription still to do for this entry."""
    media = media_of(message)
    return media is not None and (needs_download(media) or needs_transcript(message, media))


def stored_file(message: Message) -> str | None:
    """The name of the entry's file in the media store, while its bytes are kept."""
    media = media_of(message)
    if media is None or media.get("state") != STORED:
        return None
    name = media.get("file")
    return name if isinstance(name, str) and name else None


def duration_text(ms: int) -> str:
    """`0:07`, `12:30`, `1:02:03`."""
    seconds = max(0, round(ms / 1000))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def audio_content(media: Mapping[str, Any], transcript: str | None) -> str:
    """`[voice 0:07] quiero fotos de salado`: the label, the duration when known, the words."""
    label = "voice" if media.get("voice") is True else "audio"
    duration = media.get("duration_ms")
    head = f"[{label} {duration_text(duration)}]" if isinstance(duration, int) else f"[{label}]"
    return f"{head} {transcript}" if transcript else head
