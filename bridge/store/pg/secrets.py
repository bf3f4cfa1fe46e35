"""A profile's hashing secrets: kept in the database, sealed with the profile key.

Seen ids' hashes (dedupe across replicas) and conversation lock ids (one owner per
conversation) are keyed hashes that every replica must compute alike at every moment. Keys
derived from the configured key list cannot promise that while the key changes: a rolling
rotation has replicas holding "OLD,NEW", "NEW,OLD" and later "NEW" alone. So the hash keys
are secrets of the profile, stored in `bridge_profiles.secrets` and sealed like any row
(rotate-key re-seals them with the rest). A profile created before schema 2 has none: the
first replica of this version to open it stores the values earlier versions derived (from
the last configured key), so the hashes already in `bridge_seen` stay valid.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

import orjson

from bridge.errors import CorruptStateError
from bridge.ops.logs import get_logger
from bridge.persistence.crypto import DecryptError, Keyring
from bridge.store.pg.locks import legacy_lock_key
from bridge.store.pg.sealing import Sealer, legacy_seen_key

SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class ProfileSecrets:
    """The HMAC keys of seen-id hashes (`seen`) and of conversation lock ids (`locks`)."""

    seen: bytes
    locks: bytes

    @classmethod
    def generate(cls) -> ProfileSecrets:
        """A new profile's: random, tied to no key."""
        return cls(os.urandom(SECRET_BYTES), os.urandom(SECRET_BYTES))

    @classmethod
    def legacy(cls, keyring: Keyring, profile: str) -> ProfileSecrets:
        """What versions before schema 2 derived, from the keyring's last key."""
        return cls(legacy_seen_key(keyring), legacy_lock_key(keyring.keys[-1], profile))

    def seal(self, sealer: Sealer) -> bytes:
        body = {
            "v": 1,
            "seen": base64.b64encode(self.seen).decode(),
            "locks": base64.b64encode(self.locks).decode(),
        }
        return sealer.seal("secrets", "", orjson.dumps(body))

    @classmethod
    def open(cls, sealer: Sealer, sealed: bytes) -> ProfileSecrets:
        """MissingKeyError when sealed with a key the sealer lacks; CorruptStateError when
        it does not open or parse."""
        try:
            body = orjson.loads(sealer.open("secrets", "", sealed))
            return cls(base64.b64decode(body["seen"]), base64.b64decode(body["locks"]))
        except (DecryptError, ValueError, KeyError, TypeError) as exc:
            raise CorruptStateError(
                f"profile {sealer.profile!r}: its secrets in the database cannot be read ({exc})"
            ) from None


async def read_secrets(conn: Any, sealer: Sealer) -> ProfileSecrets:
    """The profile's secrets, read-only: the legacy values when none are stored yet."""
    sealed = await conn.fetchval(
        "SELECT secrets FROM bridge_profiles WHERE slug = $1", sealer.profile
    )
    if sealed is None:
        return ProfileSecrets.legacy(sealer.keyring, sealer.profile)
    return ProfileSecrets.open(sealer, bytes(sealed))


async def load_secrets(conn: Any, sealer: Sealer) -> ProfileSecrets:
    """The profile's secrets; when none are stored (a profile made before schema 2), the
    legacy values are stored first, under the row's lock (replicas starting together store
    one value)."""
    sealed = await conn.fetchval(
        "SELECT secrets FROM bridge_profiles WHERE slug = $1", sealer.profile
    )
    if sealed is not None:
        return ProfileSecrets.open(sealer, bytes(sealed))
    async with conn.transaction():
        sealed = await conn.fetchval(
            "SELECT secrets FROM bridge_profiles WHERE slug = $1 FOR UPDATE", sealer.profile
        )
        if sealed is not None:
            return ProfileSecrets.open(sealer, bytes(sealed))
        secrets = ProfileSecrets.legacy(sealer.keyring, sealer.profile)
        await conn.execute(
            "UPDATE bridge_profiles SET secrets = $2 WHERE slug = $1",
            sealer.profile,
            secrets.seal(sealer),
        )
    get_logger(profile=sealer.profile).info("profile_secrets_stored", derived_from="last key")
    return secrets
