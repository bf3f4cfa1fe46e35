"""sessions-admin, media and the PostgreSQL store: `migrate` carries the files both ways;
`media`, `backup` and `verify` on a host without them fetch them from the database."""

from __future__ import annotations

from pathlib import Path

from bridge.persistence import layout
from tests.admin.support import admin, admin_json
from tests.admin.test_media import PHOTO, WithMedia, with_media  # noqa: F401 (a fixture)
from tests.media.support import PHONE
from tests.pg import PostgresServer
from tests.test_cli import clean_env


def operator_env(made: WithMedia, var: Path, database_url: str) -> tuple[str, dict[str, str]]:
    """The profile's key, and an operator's environment on the database from a host whose
    `var` holds no media of its own."""
    key = layout.key_path(made.var / "profiles" / "default").read_text().splitlines()[-1]
    env = clean_env(
        BRIDGE_VAR_DIR=str(var),
        BRIDGE_STORE="postgres",
        BRIDGE_DATABASE_URL=database_url,
        BRIDGE_KEY=key,
    )
    return key, env


def test_media_travel_with_the_profile_into_the_database_and_back(
    with_media: WithMedia,  # noqa: F811
    tmp_path: Path,
    database_url: str,
    pg_server: PostgresServer,
) -> None:
    names = sorted(p.name for p in with_media.files())
    moved = admin(["migrate", "--to-database", database_url], with_media.env)
    assert moved.returncode == 0, moved.stderr
    assert "2 media file(s); verified" in moved.stdout
    database = database_url.rsplit("/", 1)[1]
    assert pg_server.psql(database, "SELECT count(*) FROM bridge_media WHERE recorded") == "2\n"

    key, db_env = operator_env(with_media, tmp_path / "operator", database_url)
    out = tmp_path / "photo.jpg"
    got = admin(["media", PHONE, with_media.photo_id, "-o", str(out)], db_env)
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == PHOTO
    live = admin_json(["verify"], db_env)
    assert (live["media_files"], live["media_missing"], live["media_damaged"]) == (2, 0, [])
    stats = admin_json(["stats"], db_env)  # the database's copies, not this host's (none)
    stored = pg_server.psql(database, "SELECT sum(bytes) FROM bridge_media").strip()
    assert (stats["media_files"], stats["media_bytes"]) == (2, int(stored))
    assert stats["media_bytes"] > len(PHOTO)

    backup = admin(["backup", "--to", str(tmp_path / "archives")], db_env)
    assert backup.returncode == 0, backup.stderr
    archive = Path(backup.stdout.strip())
    assert sorted(p.name for p in Path(f"{archive}.media").glob("*.wam")) == names
    checked = admin_json(["verify", str(archive)], db_env)
    assert (checked["media_files"], checked["media_missing"]) == (2, 0)

    back = tmp_path / "back"
    back_env = {**with_media.env, "BRIDGE_VAR_DIR": str(back), "BRIDGE_KEY": key}
    result = admin(["migrate", "--from-database", database_url], back_env)
    assert result.returncode == 0, result.stderr
    local = sorted(p.name for p in (back / "profiles" / "default" / "media").glob("*.wam"))
    assert local == names
    assert admin_json(["verify"], back_env)["media_files"] == 2


def test_a_file_the_database_lacks_is_reported_by_verify(
    with_media: WithMedia,  # noqa: F811
    tmp_path: Path,
    database_url: str,
    pg_server: PostgresServer,
) -> None:
    assert admin(["migrate", "--to-database", database_url], with_media.env).returncode == 0
    database = database_url.rsplit("/", 1)[1]
    pg_server.psql(database, "DELETE FROM bridge_media_frames WHERE idx = 1")
    key, db_env = operator_env(with_media, tmp_path / "operator", database_url)
    bad = admin(["verify"], db_env)
    assert bad.returncode == 1
    assert "frame 1 missing" in bad.stderr and "2 media file(s) damaged" in bad.stderr


def test_restore_on_the_database_brings_the_archive_media_back_into_it(
    with_media: WithMedia,  # noqa: F811
    tmp_path: Path,
    database_url: str,
    pg_server: PostgresServer,
) -> None:
    assert admin(["migrate", "--to-database", database_url], with_media.env).returncode == 0
    key, db_env = operator_env(with_media, tmp_path / "operator", database_url)
    backup = admin(["backup", "--to", str(tmp_path / "archives")], db_env)
    assert backup.returncode == 0, backup.stderr
    archive = Path(backup.stdout.strip())
    database = database_url.rsplit("/", 1)[1]
    pg_server.psql(database, "DELETE FROM bridge_media")  # lost since the backup
    # Restored from another host, whose media directory holds nothing.
    other = {**db_env, "BRIDGE_VAR_DIR": str(tmp_path / "other")}
    restored = admin(["restore", str(archive)], other)
    assert restored.returncode == 0, restored.stderr
    assert "2 media file(s)" in restored.stdout
    assert pg_server.psql(database, "SELECT count(*) FROM bridge_media WHERE recorded") == "2\n"
    out = tmp_path / "photo.jpg"
    fresh = {**db_env, "BRIDGE_VAR_DIR": str(tmp_path / "third")}
    got = admin(["media", PHONE, with_media.photo_id, "-o", str(out)], fresh)
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == PHOTO
    assert admin_json(["verify"], fresh)["media_missing"] == 0
