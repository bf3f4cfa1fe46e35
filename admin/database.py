"""sessions-admin over the PostgreSQL store: reads, stats, writes, and `migrate` between the
stores.

With `store = "postgres"` (or BRIDGE_STORE=postgres) the read commands load the profile's
state from the database, read-only and live (replicas keep running); the writes (delete,
prune, import, pause, resume, send, restore) go to the database directly, live, each
decided on the state every replica committed. `migrate` copies a
profile between the file store and a database, both ways, and verifies the copy by reading
it back: the state is carried whole as one snapshot in the file store's own format (sealed
with the profile's key), so conversations, seen ids, the outbox, modes and identities all
come along; seen ids also go into the database's dedupe table as keyed hashes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from bridge.config import ProfileConfig, Settings
from bridge.control import OPERATIONS, ControlContext
from bridge.control.writes import (
    erase_conversation,
    import_conversations,
    import_request,
    key_source,
    stored_settings,
)
from bridge.errors import BridgeError, ConfigError, StorageError
from bridge.persistence import layout
from bridge.persistence.crypto import Keyring
from bridge.persistence.journal import create_segment
from bridge.persistence.keys import load_keyring
from bridge.persistence.snapshot import write_snapshot
from bridge.state import State
from bridge.store.durable import load_state
from bridge.store.pg.rotation import rotate
from bridge.store.pg.schema import migrate
from bridge.store.pg.sealing import Sealer
from bridge.store.pg.secrets import ProfileSecrets
from bridge.store.postgres import (
    DB_ERRORS,
    PostgresStore,
    configured_keyring,
    connect,
    describe_url,
    dump_snapshot,
    read_database_state,
    replace_database_state,
)

DAY_MS = 24 * 3600 * 1000
HANDOFF = ("pause", "resume", "send")

# Settings of the command's process: which store its profiles are in.
_databases: dict[str, str] = {}


def use_settings(settings: Settings, profile: ProfileConfig) -> bool:
    """Remember where `profile` lives; True when that is a database."""
    if settings.store == "postgres" and settings.database_url:
        _databases[profile.slug] = settings.database_url
        return True
    return False


def database_of(profile: ProfileConfig) -> str | None:
    return _databases.get(profile.slug)


def read_state(profile: ProfileConfig, url: str) -> State:
    return asyncio.run(read_database_state(profile, url))


async def _database_stats(profile: ProfileConfig, url: str) -> dict[str, Any]:
    conn = await connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM bridge_records WHERE profile = $1) AS records,"
            " (SELECT coalesce(sum(length(sealed)), 0) FROM bridge_records WHERE profile = $1)"
            "  AS record_bytes,"
            " (SELECT count(*) FROM bridge_seen WHERE profile = $1) AS seen_rows,"
            " (SELECT length(sealed) FROM bridge_snapshots WHERE profile = $1) AS snapshot_bytes,"
            " (SELECT extract(epoch FROM now() - written_at)::bigint FROM bridge_snapshots"
            "  WHERE profile = $1) AS snapshot_age,"
            " (SELECT head FROM bridge_profiles WHERE slug = $1) AS head,"
            " (SELECT coalesce(sum(bytes), 0) FROM bridge_media WHERE profile = $1) AS media_bytes",
            profile.slug,
        )
    finally:
        await conn.close()
    return dict(row)


def stats(profile: ProfileConfig, url: str, state: State) -> dict[str, Any]:
    """`profile_stats`' database-specific part."""
    found = asyncio.run(_database_stats(profile, url))
    return {
        "store": "postgres",
        "database": describe_url(url),
        "store_bytes": int(found["record_bytes"] or 0) + int(found["snapshot_bytes"] or 0),
        "snapshot_bytes": int(found["snapshot_bytes"] or 0),
        "snapshot_age_seconds": found["snapshot_age"],
        "journal_bytes": int(found["record_bytes"] or 0),
        "log_records": int(found["records"]),
        "seen_ids_in_database": int(found["seen_rows"]),
        "seq": int(found["head"] or 0),
        "media_bytes": int(found["media_bytes"] or 0),  # the shared copies, sealed
    }


# -- writes -----------------------------------------------------------------------------------


async def _perform(profile: ProfileConfig, url: str, op: str, args: dict[str, Any]) -> Any:
    """delete, prune and import on the database, live: the decision runs in the store's commit
    transaction, on the state with every replica's earlier commits applied, so it takes
    exactly what was acknowledged before it. The replicas apply the erasure (and drop the
    media files it leaves unreferenced) as they follow the log."""
    store = PostgresStore(profile, url, enforce_settings=False)
    await store.open()
    try:
        if op in HANDOFF:
            # The operators' actions (bridge/control/handoff.py), as on a stopped file
            # store: each decides on the settled state in the commit transaction. A message
            # queued is sent by a running replica: its takeover sweep finds queued replies
            # nobody owns (bridge/takeover.py OUTBOX_GRACE).
            result = await OPERATIONS.run(op, ControlContext(store), args)
            return {**result, "shared": True}
        if op == "delete":
            key = await erase_conversation(store, str(args["key"]), profile.slug)
            return {"key": key, "settings": stored_settings(store.state)}
        if op == "import":
            return await import_conversations(store, import_request(args))
        days = int(args["older_than_days"])
        records = await store.commit_decided(
            lambda state: state.expired(int(time.time() * 1000), days * DAY_MS)
        )
        return {"deleted": len(records), "settings": stored_settings(store.state)}
    finally:
        await store.close()


async def _rotate_key(profile: ProfileConfig, url: str) -> dict[str, Any]:
    """rotate-key on the database, live (bridge/store/pg/rotation.py); the result has the
    file store's fields (`key`, `source`, `rekeyed`) and what was re-sealed."""
    keyring = configured_keyring(profile)
    source = key_source(profile) or "the configured key"
    where = describe_url(url)
    conn = await connect(url)
    try:
        done = await rotate(conn, profile.slug, keyring, source)
    except DB_ERRORS as exc:
        raise StorageError(f"database {where}: {exc}; run rotate-key again") from None
    finally:
        await conn.close()
    active = keyring.active_id.decode()
    if done.left:
        # Committed meanwhile by a replica whose key source does not start with the new
        # key yet: readable by all, but the old key is still needed.
        counts = ", ".join(f"{n} with key {kid}" for kid, n in sorted(done.left.items()))
        raise BridgeError(
            f"profile {profile.slug!r}: re-encrypted under key {active}, but rows were sealed "
            f"meanwhile with another key ({counts}): a replica still seals with it; run "
            f"rotate-key again after every replica's key source starts with key {active} and "
            "they were restarted (nothing is lost)"
        )
    return {
        "source": source,
        "running": False,
        "key": active,
        "rekeyed": bool(done.records or done.snapshot or done.profile_row or done.media_frames),
        "database": where,
        "records": done.records,
        "snapshot": done.snapshot,
        "media_frames": done.media_frames,
    }


def perform(profile: ProfileConfig, url: str, op: str, requests: Sequence[Any]) -> list[Any]:
    if op == "rotate-key":
        return [asyncio.run(_rotate_key(profile, url)) for _ in requests]
    if op not in ("delete", "prune", "import", *HANDOFF):
        raise BridgeError(
            f"`{op}` is not available with the postgres store yet: migrate the profile to "
            "the file store (sessions-admin migrate --from-database), or use delete, prune, "
            "import, restore, rotate-key, pause, resume, send"
        )
    return [asyncio.run(_perform(profile, url, op, dict(args))) for args in requests]


def restore(
    profile: ProfileConfig,
    url: str,
    state: State,
    keep: Callable[[State], Awaitable[None]],
) -> int:
    """Replace the profile's state in the database with `state`, live; `keep` is given the
    state replaced first (bridge/store/postgres.py `replace_database_state`)."""
    return asyncio.run(replace_database_state(profile, url, state, keep))


# -- migrate ----------------------------------------------------------------------------------


def _fingerprint(state: State) -> bytes:
    """What must be equal after a copy: every conversation, seen id, outbox item, link."""
    return orjson.dumps(
        {
            "conversations": sorted(
                (c.key, c.to_seed()) for c in state.conversations.values() if c.messages
            ),
            "seen": sorted(state.seen.items()),
            "erased_seen": sorted(state.erased_seen.items()),
            "outbox": [(i.id, i.key, i.to, i.text, i.created_ms) for i in state.outbox.values()],
            "uncertain": sorted(state.uncertain),
            "aliases": sorted(state.aliases.items()),
        },
        option=orjson.OPT_NON_STR_KEYS,
    )


async def _to_database(profile: ProfileConfig, url: str, state: State, keyring: Keyring) -> None:
    where = describe_url(url)
    secrets = ProfileSecrets.generate()  # a new profile in the database: its own secrets
    sealer = Sealer(keyring, profile.slug, secrets.seen)
    # The log continues after the file store's own sequence numbers: the snapshot's
    # conversations carry them, and replay skips a record at or below a conversation's.
    data = await dump_snapshot(state, sealer, state.seq)
    conn = await connect(url)
    try:
        await migrate(conn)
        async with conn.transaction():
            exists = await conn.fetchval(
                "SELECT 1 FROM bridge_profiles WHERE slug = $1 FOR UPDATE", profile.slug
            )
            if exists:
                raise BridgeError(
                    f"profile {profile.slug!r} is already in the database {where}; nothing "
                    "was changed (delete it there first to copy it again)"
                )
            await conn.execute(
                "INSERT INTO bridge_profiles (slug, key_check, secrets, head, pruned) "
                "VALUES ($1, $2, $3, $4, $4)",
                profile.slug,
                sealer.key_check(),
                secrets.seal(sealer),
                state.seq,
            )
            await conn.execute(
                "INSERT INTO bridge_snapshots (profile, upto, sealed) VALUES ($1, $2, $3)",
                profile.slug,
                state.seq,
                data,
            )
            if state.seen:
                seen = list(state.seen.items())
                await conn.execute(
                    "INSERT INTO bridge_seen (profile, id_hash, received_ms) "
                    "SELECT $1, h, r FROM unnest($2::bytea[], $3::bigint[]) AS t(h, r) "
                    "ON CONFLICT DO NOTHING",
                    profile.slug,
                    [sealer.seen_hash(i) for i, _ in seen],
                    [at for _, at in seen],
                )
    finally:
        await conn.close()


def _has_file_data(state_dir: Path) -> bool:
    journal = layout.journal_dir(state_dir)
    return layout.snapshot_path(state_dir).exists() or (
        journal.is_dir() and any(p.stat().st_size for p in journal.iterdir() if p.is_file())
    )


def cmd_migrate(args: argparse.Namespace, profile: ProfileConfig) -> int:
    from admin import media as admin_media

    if bool(args.to_database) == bool(args.from_database):
        raise ConfigError("migrate: give exactly one of --to-database URL, --from-database URL")
    url = args.to_database or args.from_database
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("the database URL must start with postgresql://")
    holder = layout.lock_holder(profile.state_dir)
    if holder is not None:
        raise BridgeError(
            f"profile {profile.slug!r} is served by a running bridge (pid {holder}): stop it "
            "first, so that nothing is acknowledged into the store being left"
        )
    if args.to_database:
        keyring = load_keyring(profile, create=False)
        state = load_state(profile)
        asyncio.run(_to_database(profile, url, state, keyring))
        copy = asyncio.run(read_database_state(profile, url, keyring))
        media = admin_media.upload_to_database(profile, url, keyring, list(state.media_files))
        direction = f"to the database {describe_url(url)}"
    else:
        if _has_file_data(profile.state_dir):
            raise BridgeError(
                f"{profile.state_dir} already holds a store: nothing was changed (move it "
                "aside to copy the database's over it)"
            )
        keyring = configured_keyring(profile)
        state = asyncio.run(read_database_state(profile, url, keyring))
        layout.create_profile_dir(profile.state_dir)
        # The journal the file store continues the snapshot in: an empty first segment,
        # durable before the snapshot that names it.
        create_segment(layout.journal_dir(profile.state_dir), 1)
        asyncio.run(
            write_snapshot(layout.snapshot_path(profile.state_dir), state, keyring, profile.slug, 1)
        )
        copy = load_state(profile)
        media = admin_media.fetch_from_database(
            profile, url, keyring, list(state.media_files), layout.media_dir(profile.state_dir)
        )
        direction = f"from the database {describe_url(url)} to {profile.state_dir}"
    if _fingerprint(copy) != _fingerprint(state):
        raise BridgeError(f"profile {profile.slug!r}: the copy {direction} differs; check it")
    messages = sum(len(c.messages) for c in state.conversations.values())
    print(
        f"copied profile {profile.slug!r} {direction}: {len(state.conversations)} "
        f"conversation(s), {messages} message(s), {len(state.seen)} seen id(s), "
        f"{len(state.outbox)} queued repl{'y' if len(state.outbox) == 1 else 'ies'}, "
        f"{media.files} media file(s); verified"
    )
    if media.missing or media.damaged:
        print(
            f"{media.missing + len(media.damaged)} media file(s) the state names were not "
            f"there to copy: {'; '.join(media.damaged) or 'missing'}",
            file=sys.stderr,
        )
    return 0
