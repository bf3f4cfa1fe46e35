"""One writer per store: sessions-admin's writes go to the running bridge, or to the store.

While a bridge holds the profile lock, a write is sent to it over its control channel
(bridge/control/) and the bridge commits it through its own store; sessions-admin writes
nothing itself, even when the bridge does not answer. When no bridge runs, sessions-admin
takes the lock, opens the store and runs the same operation. A bridge starting or stopping
in between is noticed (the lock or the socket says so) and the write goes the other way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from admin import database
from bridge.config import ProfileConfig
from bridge.control import OPERATIONS, ControlContext
from bridge.control import client as control_client
from bridge.control.protocol import Args, Result
from bridge.errors import BridgeError, ProfileLockedError
from bridge.persistence import layout
from bridge.persistence.snapshot import Progress
from bridge.store.durable import DurableStore

DEFAULT_TIMEOUT = 15.0  # seconds a running bridge may stay silent (it says something every 1 s)
ATTEMPTS = 5  # a bridge starting or stopping at that very moment, several times over


class _Locked(Exception):
    """A bridge took the lock between our look and our open."""


def perform(
    profile: ProfileConfig,
    op: str,
    requests: Sequence[Args],
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
) -> list[Result]:
    """Run control operation `op` once per item of `requests`, in order; their results.

    Through the running bridge when there is one, else directly on the store (opened once
    for all of them, with the lock). `progress` shows long steps when writing directly."""
    url = database.database_of(profile)
    if url:  # the PostgreSQL store: written directly, live (admin/database.py)
        return database.perform(profile, url, op, requests)
    results: list[Result] = []
    for _ in range(ATTEMPTS):
        remaining = requests[len(results) :]
        if not remaining:
            return results
        try:
            if layout.lock_holder(profile.state_dir) is None:
                results.extend(_direct(profile, op, remaining, progress))
            else:
                for args in remaining:
                    results.append(
                        control_client.request(profile.state_dir, profile.slug, op, args, timeout)
                    )
        except (control_client.NoBridge, _Locked):
            continue  # it stopped, or one started: look again who writes
    if len(results) < len(requests):
        raise BridgeError(
            f"profile {profile.slug!r}: a bridge kept starting and stopping while this command "
            "tried to write; try again"
        )
    return results


def _direct(
    profile: ProfileConfig, op: str, requests: Sequence[Args], progress: Progress | None
) -> list[Result]:
    """Hold the lock and run the operation on the store; closing takes a snapshot, so the
    change is durable in the form the bridge writes. The store keeps its own settings:
    nothing is capped or expired that the operation did not ask."""

    async def run() -> list[Result]:
        store = DurableStore(profile, enforce_settings=False)
        try:
            await store.open()  # takes the profile lock
        except ProfileLockedError:
            raise _Locked from None
        try:
            ctx = ControlContext(store, progress=progress)
            return [await OPERATIONS.run(op, ctx, args) for args in requests]
        finally:
            await store.close()

    return asyncio.run(run())
