"""Keys: from the config or generated once, several in a ring, never silently replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError, CorruptStateError
from bridge.persistence import layout
from bridge.persistence.crypto import DecryptError, Keyring, key_id
from bridge.persistence.keys import encode_key, load_keyring, new_key, write_key_file
from bridge.store.durable import load_state
from tests.conftest import make_profile
from tests.persistence.support import Opened, snapshot_of, user


def test_a_record_opens_only_with_its_key_and_its_associated_data() -> None:
    ring = Keyring([new_key()])
    sealed = ring.seal(b"secret", b"ctx")
    assert ring.open(sealed, b"ctx") == b"secret"
    assert sealed[:8] == ring.active_id == key_id(ring.keys[0])
    with pytest.raises(DecryptError, match="changed or misplaced"):
        ring.open(sealed, b"other")
    with pytest.raises(DecryptError, match="not in the keyring"):
        Keyring([new_key()]).open(sealed, b"ctx")
    assert ring.seal(b"secret", b"ctx")[8:20] != sealed[8:20]  # a fresh nonce every time


async def test_old_keys_in_the_key_file_still_read_and_new_data_uses_the_first(
    opened: Opened,
) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.close()
    key_file = layout.key_path(store.profile.state_dir)
    old = load_keyring(store.profile, create=False)
    fresh = new_key()
    write_key_file(key_file, [fresh, *old.keys])
    again = await opened()
    assert snapshot_of(again.state) == snapshot_of(store.state)
    await again.commit([user("1", 2)])
    await again.close()
    write_key_file(key_file, [fresh])  # everything was re-sealed by the closing snapshot
    assert [m.content for m in load_state(store.profile).conversations["1"].messages] == [
        "hello 1",
        "hello 2",
    ]


async def test_a_key_from_the_config_is_used_and_none_is_written(
    opened: Opened, tmp_path: Path
) -> None:
    profile = make_profile(tmp_path, key=encode_key(new_key()))
    store = await opened(profile)
    await store.commit([user("1", 1)])
    await store.close()
    assert not layout.key_path(profile.state_dir).exists()
    assert "1" in load_state(profile).conversations


async def test_a_lost_key_file_is_not_replaced_by_a_new_key(opened: Opened) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.close()
    key_file = layout.key_path(store.profile.state_dir)
    key_file.unlink()
    snapshot = layout.snapshot_path(store.profile.state_dir).read_bytes()
    with pytest.raises(ConfigError, match="holds encrypted data but its key file .* is missing"):
        await opened()
    assert not key_file.exists()
    assert layout.snapshot_path(store.profile.state_dir).read_bytes() == snapshot


async def test_a_wrong_configured_key_is_refused_naming_the_file(
    opened: Opened, tmp_path: Path
) -> None:
    store = await opened()
    await store.commit([user("1", 1)])
    await store.close()
    other = make_profile(tmp_path, key=encode_key(new_key()))
    with pytest.raises(CorruptStateError, match=r"snapshot\.wab: .*not in the keyring"):
        await opened(other)


@pytest.mark.parametrize("text", ["not base64!", encode_key(b"short"), "# only a comment"])
def test_a_malformed_key_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="BRIDGE_KEY"):
        load_keyring(make_profile(tmp_path, key=text), create=True)
