"""What the database holds of a profile: sealed records and keyed hashes, nothing readable.

Records are sealed with the profile's keyring (AES-256-GCM, bridge/persistence/crypto.py);
the associated data binds the profile, the table and the row's identity, so a row copied to
another profile, table or seq fails to open. Message ids are stored only as HMACs under a
key derived from the profile's oldest key (as log ids are: it survives `rotate-key`), since
Meta's wamids carry the sender's phone number in base64.
"""

from __future__ import annotations

import hashlib
import hmac

from bridge.errors import ConfigError
from bridge.persistence.crypto import DecryptError, Keyring

FORMAT = b"bridge-pg|1"
_SEEN_INFO = b"whatsapp-bridge seen-id hash v1"
_KEY_CHECK = b"whatsapp-bridge key check v1"


class Sealer:
    """Seals and opens one profile's rows; hashes its message ids."""

    def __init__(self, keyring: Keyring, profile: str) -> None:
        self.keyring = keyring
        self.profile = profile
        self._prefix = FORMAT + b"|" + profile.encode() + b"|"
        self._seen_key = hmac.new(keyring.keys[-1], _SEEN_INFO, hashlib.sha256).digest()

    def _aad(self, table: str, row: str) -> bytes:
        return self._prefix + table.encode() + b"|" + row.encode()

    def seal(self, table: str, row: str, plaintext: bytes) -> bytes:
        return self.keyring.seal(plaintext, self._aad(table, row))

    def open(self, table: str, row: str, sealed: bytes) -> bytes:
        return self.keyring.open(sealed, self._aad(table, row))

    def seen_hash(self, message_id: str) -> bytes:
        return hmac.new(self._seen_key, message_id.encode(), hashlib.sha256).digest()

    def key_check(self) -> bytes:
        return self.seal("key_check", "", _KEY_CHECK)

    def verify_key_check(self, sealed: bytes) -> None:
        """ConfigError (one line) when the configured key is not the database's."""
        try:
            ok = self.open("key_check", "", sealed) == _KEY_CHECK
        except DecryptError:
            ok = False
        if not ok:
            raise ConfigError(
                f"profile {self.profile!r}: the configured encryption key does not match the "
                "database's (key check failed); configure the key this profile was created "
                "with (refusing to start)"
            )
