"""Versioned schema migrations, applied at start under an advisory lock.

The SQL files beside this module (`migrations/NNNN_name.sql`) are applied in order, each in
its own transaction with the version bump, while the migrating replica holds a
session-level advisory lock: replicas starting together migrate once, the others wait and
find the schema current. A replica whose code knows fewer versions than the database holds
refuses to start: it would misread what newer code writes.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from bridge.errors import ConfigError

# pg_advisory_lock key of the migration (any constant not used elsewhere: "wabr" in ASCII).
MIGRATION_LOCK = 0x77616272

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped with the package, in order."""
    found = []
    for entry in resources.files("bridge.store.pg.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    for index, (version, name, _sql) in enumerate(found, start=1):
        if version != index:
            raise AssertionError(f"migration {name}: expected version {index}")
    return found


def latest_version() -> int:
    return len(migrations())


async def current_version(conn: Any) -> int:
    """The database's schema version; 0 for a database the bridge never used."""
    exists = await conn.fetchval("SELECT to_regclass('bridge_schema') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM bridge_schema"))


async def migrate(conn: Any) -> int:
    """Bring the database to this code's version; returns it. ConfigError (one line) when
    the database is newer than this code."""
    known = migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bridge_schema ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        version = await current_version(conn)
        if version > len(known):
            raise ConfigError(
                f"the database's schema is version {version}, this bridge knows up to "
                f"{len(known)}: upgrade this replica (refusing to start)"
            )
        for number, name, sql in known[version:]:
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO bridge_schema (version, name) VALUES ($1, $2)", number, name
                )
        return len(known)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
