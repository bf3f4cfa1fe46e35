"""zstd before encryption: snapshots, backups and journal frames shrink to a fraction.

Ciphertext does not compress, so compression has to happen before sealing; the flag that
says a body is compressed lives inside the sealed plaintext, so it is authenticated with it.
Chat history is repetitive text in a repetitive JSON shape: zstd level 1 keeps a snapshot of
it at a fifth of its JSON or less, at a speed (hundreds of MB/s, the GIL released) that the
writer thread hides behind serialization. A body is stored compressed only when that pays
(`pack`): small journal frames (one short message) often do not, and then they stay plain,
which the reader tells by the flag of each frame.

Every compressed body carries its size in the zstd frame header. The reader refuses a body
whose header claims more than the caller's limit before allocating anything, and any
malformed body is a `DecompressError`: the callers turn it into a CorruptStateError naming the
file, never a crash. (Sealed data that decrypts was written by us, so this is about bugs and
a key that fell into the wrong hands, not about disk damage, which authentication catches.)
"""

from __future__ import annotations

import threading

import zstandard

LEVEL = 1
# Below this a body is not worth a try: zstd's frame header alone is 6-14 bytes.
MIN_BYTES = 128
# Store compressed only when that saves at least a tenth: otherwise reading would pay the
# decompression for almost nothing.
PAYS = 0.9

_local = threading.local()


class DecompressError(ValueError):
    """A body flagged as compressed that does not decompress (or would be too large)."""


def _compressor() -> zstandard.ZstdCompressor:
    # A zstd context must not be used by two threads at once (journal, snapshot, admin
    # threads all compress): one per thread, reused, since making one costs more than a
    # small frame's compression.
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(
            level=LEVEL, write_content_size=True
        )
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor


def pack(body: bytes) -> bytes | None:
    """`body` compressed, or None when compressing it does not pay (store it plain)."""
    if len(body) < MIN_BYTES:
        return None
    packed = _compressor().compress(body)
    return packed if len(packed) < len(body) * PAYS else None


def compress(body: bytes) -> bytes:
    """`body` compressed whatever it saves (the parts of a packed conversation, packed.py)."""
    return _compressor().compress(body)


def unpack(packed: bytes | memoryview, limit: int) -> bytes:
    """The body `pack` compressed; DecompressError if it is not one, or would exceed `limit`."""
    try:
        size = zstandard.frame_content_size(packed)
    except zstandard.ZstdError:
        raise DecompressError("compressed data without a valid zstd frame header") from None
    if size < 0:
        raise DecompressError("compressed data without its size (not written by us)")
    if size > limit:
        raise DecompressError(f"compressed data claims {size} bytes, more than {limit}")
    try:
        return _decompressor().decompress(packed, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise DecompressError(f"compressed data does not decompress ({exc})") from None
