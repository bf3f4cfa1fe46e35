"""`sessions-admin profiles`: list, show, create, delete a profile, and read its events.

A profile's whole life is its directory `var/profiles/<slug>/` (the store, its key when the
bridge generated it, its backups, its event log, whatever else a release keeps there): this
module treats it as a whole, never file by file, so what a later release adds there is
listed, counted, backed up and deleted with the rest.

Deleting is the one step that cannot be undone, so it refuses while that profile's bridge
runs (and holds the profile lock meanwhile, so none starts), asks on a terminal (and refuses
without one unless `--yes`), and first writes a last backup outside the directory, checked
like every backup, with a copy of the key when the key lived inside the directory. The
directory is renamed out of `profiles/` before it is removed, so an interrupted removal
never leaves half a profile that looks whole.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from admin import render
from admin.arguments import UsageError
from admin.backups import write_checked_archive
from admin.store import resolve_profile
from bridge.config import ProfileConfig, Settings, load_settings, validate_slug
from bridge.errors import BridgeError, ConfigError, ProfileLockedError
from bridge.ops.diskspace import dir_size
from bridge.ops.eventlog import EventLog
from bridge.persistence import layout
from bridge.persistence.files import fsync_dir, pid_alive, secure_dir
from bridge.persistence.keys import load_keyring
from bridge.persistence.lock import ProfileLock

DELETING = ".deleting-"  # var/.deleting-<slug>.<pid>: a profile being removed


def known_profiles(
    args: argparse.Namespace,
) -> tuple[Settings, dict[str, ProfileConfig], set[str]]:
    """Every profile, configured (TOML or environment) or only on disk, by slug, and which
    of them are configured. A profile found only on disk gets the configured defaults, no
    phone number or secrets, and its own directory (and its key from that directory)."""
    settings = load_settings(config_path=args.config, var_dir=args.var_dir)
    root = settings.var_dir / "profiles"
    found = {p.slug: p for p in settings.profiles if args.config or p.state_dir.is_dir()}
    configured = set(found)
    if root.is_dir():
        for path in root.iterdir():
            if path.is_dir() and path.name not in found:
                try:
                    slug = validate_slug(path.name)
                except ConfigError:
                    continue  # not a profile of ours
                found[slug] = ProfileConfig(slug=slug, state_dir=path)
    return settings, dict(sorted(found.items())), configured


def cmd_profiles(args: argparse.Namespace) -> int:
    if args.action == "create":
        return _create(args)
    settings, profiles, configured = known_profiles(args)
    _remove_interrupted_deletions(settings.var_dir)
    if args.action == "list":
        return _list(args, settings, list(profiles.values()), configured)
    if not args.slug or args.slug not in profiles:
        raise BridgeError(f"unknown profile {args.slug!r} (known: {', '.join(profiles) or 'none'})")
    profile = profiles[args.slug]
    if args.action == "show":
        return _list(args, settings, [profile], configured)
    if args.action == "events":
        return _events(args, profile)
    return _delete(args, settings, profile)


def _create(args: argparse.Namespace) -> int:
    settings = load_settings(config_path=args.config, var_dir=args.var_dir)
    if not args.slug:
        raise UsageError("profiles create needs a SLUG")
    slug = validate_slug(args.slug)
    state_dir = settings.var_dir / "profiles" / slug
    if state_dir.exists():
        raise BridgeError(f"profile {slug!r} already exists at {state_dir}")
    layout.create_profile_dir(state_dir)
    load_keyring(
        replace(settings.profiles[0], slug=slug, state_dir=state_dir, key=None, key_file=None),
        create=True,
    )
    print(f"created profile {slug!r} at {state_dir} (back up its key file: {state_dir / 'key'})")
    return 0


def _list(
    args: argparse.Namespace,
    settings: Settings,
    profiles: list[ProfileConfig],
    configured: set[str],
) -> int:
    rows = []
    for profile in profiles:
        status, pid = layout.run_status(profile.state_dir)
        rows.append(
            {
                "profile": profile.slug,
                "directory": str(profile.state_dir),
                "phone_number_id": profile.phone_number_id,
                "port": (profile.port or settings.port) if profile.slug in configured else None,
                "status": status,
                "pid": pid,
                "bytes": dir_size(profile.state_dir),
            }
        )
    if args.json:
        render.emit_json(rows if args.action == "list" else rows[0])
    elif rows:
        print(
            render.table(
                ("PROFILE", "STATUS", "PHONE NUMBER ID", "PORT", "BYTES", "DIRECTORY"),
                [
                    (
                        r["profile"],
                        f"{r['status']} (pid {r['pid']})" if r["pid"] else r["status"],
                        r["phone_number_id"] or "-",
                        r["port"] or "-",
                        f"{r['bytes']:,}",
                        r["directory"],
                    )
                    for r in rows
                ],
            )
        )
    else:
        print(f"no profiles under {settings.var_dir / 'profiles'}")
    return 0


def _events(args: argparse.Namespace, profile: ProfileConfig) -> int:
    events = EventLog(profile.state_dir).read()
    if args.json:
        render.emit_json(events)
        return 0
    if not events:
        print(f"no events recorded for profile {profile.slug!r}")
        return 0
    rows = []
    for event in events:
        details = " ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in event.items()
            if k not in ("ts", "event") and v is not None
        )
        rows.append((event.get("ts", "-"), event.get("event", "-"), details))
    print(render.table(("TIME (UTC)", "EVENT", "DETAILS"), rows))
    return 0


# -- delete ------------------------------------------------------------------------------------


def _confirm(profile: ProfileConfig, size: int, backup: str) -> None:
    """Ask on a terminal for the profile's name; refuse without one (a script must say
    --yes)."""
    if not sys.stdin.isatty():
        raise UsageError(
            f"profiles delete {profile.slug}: not asking without a terminal; add --yes to "
            "delete without asking (nothing was deleted)"
        )
    print(
        f"This deletes profile {profile.slug!r}: {profile.state_dir} ({size:,} bytes: its "
        f"conversations, journal, backups and events). {backup}",
        file=sys.stderr,
    )
    print(f"Type the profile name ({profile.slug}) to delete it: ", end="", file=sys.stderr)
    sys.stderr.flush()
    answer = sys.stdin.readline().strip()
    if answer != profile.slug:
        raise BridgeError(f"not confirmed; profile {profile.slug!r} was not deleted")


def _delete(args: argparse.Namespace, settings: Settings, profile: ProfileConfig) -> int:
    state_dir = profile.state_dir
    if state_dir.parent != settings.var_dir / "profiles":
        # A TOML profile's state always lives there; anything else is not ours to remove.
        raise BridgeError(f"{state_dir} is not under {settings.var_dir / 'profiles'}")
    target = args.to or settings.var_dir / "backups"
    backup_note = (
        "No backup will be written (--no-backup)."
        if args.no_backup
        else f"A last backup goes to {target} first."
    )
    status, pid = layout.run_status(state_dir)
    if status == "running":
        raise BridgeError(_running(profile, pid))
    if not args.yes:
        _confirm(profile, dir_size(state_dir), backup_note)
    lock = ProfileLock(state_dir, profile.slug)
    try:
        lock.acquire()  # no bridge may start on it while it goes
    except ProfileLockedError:
        raise BridgeError(_running(profile, layout.lock_holder(state_dir))) from None
    try:
        saved = [] if args.no_backup else _last_backup(profile, target)
        removed = _remove(settings.var_dir, state_dir)
    finally:
        # Gone with the directory, or, when a step failed, as it was before.
        lock.release()
    if args.json:
        render.emit_json({"deleted": profile.slug, "directory": str(state_dir), "saved": saved})
    else:
        print(f"deleted profile {profile.slug!r} ({state_dir}, {removed:,} bytes)")
        for path in saved:
            print(f"kept {path}")
        if saved and len(saved) == 1:
            print(
                "the backup is encrypted with the profile's key, which did not live in its "
                "directory: keep that key as long as you keep the backup"
            )
    return 0


def _running(profile: ProfileConfig, pid: int | None) -> str:
    return (
        f"profile {profile.slug!r} is running (pid {pid}); stop its bridge first (e.g. "
        f"systemctl stop whatsapp-bridge@{profile.slug}, or remove it from the bridge's "
        "configuration and restart that); nothing was deleted"
    )


def _last_backup(profile: ProfileConfig, target: Path) -> list[str]:
    """The checked archive outside the profile, and a copy of the key beside it when the
    key was one of the files about to be deleted."""
    if target.resolve().is_relative_to(profile.state_dir.resolve()):
        raise UsageError(f"--to {target} is inside the profile directory that is deleted")
    try:
        path, _, _ = write_checked_archive(profile, target)
    except OSError as exc:
        raise BridgeError(
            f"last backup to {target} failed: {exc.strerror or exc}; nothing was deleted "
            "(--no-backup deletes without one)"
        ) from None
    except BridgeError as exc:
        raise BridgeError(
            f"last backup failed: {exc}; nothing was deleted (--no-backup deletes without one)"
        ) from None
    saved = [str(path)]
    key = layout.key_path(profile.state_dir)
    if profile.key is None and profile.key_file is None and key.is_file():
        copy = path.with_suffix(".key")
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, key.read_bytes())
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(copy.parent)
        saved.append(str(copy))
    return saved


def _remove(var_dir: Path, state_dir: Path) -> int:
    """Rename the directory out of `profiles/` (one atomic step: from then on the profile is
    gone), then remove it; returns the bytes it held."""
    size = dir_size(state_dir)
    aside = var_dir / f"{DELETING}{state_dir.name}.{os.getpid()}"
    secure_dir(var_dir)
    os.rename(state_dir, aside)
    fsync_dir(state_dir.parent)
    shutil.rmtree(aside)
    return size


def _remove_interrupted_deletions(var_dir: Path) -> None:
    """Finish removing what a deletion that was killed left (its process is gone)."""
    if not var_dir.is_dir():
        return
    for path in var_dir.iterdir():
        if not path.name.startswith(DELETING) or not path.is_dir():
            continue
        pid = path.name.rpartition(".")[2]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def record_write(args: argparse.Namespace, command: str) -> None:
    """An admin write that succeeded, in the profile's event log (never its arguments: a
    conversation key is a phone number)."""
    try:
        profile = resolve_profile(args)
    except BridgeError:
        return
    events = EventLog(profile.state_dir)
    if command == "rotate-key":
        try:
            key_id = load_keyring(profile, create=False).active_id.decode()
        except BridgeError:
            key_id = None
        events.record("key_rotated", key_id=key_id)  # a public fingerprint, not the key
    else:
        events.record("admin_write", command=command)
