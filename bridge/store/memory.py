"""A store with nothing on disk: for tests, benchmarks' baseline and throwaway runs."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.records import Record
from bridge.store.base import Store


class MemoryStore(Store):
    async def commit(self, records: Sequence[Record]) -> None:
        self._apply(records)
        self._committed(records)
