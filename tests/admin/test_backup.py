"""`sessions-admin backup`: archives of one profile never prune another's, nor the new one."""

from __future__ import annotations

import os
from pathlib import Path

from tests.admin.support import admin, admin_json
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
