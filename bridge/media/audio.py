"""The duration of a voice note, from the first and last bytes of its file (no decoding).

WhatsApp voice notes are Ogg Opus (`audio/ogg; codecs=opus`). An Ogg page starts with
`OggS`, version, flags, then the granule position (int64 LE at offset 6): for Opus the
number of 48 kHz samples up to the end of the page (RFC 7845 §4), minus the `pre_skip` of
the `OpusHead` header (uint16 LE at offset 10 of that packet); for Vorbis the number of
samples at the rate of its identification header. So the last page's granule position gives
the duration. Anything else (MP3, AAC, AMR, a file that is not audio): unknown, None.
"""

from __future__ import annotations

import struct

HEAD_BYTES = 4096
TAIL_BYTES = 64 * 1024
OPUS_RATE = 48_000


def _rate_and_skip(head: bytes) -> tuple[int, int] | None:
    if not head.startswith(b"OggS"):
        return None
    opus = head.find(b"OpusHead")
    if opus != -1 and len(head) >= opus + 12:
        (pre_skip,) = struct.unpack_from("<H", head, opus + 10)
        return OPUS_RATE, pre_skip
    vorbis = head.find(b"\x01vorbis")
    if vorbis != -1 and len(head) >= vorbis + 16:
        (rate,) = struct.unpack_from("<I", head, vorbis + 12)
        return (rate, 0) if rate else None
    return None


def ogg_duration_ms(head: bytes, tail: bytes) -> int | None:
    """The duration in ms, from the file's first HEAD_BYTES and last TAIL_BYTES."""
    found = _rate_and_skip(head)
    if found is None:
        return None
    rate, pre_skip = found
    at = len(tail)
    while True:
        at = tail.rfind(b"OggS", 0, at)
        if at == -1 or len(tail) < at + 14:
            if at == -1:
                return None
            continue
        (granule,) = struct.unpack_from("<q", tail, at + 6)
        if granule >= 0:  # -1: no packet ends on this page
            samples = max(0, granule - pre_skip)
            return int(samples * 1000 // rate)


class Probe:
    """Keeps the first and last bytes of a stream going by, for `ogg_duration_ms`."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()

    def feed(self, data: bytes) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        self.tail += data[-TAIL_BYTES:]
        if len(self.tail) > TAIL_BYTES:
            del self.tail[: len(self.tail) - TAIL_BYTES]

    def duration_ms(self) -> int | None:
        return ogg_duration_ms(bytes(self.head), bytes(self.tail))
