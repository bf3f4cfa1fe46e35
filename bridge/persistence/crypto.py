"""AES-256-GCM sealing with a keyring: every record gets a fresh random 96-bit nonce.

A sealed record is `key id (8 ASCII hex) | nonce (12) | ciphertext + tag (16)`. The caller's
associated data (format, profile, file and position) is bound together with the key id, so a
record cannot be moved to another profile, file or place without failing authentication.
Not Fernet: it is several times slower here and inflates everything by base64.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_BYTES = 8
OVERHEAD = KEY_ID_BYTES + NONCE_BYTES + 16


class DecryptError(ValueError):
    """A record that does not authenticate: wrong key, or changed bytes."""


def key_id(key: bytes) -> bytes:
    """A short public fingerprint of a key (not secret: derived by a one-way hash)."""
    return hashlib.sha256(key).hexdigest()[:KEY_ID_BYTES].encode()


class Keyring:
    """The active key seals; every key in the ring can open (old keys during rotation)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        for key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError("AES-256 keys are 32 bytes")
        self.keys = list(keys)
        self._ciphers = {key_id(k): AESGCM(k) for k in keys}
        self.active_id = key_id(keys[0])
        self._active = self._ciphers[self.active_id]
        # Ids of the keys that opened something: after loading a store, whether any of it
        # is still sealed with an older key (`rotate-key` with an external keyring).
        self.opened: set[bytes] = set()

    @property
    def key_ids(self) -> tuple[bytes, ...]:
        """The ids every sealed record starts with (a reader looks for them in damaged files)."""
        return tuple(self._ciphers)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = self._active.encrypt(nonce, plaintext, aad + b"|" + self.active_id)
        return self.active_id + nonce + ciphertext

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < OVERHEAD:
            raise DecryptError("record too short")
        kid = sealed[:KEY_ID_BYTES]
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptError(
                f"encrypted with key {kid.decode(errors='replace')}, which is not in the keyring "
                f"(have {', '.join(k.decode() for k in self._ciphers)}): wrong key?"
            )
        nonce = sealed[KEY_ID_BYTES : KEY_ID_BYTES + NONCE_BYTES]
        try:
            plaintext = cipher.decrypt(
                nonce, sealed[KEY_ID_BYTES + NONCE_BYTES :], aad + b"|" + kid
            )
        except InvalidTag:
            raise DecryptError("authentication failed: the data was changed or misplaced") from None
        self.opened.add(kid)
        return plaintext
