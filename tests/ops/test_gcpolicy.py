"""The collector policy: what survives a full collection is frozen, so the next full
collection walks only what survived since (bridge/ops/gcpolicy.py)."""

from __future__ import annotations

import gc

from bridge.ops import gcpolicy


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_survivors_of_a_full_collection_are_frozen_and_garbage_still_collected() -> None:
    gcpolicy.install()
    gcpolicy.install()  # idempotent
    assert gc.callbacks.count(gcpolicy._after_collection) == 1
    kept = [Node() for _ in range(1000)]
    before = gcpolicy.frozen()
    dead = [Node() for _ in range(1000)]
    del dead
    collected = gc.collect()
    assert collected >= 1000  # dead cycles are still collected before the freeze
    assert gcpolicy.frozen() >= before + 1000  # the live ones are frozen after it
    assert len(gc.get_objects(generation=2)) < 1000  # the next full collection walks little
    assert len(kept) == 1000
