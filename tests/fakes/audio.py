"""Ogg Opus files built byte by byte, as a WhatsApp voice note is laid out (RFC 7845): an
`OpusHead` page, an `OpusTags` page, then audio pages whose granule position counts 48 kHz
samples. The audio packets are not real Opus (nothing here decodes them): they carry a marker,
so a test can search the disk for any plaintext byte of the file."""

from __future__ import annotations

import struct

PRE_SKIP = 312


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else (r << 1)
        table.append(r & 0xFFFFFFFF)
    return table


_TABLE = _crc_table()


def _crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _TABLE[((crc >> 24) & 0xFF) ^ byte]
    return crc


def _page(payload: bytes, granule: int, sequence: int, flags: int) -> bytes:
    segments = []
    rest = len(payload)
    while rest >= 255:
        segments.append(255)
        rest -= 255
    segments.append(rest)
    header = (
        b"OggS"
        + bytes([0, flags])
        + struct.pack("<qII", granule, 0x5EED, sequence)
        + b"\0\0\0\0"
        + bytes([len(segments)])
        + bytes(segments)
    )
    page = header + payload
    crc = _crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def ogg_opus(seconds: float, marker: bytes = b"voice", size: int = 0) -> bytes:
    """A voice note of `seconds`, its packets filled with `marker`, about `size` bytes long
    (at least a few pages)."""
    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", PRE_SKIP, 48000, 0, 0)
    tags = b"OpusTags" + struct.pack("<I", 6) + b"bridge" + struct.pack("<I", 0)
    pages = [_page(head, 0, 0, 0x02), _page(tags, 0, 1, 0)]
    total = int(seconds * 48000) + PRE_SKIP
    count = max(3, size // 4000)
    packet = (marker * (3900 // max(1, len(marker)) + 1))[:3900]
    for n in range(count):
        granule = total * (n + 1) // count
        pages.append(_page(packet, granule, n + 2, 0x04 if n == count - 1 else 0))
    return b"".join(pages)
