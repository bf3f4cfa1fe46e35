"""The seen-set's day buckets: pruned by age a bounded step at a time, one entry per id."""

from __future__ import annotations

from bridge.seen import DAY_MS, SEEN_TTL_MS, STEP, SeenSet
from bridge.state import State, erased_id

DAY0 = 20_400 * DAY_MS  # midnight UTC, a day in 2025


def test_buckets_are_pruned_by_age_of_receipt() -> None:
    seen = SeenSet()
    for day in range(12):
        seen.add(f"wamid.{day}", DAY0 + day * DAY_MS + 3600_000)
    now = DAY0 + 11 * DAY_MS + 7200_000
    dropped = seen.prune(now)
    # Kept: everything received less than 8 days ago, and the rest of the day that crosses
    # the horizon (forgotten between 8 and 9 days after receipt, never earlier).
    assert dropped == 3 and sorted(seen.days()) == [20_403 + d for d in range(9)]
    assert "wamid.2" not in seen and "wamid.3" in seen
    assert all(now - seen[i] < SEEN_TTL_MS + DAY_MS for i in seen)
    assert seen.prune(now + DAY_MS) == 1 and "wamid.3" not in seen


def test_an_id_is_kept_once_across_a_day_boundary() -> None:
    seen = SeenSet()
    seen.add("wamid.late", DAY0 + DAY_MS - 1)  # 23:59:59.999
    seen.add("wamid.late", DAY0 + DAY_MS + 1)  # redelivered after midnight
    seen.update({"wamid.late": DAY0 + 2 * DAY_MS, "wamid.new": DAY0 + 2 * DAY_MS})
    assert seen.setdefault("wamid.late", DAY0 + 3 * DAY_MS) == DAY0 + DAY_MS - 1
    assert len(seen) == 2 and seen["wamid.late"] == DAY0 + DAY_MS - 1  # the first receipt
    assert seen.days() == {20_400: 1, 20_402: 1}
    assert [dict(f) for f in seen.frames()] == [
        {"wamid.late": DAY0 + DAY_MS - 1},
        {"wamid.new": DAY0 + 2 * DAY_MS},
    ]
    # Pruned with the day it was first received on, not kept for the later bucket.
    assert seen.prune(DAY0 + DAY_MS + SEEN_TTL_MS) == 1 and "wamid.late" not in seen


def test_pruning_and_snapshot_frames_go_in_bounded_steps() -> None:
    seen = SeenSet()
    old = DAY0
    seen.update({f"wamid.old.{i}": old + i for i in range(2 * STEP + 7)})
    seen.update({f"wamid.new.{i}": old + 9 * DAY_MS for i in range(STEP + 1)})
    seen.pop("wamid.old.5")  # erased meanwhile: skipped, not written, not counted
    frames = list(seen.frames())
    assert [len(f) for f in frames] == [STEP - 1, STEP, 7, STEP, 1]
    assert sum(len(f) for f in frames) == len(seen)

    steps = list(seen.prune_steps(old + 9 * DAY_MS))
    assert steps == [STEP - 1, STEP, 7] and len(seen) == STEP + 1


def test_state_keeps_erased_ids_only_as_hashes_with_the_same_horizon() -> None:
    state = State()
    state.seen.add("wamid.kept", DAY0)
    state.seen.add("wamid.erased", DAY0)
    at = state.seen.pop("wamid.erased")
    assert at is not None
    state.erased_seen[erased_id("wamid.erased")] = at
    assert state.has_seen("wamid.erased") and "wamid.erased" not in state.seen
    assert state.prune_seen(DAY0 + SEEN_TTL_MS + DAY_MS) == 2
    assert not state.has_seen("wamid.kept") and not state.has_seen("wamid.erased")
