"""`sessions-admin backup`: archives of one profile never prune another's, nor the new one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.admin.support import admin, admin_json, now_ms, seed_conversation, write_seed
from tests.killpoints import admin_killed_after
from tests.test_cli import clean_env

STAMP = "20260101T000000000000Z"


def profiles(tmp_path: Path, *slugs: str) -> dict[str, str]:
    env = clean_env(BRIDGE_VAR_DIR=str(tmp_path / "var"))
    for slug in slugs:
        created = admin(["profiles", "create", slug], env)
        assert created.returncode == 0, created.stderr
    return env


def backup(env: dict[str, str], slug: str, to: Path, keep: int) -> dict[str, object]:
    result = admin_json(["--profile", slug, "backup", "--to", str(to), "--keep", str(keep)], env)
    assert isinstance(result, dict)
    return result


def test_keep_prunes_only_this_profiles_archives_and_never_the_new_one(tmp_path: Path) -> None:
    env = profiles(tmp_path, "shop", "shop-eu")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)  # someone else's directory, shared on purpose
    eu = [Path(str(backup(env, "shop-eu", shared, 5)["path"])) for _ in range(3)]
    decoys = [shared / "shop-notes.wab", shared / f"shop-{STAMP}.wab.bak", shared / "README"]
    for decoy in decoys:
        decoy.write_text("not an archive of ours")
    # An archive of ours whose name sorts after any new one (a clock set wrong once).
    future = shared / "shop-29991231T235959999999Z.wab"
    future.write_text("old archive")

    first = backup(env, "shop", shared, 5)
    second = backup(env, "shop", shared, 5)
    assert Path(str(second["path"])).is_file() and first["removed"] == second["removed"] == []
    third = backup(env, "shop", shared, 2)
    assert third["removed"] == [first["path"], second["path"]]
    # Newest by name is the future one, but the archive just written is never removed.
    fourth = backup(env, "shop", shared, 1)
    assert fourth["removed"] == [third["path"], str(future)]

    assert all(p.is_file() for p in eu + decoys)
    mine = [p for p in shared.iterdir() if p.name.startswith("shop-2") and p.suffix == ".wab"]
    assert mine == [Path(str(fourth["path"]))]
    assert shared.stat().st_mode & 0o777 == 0o755
    assert Path(str(fourth["path"])).stat().st_mode & 0o777 == 0o600


def test_keep_one_keeps_the_new_archive_and_reports_what_it_removed(tmp_path: Path) -> None:
    env = profiles(tmp_path, "shop")
    target = tmp_path / "new" / "backups"
    first = admin(["--profile", "shop", "backup", "--to", str(target)], env)
    assert first.returncode == 0, first.stderr
    assert target.stat().st_mode & 0o777 == 0o700  # created by us: private
    second = admin(["--profile", "shop", "backup", "--to", str(target), "--keep", "1"], env)
    assert second.returncode == 0, second.stderr
    new = Path(second.stdout.strip())  # stdout is the path alone, for scripts
    assert new.is_file() and [p for p in target.iterdir()] == [new]
    assert second.stderr.strip() == f"removed old archive {first.stdout.strip()}"


def test_a_backup_target_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    env = profiles(tmp_path, "shop")
    (tmp_path / "afile").write_text("x")
    result = admin(["--profile", "shop", "backup", "--to", str(tmp_path / "afile")], env)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def chatty_profile(tmp_path: Path, slug: str = "shop") -> dict[str, str]:
    env = profiles(tmp_path, slug)
    pairs = [seed_conversation(f"3460000{i:04d}", 30, now_ms() - 3600_000) for i in range(40)]
    seed = write_seed(tmp_path / "sessions.json", pairs)
    assert admin(["--profile", slug, "import", str(seed)], env).returncode == 0
    return env


def test_a_backup_killed_while_writing_leaves_no_archive_and_the_next_cleans_up(
    tmp_path: Path,
) -> None:
    env = chatty_profile(tmp_path)
    target = tmp_path / "elsewhere"
    args = ["--profile", "shop", "backup", "--to", str(target)]
    log = tmp_path / "steps.log"
    full = admin_killed_after(10_000, args, env, log)
    assert full.returncode == 0, full.stderr
    temp_opens = [i for i, s in enumerate(full.steps, 1) if s.startswith("open ") and ".tmp" in s]
    for archive in target.iterdir():
        archive.unlink()

    killed = admin_killed_after(temp_opens[0], args, env, log)  # right after the temp's open

    assert killed.killed
    left = list(target.iterdir())
    assert not [p for p in left if p.name.endswith(".wab")]  # nothing a restore could take
    assert [p.name.endswith(".tmp") for p in left] == [True]
    after = admin_json(args, env)
    assert [p.name for p in target.iterdir()] == [Path(str(after["path"])).name]
    assert after["verified"] is True


# A child whose disk hands back other bytes than it took: the archive is changed on its way
# to its name (one byte flipped in the middle of the temp file before the rename).
CORRUPTING = r"""
import os, sys

real_replace = os.replace


def replace(src, dst, *args, **kwargs):
    if str(dst).endswith(".wab"):
        with open(src, "r+b") as fh:
            fh.seek(os.path.getsize(src) // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0x40]))
    return real_replace(src, dst, *args, **kwargs)


os.replace = replace
from admin.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_an_archive_that_does_not_read_back_fails_the_backup_and_prunes_nothing(
    tmp_path: Path,
) -> None:
    env = chatty_profile(tmp_path)
    target = tmp_path / "backups"
    good = backup(env, "shop", target, 1)

    result = subprocess.run(
        [sys.executable, "-c", CORRUPTING, "--profile", "shop", "backup", "--to", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "failed its check" in line and "does not decrypt" in line, line
    names = sorted(p.name for p in target.iterdir())
    assert Path(str(good["path"])).name in names  # --keep 14 would have kept it anyway: and
    (bad,) = [n for n in names if n.endswith(".wab.bad")]  # the bad one is out of the count
    assert admin(["--profile", "shop", "verify", str(good["path"])], env).returncode == 0
    log = (tmp_path / "var/profiles/shop/events.jsonl").read_text()
    events = [json.loads(line) for line in log.splitlines()]
    assert [e["event"] for e in events] == ["admin_write", "backup_failed"]
    assert bad.removesuffix(".bad") in events[-1]["error"]
