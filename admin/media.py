"""Media for the operator: the decrypted file of one message, and media in erasure, key
rotation, backups, restores and `verify`.

Media files are encrypted and immutable once written (bridge/media/store.py), so a backup
holds them as they are: beside the archive `<slug>-<stamp>.wab`, the directory
`<slug>-<stamp>.wab.media/` with a hard link to each file the archive's state refers to (a
copy where links are not possible: another file system). Hard links cost no space while the
live file exists, and keep the bytes when it is erased or dropped later, as a backup must.

With the postgres store the database holds every file (bridge/store/pg/media.py) and a
local `media/` directory is at most a replica's cache: what a command needs and the cache
lacks is fetched from the database, as sealed (`fetch_from_database`); `migrate` copies the
files along with the state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg

from admin import render
from admin.store import read_state, resolve_profile
from bridge.config import ProfileConfig
from bridge.conversations import Message
from bridge.errors import BridgeError, StorageUnavailableError
from bridge.media import upkeep
from bridge.media.entry import media_of, stored_file
from bridge.media.store import MediaFileError, MediaStore, valid_name
from bridge.persistence import layout
from bridge.persistence.crypto import Keyring
from bridge.persistence.files import fsync_dir, fsync_file, secure_dir, temp_path
from bridge.state import State
from bridge.store.pg.media import DatabaseMedia, NotInDatabaseError

T = TypeVar("T")

COMPANION = ".media"


def media_store(
    profile: ProfileConfig, keyring: Keyring, directory: Path | None = None
) -> MediaStore:
    return MediaStore(
        directory or layout.media_dir(profile.state_dir), lambda: keyring, profile.slug
    )


def companion(archive: Path) -> Path:
    """Where an archive's media are: `<archive>.media/`."""
    return archive.with_name(archive.name + COMPANION)


def remove_companion(archive: Path) -> None:
    shutil.rmtree(companion(archive), ignore_errors=True)


# -- the database's copy (the postgres store) ---------------------------------------------------


@dataclass
class Copied:
    files: int = 0
    missing: int = 0  # not where they were copied from (erased or dropped meanwhile)
    damaged: list[str] = field(default_factory=list)


async def _with_database(
    profile: ProfileConfig,
    url: str,
    keyring: Keyring,
    directory: Path,
    work: Callable[[MediaStore], Awaitable[T]],
) -> T:
    """`work` on a MediaStore in `directory` whose shared copy is the database's."""
    from bridge.store.postgres import CONNECT_TIMEOUT, DB_ERRORS, describe_url

    try:
        pool = await asyncpg.create_pool(url, min_size=0, max_size=1, timeout=CONNECT_TIMEOUT)
    except DB_ERRORS as exc:
        raise StorageUnavailableError(
            f"cannot connect to the database {describe_url(url)}: {exc}"
        ) from None
    try:
        shared = DatabaseMedia(profile.slug, url, lambda: pool)
        return await work(MediaStore(directory, lambda: keyring, profile.slug, shared))
    finally:
        with contextlib.suppress(*DB_ERRORS):
            await pool.close()


def fetch_from_database(
    profile: ProfileConfig, url: str, keyring: Keyring, names: Collection[str], directory: Path
) -> Copied:
    """The named files from the database into `directory` (those already there are kept),
    sealed as they are."""

    async def work(files: MediaStore) -> Copied:
        copied = Copied()
        for name in names:
            try:
                await files.ensure_local(name)
            except NotInDatabaseError:
                copied.missing += 1
                continue
            except MediaFileError as exc:
                copied.damaged.append(str(exc))
                continue
            copied.files += 1
        return copied

    return asyncio.run(_with_database(profile, url, keyring, directory, work))


def upload_to_database(
    profile: ProfileConfig,
    url: str,
    keyring: Keyring,
    names: Collection[str],
    directory: Path | None = None,
    *,
    record: bool = True,
) -> Copied:
    """The named files of `directory` (the profile's `media/`) into the database. With
    `record` (`migrate`: the state copied with them names them) each is marked as named by
    a record; without (`restore`: the state naming them is not there yet) they are not, so
    no sweep takes them before `mark_recorded`, after the state is."""

    async def work(files: MediaStore) -> Copied:
        copied = Copied()
        for name in names:
            if not files.path(name).exists():
                copied.missing += 1
                continue
            await files.publish(name)
            if record:
                await files.recorded(name)
            copied.files += 1
        return copied

    where = directory or layout.media_dir(profile.state_dir)
    return asyncio.run(_with_database(profile, url, keyring, where, work))


def mark_recorded(
    profile: ProfileConfig, url: str, keyring: Keyring, names: Collection[str]
) -> None:
    """The named files in the database are named by a committed record now (after a
    restore's swap), so an erasure frees them at once (bridge/store/pg/media.py)."""

    async def work(files: MediaStore) -> None:
        for name in names:
            await files.recorded(name)

    directory = layout.media_dir(profile.state_dir)
    asyncio.run(_with_database(profile, url, keyring, directory, work))


# -- erasure and key rotation (under the profile lock, in `write_store`) ----------------------

# The same for the bridge and for sessions-admin: bridge/media/upkeep.py.
sweep = upkeep.sweep
reseal = upkeep.reseal


# -- sessions-admin media KEY WAMID -o FILE ----------------------------------------------------


def find_media(state: State, key: str, wamid: str) -> tuple[Message, str]:
    """The message and its stored file, or a one-line error saying why there is none."""
    message = state.find_message(key, wamid)
    if message is None:
        raise BridgeError(f"no message {wamid!r} in conversation {key!r}")
    media = media_of(message)
    if media is None:
        raise BridgeError(f"message {wamid!r} has no media")
    name = stored_file(message)
    if name is None:
        status = media.get("state")
        why = {
            None: "not fetched yet",
            "failed": f"the fetch failed ({media.get('error', 'unknown')})",
            "dropped": "its bytes were dropped by media retention",
        }.get(status if isinstance(status, str) else None, f"state {status!r}")
        raise BridgeError(f"message {wamid!r}: no stored file: {why}")
    return message, name


def write_media(
    profile: ProfileConfig, state: State, key: str, wamid: str, out: str, url: str | None = None
) -> int:
    """Decrypt one message's file to `out` (`-`: stdout); returns the bytes written. The
    file is checked whole (digest and length) before it is given a name."""
    from bridge.persistence.keys import load_keyring

    message, name = find_media(state, key, wamid)
    keyring = load_keyring(profile, create=False)
    files = media_store(profile, keyring)
    if url is not None and not files.path(name).exists():
        with tempfile.TemporaryDirectory(prefix="bridge-media-") as fetched:
            copied = fetch_from_database(profile, url, keyring, [name], Path(fetched))
            if copied.damaged or copied.missing:
                raise MediaFileError(
                    copied.damaged[0] if copied.damaged else f"{name}: not in the database"
                )
            return _write_plain(media_store(profile, keyring, Path(fetched)), name, message, out)
    return _write_plain(files, name, message, out)


def _write_plain(files: MediaStore, name: str, message: Message, out: str) -> int:
    size = 0
    if out == "-":
        for chunk in files.chunks(name, message.id):
            sys.stdout.buffer.write(chunk)
            size += len(chunk)
        sys.stdout.buffer.flush()
        return size
    target = Path(out)
    tmp = temp_path(target)
    # A new file, never one a killed run left under this name (a pid used again): reopening
    # it would keep its mode, and the decrypted file is personal data (0600). O_EXCL also
    # refuses a symlink put in its place.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in files.chunks(name, message.id):
                fh.write(chunk)
                size += len(chunk)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size


def cmd_media(args: argparse.Namespace) -> int:
    from admin import database
    from bridge.control.writes import conversation_key

    profile = resolve_profile(args)
    state = read_state(profile)
    key = conversation_key(state, args.key)
    try:
        size = write_media(
            profile, state, key, args.wamid, args.output, database.database_of(profile)
        )
    except MediaFileError as exc:
        raise BridgeError(str(exc)) from None
    except OSError as exc:
        raise BridgeError(f"cannot write {args.output}: {exc.strerror or exc}") from None
    if args.output != "-":
        if args.json:
            render.emit_json({"path": args.output, "bytes": size})
        else:
            print(f"wrote {size:,} bytes to {args.output} (decrypted: handle it as personal data)")
    return 0


# -- verify ------------------------------------------------------------------------------------


@dataclass
class MediaCheck:
    checked: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # one line each: the file and the cause

    def as_json(self) -> dict[str, object]:
        return {
            "media_files": self.checked,
            "media_bytes": self.bytes,
            "media_missing": len(self.missing),
            "media_damaged": self.damaged,
        }


def _referenced(state: State) -> Iterator[tuple[str, str, int | None]]:
    """(file name, message id, size the entry says) of every stored file."""
    for name, (key, message_id) in state.media_files.items():
        message = state.find_message(key, message_id)
        media = media_of(message) if message is not None else None
        size = media.get("size") if media is not None else None
        yield name, message_id, size if isinstance(size, int) else None


def check_media(files: MediaStore, state: State) -> MediaCheck:
    """Decrypt every file the state refers to: whole, for its message, of the size recorded.
    A file that is not there is counted apart (erased or dropped while a backup was taken)."""
    result = MediaCheck()
    for name, message_id, size in _referenced(state):
        if not files.path(name).exists():
            result.missing.append(name)
            continue
        try:
            found = files.check(name, message_id)
        except MediaFileError as exc:
            result.damaged.append(str(exc))
            continue
        if size is not None and found.size != size:
            result.damaged.append(f"{files.path(name)}: {found.size} bytes, recorded {size}")
            continue
        result.checked += 1
        result.bytes += found.size
    return result


# -- backup and restore ------------------------------------------------------------------------


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(source, target)
        fsync_file(target)


def backup_media(
    profile: ProfileConfig,
    state: State,
    archive: Path,
    database: tuple[str, Keyring] | None = None,
) -> tuple[int, int]:
    """Put the files `state` refers to beside `archive` (see the module docstring), whole
    or not at all: a temp directory renamed into place. Returns (files, missing): a file
    erased or dropped after the state was read is missing, which `verify` reports. With
    `database` (url, keyring: the postgres store), what the local cache lacks is fetched
    from the database."""
    source = layout.media_dir(profile.state_dir)
    target = companion(archive)
    if not state.media_files:
        return 0, 0  # no directory: an archive of a store without media is just the file
    tmp = temp_path(target)
    shutil.rmtree(tmp, ignore_errors=True)
    secure_dir(tmp)
    count = 0
    absent: list[str] = []
    try:
        for name in state.media_files:
            if not valid_name(name):
                continue
            try:
                _link_or_copy(source / f"{name}.wam", tmp / f"{name}.wam")
            except FileNotFoundError:
                absent.append(name)
                continue
            count += 1
        missing = len(absent)
        if absent and database is not None:
            copied = fetch_from_database(profile, database[0], database[1], absent, tmp)
            if copied.damaged:
                raise BridgeError(f"media in the database: {copied.damaged[0]}")
            count += copied.files
            missing = copied.missing
        fsync_dir(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count, missing


def restore_media(profile: ProfileConfig, archive: Path, keep: Path) -> int:
    """Before the restored snapshot replaces the store: keep the current media files with
    the previous store (links in `keep/media/`), and add the archive's files to `media/`
    (names are random: nothing is overwritten). The files of the previous store are then
    orphans the bridge deletes at its next start; their links in `keep` remain. Each step
    only adds links, so a crash anywhere leaves either store whole."""
    live = layout.media_dir(profile.state_dir)
    if live.is_dir():
        kept = keep / "media"
        secure_dir(kept)
        for path in live.glob("*.wam"):
            with contextlib.suppress(FileExistsError):
                _link_or_copy(path, kept / path.name)
        fsync_dir(kept)
    source = companion(archive)
    if not source.is_dir():
        return 0
    secure_dir(live)
    count = 0
    for path in source.glob("*.wam"):
        with contextlib.suppress(FileExistsError):
            _link_or_copy(path, live / path.name)
        count += 1
    fsync_dir(live)
    return count
