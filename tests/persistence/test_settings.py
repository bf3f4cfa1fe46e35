"""The store's cap and retention live with its data: the service sets them, readers obey them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from structlog.testing import capture_logs

from bridge.config import ProfileConfig, StoreSettings
from bridge.persistence import layout
from bridge.persistence.keys import load_keyring
from bridge.persistence.snapshot import write_snapshot
from bridge.records import SettingsChanged, decode
from bridge.state import State
from bridge.store.durable import DurableStore, load_state
from tests.conftest import make_profile
from tests.persistence.support import NOW, Opened, crash, user

YEAR_MS = 365 * 24 * 3600 * 1000


def counts(state: State) -> dict[str, int]:
    return {key: len(conv.messages) for key, conv in state.conversations.items()}


async def admin_session(profile: ProfileConfig) -> DurableStore:
    """A store opened as sessions-admin opens it, with its own (different) configuration."""
    store = DurableStore(profile, enforce_settings=False)
    await store.open()
    return store


async def test_the_service_stores_its_settings_and_a_journal_alone_carries_them(
    opened: Opened, tmp_path: Path
) -> None:
    profile = make_profile(tmp_path, max_messages=1000, retention_days=3650)
    store = await opened(profile)
    assert store.state.settings == StoreSettings(1000, 3650)
    await store.commit([user("a", i) for i in range(300)])
    await crash(store)  # no snapshot: only the journal has them
    assert not layout.snapshot_path(profile.state_dir).exists()
    read = load_state(replace(profile, max_messages=250, retention_days=365))
    assert read.settings == StoreSettings(1000, 3650) and counts(read) == {"a": 300}


async def test_an_admin_session_neither_caps_nor_expires_with_its_own_settings(
    opened: Opened, tmp_path: Path
) -> None:
    service = make_profile(tmp_path, max_messages=1000, retention_days=3650)
    store = await opened(service)
    await store.commit([user("big", i) for i in range(600)])
    await store.commit([user("old", 1, ts=NOW - 2 * YEAR_MS)])
    await store.close()

    admin = await admin_session(replace(service, max_messages=250, retention_days=365))
    assert admin.state.settings == StoreSettings(1000, 3650)
    assert counts(admin.state) == {"big": 600, "old": 1}
    await admin.commit([user("big", 600)])  # a write: the stored cap applies, not 250
    await admin.close()  # its closing snapshot runs no retention sweep
    assert counts(load_state(service)) == {"big": 601, "old": 1}
    again = await opened(service)
    assert counts(again.state) == {"big": 601, "old": 1}


async def test_a_lower_cap_is_applied_once_through_the_journal_and_replays_the_same(
    opened: Opened, tmp_path: Path
) -> None:
    profile = make_profile(tmp_path, max_messages=100)
    store = await opened(profile)
    await store.commit([user("a", i) for i in range(100)])
    await store.close()
    lowered = replace(profile, max_messages=40)
    with capture_logs() as logs:
        store = await opened(lowered)
    (event,) = [e for e in logs if e["event"] == "store_settings_changed"]
    assert event["old"] == {"max_messages": 100, "retention_days": 365}
    assert event["new"] == {"max_messages": 40, "retention_days": 365}
    assert event["messages_dropped"] == 60 and event["log_level"] == "warning"
    conv = store.state.conversations["a"]
    assert [m.id for m in conv.messages] == [f"wamid.a.{i}" for i in range(60, 100)]
    await store.commit([user("a", 100)])
    kept = [m.id for m in store.state.conversations["a"].messages]
    await crash(store)
    # The snapshot still holds 100; the record in the journal trims at the same place for
    # every reader.
    assert [m.id for m in load_state(profile).conversations["a"].messages] == kept
    again = await opened(lowered)
    assert [m.id for m in again.state.conversations["a"].messages] == kept


async def test_a_higher_cap_keeps_more_from_then_on(opened: Opened, tmp_path: Path) -> None:
    profile = make_profile(tmp_path, max_messages=5)
    store = await opened(profile)
    await store.commit([user("a", i) for i in range(8)])
    assert counts(store.state) == {"a": 5}
    await store.close()
    store = await opened(replace(profile, max_messages=10))
    await store.commit([user("a", i) for i in range(8, 16)])
    assert counts(store.state) == {"a": 10}


async def test_a_store_without_stored_settings_loads_untruncated(
    opened: Opened, tmp_path: Path
) -> None:
    """A store of the previous release: its snapshot has no settings, its journal none."""
    profile = make_profile(tmp_path)  # the defaults: 250 messages
    layout.create_profile_dir(profile.state_dir)
    old = State()
    for i in range(300):
        old.apply(i + 1, user("a", i))
    keyring = load_keyring(profile, create=True)
    await write_snapshot(layout.snapshot_path(profile.state_dir), old, keyring, "default", 1)
    (layout.journal_dir(profile.state_dir) / "00000001.wal").touch()
    assert load_state(profile).settings is None
    assert counts(load_state(profile)) == {"a": 300}
    admin = await admin_session(profile)
    await admin.close()
    assert counts(load_state(profile)) == {"a": 300}
    # The service then makes its settings the store's, and says what that cost.
    with capture_logs() as logs:
        store = await opened(profile)
    (event,) = [e for e in logs if e["event"] == "store_settings_changed"]
    assert event["old"] is None and event["messages_dropped"] == 50
    assert counts(store.state) == {"a": 250}


async def test_settings_record_round_trips_and_is_not_rewritten_when_unchanged(
    opened: Opened, tmp_path: Path
) -> None:
    profile = make_profile(tmp_path)
    store = await opened(profile)
    await store.close()
    store = await opened(profile)
    await crash(store)
    journal = layout.journal_dir(profile.state_dir)
    records = [
        p.read_bytes() for p in sorted(journal.iterdir()) if p.suffix == ".wal" and p.stat().st_size
    ]
    assert records == []  # the first open's record is in the snapshot; the second wrote none
    payload = decode(b'{"q": 7, "t": "c", "max_messages": 9, "retention_days": 3}')
    assert payload == (7, SettingsChanged(StoreSettings(9, 3)))
