"""Stores on the test's PostgreSQL database, opened and closed for a test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.config import ProfileConfig
from bridge.persistence.keys import encode_key, new_key
from bridge.store.postgres import PostgresStore
from tests.conftest import make_profile

KEY = encode_key(new_key())
OpenStore = Callable[..., Awaitable[PostgresStore]]


@pytest.fixture
async def open_store(tmp_path: Path, database_url: str) -> AsyncIterator[OpenStore]:
    """Opens stores (replicas) of one profile on the test's database; closes them after."""
    stores: list[PostgresStore] = []

    async def open_one(profile: ProfileConfig | None = None, **options: Any) -> PostgresStore:
        options.setdefault("poll_seconds", 0.05)
        store = PostgresStore(profile or make_profile(tmp_path, key=KEY), database_url, **options)
        await store.open()
        stores.append(store)
        return store

    yield open_one
    for store in stores:
        await store.close()
