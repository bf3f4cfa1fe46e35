"""A conversation's messages as compact bytes, decoded only when the conversation is touched.

Most conversations of a large store are idle: nobody writes, nobody reads them between two
restarts. Kept as Python objects they cost about 400 bytes a message and a place in every
garbage collection; kept as the zstd-compressed JSON they were loaded from they cost a
fifth of their JSON and nothing else. A snapshot (format v3) stores each conversation's
messages in this form, so loading one is a copy of its bytes, and writing an untouched one
again is the same copy: no decoding, no encoding, no compression.

Packed form: `zstd(index length (u32 BE) | index JSON | messages JSON)`, one zstd frame, so
that the ids the index repeats cost almost nothing (Meta's ids are random: compressed apart
they made a snapshot a third larger).
- messages JSON: the seed's list of message objects (`Message.to_dict`), as in format v2;
- index JSON: `[[reply id or wamid, ...], [[message id, stored file or null, 0|1], ...]]`,
  what the store's indexes need from the messages without decoding them: the ids of its
  replies and their wamids (one flat list: status webhooks name either), and the media a
  worker still has to fetch (the 1) or whose file the media store must keep.

The zstd header carries the plain size, which `plain_size` reads without decompressing (for
`verify`'s ratio).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

import orjson
import zstandard

from bridge.persistence import compression

LENGTH = struct.Struct(">I")
# What one conversation's messages may decompress to: 250 messages of at most 64 KiB each
# is 16 MB; an import without a cap may hold more, never this much.
MAX_PLAIN = 512 * 1024 * 1024

MediaRow = list[Any]  # [message id, file name or None, 1 if work is left else 0]


class PackError(ValueError):
    """Packed bytes that do not decode (a bug: sealed data that decrypted was written by us)."""


def pack(messages_json: bytes, index_json: bytes) -> bytes:
    """The packed form of already serialized parts; the costly part (zstd, which releases
    the GIL) is meant to run in a snapshot's writer thread."""
    return compression.compress(LENGTH.pack(len(index_json)) + index_json + messages_json)


def _parts(packed: bytes) -> tuple[memoryview, memoryview]:
    """The index JSON and the messages JSON."""
    try:
        plain = memoryview(compression.unpack(packed, MAX_PLAIN))
    except compression.DecompressError as exc:
        raise PackError(f"packed conversation does not decompress ({exc})") from None
    if len(plain) < LENGTH.size:
        raise PackError("packed conversation too short")
    end = LENGTH.size + LENGTH.unpack_from(plain)[0]
    if end > len(plain):
        raise PackError("packed conversation: index past its end")
    return plain[LENGTH.size : end], plain[end:]


def messages(packed: bytes) -> list[dict[str, Any]]:
    """The message objects (dicts) of a packed conversation."""
    try:
        rows = orjson.loads(_parts(packed)[1])
    except orjson.JSONDecodeError as exc:
        raise PackError(f"packed messages do not decode ({exc})") from None
    if not isinstance(rows, list):
        raise PackError("packed messages are not a list")
    return rows


def index(packed: bytes) -> tuple[list[str], list[MediaRow]]:
    """The reply and media rows of a packed conversation (see the module's docstring)."""
    try:
        replies, media = orjson.loads(_parts(packed)[0])
    except (orjson.JSONDecodeError, ValueError) as exc:
        raise PackError(f"packed index does not decode ({exc})") from None
    return replies, media


def plain_size(packed: bytes) -> int:
    """Bytes of JSON a packed conversation stands for, read from the zstd header."""
    try:
        return max(0, zstandard.frame_content_size(packed) - LENGTH.size)
    except zstandard.ZstdError:
        raise PackError("packed conversation without a valid zstd header") from None


def encode_index(replies: Iterable[str], media: Iterable[MediaRow]) -> bytes:
    return orjson.dumps([list(replies), list(media)])
