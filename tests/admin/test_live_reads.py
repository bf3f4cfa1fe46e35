"""Reads of a running bridge's files while an operator rotates its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.persistence.keys import load_keyring
from bridge.store import durable
from bridge.store.durable import load_state
from tests.admin.support import admin
from tests.admin.test_database import PHONE, make_file_store
from tests.conftest import make_profile
from tests.test_cli import clean_env


def test_a_read_that_meets_a_key_rotated_meanwhile_reads_the_keys_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keys are read, then rotate-key re-encrypts the files under a new one, then the
    files are read (found by the crash loop: a backup under load failed with "encrypted
    with key ..., which is not in the keyring")."""
    var = tmp_path / "var"
    make_file_store(var)
    profile = make_profile(var, state_dir=var / "profiles" / "default")
    before_rotation = load_keyring(profile, create=False)
    rotated = admin(["rotate-key"], clean_env(BRIDGE_VAR_DIR=str(var)))
    assert rotated.returncode == 0, rotated.stderr
    assert load_keyring(profile, create=False).key_ids != before_rotation.key_ids

    calls: list[int] = []

    def stale_first(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            return before_rotation
        return load_keyring(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(durable, "load_keyring", stale_first)
    state = load_state(profile)
    assert PHONE in state.conversations and len(calls) == 2
