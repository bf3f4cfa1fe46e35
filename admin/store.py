"""The store a command works on: the profile --profile names, its state read as of now (from
the file store or the database), and the settings stored with that state."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from admin import database
from bridge.config import ProfileConfig, StoreSettings, load_settings
from bridge.errors import BridgeError
from bridge.persistence.snapshot import SnapshotInfo
from bridge.records import settings_from_dict
from bridge.state import State
from bridge.store.durable import load_state


def resolve_profile(args: argparse.Namespace) -> ProfileConfig:
    """The profile named by --profile, from the TOML file or the environment."""
    selected = (args.profile,) if args.profile else ()
    settings = load_settings(config_path=args.config, selected=selected, var_dir=args.var_dir)
    profile = settings.profiles[0]
    if database.use_settings(settings, profile):
        return profile  # in the database (admin/database.py)
    if not profile.state_dir.is_dir():
        raise BridgeError(
            f"no store for profile {profile.slug!r} at {profile.state_dir} (has the bridge run "
            "with this profile? is --var-dir right?)"
        )
    return profile


def read_state(profile: ProfileConfig, info: SnapshotInfo | None = None) -> State:
    """Snapshot + journal as of now; no lock taken, nothing written."""
    url = database.database_of(profile)
    state = database.read_state(profile, url) if url else load_state(profile, info=info)
    report_settings(profile, state)
    return state


def report_settings(profile: ProfileConfig, state: State) -> None:
    """The store's cap and retention are the bridge's, stored with the data; a different
    value given to this command (env or TOML) is not applied: say so, in one line."""
    report_stored_settings(profile, state.settings)


def report_stored_settings(profile: ProfileConfig, stored: StoreSettings | None) -> None:
    if stored is None:
        return
    names = ("max_messages", "retention_days")
    given = [
        f"{name}={getattr(profile, name)}"
        for name in names
        if name in profile.explicit and getattr(profile, name) != getattr(stored, name)
    ]
    if given:
        ours = ", ".join(f"{name}={getattr(stored, name)}" for name in names)
        print(
            f"sessions-admin: warning: profile {profile.slug!r} stores {ours} with its data "
            f"(the bridge's settings); using those, not {', '.join(given)} given to this command",
            file=sys.stderr,
        )


def report_result_settings(profile: ProfileConfig, result: dict[str, Any]) -> None:
    """`report_settings` for the settings an operation's result names (the store's own, as
    the bridge or the store opened here has them)."""
    stored = result.get("settings")
    report_stored_settings(profile, settings_from_dict(stored) if stored else None)
