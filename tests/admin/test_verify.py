"""`sessions-admin verify` says which format a store or an archive is in."""

from __future__ import annotations

from pathlib import Path

from tests.admin.support import admin, admin_json, now_ms, seed_conversation, write_seed
from tests.persistence.test_compression import LEGACY, LEGACY_KEY
from tests.test_cli import clean_env


def test_verify_reports_an_archive_of_the_release_before_compression(tmp_path: Path) -> None:
    env = clean_env(BRIDGE_VAR_DIR=str(tmp_path / "var"), BRIDGE_KEY=LEGACY_KEY)
    (tmp_path / "var" / "profiles" / "legacy").mkdir(parents=True)
    archive = LEGACY / "legacy-20260101T000000000000Z.wab"

    result = admin(["--profile", "legacy", "verify", str(archive)], env)

    assert result.returncode == 0, result.stderr
    assert "format v1 (uncompressed" in result.stdout


def test_verify_reports_the_compressed_format_and_its_ratio(tmp_path: Path) -> None:
    env = clean_env(BRIDGE_VAR_DIR=str(tmp_path / "var"))
    assert admin(["profiles", "create", "shop"], env).returncode == 0
    assert admin_json(["--profile", "shop", "verify"], env)["format"]["snapshot"] is None
    pairs = [seed_conversation(f"3460000{i:04d}", 20, now_ms() - 3600_000) for i in range(50)]
    seed = write_seed(tmp_path / "sessions.json", pairs)
    assert admin(["--profile", "shop", "import", str(seed)], env).returncode == 0

    live = admin_json(["--profile", "shop", "verify"], env)
    archive = admin(["--profile", "shop", "backup"], env).stdout.strip()
    text = admin(["--profile", "shop", "verify", archive], env)

    assert live["format"]["snapshot"] == 3 and live["format"]["packed_conversations"] == 50
    assert live["format"]["bytes"] < live["format"]["json_bytes"] / 4
    assert text.returncode == 0 and "format v3, zstd" in text.stdout, text.stdout
