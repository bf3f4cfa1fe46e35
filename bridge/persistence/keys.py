"""A profile's encryption keys: from the config (BRIDGE_KEY, a key file, a systemd
credential), else generated once into the profile directory.

Key file format: one URL-safe base64 key per line, the first line is the active key; later
lines are older keys kept so data sealed before a rotation can still be read. `#` comments.
Keys on one line may also be separated by spaces or commas (BRIDGE_KEY="NEW,OLD").
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path

from bridge.config import ProfileConfig
from bridge.errors import ConfigError
from bridge.ops.logs import get_logger, log_id_key
from bridge.persistence.crypto import KEY_BYTES, Keyring
from bridge.persistence.files import atomic_write, secure_dir
from bridge.persistence.journal import list_segments, segment_path
from bridge.persistence.layout import journal_dir, key_path, snapshot_path


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)


def parse_keys(text: str, source: str) -> list[bytes]:
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for word in re.split(r"[\s,]+", line):
            if not word:
                continue
            try:
                key = base64.urlsafe_b64decode(word + "=" * (-len(word) % 4))
            except (binascii.Error, ValueError):
                raise ConfigError(f"{source}: not URL-safe base64") from None
            if len(key) != KEY_BYTES:
                raise ConfigError(f"{source}: a key must be {KEY_BYTES} bytes, got {len(key)}")
            keys.append(key)
    if not keys:
        raise ConfigError(f"{source}: no key found")
    return keys


def write_key_file(path: Path, keys: list[bytes]) -> None:
    lines = [
        "# whatsapp-bridge encryption keys: first line active, older ones below. BACK THIS UP:",
        "# without it the conversations cannot be read.",
        *(encode_key(k) for k in keys),
    ]
    atomic_write(path, [("\n".join(lines) + "\n").encode()])


def _has_data(state_dir: Path) -> bool:
    if snapshot_path(state_dir).exists():
        return True
    journal = journal_dir(state_dir)
    return any(segment_path(journal, s).stat().st_size for s in list_segments(journal))


def load_keyring(profile: ProfileConfig, create: bool) -> Keyring:
    """The profile's keyring; with `create`, a missing key is generated (and announced)."""
    if profile.key:
        return Keyring(parse_keys(profile.key, "BRIDGE_KEY"))
    path = profile.key_file or key_path(profile.state_dir)
    try:
        return Keyring(parse_keys(path.read_text(), str(path)))
    except FileNotFoundError:
        if not create or profile.key_file:
            raise ConfigError(f"profile {profile.slug!r}: key file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    if _has_data(profile.state_dir):
        # A new key could not read what is there, and the next snapshot would leave the old
        # data behind for good: the key was lost or misplaced, the operator must bring it.
        raise ConfigError(
            f"profile {profile.slug!r}: {profile.state_dir} holds encrypted data but its key "
            f"file {path} is missing; put the key back (or set BRIDGE_KEY / a key file)"
        )
    secure_dir(path.parent)
    key = new_key()
    write_key_file(path, [key])
    get_logger(profile=profile.slug).warning(
        "encryption_key_generated",
        path=str(path),
        note="back this file up: without it the stored conversations cannot be read",
    )
    return Keyring([key])


def log_id_key_for(profile: ProfileConfig) -> bytes | None:
    """The key that hashes this profile's wamids in logs (see `bridge.ops.logs.log_id`), derived
    from its encryption keys; None while it has none (nothing stored yet)."""
    try:
        keyring = load_keyring(profile, create=False)
    except ConfigError:
        return None
    return log_id_key(keyring.keys)
