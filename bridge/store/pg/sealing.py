"""What the database holds of a profile: sealed records and keyed hashes, nothing readable.

Records are sealed with the profile's keyring (AES-256-GCM, bridge/persistence/crypto.py);
the associated data binds the profile, the table and the row's identity, so a row copied to
another profile, table or seq fails to open. Message ids are stored only as HMACs, since
Meta's wamids carry the sender's phone number in base64. The hash key is one of the
profile's secrets kept in the database (secrets.py), never derived from the configured key
list: replicas must hash alike while they hold the keys in different orders (a rotation).
"""

from __future__ import annotations

import hashlib
import hmac

from bridge.errors import ConfigError, StorageError
from bridge.persistence.crypto import KEY_ID_BYTES, DecryptError, Keyring

FORMAT = b"bridge-pg|1"
_SEEN_INFO = b"whatsapp-bridge seen-id hash v1"
_KEY_CHECK = b"whatsapp-bridge key check v1"


class MissingKeyError(StorageError):
    """Something in the database is sealed with a key this process was not given: a key
    rotation the configuration has not caught up with. A StorageError (503, Meta retries):
    nothing is lost, the operator adds the key and restarts."""

    def __init__(self, profile: str, key_id: bytes) -> None:
        self.key_id = key_id
        super().__init__(
            f"profile {profile!r}: the database holds data sealed with key "
            f"{key_id.decode(errors='replace')}, which is not among the configured keys: add "
            "it to the key source (BRIDGE_KEY / BRIDGE_KEY_FILE / credential, after the "
            "current key) and restart"
        )


def sealed_key_id(sealed: bytes) -> bytes:
    """The id of the key a sealed value was sealed with (crypto.py: it comes first)."""
    return bytes(sealed[:KEY_ID_BYTES])


def legacy_seen_key(keyring: Keyring) -> bytes:
    """The seen-id hash key earlier versions derived from the last configured key: what
    the hashes already in the database were made with."""
    return hmac.new(keyring.keys[-1], _SEEN_INFO, hashlib.sha256).digest()


class Sealer:
    """Seals and opens one profile's rows; hashes its message ids with `seen_key` (the
    profile's stored secret: secrets.py; None while it is not read yet)."""

    def __init__(self, keyring: Keyring, profile: str, seen_key: bytes | None = None) -> None:
        self.keyring = keyring
        self.profile = profile
        self._prefix = FORMAT + b"|" + profile.encode() + b"|"
        self._seen_key = seen_key

    def _aad(self, table: str, row: str) -> bytes:
        return self._prefix + table.encode() + b"|" + row.encode()

    def seal(self, table: str, row: str, plaintext: bytes) -> bytes:
        return self.keyring.seal(plaintext, self._aad(table, row))

    def open(self, table: str, row: str, sealed: bytes) -> bytes:
        """The plaintext; MissingKeyError when sealed with a key not in the keyring,
        DecryptError when it does not authenticate."""
        kid = sealed_key_id(sealed)
        if len(sealed) > KEY_ID_BYTES and kid not in self.keyring.key_ids:
            raise MissingKeyError(self.profile, kid)
        return self.keyring.open(sealed, self._aad(table, row))

    def seen_hash(self, message_id: str) -> bytes:
        if self._seen_key is None:
            raise AssertionError("the profile's secrets were not read before hashing")
        return hmac.new(self._seen_key, message_id.encode(), hashlib.sha256).digest()

    def key_check(self) -> bytes:
        return self.seal("key_check", "", _KEY_CHECK)

    def verify_key_check(self, sealed: bytes) -> None:
        """ConfigError (one line) when the configured key is not the database's."""
        try:
            ok = self.keyring.open(sealed, self._aad("key_check", "")) == _KEY_CHECK
        except DecryptError:
            ok = False
        if not ok:
            raise ConfigError(
                f"profile {self.profile!r}: the configured encryption key does not match the "
                "database's (key check failed); configure the key this profile was created "
                "with (refusing to start)"
            )
