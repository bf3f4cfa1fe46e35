"""Media upkeep for whoever writes to a durable store: the running bridge, or sessions-admin
on a stopped profile. After an erasure, the files no message refers to go; after a key
rotation, the files are re-encrypted under the new key."""

from __future__ import annotations

import asyncio

from bridge.media.store import MediaFileError, MediaStore
from bridge.persistence import layout
from bridge.store.durable import DurableStore


def files_of(store: DurableStore) -> MediaStore:
    """The store's media files, read and written with its current keyring."""
    return MediaStore(
        layout.media_dir(store.profile.state_dir), lambda: store.keyring, store.profile.slug
    )


def sweep(store: DurableStore) -> int:
    """Once an erasure is durable: delete the files no message refers to any longer (not
    while a bridge writes files of its own: it sweeps itself, see MediaWorker). Returns how
    many."""
    state = store.state
    return len(files_of(store).sweep(lambda name: name in state.media_files))


async def reseal(store: DurableStore) -> int:
    """After `rekey`: re-encrypt every media file sealed with another key than the active
    one, so no file needs an older key any more. Returns how many files."""
    keyring = store.keyring
    files = files_of(store)
    loop = asyncio.get_running_loop()
    count = 0
    for name in list(store.state.media_files):
        try:
            if files.sealed_with(name) == keyring.active_id:
                continue
        except MediaFileError:
            continue  # gone (or damaged: `verify` says so); nothing to re-encrypt
        try:
            await loop.run_in_executor(None, files.reseal, name)
        except MediaFileError:
            if name in store.state.media_files:
                raise
            continue  # its user was erased since the list was taken: nothing to re-encrypt
        count += 1
        if name not in store.state.media_files:
            # Erased (or dropped by retention) while it was re-encrypted: its deletion may
            # have come before the rename that just put the file back.
            files.delete(name)
    return count
