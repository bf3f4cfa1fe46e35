"""Development secrets: `bridge serve --dev` works with no account by generating its own.

They are written once into the profile directory (0600) and printed once, when generated, so a
developer can point `bridge simulate` or a tunnel at the bridge. Production never takes this
path: without --dev a missing secret is an error.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import replace
from pathlib import Path

import orjson

from bridge.config import ProfileConfig
from bridge.errors import ConfigError
from bridge.ops.logs import get_logger
from bridge.persistence.files import secure_dir

FILENAME = "dev-secrets.json"


def _load(path: Path) -> dict[str, str]:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read development secrets {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"development secrets file {path} is not a JSON object")
    return {k: v for k, v in data.items() if isinstance(v, str)}


def with_dev_secrets(profile: ProfileConfig, generate: bool) -> ProfileConfig:
    """Fill missing webhook secrets from the profile's dev file, generating it if allowed."""
    filled, pending = load_dev_secrets(profile, generate)
    if pending is not None:
        pending.write()
    return filled


class PendingSecrets:
    """Secrets generated in memory, written by `write()`: `bridge serve` writes them only
    once everything else (the port included) has been checked."""

    def __init__(self, profile: ProfileConfig, data: dict[str, str]) -> None:
        self.profile = profile
        self.data = data

    def write(self) -> None:
        path = self.profile.state_dir / FILENAME
        secure_dir(self.profile.state_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(self.data, option=orjson.OPT_INDENT_2))
        get_logger(profile=self.profile.slug).warning(
            "dev_secrets_generated",
            path=str(path),
            verify_token=self.data["verify_token"],
            app_secret=self.data["app_secret"],
            note="development only; printed once; set BRIDGE_VERIFY_TOKEN/BRIDGE_APP_SECRET in production",
        )


def load_dev_secrets(
    profile: ProfileConfig, generate: bool
) -> tuple[ProfileConfig, PendingSecrets | None]:
    """The profile with its missing webhook secrets filled from the dev file (or freshly
    generated, if allowed, and then returned as pending: nothing is written here)."""
    if profile.verify_token and profile.app_secret:
        return profile, None
    path = profile.state_dir / FILENAME
    data = _load(path)
    pending = None
    if not data and generate:
        data = {
            "verify_token": secrets.token_urlsafe(18),
            "app_secret": secrets.token_hex(16),
        }
        pending = PendingSecrets(profile, data)
    filled = replace(
        profile,
        verify_token=profile.verify_token or data.get("verify_token"),
        app_secret=profile.app_secret or data.get("app_secret"),
        app_secret_source=profile.app_secret_source
        if profile.app_secret
        else (f"the development secrets file {path}" if data.get("app_secret") else None),
    )
    return filled, pending
