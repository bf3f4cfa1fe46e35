"""Reading the journal back: which bytes a crash can leave, and which only damage can.

A crash (kill -9, power loss) can only leave the last append unfinished, and an append is
one frame (frames.py): so the one thing cut off as a torn tail is a last frame that is
incomplete, or that fails and shows the zeros of blocks never written, with nothing written
by us after it. Anything else (a failing frame with a frame of ours after it, a failing
complete frame without that sign, damage in any segment but the newest, bytes after a
segment's end record, a missing segment) would lose acknowledged records if cut: it is
refused, unless the operator accepts the loss (`bridge serve --accept-data-loss`), and then
the damaged part is set aside, never deleted.

Segments form a chain: rotation creates segment n+1 (and syncs the directory) before it
appends the end record "continues in n+1" to segment n. So:
- a segment with the end record needs the next one (a deleted newest segment is noticed);
- a segment without it, followed by an empty last segment, is a rotation that crashed or
  failed half-way: it is still the newest (a torn tail allowed), and the empty one is reused;
- a segment without it followed by more records is damage, except between segments of the
  previous release (v2), which had no end records.

A reader of a live store (sessions-admin, without the lock) sees the frame being written as
a torn tail, and a rotation in progress as a missing segment; `load_state` retries those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.errors import CorruptStateError, StorageUnavailableError
from bridge.persistence import frames
from bridge.persistence.crypto import DecryptError, Keyring
from bridge.persistence.journal import list_segments, segment_path

# No header or ciphertext holds 16 zero bytes in a row; blocks a crash left unwritten do.
ZERO_RUN = b"\0" * 16
SECTOR = 512

Commit = list[dict[str, Any]]


class JournalDamage(CorruptStateError):
    """Journal bytes that a crash cannot explain: cutting them would lose acknowledged data."""


class MissingSegment(JournalDamage):
    """A journal segment that the snapshot, the end record of the one before, or the order of
    segments calls for is not there.

    For the service that is lost data; for a reader it usually means the service rotated or
    dropped segments between two reads, so `load_state` retries."""


@dataclass
class SegmentRead:
    """One segment as read: its commits and how it ends."""

    commits: list[Commit] = field(default_factory=list)
    valid_size: int = 0  # bytes of whole frames from the start (end record included)
    size: int = 0  # bytes in the file
    ended: bool = False  # ends with the end record
    v3: bool = False  # holds a frame of this release's format
    problem: str | None = None  # what is wrong at `valid_size`
    torn: bool = False  # the problem is an unfinished append with nothing written after it


def read_segment(path: Path, keyring: Keyring, slug: str, segment: int) -> SegmentRead:
    """Decrypt a segment frame by frame; stop at the first frame that does not check out and
    say whether that is a torn tail. Content that authenticates but cannot be read is a
    CorruptStateError at once: no crash writes that."""
    data = path.read_bytes()
    out = SegmentRead(size=len(data))
    end = len(data)
    offset = 0
    while offset < end:
        incomplete = False
        if out.ended:
            problem = f"{end - offset} bytes after the segment's end record (at byte {offset})"
        elif end - offset < frames.HEADER.size:
            problem, incomplete = f"incomplete record header at byte {offset}", True
        else:
            version = frames.header_version(data, offset)
            length = frames.HEADER.unpack_from(data, offset)[0]
            body = offset + frames.HEADER.size
            if version is None:
                problem = f"damaged record header at byte {offset}"
            elif body + length > end:
                problem, incomplete = f"incomplete record at byte {offset}", True
            else:
                try:
                    plaintext = keyring.open(
                        data[body : body + length], frames.aad(version, slug, segment, offset)
                    )
                except DecryptError as exc:
                    problem = f"record at byte {offset} does not decrypt ({exc})"
                else:
                    try:
                        content = frames.parse(version, plaintext)
                    except frames.FrameContentError as exc:
                        raise CorruptStateError(f"{path}: record at byte {offset}: {exc}") from None
                    out.v3 = out.v3 or version == frames.V3
                    out.commits.extend(content.commits)
                    if content.next_segment is not None:
                        if content.next_segment != segment + 1:
                            raise CorruptStateError(
                                f"{path}: end record names segment {content.next_segment}"
                            )
                        out.ended = True
                    offset = body + length
                    out.valid_size = offset
                    continue
        break
    else:
        return out
    out.problem = problem
    if not out.ended:
        follows = _written_after(data, offset, keyring)
        if follows is not None:
            out.problem += f", and a record written after it follows at byte {follows}"
        else:
            out.torn = incomplete or _unwritten(data, offset)
    return out


def _written_after(data: bytes, offset: int, keyring: Keyring) -> int | None:
    """The first offset after `offset` where one of our frames starts: a header that checks
    out, followed by one of our key ids. Such a frame was written after the failing one, so
    the failing one was complete and synced once: it is damage, whether or not the later
    frame still decrypts (shifted bytes move it off the offset its AAD names)."""
    found: int | None = None
    for kid in keyring.key_ids:
        position = data.find(kid, offset + frames.HEADER.size + 1)
        while position != -1 and (found is None or position - frames.HEADER.size < found):
            candidate = position - frames.HEADER.size
            if frames.header_version(data, candidate) is not None:
                found = candidate
                break
            position = data.find(kid, position + 1)
    return found


def _unwritten(data: bytes, offset: int) -> bool:
    """Whether the bytes from `offset` show blocks a crash allocated but never wrote: a run
    of 16 zeros, or zeros from a sector boundary to the end of the file."""
    if data.find(ZERO_RUN, offset) != -1:
        return True
    nonzero_end = len(data.rstrip(b"\0")) if data.endswith(b"\0") else len(data)
    first_zero_sector = max(nonzero_end, offset)
    first_zero_sector += -first_zero_sector % SECTOR
    return first_zero_sector < len(data)


@dataclass(frozen=True, slots=True)
class SetAside:
    """Part of the journal that accepting data loss moves out of the way (never deletes)."""

    segment: int
    offset: int  # from this byte to the end of the file


@dataclass
class JournalEnd:
    """Where appending continues after replay, and what stands in its way."""

    segment: int
    valid_size: int  # append from here
    size: int  # bytes in that segment's file (more than valid_size: a torn tail)
    damage: str | None = None  # what was found, when the loss was accepted
    set_aside: list[SetAside] = field(default_factory=list)


def replay_journal(
    directory: Path,
    keyring: Keyring,
    slug: str,
    first: int,
    after: str | None,
    apply: Callable[[Path, list[Commit]], None],
    accept_loss: bool = False,
) -> JournalEnd:
    """Read segments `first`, `first+1`, ... in order, handing each one's commits to `apply`.

    `first` is the segment the snapshot names (it must exist: `after` names the snapshot),
    or 1 without a snapshot (`after` is then empty). Damage raises JournalDamage, unless
    `accept_loss`: then replay stops at the first problem and the JournalEnd says what to set
    aside so the journal can continue from there.
    """
    segments = [s for s in list_segments(directory) if s >= first]

    def _path(segment: int) -> Path:
        return segment_path(directory, segment)

    def stop(error: JournalDamage, segment: int, offset: int, size: int) -> JournalEnd:
        if not accept_loss:
            raise error
        later = [SetAside(s, 0) for s in segments if s > segment and _size(_path(s))]
        here = [SetAside(segment, offset)] if size > offset else []
        return JournalEnd(segment, offset, offset, str(error), here + later)

    def missing(segment: int, why: str) -> JournalEnd:
        return stop(
            MissingSegment(
                f"{segment_path(directory, segment)}: journal segment missing {why}; starting "
                "would lose the records in it (put it back, or restore a backup with "
                "sessions-admin restore)"
            ),
            segment,
            0,
            0,
        )

    if not segments:
        return missing(first, after) if after else JournalEnd(first, 0, 0)
    if segments[0] != first:
        return missing(first, after or "(and there is no snapshot)")
    for i, segment in enumerate(segments):
        path = segment_path(directory, segment)
        if segment != first + i:
            return missing(
                first + i, f"between {segment_path(directory, first + i - 1).name} and {path.name}"
            )
        try:
            read = read_segment(path, keyring, slug, segment)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageUnavailableError(f"cannot read {path}: {exc.strerror or exc}") from None
        apply(path, read.commits)
        last = i == len(segments) - 1
        if read.ended:
            if read.problem is not None:
                return stop(
                    JournalDamage(f"{path}: {read.problem}"), segment, read.valid_size, read.size
                )
            if last:
                return missing(
                    segment + 1, f"(the end of {path.name} says the journal continues there)"
                )
            continue
        successor = segment_path(directory, segment + 1)
        newest = last or (i == len(segments) - 2 and _size(successor) == 0)
        if read.problem is not None and not (read.torn and newest):
            where = "" if newest else " of a segment that is not the newest"
            return stop(
                JournalDamage(f"{path}: {read.problem}{where}"), segment, read.valid_size, read.size
            )
        if newest:
            return JournalEnd(segment, read.valid_size, read.size)
        if read.v3 or _first_version(successor) == frames.V3:
            return stop(
                JournalDamage(
                    f"{successor}: follows {path.name}, which does not end with the record "
                    f"that continues the journal there: {path.name} was cut short, or "
                    f"{successor.name} does not belong to it"
                ),
                segment,
                read.valid_size,
                read.size,
            )
        # Two segments of the previous release: it wrote no end records.
    raise AssertionError("unreachable: the last segment returns")


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _first_version(path: Path) -> int | None:
    with path.open("rb") as fh:
        head = fh.read(frames.HEADER.size)
    return frames.header_version(head, 0) if len(head) == frames.HEADER.size else None
