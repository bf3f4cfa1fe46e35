"""Where a profile's state lives: one small interface, one module per implementation."""

from bridge.store.base import Store
from bridge.store.memory import MemoryStore

__all__ = ["MemoryStore", "Store"]
