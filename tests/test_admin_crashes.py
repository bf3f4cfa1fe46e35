"""sessions-admin killed at every step of a write: what is left must start, and lose nothing."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from bridge.config import ProfileConfig
from bridge.persistence import layout
from bridge.persistence.keys import load_keyring
from bridge.persistence.snapshot import write_snapshot
from bridge.store.durable import DurableStore, load_state
from tests.conftest import APP_SECRET, VERIFY_TOKEN, make_profile
from tests.killpoints import admin_killed_after
from tests.persistence.support import crash, snapshot_of, user
from tests.test_cli import clean_env, free_port, start_serve


def env_for(var: Path) -> dict[str, str]:
    return clean_env(
        BRIDGE_APP_SECRET=APP_SECRET,
        BRIDGE_VERIFY_TOKEN=VERIFY_TOKEN,
        BRIDGE_VAR_DIR=str(var),
        BRIDGE_PORT=str(free_port()),
    )


async def store_and_archive(profile: ProfileConfig, archive: Path) -> tuple[Any, Any]:
    """A store with a snapshot and a journal after it, and an archive of an earlier state;
    returns what each holds."""
    store = DurableStore(profile)
    await store.open()
    for n in range(20):
        await store.commit([user(f"a{n % 3}", n)])
    await write_snapshot(archive, store.state, load_keyring(profile, create=False), profile.slug, 0)
    archived = snapshot_of(store.state)
    await store.snapshot()
    for n in range(20, 40):
        await store.commit([user(f"b{n % 3}", n)])
    current = snapshot_of(store.state)
    await crash(store)
    return current, archived


async def opened_view(profile: ProfileConfig) -> Any:
    store = DurableStore(profile)
    await store.open()
    view = snapshot_of(store.state)
    await store.close()
    return view


def reset(template: Path, state_dir: Path) -> None:
    shutil.rmtree(state_dir)
    shutil.copytree(template, state_dir)


def test_restore_killed_after_any_step_leaves_a_store_that_starts(tmp_path: Path) -> None:
    var = tmp_path / "var"
    profile = make_profile(var)
    archive = tmp_path / "archive.wab"
    current, archived = asyncio.run(store_and_archive(profile, archive))
    assert current != archived
    template = tmp_path / "template"
    shutil.copytree(profile.state_dir, template)
    env = env_for(var)
    step, served_after_rename = 0, False
    while True:
        step += 1
        reset(template, profile.state_dir)
        outcome = admin_killed_after(step, ["restore", str(archive)], env, tmp_path / "steps")
        assert outcome.killed or outcome.returncode == 0, outcome.stderr
        if outcome.killed and outcome.steps[-1].endswith(
            f" {layout.snapshot_path(profile.state_dir)}"
        ):
            # Killed right after the new snapshot was renamed into place: the service
            # itself starts there, on the restored state.
            served = tmp_path / "served"
            shutil.copytree(profile.state_dir, served / "profiles" / "default")
            server = start_serve(served, env={**env, "BRIDGE_VAR_DIR": str(served)})
            code, _ = server.stop()
            assert code == 0
            restored = load_state(make_profile(served))
            assert sorted(restored.conversations) == ["a0", "a1", "a2"]
            served_after_rename = True
        view = asyncio.run(opened_view(profile))
        assert view in (current, archived), f"killed after {outcome.steps[-1:]}"
        assert not list(profile.state_dir.rglob(".*.tmp")), "stale temp files stay"
        if not outcome.killed:
            assert view == archived
            break
    assert served_after_rename
    assert step > 10, outcome.steps  # it did walk through the steps


def test_a_backup_killed_before_its_rename_leaves_no_temp_file_after_a_start(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    profile = make_profile(var)
    asyncio.run(store_and_archive(profile, tmp_path / "archive.wab"))
    env = env_for(var)
    log = tmp_path / "steps"
    backups = layout.backups_dir(profile.state_dir)
    backups.mkdir(mode=0o700)  # so that both runs below take the same steps
    complete = admin_killed_after(10_000, ["backup"], env, log)
    assert complete.returncode == 0, complete.stderr
    before_rename = next(i for i, s in enumerate(complete.steps) if s.startswith("replace "))
    killed = admin_killed_after(before_rename, ["backup"], env, log)
    assert killed.killed
    (temp,) = backups.glob(".*.tmp")
    assert temp.stat().st_size > 1000
    server = start_serve(var, env=env)
    code, events = server.stop()
    assert code == 0
    assert not temp.exists()
    assert str(temp) in [e.get("file") for e in events if e["event"] == "stale_temp_removed"]
