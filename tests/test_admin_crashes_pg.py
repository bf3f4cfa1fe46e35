"""sessions-admin `import`, `restore` and `rotate-key` on the PostgreSQL store killed with
SIGKILL at random moments, and after each change it makes to files: the database left opens
(as a replica would open it) and holds the old state or the new one, never a mix; an import
leaves each conversation whole or absent; a rotation leaves every row readable."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.config import ProfileConfig
from bridge.persistence.keys import encode_key, new_key
from bridge.state import State
from bridge.store.postgres import PostgresStore
from tests.admin.support import ADMIN, admin, now_ms, seed_conversation, write_seed
from tests.conftest import make_profile
from tests.killpoints import admin_killed_after
from tests.persistence.support import user
from tests.pg import PostgresServer, fresh_database
from tests.test_cli import clean_env

pytestmark = pytest.mark.slow

RUNS = 8


def view(state: State) -> dict[str, Any]:
    """What must be one state or the other, whole: every conversation's messages."""
    return {
        key: [(m.role, m.content, m.timestamp, m.id) for m in conv.messages]
        for key, conv in sorted(state.conversations.items())
    }


async def opened(profile: ProfileConfig, url: str) -> State:
    """The database as a replica starting now finds it (it must open)."""
    store = PostgresStore(profile, url, enforce_settings=False)
    await store.open()
    try:
        return store.state
    finally:
        await store.close()


async def seed(profile: ProfileConfig, url: str, names: str, count: int) -> State:
    store = PostgresStore(profile, url)
    await store.open()
    try:
        for n in range(count):
            await store.commit([user(f"{names}{n % 3}", n, ts=now_ms() - 1000 + n)])
        return store.state
    finally:
        await store.close()


def env_for(tmp_path: Path, url: str, key: str) -> dict[str, str]:
    return clean_env(
        BRIDGE_VAR_DIR=str(tmp_path / "admin"),
        BRIDGE_STORE="postgres",
        BRIDGE_DATABASE_URL=url,
        BRIDGE_KEY=key,
    )


def killed_at(args: list[str], env: dict[str, str], after: float) -> int:
    """Run sessions-admin ARGS and SIGKILL it `after` seconds in; its return code."""
    proc = subprocess.Popen(
        ADMIN + args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return proc.returncode


def timed(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    result = admin(args, env)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


def test_import_on_the_database_killed_at_random_moments_leaves_whole_conversations(
    tmp_path: Path, database_url: str
) -> None:
    key = encode_key(new_key())
    profile = make_profile(tmp_path / "reader", key=key)
    before = view(asyncio.run(seed(profile, database_url, "old", 9)))
    env = env_for(tmp_path, database_url, key)
    rng = random.Random(17)
    start = now_ms() - 3600_000

    def seed_file(run: int) -> tuple[Path, list[str]]:
        pairs = [seed_conversation(f"3462{run:02d}{n:05d}", 20, start) for n in range(120)]
        return write_seed(tmp_path / f"seed{run}.json", pairs), [p[0] for p in pairs]

    path, keys = seed_file(0)
    full = timed(["import", str(path)], env)  # how long a whole import takes here
    imported = view(asyncio.run(opened(profile, database_url)))
    assert all(len(imported[k]) == 20 for k in keys)
    kills = 0
    for run in range(1, RUNS + 1):
        path, keys = seed_file(run)
        code = killed_at(["import", str(path)], env, rng.uniform(0.3, full))
        kills += code == -signal.SIGKILL
        state = view(asyncio.run(opened(profile, database_url)))
        assert {k: v for k, v in state.items() if k.startswith("old")} == before
        counts = {len(state.get(k, [])) for k in keys}
        assert counts <= {0, 20}, f"run {run}: a conversation imported in part: {counts}"
    assert kills >= RUNS // 2, "the kills came too late to land inside the import"


@pytest.fixture
def restore_case(tmp_path: Path, database_url: str) -> tuple[ProfileConfig, str, Path, Any]:
    """A profile in the database, and an archive of an earlier state of it."""
    key = encode_key(new_key())
    profile = make_profile(tmp_path / "reader", key=key)
    archived = view(asyncio.run(seed(profile, database_url, "a", 12)))
    result = admin(
        ["backup", "--to", str(tmp_path / "archives")], env_for(tmp_path, database_url, key)
    )
    assert result.returncode == 0, result.stderr
    return profile, key, Path(result.stdout.strip()), archived


def fresh_copy(pg_server: PostgresServer, profile: ProfileConfig) -> tuple[str, Any]:
    """A new database holding the profile's current state (not the archive's)."""
    url = fresh_database(pg_server)
    asyncio.run(seed(profile, url, "a", 12))
    return url, view(asyncio.run(seed(profile, url, "b", 12)))


def test_restore_on_the_database_killed_at_random_moments_leaves_old_or_new(
    tmp_path: Path,
    pg_server: PostgresServer,
    restore_case: tuple[ProfileConfig, str, Path, Any],
) -> None:
    profile, key, archive, archived = restore_case
    url, current = fresh_copy(pg_server, profile)
    assert current != archived
    full = timed(["restore", str(archive)], env_for(tmp_path, url, key))
    assert view(asyncio.run(opened(profile, url))) == archived
    rng = random.Random(29)
    outcomes = set()
    for run in range(RUNS):
        url, current = fresh_copy(pg_server, profile)
        # From 0.1 s: a restore of this archive is done about 0.25 s in, most of it the
        # start-up, and a window of only its last 50 ms put every kill after the commit when
        # the runs came out quicker than the timed one.
        code = killed_at(
            ["restore", str(archive)], env_for(tmp_path, url, key), rng.uniform(0.1, full)
        )
        state = view(asyncio.run(opened(profile, url)))
        assert state in (current, archived), f"run {run}: killed with {code}: a mix"
        outcomes.add("restored" if state == archived else "old")
    assert "old" in outcomes  # some kills landed before the commit


def test_restore_on_the_database_killed_after_any_file_step_leaves_old_or_new(
    tmp_path: Path,
    pg_server: PostgresServer,
    restore_case: tuple[ProfileConfig, str, Path, Any],
) -> None:
    """The state replaced is written as an archive inside the restore's transaction: a kill
    after any step of that leaves the database as it was (the transaction rolls back)."""
    profile, key, archive, archived = restore_case
    step, rolled_back, committed = 0, 0, False
    while True:
        step += 1
        url, current = fresh_copy(pg_server, profile)
        outcome = admin_killed_after(
            step, ["restore", str(archive)], env_for(tmp_path, url, key), tmp_path / "steps"
        )
        assert outcome.killed or outcome.returncode == 0, outcome.stderr
        state = view(asyncio.run(opened(profile, url)))
        if not outcome.killed:
            assert state == archived
            break
        if state == current:
            # Killed while writing the archive of the state being replaced: nothing changed.
            assert not committed, f"killed after {outcome.steps[-1:]}: old state again"
            rolled_back += str(tmp_path / "admin") in outcome.steps[-1]  # the archive's steps
        else:
            assert state == archived, f"killed after {outcome.steps[-1:]}: a mix"
            committed = True  # killed after the commit (recording the write in the event log)
    assert rolled_back >= 4, outcome.steps  # it did walk through the steps in the transaction


def test_rotate_key_on_the_database_killed_at_random_moments_loses_nothing(
    tmp_path: Path, database_url: str
) -> None:
    """Killed while it re-seals, rotate-key leaves rows under either key, all readable with
    both configured: the state is the same, and a rotate-key run to the end finishes it.
    Each run rotates the other way round, so each has the whole database to re-seal."""
    old, new = encode_key(new_key()), encode_key(new_key())

    async def seed_many() -> State:  # enough records that re-sealing outlasts the start-up
        store = PostgresStore(make_profile(tmp_path / "r", key=old), database_url)
        await store.open()
        try:
            for batch in range(60):
                await store.commit(
                    [
                        user(f"o{n % 50}", n, ts=now_ms() - 1000)
                        for n in range(batch * 500, (batch + 1) * 500)
                    ]
                )
            return store.state
        finally:
            await store.close()

    before = view(asyncio.run(seed_many()))
    both = make_profile(tmp_path / "both", key=f"{new},{old}")
    to_new = env_for(tmp_path, database_url, f"{new},{old}")
    to_old = env_for(tmp_path, database_url, f"{old},{new}")
    # How long a whole rotation takes here: the quicker of two after a first one that warms
    # up (each re-seals everything), so one slow run does not put every kill after the end.
    # They end under the new key: run 0 re-seals it all again.
    timed(["rotate-key"], to_new)
    full = min(timed(["rotate-key"], to_old), timed(["rotate-key"], to_new))
    rng = random.Random(23)
    kills = 0
    # Kills in the first three quarters of a whole rotation: a run can be quicker than the
    # timed ones (CI saw 5 of 8 kills land after the end with the whole span).
    latest = max(0.35, 0.75 * full)
    for run in range(RUNS):
        at = rng.uniform(0.3, latest)
        code = killed_at(["rotate-key"], to_old if run % 2 == 0 else to_new, at)
        kills += code == -signal.SIGKILL
        assert view(asyncio.run(opened(both, database_url))) == before, f"run {run}"
    assert kills >= RUNS // 2, "the kills came too late to land inside the rotation"
    finished = admin(["rotate-key"], to_new)
    assert finished.returncode == 0, finished.stderr
    only_new = make_profile(tmp_path / "new", key=new)
    assert view(asyncio.run(opened(only_new, database_url))) == before
