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
from bridge.logs import get_logger
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
    if profile.verify_token and profile.app_secret:
        return profile
    path = profile.state_dir / FILENAME
    data = _load(path)
    if not data and generate:
        data = {
            "verify_token": secrets.token_urlsafe(18),
            "app_secret": secrets.token_hex(16),
        }
        secure_dir(profile.state_dir)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        get_logger(profile=profile.slug).warning(
            "dev_secrets_generated",
            path=str(path),
            verify_token=data["verify_token"],
            app_secret=data["app_secret"],
            note="development only; printed once; set BRIDGE_VERIFY_TOKEN/BRIDGE_APP_SECRET in production",
        )
    return replace(
        profile,
        verify_token=profile.verify_token or data.get("verify_token"),
        app_secret=profile.app_secret or data.get("app_secret"),
    )
