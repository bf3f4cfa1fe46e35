"""`rotate-key` on the database: everything re-sealed under the keyring's first key, live.

The key is the operator's (the same external source on every replica), so a rotation
without downtime is a procedure (README "Running several replicas"): the new key is added
after the current one everywhere, then moved first everywhere, so every replica seals with
it and every replica can open both at every moment; only then is the database re-sealed,
here, while the replicas keep committing. Nothing here holds the profile's head lock for
long: records are immutable once written, so each is replaced only if it is still the very
bytes read (`WHERE sealed = old`: one compacted meanwhile is simply skipped), and readers
meet either version, both of which open. The snapshot is re-sealed under its row's lock,
which compaction takes too. What a replica still sealing with an older key commits
meanwhile is counted at the end: the procedure's second step was not finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.errors import BridgeError, ConfigError, CorruptStateError
from bridge.media.store import frame_aad
from bridge.persistence.crypto import DecryptError, Keyring
from bridge.state import State
from bridge.store.pg.schema import migrate
from bridge.store.pg.sealing import Sealer, sealed_key_id
from bridge.store.pg.secrets import load_secrets
from bridge.store.postgres import dump_snapshot, load_snapshot, snapshot_key_id

CHUNK = 1000
MEDIA_CHUNK = 16  # frames of up to 1 MiB each


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation re-sealed, and what is still sealed with another key (committed
    meanwhile by a replica that does not seal with the first key yet)."""

    records: int
    snapshot: bool
    profile_row: bool
    media_frames: int
    left: dict[str, int]  # key id -> rows still sealed with it


async def sealed_with(conn: Any, slug: str) -> dict[bytes, int]:
    """Key id -> how many of the profile's sealed values (records, snapshot, key check,
    secrets, media frames) start with it."""
    found: dict[bytes, int] = {}
    rows = await conn.fetch(
        "SELECT substring(sealed from 1 for 8) AS kid, count(*) AS n FROM bridge_records "
        "WHERE profile = $1 GROUP BY 1",
        slug,
    )
    for row in rows:
        found[bytes(row["kid"])] = int(row["n"])
    rows = await conn.fetch(
        "SELECT substring(frame from 1 for 8) AS kid, count(*) AS n FROM bridge_media_frames "
        "WHERE profile = $1 GROUP BY 1",
        slug,
    )
    for row in rows:
        kid = bytes(row["kid"])
        found[kid] = found.get(kid, 0) + int(row["n"])
    snapshot = await conn.fetchval("SELECT sealed FROM bridge_snapshots WHERE profile = $1", slug)
    profile = await conn.fetchrow(
        "SELECT key_check, secrets FROM bridge_profiles WHERE slug = $1", slug
    )
    singles = [snapshot_key_id(bytes(snapshot))] if snapshot is not None else []
    if profile is not None:
        singles += [sealed_key_id(bytes(v)) for v in profile.values() if v is not None]
    for kid in singles:
        found[kid] = found.get(kid, 0) + 1
    return found


async def rotate(conn: Any, slug: str, keyring: Keyring, source: str) -> Rotation:
    """Re-seal the profile under `keyring`'s first key. ConfigError (nothing changed) when
    the keyring has one key only, or lacks a key something in the database is sealed with."""
    if len(keyring.keys) < 2:
        raise ConfigError(
            f"this profile's key comes from {source}, which rotate-key does not write: put a "
            "new key (32 random bytes, URL-safe base64) first there and the current key after "
            'it, on every replica (README "Running several replicas"), then run rotate-key: '
            "it re-encrypts the database under the first key"
        )
    await migrate(conn)
    exists = await conn.fetchval("SELECT 1 FROM bridge_profiles WHERE slug = $1", slug)
    if not exists:
        raise BridgeError(f"no profile {slug!r} in the database")
    lacking = set(await sealed_with(conn, slug)) - set(keyring.key_ids)
    if lacking:
        raise ConfigError(
            f"the keys in {source} cannot open data in the database sealed with key(s) "
            f"{', '.join(sorted(k.decode(errors='replace') for k in lacking))}: keep the key "
            "in use after the new one; nothing was re-encrypted"
        )
    target = keyring.active_id
    check = Sealer(keyring, slug)
    row = await conn.fetchrow("SELECT key_check FROM bridge_profiles WHERE slug = $1", slug)
    check.verify_key_check(bytes(row["key_check"]))
    secrets = await load_secrets(conn, check)
    sealer = Sealer(keyring, slug, secrets.seen)

    # The profile row first: the key check and the secrets (a short row lock, no more).
    # Read again: load_secrets stores a schema-1 profile's secrets on first use.
    profile_row = False
    row = await conn.fetchrow(
        "SELECT key_check, secrets FROM bridge_profiles WHERE slug = $1", slug
    )
    if any(sealed_key_id(bytes(v)) != target for v in row.values()):
        await conn.execute(
            "UPDATE bridge_profiles SET key_check = $2, secrets = $3 WHERE slug = $1",
            slug,
            sealer.key_check(),
            secrets.seal(sealer),
        )
        profile_row = True

    snapshot = await _reseal_snapshot(conn, sealer)

    records = await _reseal_records(conn, sealer)
    frames = await _reseal_media(conn, sealer)

    left = {
        kid.decode(errors="replace"): n
        for kid, n in (await sealed_with(conn, slug)).items()
        if kid != target
    }
    return Rotation(records, snapshot, profile_row, frames, left)


async def _reseal_records(conn: Any, sealer: Sealer) -> int:
    """Every record not under the first key, re-sealed in chunks; a record changed or
    deleted meanwhile (compacted into a snapshot) is skipped: each row is replaced only if it
    still holds the bytes that were read."""
    slug, target = sealer.profile, sealer.keyring.active_id
    records = 0
    after = 0
    while True:
        rows = await conn.fetch(
            "SELECT seq, sealed FROM bridge_records WHERE profile = $1 AND seq > $2 "
            "AND substring(sealed from 1 for 8) <> $3 ORDER BY seq LIMIT $4",
            slug,
            after,
            target,
            CHUNK,
        )
        if not rows:
            return records
        seqs, old, new = [], [], []
        for r in rows:
            seq, sealed = int(r["seq"]), bytes(r["sealed"])
            try:
                plaintext = sealer.open("records", str(seq), sealed)
            except DecryptError as exc:
                raise CorruptStateError(
                    f"profile {slug!r}: record seq {seq} in the database cannot be read ({exc})"
                ) from None
            seqs.append(seq)
            old.append(sealed)
            new.append(sealer.seal("records", str(seq), plaintext))
        status = await conn.execute(
            "UPDATE bridge_records AS r SET sealed = t.new "
            "FROM unnest($2::bigint[], $3::bytea[], $4::bytea[]) AS t(seq, old, new) "
            "WHERE r.profile = $1 AND r.seq = t.seq AND r.sealed = t.old",
            slug,
            seqs,
            old,
            new,
        )
        records += int(status.rsplit(" ", 1)[1])
        after = seqs[-1]


async def _reseal_snapshot(conn: Any, sealer: Sealer) -> bool:
    """The snapshot, loaded and written again under the first key with the same `upto`,
    under its row's lock: a compaction meanwhile waits, then finds it current."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT upto, sealed FROM bridge_snapshots WHERE profile = $1 FOR UPDATE",
            sealer.profile,
        )
        if row is None or snapshot_key_id(bytes(row["sealed"])) == sealer.keyring.active_id:
            return False
        state = State()
        load_snapshot(bytes(row["sealed"]), sealer, state)
        data = await dump_snapshot(state, sealer, int(row["upto"]))
        await conn.execute(
            "UPDATE bridge_snapshots SET sealed = $2 WHERE profile = $1", sealer.profile, data
        )
    return True


async def _reseal_media(conn: Any, sealer: Sealer) -> int:
    """Every media file's frames not under the first key, re-sealed in place (each with its
    file's name and index as associated data, as on disk), a few at a time: frames are up to
    1 MiB. A frame changed or deleted meanwhile (a sweep) is skipped, like a record. The
    replicas' cached copies sealed with the old key stay readable while it is configured;
    one that no longer opens is fetched again from here."""
    slug, keyring = sealer.profile, sealer.keyring
    target = keyring.active_id
    resealed = 0
    after = ("", -1)
    while True:
        rows = await conn.fetch(
            "SELECT name, idx, frame FROM bridge_media_frames WHERE profile = $1 "
            "AND (name, idx) > ($2, $3) AND substring(frame from 1 for 8) <> $4 "
            "ORDER BY name, idx LIMIT $5",
            slug,
            after[0],
            after[1],
            target,
            MEDIA_CHUNK,
        )
        if not rows:
            return resealed
        names, indexes, old, new = [], [], [], []
        for r in rows:
            name, index, frame = str(r["name"]), int(r["idx"]), bytes(r["frame"])
            aad = frame_aad(slug, name, index)
            try:
                plaintext = keyring.open(frame, aad)
            except DecryptError as exc:
                raise CorruptStateError(
                    f"profile {slug!r}: media file {name} frame {index} in the database "
                    f"cannot be read ({exc})"
                ) from None
            names.append(name)
            indexes.append(index)
            old.append(frame)
            new.append(keyring.seal(plaintext, aad))
        status = await conn.execute(
            "UPDATE bridge_media_frames AS f SET frame = t.new "
            "FROM unnest($2::text[], $3::int[], $4::bytea[], $5::bytea[]) AS t(name, idx, old, new) "
            "WHERE f.profile = $1 AND f.name = t.name AND f.idx = t.idx AND f.frame = t.old",
            slug,
            names,
            indexes,
            old,
            new,
        )
        resealed += int(status.rsplit(" ", 1)[1])
        after = (names[-1], indexes[-1])
