"""sessions-admin with the PostgreSQL store: migrate file -> database -> file, and reads."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from admin import database
from bridge.conversations import Message
from bridge.errors import BridgeError, ConfigError
from bridge.persistence import layout
from bridge.persistence.crypto import key_id
from bridge.persistence.keys import encode_key, new_key
from bridge.records import MessageAdded, OutboxItem, OutboxQueued
from bridge.store.durable import DurableStore
from bridge.store.pg import rotation
from bridge.store.postgres import PostgresStore
from tests.admin.support import admin, admin_json, now_ms
from tests.conftest import make_profile
from tests.test_cli import clean_env

PHONE = "34600000001"


def make_file_store(var: Path) -> None:
    """A file store with two conversations, seen ids and a queued reply."""

    async def fill() -> None:
        store = DurableStore(make_profile(var, state_dir=var / "profiles" / "default"))
        await store.open()
        at = now_ms()
        await store.commit(
            [
                MessageAdded(PHONE, Message("user", "hola", at, id="wamid.A1"), "Ana", at),
                MessageAdded(PHONE, Message("assistant", "¿qué tal?", at + 1, id="out.1")),
                MessageAdded("34600000002", Message("user", "buenas", at, id="wamid.B1"), None, at),
                OutboxQueued(OutboxItem("out.1", PHONE, PHONE, "¿qué tal?", at + 1)),
            ]
        )
        await store.close()

    asyncio.run(fill())


def test_migrate_file_to_database_and_back_keeps_everything(
    tmp_path: Path, database_url: str
) -> None:
    var = tmp_path / "var"
    make_file_store(var)
    file_env = clean_env(BRIDGE_VAR_DIR=str(var))
    before = admin_json(["export"], file_env)

    result = admin(["migrate", "--to-database", database_url], file_env)
    assert result.returncode == 0, result.stderr
    assert "2 conversation(s), 3 message(s)" in result.stdout and "verified" in result.stdout

    key = layout.key_path(var / "profiles" / "default").read_text().splitlines()[-1]
    db_env = clean_env(
        BRIDGE_VAR_DIR=str(tmp_path / "elsewhere"),
        BRIDGE_STORE="postgres",
        BRIDGE_DATABASE_URL=database_url,
        BRIDGE_KEY=key,
    )
    assert admin_json(["export"], db_env) == before
    listed = admin_json(["list"], db_env)
    assert {row["key"] for row in listed} == {PHONE, "34600000002"}
    shown = admin_json(["show", PHONE], db_env)
    assert [m["content"] for m in shown["messages"]] == ["hola", "¿qué tal?"]
    stats = admin_json(["stats"], db_env)
    assert (stats["store"], stats["conversations"], stats["outbox"]) == ("postgres", 2, 1)

    again = admin(["migrate", "--to-database", database_url], file_env)
    assert again.returncode == 1 and "already in the database" in again.stderr

    back_var = tmp_path / "back"
    back_env = clean_env(BRIDGE_VAR_DIR=str(back_var), BRIDGE_KEY=key)
    result = admin(["migrate", "--from-database", database_url], back_env)
    assert result.returncode == 0, result.stderr
    assert admin_json(["export"], back_env) == before
    verify = admin(["verify"], back_env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_reads_need_the_right_key(tmp_path: Path, database_url: str) -> None:
    var = tmp_path / "var"
    make_file_store(var)
    assert (
        admin(
            ["migrate", "--to-database", database_url], clean_env(BRIDGE_VAR_DIR=str(var))
        ).returncode
        == 0
    )
    wrong = clean_env(
        BRIDGE_STORE="postgres",
        BRIDGE_DATABASE_URL=database_url,
        BRIDGE_KEY="A" * 43 + "=",
    )
    result = admin(["list"], wrong)
    assert result.returncode == 2 and "does not match the database" in result.stderr
    assert json.dumps(result.stderr).count("\\n") == 1  # one line


def test_delete_and_prune_on_the_database_while_replicas_run(
    tmp_path: Path, database_url: str
) -> None:
    var = tmp_path / "var"
    make_file_store(var)
    assert (
        admin(
            ["migrate", "--to-database", database_url], clean_env(BRIDGE_VAR_DIR=str(var))
        ).returncode
        == 0
    )
    key = layout.key_path(var / "profiles" / "default").read_text().splitlines()[-1]
    db_env = clean_env(BRIDGE_STORE="postgres", BRIDGE_DATABASE_URL=database_url, BRIDGE_KEY=key)
    result = admin(["delete", "+34 600 000 001"], db_env)
    assert result.returncode == 0, result.stderr
    assert {row["key"] for row in admin_json(["list"], db_env)} == {"34600000002"}
    missing = admin(["delete", PHONE], db_env)
    assert missing.returncode == 1 and "no conversation" in missing.stderr
    assert admin_json(["prune", "--older-than", "30"], db_env) == {"deleted": 0}
    assert admin(["import", "x.json"], db_env).returncode != 0


def test_backup_and_verify_work_on_the_database(tmp_path: Path, database_url: str) -> None:
    var = tmp_path / "var"
    make_file_store(var)
    file_env = clean_env(BRIDGE_VAR_DIR=str(var))
    assert admin(["migrate", "--to-database", database_url], file_env).returncode == 0
    key = layout.key_path(var / "profiles" / "default").read_text().splitlines()[-1]
    db_env = clean_env(
        BRIDGE_VAR_DIR=str(tmp_path / "replica"),
        BRIDGE_STORE="postgres",
        BRIDGE_DATABASE_URL=database_url,
        BRIDGE_KEY=key,
    )
    live = admin(["verify"], db_env)
    assert live.returncode == 0 and "2 conversations, 3 messages, 1 queued" in live.stdout
    backup = admin(["backup", "--to", str(tmp_path / "archives")], db_env)
    assert backup.returncode == 0, backup.stderr
    archive = Path(backup.stdout.strip())
    checked = admin(["verify", str(archive)], db_env)
    assert checked.returncode == 0 and "2 conversations" in checked.stdout, checked.stderr
    assert admin(["delete", PHONE], db_env).returncode == 0
    restore = admin(["restore", str(archive)], db_env)
    assert restore.returncode == 0, restore.stderr
    assert "restored profile 'default'" in restore.stdout and "2 conversations" in restore.stdout
    assert {row["key"] for row in admin_json(["list"], db_env)} == {PHONE, "34600000002"}


def test_import_on_the_database_merges_a_seed_file_live(tmp_path: Path, database_url: str) -> None:
    var = tmp_path / "var"
    make_file_store(var)
    file_env = clean_env(BRIDGE_VAR_DIR=str(var))
    exported = tmp_path / "sessions.json"
    exported.write_text(json.dumps(admin_json(["export"], file_env)))
    assert admin(["migrate", "--to-database", database_url], file_env).returncode == 0
    key = layout.key_path(var / "profiles" / "default").read_text().splitlines()[-1]
    db_env = clean_env(
        BRIDGE_VAR_DIR=str(tmp_path / "replica"),
        BRIDGE_STORE="postgres",
        BRIDGE_DATABASE_URL=database_url,
        BRIDGE_KEY=key,
    )
    assert admin(["delete", PHONE], db_env).returncode == 0
    assert {row["key"] for row in admin_json(["list"], db_env)} == {"34600000002"}

    result = admin(["import", str(exported)], db_env)
    assert result.returncode == 0, result.stderr
    assert "into 1 conversation(s)" in result.stdout
    assert {row["key"] for row in admin_json(["list"], db_env)} == {PHONE, "34600000002"}
    shown = admin_json(["show", PHONE], db_env)
    assert [m["content"] for m in shown["messages"]] == ["hola", "¿qué tal?"]
    again = admin(["import", str(exported)], db_env)  # already there: nothing twice
    assert again.returncode == 0 and "imported 0 new message(s)" in again.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    refused = admin(["import", str(bad)], db_env)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr


def _database_env(tmp_path: Path, database_url: str, keys: str) -> dict[str, str]:
    return clean_env(
        BRIDGE_VAR_DIR=str(tmp_path / "replica"),
        BRIDGE_STORE="postgres",
        BRIDGE_DATABASE_URL=database_url,
        BRIDGE_KEY=keys,
    )


def _migrated(tmp_path: Path, database_url: str) -> tuple[str, Any]:
    """A file store copied into the database: its key, and its export."""
    var = tmp_path / "var"
    make_file_store(var)
    file_env = clean_env(BRIDGE_VAR_DIR=str(var))
    before = admin_json(["export"], file_env)
    assert admin(["migrate", "--to-database", database_url], file_env).returncode == 0
    return layout.key_path(var / "profiles" / "default").read_text().splitlines()[-1], before


def test_rotate_key_on_the_database(tmp_path: Path, database_url: str) -> None:
    old, before = _migrated(tmp_path, database_url)
    new = encode_key(new_key())
    new_id = key_id(base64.urlsafe_b64decode(new)).decode()
    result = admin(["rotate-key"], _database_env(tmp_path, database_url, f"{new},{old}"))
    assert result.returncode == 0, result.stderr
    assert f"now encrypted with key {new_id}, the first key of BRIDGE_KEY" in result.stdout
    again = admin_json(["rotate-key"], _database_env(tmp_path, database_url, f"{new},{old}"))
    assert (again["key"], again["rekeyed"], again["records"]) == (new_id, False, 0)
    assert admin_json(["export"], _database_env(tmp_path, database_url, new)) == before
    refused = admin(["list"], _database_env(tmp_path, database_url, old))
    assert refused.returncode == 2 and "does not match the database" in refused.stderr


def test_rotate_key_on_the_database_refuses_and_changes_nothing(
    tmp_path: Path, database_url: str
) -> None:
    old, before = _migrated(tmp_path, database_url)
    old_id = key_id(base64.urlsafe_b64decode(old)).decode()
    one = admin(["rotate-key"], _database_env(tmp_path, database_url, old))
    assert one.returncode == 2 and "rotate-key does not write" in one.stderr
    assert one.stderr.count("\n") == 1 and "Traceback" not in one.stderr
    other = f"{encode_key(new_key())},{encode_key(new_key())}"
    lacking = admin(["rotate-key"], _database_env(tmp_path, database_url, other))
    assert lacking.returncode == 2 and lacking.stderr.count("\n") == 1, lacking.stderr
    assert f"sealed with key(s) {old_id}" in lacking.stderr
    assert "nothing was re-encrypted" in lacking.stderr
    # Still all sealed with the old key: readable with it alone.
    assert admin_json(["export"], _database_env(tmp_path, database_url, old)) == before


def test_rotate_key_says_when_a_replica_still_seals_with_the_old_key(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, _ = _migrated(tmp_path, database_url)
    new = encode_key(new_key())
    real = rotation.sealed_with

    async def committed_meanwhile(conn: Any, slug: str) -> dict[bytes, int]:
        found = await real(conn, slug)
        if found.get(key_id(base64.urlsafe_b64decode(new))):  # after the re-sealing
            laggard = PostgresStore(make_profile(tmp_path, key=f"{old},{new}"), database_url)
            await laggard.open()
            await laggard.commit([MessageAdded(PHONE, Message("user", "x", 1, id="wamid.L"))])
            await laggard.close()
            found = await real(conn, slug)
        return found

    monkeypatch.setattr(rotation, "sealed_with", committed_meanwhile)
    profile = make_profile(tmp_path, key=f"{new},{old}")
    with pytest.raises(BridgeError) as caught:
        database.perform(profile, database_url, "rotate-key", [{}])
    assert not isinstance(caught.value, ConfigError)  # exit 1: run it again later
    message = str(caught.value)
    assert "run rotate-key again after" in message and "nothing is lost" in message
    assert "\n" not in message
