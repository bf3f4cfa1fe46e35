"""The `bridge` command line: `serve` runs the webhook, `simulate` plays Meta against it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import aiohttp

from bridge import __version__
from bridge.config import Settings, load_settings
from bridge.devsecrets import load_dev_secrets, with_dev_secrets
from bridge.errors import BridgeError, ConfigError
from bridge.identities import is_phone, normalize_key
from bridge.ops import eventloop, logs

EPILOG_SERVE = """\
examples:
  bridge serve --dev                      development profile, secrets generated into var/
  BRIDGE_APP_SECRET=... BRIDGE_VERIFY_TOKEN=... BRIDGE_ACCESS_TOKEN=... \\
  BRIDGE_PHONE_NUMBER_ID=... bridge serve one profile configured from the environment
  bridge serve --config /etc/whatsapp-bridge/bridge.toml --profile shop

Secrets come from BRIDGE_* variables, BRIDGE_*_FILE files or systemd credentials, never from
the command line. The webhook is POST/GET /webhook (routed by phone_number_id) and
/webhook/<profile>; /healthz and /readyz report health.
"""

EPILOG_SIMULATE = """\
examples:
  bridge simulate "Hola" --from "+34 600-000-001" --name Ana
  bridge simulate "Hi" --from 34600000001 --url https://bridge.example.com/webhook
  bridge simulate "Hi" --from ES.13491208655302741918      a username-only user (no phone)

Signs the delivery with the profile's app secret (BRIDGE_APP_SECRET, or the development secret
written by `bridge serve --dev`). The reply shows in the bridge's log.
"""


EPILOG_DOCTOR = """\
examples:
  bridge doctor                                   every configured profile
  bridge doctor --config /etc/whatsapp-bridge/bridge.toml --profile shop --deep
  bridge doctor --fix                             also subscribe the app to the WABA

Run it as the bridge runs (same user, configuration and secrets): under systemd, see
README 'Day-2 operations'. Set BRIDGE_BUSINESS_ACCOUNT_ID (or business_account_id) to have
the app's webhook subscription checked.
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file with one or more profiles")
    parser.add_argument("--var-dir", type=Path, help="state directory (default ./var)")
    parser.add_argument("--log-format", choices=("auto", "json", "console"), help="log output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge",
        description="WhatsApp Cloud API webhook bridge to an AI assistant.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the webhook server",
        description="Serve the WhatsApp webhook for one or more profiles.",
        epilog=EPILOG_SERVE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(serve)
    serve.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="SLUG",
        help="serve only this profile (repeatable; default: all configured)",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument(
        "--accept-data-loss",
        action="store_true",
        help="start even if a journal is damaged: set the damaged part aside (kept on disk, "
        "logged) and lose the records in it; see README 'Damaged journal'",
    )
    serve.add_argument(
        "--dev",
        action="store_true",
        help="generate missing webhook secrets into the profile directory (development only)",
    )
    serve.add_argument(
        "--create",
        action="store_true",
        help="start a --profile that has no state yet (without it, an unknown profile is an "
        "error, so a typo never starts an empty one)",
    )

    sim = sub.add_parser(
        "simulate",
        help="post a signed test message to a running bridge",
        description="Sign and post a realistic WhatsApp text delivery, as Meta would.",
        epilog=EPILOG_SIMULATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(sim)
    sim.add_argument("text", help="message text (not empty)")
    sim.add_argument(
        "--from",
        dest="sender",
        default="34600000001",
        help="sender: a phone as you would type it (+34 600-000-001) or a business-scoped "
        "user id (ES.1349...) for a username-only user",
    )
    sim.add_argument("--user-id", help="the sender's business-scoped user id, sent with the phone")
    sim.add_argument(
        "--name", help="sender's profile name (default: none sent, an existing name is kept)"
    )
    sim.add_argument("--profile", metavar="SLUG", help="profile whose secret signs the delivery")
    sim.add_argument("--url", help="webhook URL (default: the local bridge's /webhook)")
    sim.add_argument("--wamid", help="message id (default: random; repeat one to test dedupe)")

    doctor = sub.add_parser(
        "doctor",
        help="check everything a profile needs, one line each (✓ ! ✗)",
        description=(
            "Check each configured profile (or --profile): the configuration, its secrets "
            "(never shown), the state directory's permissions, that the key opens the store, "
            "free disk, whether its bridge runs, the Graph API (token, phone number, the app's "
            "webhook subscription to the business account), the assistant and transcription "
            "backends. Every failure says what to do. Exit 0 when nothing fails, 1 otherwise."
        ),
        epilog=EPILOG_DOCTOR,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(doctor)
    doctor.add_argument(
        "--profile", action="append", default=[], metavar="SLUG", help="only this profile"
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument(
        "--fix",
        action="store_true",
        help="subscribe the app to the business account's webhooks when it is not",
    )
    doctor.add_argument(
        "--deep", action="store_true", help="also ask the assistant for a real completion"
    )

    ids = sub.add_parser(
        "log-id",
        help="the hash under which the logs show a message id",
        description=(
            "Logs never show Meta's message ids (wamids embed the sender's phone number), only "
            "a 12-hex-digit keyed hash of each, derived from the profile's encryption key. "
            "Print that hash for each WAMID, to find a message's lines: "
            "`journalctl -u whatsapp-bridge@shop | grep $(bridge log-id --profile shop WAMID)`."
        ),
    )
    _common(ids)
    ids.add_argument("wamids", nargs="+", metavar="WAMID", help="a message id (wamid.…)")
    ids.add_argument("--profile", metavar="SLUG", help="the profile that received the message")
    return parser


def _settings(args: argparse.Namespace, selected: Sequence[str]) -> Settings:
    return load_settings(
        config_path=args.config,
        selected=tuple(selected),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        var_dir=args.var_dir,
    )


def _check_known_profiles(args: argparse.Namespace, settings: Settings) -> None:
    """`--profile X` must name a profile that exists (configured, or with state on disk),
    unless --create: a typo must not start, and write, a new empty profile."""
    if not args.profile or args.create:
        return
    configured = load_settings(config_path=args.config, var_dir=args.var_dir)
    known = {p.slug for p in configured.profiles}
    root = settings.var_dir / "profiles"
    if root.is_dir():
        known |= {p.name for p in root.iterdir() if p.is_dir()}
    for slug in args.profile:
        if slug not in known:
            raise ConfigError(
                f"unknown profile {slug!r} (known: {', '.join(sorted(known)) or 'none'}); "
                "to start a new one, add --create"
            )


def run_serve(args: argparse.Namespace) -> int:
    from bridge.http.server import serve
    from bridge.ops.listen import bind, inherited
    from bridge.ops.metrics import Metrics
    from bridge.runtime import ProfileRuntime, StoreFactory, durable_store, postgres_store

    # Everything is checked before anything is written: the configuration, the profiles,
    # the secrets, the port (bound now, served later). Only then are development secrets
    # written and the stores opened (which creates keys, journals and snapshots).
    settings = _settings(args, args.profile)
    logs.configure(
        args.log_format or settings.log_format, settings.log_level, cache=True, background=True
    )
    loop = eventloop.resolve(settings.event_loop)
    _check_known_profiles(args, settings)
    loaded = [load_dev_secrets(p, generate=args.dev) for p in settings.profiles]
    for profile, _ in loaded:
        profile.require_secrets()
    metrics = Metrics()
    accept_loss = args.accept_data_loss or settings.accept_data_loss
    database_url = settings.database_url if settings.store == "postgres" else None
    factory: StoreFactory = (
        partial(postgres_store, database_url=database_url)
        if database_url
        else partial(durable_store, accept_data_loss=accept_loss)
    )
    runtimes = [
        ProfileRuntime.build(
            p,
            store_factory=factory,
            metrics=metrics,
            # The control channel lives in the profile directory of the one owning process:
            # with the database, sessions-admin writes to the database itself.
            control=database_url is None,
        )
        for p, _ in loaded
    ]
    # systemd socket activation hands over a socket that outlives us; else bind our own.
    sockets = inherited(settings) or bind(settings.host, settings.port)
    try:
        for _, pending in loaded:
            if pending is not None:
                pending.write()
        eventloop.run(serve(settings, runtimes, metrics, sockets), loop)
    finally:
        for sock in sockets:
            sock.close()
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from bridge.simulate import post_text

    if not args.text.strip():
        raise ConfigError("nothing to send: the message text is empty")
    sender = normalize_key(args.sender)
    if not sender:
        raise ConfigError("--from is empty: give a phone number or a user id")
    phone, user_id = (sender, args.user_id) if is_phone(sender) else (None, sender)
    settings = _settings(args, [args.profile] if args.profile else [])
    logs.configure(args.log_format or "console", "warning")
    profile = with_dev_secrets(settings.profiles[0], generate=False)
    if not profile.app_secret:
        raise ConfigError(
            f"profile {profile.slug!r}: no app secret to sign with (set BRIDGE_APP_SECRET, "
            "or start `bridge serve --dev` once to generate one)"
        )
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    path = "/webhook" if len(settings.profiles) == 1 else f"/webhook/{profile.slug}"
    url = args.url or f"http://{host}:{settings.port}{path}"
    try:
        result = asyncio.run(
            post_text(
                url,
                profile.app_secret,
                args.text,
                phone,
                profile.phone_number_id or "100000000000001",
                args.name,
                args.wamid,
                user_id=user_id,
            )
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else "nothing answered"
        raise BridgeError(
            f"cannot reach {url}: {reason}; is the bridge running? try `make run` "
            "(or point --url at it)"
        ) from None
    print(f"POST {url} -> {result.status} {result.body}  (message {result.wamid})")
    if result.status == 403:
        raise BridgeError(
            f"the bridge refused the signature (HTTP 403): this delivery was signed with the "
            f"app secret from {profile.app_secret_source or 'the configuration'}, and the "
            "bridge checks with a different one; give both the same secret"
        )
    return 0 if result.status == 200 else 1


def run_log_id(args: argparse.Namespace) -> int:
    from bridge.persistence.keys import log_id_key_for

    settings = _settings(args, [args.profile] if args.profile else [])
    profile = settings.profiles[0]
    key = log_id_key_for(profile)
    if key is None:
        raise ConfigError(
            f"profile {profile.slug!r} has no encryption key yet (nothing was stored), so no "
            "message of it was logged"
        )
    for wamid in args.wamids:
        print(logs.log_id(wamid, key=key))
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    from bridge.ops import doctor

    logs.configure("console", "error")  # its own lines only
    try:
        settings = _settings(args, args.profile)
    except ConfigError as exc:
        failed = doctor.Result(
            "configuration", "fail", str(exc), "fix it: `bridge serve` refuses to start"
        )
        doctor.emit([failed], args.json)
        return 1
    profiles = [with_dev_secrets(p, generate=False) for p in settings.profiles]
    results = [doctor.config_result(settings, args.config)]
    results += asyncio.run(doctor.diagnose(profiles, fix=args.fix, deep=args.deep))
    doctor.emit(results, args.json)
    return 1 if any(r.status == "fail" for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return run_serve(args)
        if args.command == "doctor":
            return run_doctor(args)
        if args.command == "log-id":
            return run_log_id(args)
        return run_simulate(args)
    except BridgeError as exc:
        print(f"bridge: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
