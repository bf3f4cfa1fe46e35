"""A factory of opened durable stores on a temporary profile, closed after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.config import ProfileConfig
from bridge.store.durable import DurableStore
from tests.conftest import make_profile
from tests.persistence.support import Opened


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[Opened]:
    stores: list[DurableStore] = []

    async def open_store(profile: ProfileConfig | None = None, **options: bool) -> DurableStore:
        store = DurableStore(profile or make_profile(tmp_path), **options)
        await store.open()
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        await store.close()
