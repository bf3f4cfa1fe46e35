"""Journal frames: the bytes one group commit puts on disk (v3), and the v2 frames before it.

    frame  = length (u32 BE) | header check (u32 BE) | sealed
    sealed = key id (8 ASCII hex) | nonce (12) | AES-256-GCM ciphertext + tag (16)   (crypto.py)

v3, written since this release:
- header check = CRC-32 of `wab-journal-v3` followed by the 4 length bytes;
- AAD = `wab-journal-v3|<profile>|<segment>|<byte offset of the frame>` (+ `|<key id>`);
- plaintext = kind (1 byte) | flags (1 byte) | body:
  - kind 1, commits: body = JSON `[[record, ...], ...]`, one inner list per commit, each
    record as `bridge.records.encode` writes it. One frame carries one group commit (what
    one write and one fsync carry), so every commit in it is on disk whole or not at all;
  - kind 2, end: body = JSON `{"next": n}`: the segment is complete and the journal
    continues in segment n (so a missing newest segment is noticed);
  - flags: bit 0 (ZSTD) says the body is zstd-compressed (compression.py), set per frame
    when compressing pays (a frame of one short message often stays plain); a reader
    refuses flags it does not know rather than misread the body. Releases before
    compression wrote 0, and refuse a compressed frame with "unknown flags".

v2, segments written before this release (still replayed): header check = CRC-32 of the 4
length bytes alone, AAD tag `wab-journal-v2`, plaintext = one record. The two checks differ
by a constant for every length, so a header says which version it is. Binding segment and
offset means a frame cannot be moved to another profile, file or place, dropped from the
middle or duplicated without failing authentication; the header check tells a damaged length
(an error) from a frame cut short by a crash.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.persistence import compression
from bridge.persistence.crypto import OVERHEAD, Keyring

HEADER = struct.Struct(">II")  # sealed length, header check
MAX_FRAME = 64 * 1024 * 1024
V2, V3 = 2, 3
_TAGS = {V2: b"wab-journal-v2", V3: b"wab-journal-v3"}
_V3_SEED = zlib.crc32(_TAGS[V3])
COMMITS, END = 1, 2
PLAIN, ZSTD = 0, 0x01
KNOWN_FLAGS = ZSTD


class FrameContentError(ValueError):
    """A frame that authenticates but whose content this version cannot read."""


def aad(version: int, slug: str, segment: int, offset: int) -> bytes:
    return b"%s|%s|%d|%d" % (_TAGS[version], slug.encode(), segment, offset)


def _check(version: int, length: int) -> int:
    raw = length.to_bytes(4, "big")
    return zlib.crc32(raw, _V3_SEED) if version == V3 else zlib.crc32(raw)


def header_version(data: bytes | memoryview, offset: int) -> int | None:
    """The version whose header check the 8 bytes at `offset` pass (and whose length is
    plausible), or None."""
    length, check = HEADER.unpack_from(data, offset)
    if not OVERHEAD <= length <= MAX_FRAME:
        return None
    if check == _check(V3, length):
        return V3
    if check == _check(V2, length):
        return V2
    return None


def commits_plaintext(commits: Sequence[Sequence[bytes]]) -> bytes:
    """The plaintext of one group commit: each commit's encoded records, joined as JSON
    without decoding them again."""
    body = b"],[".join(b",".join(records) for records in commits)
    return bytes((COMMITS, PLAIN)) + b"[[" + body + b"]]"


def end_plaintext(next_segment: int) -> bytes:
    return bytes((END, PLAIN)) + orjson.dumps({"next": next_segment})


def compressed(plaintext: bytes) -> bytes:
    """A plain frame plaintext with its body zstd-compressed and flagged, when that pays;
    else `plaintext` itself. Run in the journal's thread: zstd releases the GIL."""
    packed = compression.pack(plaintext[2:])
    if packed is None:
        return plaintext
    return bytes((plaintext[0], plaintext[1] | ZSTD)) + packed


def seal(keyring: Keyring, plaintext: bytes, slug: str, segment: int, offset: int) -> bytes:
    """A whole v3 frame, header included, for the byte `offset` of `segment`."""
    sealed = keyring.seal(plaintext, aad(V3, slug, segment, offset))
    return HEADER.pack(len(sealed), _check(V3, len(sealed))) + sealed


@dataclass(frozen=True, slots=True)
class Content:
    """A decrypted frame: the commits it carries, or the segment it says comes next."""

    commits: list[list[dict[str, Any]]]
    next_segment: int | None = None


def parse(version: int, plaintext: bytes) -> Content:
    """Decode an authenticated plaintext; FrameContentError if this version cannot."""
    try:
        if version == V2:
            record = orjson.loads(plaintext)
            if not isinstance(record, dict):
                raise FrameContentError("a record is not a JSON object")
            return Content([[record]])
        if len(plaintext) < 2:
            raise FrameContentError("empty frame")
        kind, flags = plaintext[0], plaintext[1]
        if flags & ~KNOWN_FLAGS:
            raise FrameContentError(
                f"written with flags {flags:#04x}, unknown to this version (a newer bridge?)"
            )
        raw = plaintext[2:]
        if flags & ZSTD:
            raw = compression.unpack(raw, MAX_FRAME)
        body = orjson.loads(raw)
    except compression.DecompressError as exc:
        raise FrameContentError(str(exc)) from None
    except orjson.JSONDecodeError as exc:
        raise FrameContentError(f"not valid JSON ({exc})") from None
    if kind == COMMITS:
        if not isinstance(body, list) or not all(
            isinstance(c, list) and c and all(isinstance(r, dict) for r in c) for c in body
        ):
            raise FrameContentError("commits are not lists of JSON objects")
        return Content(body)
    if kind == END:
        if not isinstance(body, dict) or not isinstance(body.get("next"), int):
            raise FrameContentError("malformed end record")
        return Content([], int(body["next"]))
    raise FrameContentError(f"unknown frame kind {kind} (a newer bridge?)")
