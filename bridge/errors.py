"""One exception hierarchy, so the command line can print one line and exit with the right code."""

from __future__ import annotations


class BridgeError(Exception):
    """A failure the user can act on; `str()` is the one line the CLI prints."""

    exit_code: int = 1


class ConfigError(BridgeError):
    """Bad settings, an invalid profile, a missing secret: the operator must fix the config."""

    exit_code = 2


class PayloadError(BridgeError):
    """A webhook body that is not a WhatsApp delivery we can parse; answered with 400."""


class StorageError(BridgeError):
    """Durable storage failed (disk full, permissions): answered with 503 so Meta redelivers."""


class StorageUnavailableError(StorageError):
    """The state directory cannot be written or read at start (a full or read-only disk,
    permissions): the service cannot keep its promise, and restarting will not help until
    the operator acts."""

    exit_code = 2


class CorruptStateError(BridgeError):
    """A state file fails to decrypt or parse; we refuse to start rather than overwrite it."""

    exit_code = 2


class ProfileLockedError(BridgeError):
    """Another process owns the profile directory."""

    exit_code = 2


class AssistantError(BridgeError):
    """The assistant backend failed or timed out."""
