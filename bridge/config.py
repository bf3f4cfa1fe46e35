"""Settings: one frozen dataclass built from the environment or a TOML file; nothing else reads env.

Secrets never come from the command line (they would show in `ps`): each secret is read from
the environment (`BRIDGE_APP_SECRET`), from a file named by `<NAME>_FILE`, or from a systemd
credential (`$CREDENTIALS_DIRECTORY/<name>`, or `<slug>.<name>` in a multi-profile TOML setup).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bridge.errors import ConfigError
from bridge.hours import OpeningHours

SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
ASSISTANT_KINDS = ("echo", "openai", "http")
DEFAULT_GRAPH_URL = "https://graph.facebook.com"
DEFAULT_GRAPH_VERSION = "v21.0"
DEFAULT_OPT_OUT = ("STOP", "BAJA")
DEFAULT_OPT_IN = ("START", "ALTA")


@dataclass(frozen=True, slots=True)
class AssistantConfig:
    """Which assistant backend answers, and how long we wait for it."""

    kind: str = "echo"
    url: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    system_prompt: str | None = None
    timeout: float = 30.0
    # Sent when the backend fails; None means the user gets no reply (the failure is logged).
    fallback_reply: str | None = None
    # How many recent messages go to the backend as context.
    history_limit: int = 50
    # Stored media sent along (see README "Media"): `openai` with `vision` gets the recent
    # images as content parts; `http` with `send_media` gets a `media` list per message. At
    # most `media_max_items` items (the most recent), each at most `media_max_bytes`.
    vision: bool = False
    send_media: bool = False
    media_max_items: int = 3
    media_max_bytes: int = 5 * 1024 * 1024


# Meta's own limits for what a user can send (Cloud API "Supported media types"), the default
# largest file the bridge fetches of each type.
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")
DEFAULT_MEDIA_MAX_BYTES: dict[str, int] = {
    "image": 5 * 1024 * 1024,
    "audio": 16 * 1024 * 1024,
    "video": 16 * 1024 * 1024,
    "document": 100 * 1024 * 1024,
    "sticker": 500 * 1024,
}


@dataclass(frozen=True, slots=True)
class TranscribeConfig:
    """An OpenAI-compatible `/v1/audio/transcriptions` endpoint for voice notes and audio;
    `url` None: no transcription (the entry keeps `[voice 0:07]`)."""

    url: str | None = None
    model: str = "whisper-1"
    api_key: str | None = field(default=None, repr=False)
    language: str | None = None
    timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """Inbound media: fetched after the 200, checked, stored encrypted (bridge/media/)."""

    fetch: bool = True
    # Largest file fetched, per message type (bytes); larger ones are refused and logged.
    max_bytes: tuple[tuple[str, int], ...] = tuple(DEFAULT_MEDIA_MAX_BYTES.items())
    # Days the bytes are kept; the history entry (type, size, transcript) stays longer.
    retention_days: int = 90
    # How long a reply waits for the media work (download, transcription) of the messages
    # it answers before it goes ahead with what is known.
    wait_seconds: float = 30.0
    transcribe: TranscribeConfig = TranscribeConfig()

    def limit(self, media_type: str) -> int:
        for name, size in self.max_bytes:
            if name == media_type:
                return size
        return DEFAULT_MEDIA_MAX_BYTES["document"]


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """The settings that shape what a profile's store keeps: its cap of messages per
    conversation and its retention. They are stored with the data (snapshot and journal), so
    the service and `sessions-admin` can never apply different ones to the same store."""

    max_messages: int
    retention_days: int

    def __post_init__(self) -> None:
        for name in ("max_messages", "retention_days"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """One WhatsApp number (or tenant) with its secrets, assistant and state directory."""

    slug: str
    state_dir: Path
    verify_token: str | None = field(default=None, repr=False)
    app_secret: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    phone_number_id: str | None = None
    # The WhatsApp Business Account the number belongs to: only `bridge doctor` uses it, to
    # check (and with --fix, make) the app's webhook subscription to it.
    business_account_id: str | None = None
    graph_url: str = DEFAULT_GRAPH_URL
    graph_version: str = DEFAULT_GRAPH_VERSION
    assistant: AssistantConfig = AssistantConfig()
    port: int | None = None
    retention_days: int = 365
    max_messages: int = 250
    # How long a reply whose send may have reached Meta waits for Meta's status webhook
    # naming it before it is sent again (see bridge/outbox.py); None: 20 s, or 10 s with
    # replicas (the postgres store).
    send_reconcile_seconds: float | None = None
    # One reply to a burst: wait until the user is quiet this long (0: a reply per message),
    # but never longer than the max after the burst's first message.
    reply_debounce_seconds: float = 2.0
    reply_debounce_max_seconds: float = 8.0
    media: MediaConfig = MediaConfig()
    # Mark a message read, with the typing indicator, when a reply to it is being made
    # (only where an access token is set: the log-only sender does nothing).
    read_receipts: bool = True
    # Outbound media: fetched by the bridge and uploaded to Meta (`POST /{phone_number_id}/
    # media`), then sent by id, for URLs Meta cannot reach; off: Meta fetches the link.
    upload_media: bool = False
    # A reaction (👍 to a reply) gets an answer only when this is on.
    reply_to_reactions: bool = False
    # Business hours (None: always open) and what happens outside them: "assistant" answers
    # as usual, "reply" sends `outside_hours_reply` once per closed period, "silent" records.
    hours: OpeningHours | None = None
    outside_hours: str = "assistant"
    outside_hours_reply: str | None = None
    # Humans in the loop (bridge/modes.py, bridge/keywords.py): an operator's message pauses
    # its conversation this long (0: not at all); whole-message keywords (compared without
    # case, accents or extra spaces) hand a conversation to a person, opt the user out, or in
    # again, each with an optional automatic reply; a handoff is POSTed to notify_url.
    handoff_minutes: int = 60
    handoff_keywords: tuple[str, ...] = ()
    handoff_reply: str | None = None
    opt_out_keywords: tuple[str, ...] = DEFAULT_OPT_OUT
    opt_out_reply: str | None = None
    opt_in_keywords: tuple[str, ...] = DEFAULT_OPT_IN
    opt_in_reply: str | None = None
    notify_url: str | None = None
    notify_secret: str | None = field(default=None, repr=False)
    # Encryption key as URL-safe base64, or a file holding it; else generated in state_dir.
    key: str | None = field(default=None, repr=False)
    key_file: Path | None = None
    # Where app_secret came from ("BRIDGE_APP_SECRET", a file, a credential, ...), so a
    # signature mismatch can say which secret signed.
    app_secret_source: str | None = field(default=None, compare=False)
    # Which of the settings above were given (env or TOML) rather than defaulted: an admin
    # command reports a given value that differs from the one stored with the data.
    explicit: frozenset[str] = frozenset()

    @property
    def store_settings(self) -> StoreSettings:
        return StoreSettings(self.max_messages, self.retention_days)

    def require_secrets(self) -> None:
        """Fail with one clear line when a webhook secret is missing."""
        for name in ("verify_token", "app_secret"):
            if not getattr(self, name):
                env = f"BRIDGE_{name.upper()}"
                raise ConfigError(
                    f"profile {self.slug!r}: missing secret {name} "
                    f"(set {env}, {env}_FILE or a systemd credential, or run with --dev)"
                )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one bridge process needs, resolved once at start."""

    profiles: tuple[ProfileConfig, ...]
    var_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = 8080
    # Meta's deliveries are a few KiB; a megabyte leaves room for large batches.
    max_body_bytes: int = 1024 * 1024
    # Slow or idle clients (bridge.http.guard): a connection must complete a request head this
    # many seconds after it opens or its previous response (so it is the keep-alive idle time
    # too), and a body this many seconds after its head; beyond max_connections open at once
    # (lowered to fit the open-files limit) the longest idle connection makes room, or a new
    # one is refused if every connection is busy.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1024
    snapshot_interval: float = 300.0
    health_interval: float = 120.0
    shutdown_timeout: float = 10.0
    log_format: str = "auto"
    log_level: str = "info"
    # `auto` (uvloop when installed), `uvloop` or `asyncio` (bridge/ops/eventloop.py).
    event_loop: str = "auto"
    # Log each event-loop stall longer than this many ms with where it was spent
    # (bridge/ops/stalltrace.py); 0 switches the watchdog off.
    stall_log_ms: float = 100.0
    # Bearer token required by /metrics; None leaves it open (bind to localhost then).
    metrics_token: str | None = field(default=None, repr=False)
    # Bearer token of the operators' HTTP API (/api/v1) and console (/console); None: both
    # answer 404.
    api_token: str | None = field(default=None, repr=False)
    # systemd's notify socket and watchdog period, when run as a Type=notify service.
    # Start even if a journal is damaged, setting the damaged part aside (logged, kept on
    # disk): the operator has accepted that loss. `bridge serve --accept-data-loss`, or
    # BRIDGE_ACCEPT_DATA_LOSS=1 for one start under systemd.
    accept_data_loss: bool = False
    notify_socket: str | None = None
    # Where profiles' state lives: "file" (the embedded default: journal + snapshots in
    # var_dir, one process per profile) or "postgres" (any number of replicas share the
    # profiles through the database at database_url; README "Running several replicas").
    store: str = "file"
    database_url: str | None = field(default=None, repr=False)
    # systemd socket activation (sd_listen_fds): sockets passed from fd 3 on, for this pid.
    listen_fds: str | None = None
    listen_pid: str | None = None
    listen_fdnames: str | None = None
    watchdog_usec: str | None = None
    watchdog_pid: str | None = None

    def profile(self, slug: str) -> ProfileConfig:
        for p in self.profiles:
            if p.slug == slug:
                return p
        known = ", ".join(p.slug for p in self.profiles)
        raise ConfigError(f"unknown profile {slug!r} (configured: {known})")


def validate_slug(slug: str) -> str:
    if not SLUG_RE.fullmatch(slug):
        raise ConfigError(
            f"invalid profile name {slug!r}: use 1-32 of a-z, 0-9 and '-', starting with a "
            "letter or digit"
        )
    return slug


def _read_secret_file(path: str, what: str) -> str | None:
    """A secret file's content, stripped; an empty file counts as no secret."""
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} from {path}: {exc.strerror}") from None


def _secret(
    name: str,
    table: Mapping[str, Any],
    env: Mapping[str, str],
    env_name: str,
    cred_names: tuple[str, ...],
) -> str | None:
    """Resolve one secret: TOML value, TOML `<name>_file`, env var, env `_FILE`, credential."""
    return _secret_and_source(name, table, env, env_name, cred_names)[0]


def _secret_and_source(
    name: str,
    table: Mapping[str, Any],
    env: Mapping[str, str],
    env_name: str,
    cred_names: tuple[str, ...],
) -> tuple[str | None, str | None]:
    """The secret and, for messages, where it was found."""
    if table.get(name):
        return str(table[name]), f"{name} in the TOML file"
    if table.get(f"{name}_file"):
        path = str(table[f"{name}_file"])
        return _read_secret_file(path, name), f"the file {path} ({name}_file)"
    if env.get(env_name):
        return env[env_name], env_name
    if env.get(f"{env_name}_FILE"):
        path = env[f"{env_name}_FILE"]
        return _read_secret_file(path, f"{env_name}_FILE"), f"{env_name}_FILE ({path})"
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        for cred in cred_names:
            path = str(Path(cred_dir) / cred)
            if Path(path).is_file():
                return _read_secret_file(path, cred), f"the systemd credential {path}"
    return None, None


def _env_prefix(slug: str, prefixed: bool) -> str:
    """`BRIDGE_` for the env-configured profile, `BRIDGE_<SLUG>_` for a TOML profile."""
    return f"BRIDGE_{slug.upper().replace('-', '_')}_" if prefixed else "BRIDGE_"


def _int(value: Any, what: str, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a whole number, got {value!r}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{what} must be {bound}, got {number}")
    return number


OUTSIDE_HOURS_MODES = ("assistant", "reply", "silent")


def _hours(get: Callable[[str], Any], slug: str) -> tuple[OpeningHours | None, str, str | None]:
    """Business hours, the outside-hours mode and its reply; ConfigError when inconsistent."""
    spec, zone, holidays = get("hours"), get("timezone"), get("holidays")
    mode = str(get("outside_hours") or "assistant").strip().lower()
    reply = get("outside_hours_reply")
    if mode not in OUTSIDE_HOURS_MODES:
        raise ConfigError(
            f"profile {slug!r}: outside_hours must be one of {', '.join(OUTSIDE_HOURS_MODES)}"
        )
    if isinstance(holidays, str):
        holidays = [h for h in holidays.split(",") if h.strip()]
    if not spec:
        return None, mode, reply
    hours = OpeningHours.parse(str(spec), str(zone or "UTC"), [str(h) for h in holidays or ()])
    if mode == "reply" and not reply:
        raise ConfigError(f"profile {slug!r}: outside_hours = reply needs outside_hours_reply")
    return hours, mode, str(reply) if reply else None


def _flag(value: Any) -> bool:
    """A boolean from TOML (true/false) or the environment ("1", "true", "yes", "on")."""
    if isinstance(value, bool):
        return value
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def _seconds(value: Any, what: str) -> float:
    """A duration that may be 0 (off)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number of seconds, got {value!r}") from None
    if not 0 <= number <= 3600:
        raise ConfigError(f"{what} must be between 0 and 3600 seconds, got {number:g}")
    return number


def _float(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{what} must be positive, got {number}")
    return number


def _stall_log_ms(value: Any) -> float:
    """0 is allowed here (no stall log); unset is 100 ms."""
    if value is None or value == "":
        return 100.0
    if value in (0, "0"):
        return 0.0
    return _float(value, "stall_log_ms")


def _keywords(value: Any, what: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A keyword list: a TOML list of strings, or one string of comma-separated keywords (the
    environment); an empty one switches them off. None: the default."""
    if value is None:
        return default
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(f"{what} must be a list of words or a comma-separated string")
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{what} must be a list of words or a comma-separated string")
    return tuple(item.strip() for item in items if item.strip())


def _url(value: Any, what: str) -> str | None:
    if not value:
        return None
    text = str(value)
    if not re.match(r"https?://[^/\s]+", text):
        raise ConfigError(f"{what} must be an http:// or https:// URL, got {text!r}")
    return text


def _bool(value: Any, what: str) -> bool:
    """A TOML boolean, or `1/true/yes/on` and `0/false/no/off` from the environment."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{what} must be true or false, got {value!r}")


def _megabytes(value: Any, what: str) -> int:
    """A size given in MB (fractions allowed: `0.5`), as bytes."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number of MB, got {value!r}") from None
    if not 0 < number <= 4096:
        raise ConfigError(f"{what} must be between 0 and 4096 MB, got {number:g}")
    return int(number * 1024 * 1024)


def _transcribe(
    env: Mapping[str, str], table: Mapping[str, Any], slug: str, prefixed: bool
) -> TranscribeConfig:
    """`[profiles.X.transcribe]` or BRIDGE_TRANSCRIBE_*."""

    def get(name: str) -> Any:
        if name in table:
            return table[name]
        return None if prefixed else env.get(f"BRIDGE_TRANSCRIBE_{name.upper()}")

    prefix = _env_prefix(slug, prefixed)
    creds = (f"{slug}.transcribe_api_key",) if prefixed else ("transcribe_api_key",)
    api_key = _secret("api_key", table, env, f"{prefix}TRANSCRIBE_API_KEY", creds)
    url, model, language, timeout = get("url"), get("model"), get("language"), get("timeout")
    return TranscribeConfig(
        url=str(url).strip() if url else None,
        model=str(model) if model else "whisper-1",
        api_key=api_key,
        language=str(language) if language else None,
        timeout=_float(timeout, "transcribe timeout") if timeout is not None else 60.0,
    )


def _media(
    env: Mapping[str, str],
    table: Mapping[str, Any],
    transcribe: TranscribeConfig,
    prefixed: bool,
) -> MediaConfig:
    """`[profiles.X.media]` or BRIDGE_MEDIA_*: fetching, per-type limits, retention."""

    def get(name: str) -> Any:
        if name in table:
            return table[name]
        return None if prefixed else env.get(f"BRIDGE_MEDIA_{name.upper()}")

    limits = dict(DEFAULT_MEDIA_MAX_BYTES)
    for kind in MEDIA_TYPES:
        given = get(f"{kind}_max_mb")
        if given is not None:
            limits[kind] = _megabytes(given, f"media {kind}_max_mb")
    fetch, retention, wait = get("fetch"), get("retention_days"), get("wait_seconds")
    return MediaConfig(
        fetch=_bool(fetch, "media fetch") if fetch is not None else True,
        max_bytes=tuple(limits.items()),
        retention_days=_int(retention, "media retention_days", 1) if retention else 90,
        wait_seconds=_seconds(wait, "media wait_seconds") if wait is not None else 30.0,
        transcribe=transcribe,
    )


def _assistant(
    env: Mapping[str, str], table: Mapping[str, Any], slug: str, prefixed: bool
) -> AssistantConfig:
    """Build the assistant settings from `[profiles.X.assistant]` or BRIDGE_ASSISTANT*."""

    def get(name: str) -> Any:
        if name in table:
            return table[name]
        return None if prefixed else env.get(f"BRIDGE_ASSISTANT_{name.upper()}")

    kind = str(table.get("kind") or (None if prefixed else env.get("BRIDGE_ASSISTANT")) or "echo")
    if kind not in ASSISTANT_KINDS:
        raise ConfigError(
            f"profile {slug!r}: unknown assistant {kind!r} (choose {', '.join(ASSISTANT_KINDS)})"
        )
    url = get("url")
    if kind in ("openai", "http") and not url:
        raise ConfigError(
            f"profile {slug!r}: assistant {kind!r} needs a URL (BRIDGE_ASSISTANT_URL)"
        )
    prefix = _env_prefix(slug, prefixed)
    creds = (f"{slug}.assistant_api_key",) if prefixed else ("assistant_api_key",)
    api_key = _secret("api_key", table, env, f"{prefix}ASSISTANT_API_KEY", creds)
    timeout = get("timeout")
    history = get("history_limit")
    fallback = get("fallback_reply")
    vision, send_media = get("vision"), get("send_media")
    max_items, max_mb = get("media_max_items"), get("media_max_mb")
    return AssistantConfig(
        kind=kind,
        url=str(url) if url else None,
        model=str(get("model")) if get("model") else None,
        api_key=api_key,
        system_prompt=str(get("system_prompt")) if get("system_prompt") else None,
        timeout=_float(timeout, "assistant timeout") if timeout is not None else 30.0,
        fallback_reply=str(fallback) if fallback else None,
        history_limit=_int(history, "assistant history_limit", 1, 250) if history else 50,
        vision=_bool(vision, "assistant vision") if vision is not None else False,
        send_media=_bool(send_media, "assistant send_media") if send_media is not None else False,
        media_max_items=(
            _int(max_items, "assistant media_max_items", 0, 20) if max_items is not None else 3
        ),
        media_max_bytes=(
            _megabytes(max_mb, "assistant media_max_mb") if max_mb is not None else 5 * 1024 * 1024
        ),
    )


def _profile(
    env: Mapping[str, str], slug: str, table: Mapping[str, Any], var_dir: Path, prefixed: bool
) -> ProfileConfig:
    validate_slug(slug)
    if not isinstance(table, Mapping):
        raise ConfigError(f"profile {slug!r} must be a TOML table")

    def get(name: str) -> Any:
        if name in table:
            return table[name]
        return None if prefixed else env.get(f"BRIDGE_{name.upper()}")

    prefix = _env_prefix(slug, prefixed)

    def secret_and_source(name: str) -> tuple[str | None, str | None]:
        creds = (f"{slug}.{name}",) if prefixed else (name,)
        return _secret_and_source(name, table, env, f"{prefix}{name.upper()}", creds)

    def secret(name: str) -> str | None:
        return secret_and_source(name)[0]

    app_secret, app_secret_source = secret_and_source("app_secret")

    port = table.get("port")  # the env-configured profile uses BRIDGE_PORT for the server
    retention = get("retention_days")
    max_messages = get("max_messages")
    reconcile = get("send_reconcile_seconds")
    debounce = get("reply_debounce_seconds")
    debounce_max = get("reply_debounce_max_seconds")
    receipts = get("read_receipts")
    upload_media = get("upload_media")
    reactions = get("reply_to_reactions")
    hours, outside, outside_reply = _hours(get, slug)
    key_file = get("key_file")
    handoff_minutes = get("handoff_minutes")
    assistant_table = table.get("assistant", {})
    if not isinstance(assistant_table, Mapping):
        raise ConfigError(f"profile {slug!r}: [assistant] must be a table")
    media_table, transcribe_table = table.get("media", {}), table.get("transcribe", {})
    for name, sub in (("media", media_table), ("transcribe", transcribe_table)):
        if not isinstance(sub, Mapping):
            raise ConfigError(f"profile {slug!r}: [{name}] must be a table")
    return ProfileConfig(
        slug=slug,
        state_dir=var_dir / "profiles" / slug,
        verify_token=secret("verify_token"),
        app_secret=app_secret,
        app_secret_source=app_secret_source,
        access_token=secret("access_token"),
        phone_number_id=str(get("phone_number_id")) if get("phone_number_id") else None,
        business_account_id=(
            str(get("business_account_id")) if get("business_account_id") else None
        ),
        graph_url=str(get("graph_url") or DEFAULT_GRAPH_URL).rstrip("/"),
        graph_version=str(get("graph_version") or DEFAULT_GRAPH_VERSION),
        assistant=_assistant(env, assistant_table, slug, prefixed),
        port=_int(port, f"profile {slug!r} port", 1, 65535) if port else None,
        retention_days=_int(retention, "retention_days", 1) if retention else 365,
        max_messages=_int(max_messages, "max_messages", 1) if max_messages else 250,
        send_reconcile_seconds=(
            _float(reconcile, "send_reconcile_seconds") if reconcile is not None else None
        ),
        reply_debounce_seconds=(
            _seconds(debounce, "reply_debounce_seconds") if debounce is not None else 2.0
        ),
        reply_debounce_max_seconds=(
            _seconds(debounce_max, "reply_debounce_max_seconds")
            if debounce_max is not None
            else 8.0
        ),
        media=_media(
            env, media_table, _transcribe(env, transcribe_table, slug, prefixed), prefixed
        ),
        read_receipts=_bool(receipts, "read_receipts") if receipts is not None else True,
        upload_media=_bool(upload_media, "upload_media") if upload_media is not None else False,
        reply_to_reactions=_flag(reactions),
        hours=hours,
        outside_hours=outside,
        outside_hours_reply=outside_reply,
        handoff_minutes=(
            _int(handoff_minutes, "handoff_minutes", 0, 525_600)
            if handoff_minutes not in (None, "")
            else 60
        ),
        handoff_keywords=_keywords(get("handoff_keywords"), "handoff_keywords", ()),
        handoff_reply=str(get("handoff_reply")) if get("handoff_reply") else None,
        opt_out_keywords=_keywords(get("opt_out_keywords"), "opt_out_keywords", DEFAULT_OPT_OUT),
        opt_out_reply=str(get("opt_out_reply")) if get("opt_out_reply") else None,
        opt_in_keywords=_keywords(get("opt_in_keywords"), "opt_in_keywords", DEFAULT_OPT_IN),
        opt_in_reply=str(get("opt_in_reply")) if get("opt_in_reply") else None,
        notify_url=_url(get("notify_url"), f"profile {slug!r}: notify_url"),
        notify_secret=secret("notify_secret"),
        key=secret("key"),
        key_file=Path(str(key_file)) if key_file else None,
        explicit=frozenset(
            name
            for name, value in (("retention_days", retention), ("max_messages", max_messages))
            if value
        ),
    )


# An API token opens every conversation and sends messages to customers: too short a one
# can be guessed.
MIN_API_TOKEN = 16


def _api_token(data: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
    token, source = _secret_and_source("api_token", data, env, "BRIDGE_API_TOKEN", ("api_token",))
    if token is not None and len(token) < MIN_API_TOKEN:
        raise ConfigError(
            f"the API token from {source} is too short ({len(token)} characters; at least "
            f"{MIN_API_TOKEN}): make one with `openssl rand -hex 24`"
        )
    return token


STORES = ("file", "postgres")


def _store(data: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, str | None]:
    """The store kind and, for postgres, its URL (a secret: it may hold a password, so it
    may come from `database_url_file`, BRIDGE_DATABASE_URL_FILE or a systemd credential)."""
    kind = str(data.get("store") or env.get("BRIDGE_STORE") or "file").strip().lower()
    if kind not in STORES:
        raise ConfigError(f"unknown store {kind!r}: use one of {', '.join(STORES)}")
    url = _secret("database_url", data, env, "BRIDGE_DATABASE_URL", ("database_url",))
    if kind == "file":
        return kind, None
    if not url:
        raise ConfigError(
            "the postgres store needs a database: set BRIDGE_DATABASE_URL (or database_url / "
            "database_url_file in the TOML file), e.g. postgresql://bridge@db.internal/bridge"
        )
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("the database URL must start with postgresql://")
    return kind, url


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_settings(
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    selected: tuple[str, ...] = (),
    host: str | None = None,
    port: int | None = None,
    var_dir: Path | None = None,
) -> Settings:
    """Resolve the settings: explicit arguments beat the TOML file, which beats the environment."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if config_path is None and env.get("BRIDGE_CONFIG"):
        config_path = Path(env["BRIDGE_CONFIG"])
    if config_path is not None:
        data = load_toml(config_path)
    resolved_var = var_dir or Path(str(data.get("var_dir") or env.get("BRIDGE_VAR_DIR") or "var"))
    if data.get("profiles"):
        tables = data["profiles"]
        if not isinstance(tables, Mapping):
            raise ConfigError(f"{config_path}: [profiles] must be a table of profiles")
        profiles = [
            _profile(env, slug, tbl, resolved_var, prefixed=True) for slug, tbl in tables.items()
        ]
    else:
        slug = str(env.get("BRIDGE_PROFILE") or "default")
        profiles = [_profile(env, slug, {}, resolved_var, prefixed=False)]
    if selected:
        by_slug = {p.slug: p for p in profiles}
        for slug in selected:
            validate_slug(slug)
            if slug not in by_slug:
                if config_path is None and len(profiles) == 1:
                    # One env-configured profile: `--profile X` names it.
                    profiles = [
                        replace(profiles[0], slug=slug, state_dir=resolved_var / "profiles" / slug)
                    ]
                    by_slug = {slug: profiles[0]}
                    continue
                raise ConfigError(f"unknown profile {slug!r} (configured: {', '.join(by_slug)})")
        profiles = [by_slug[s] for s in selected]
    ids = [p.phone_number_id for p in profiles if p.phone_number_id]
    if len(ids) != len(set(ids)):
        raise ConfigError("two profiles share one phone_number_id; each number needs its own")
    port_value = (
        port
        or data.get("port")
        or env.get("BRIDGE_PORT")
        or (profiles[0].port if len(profiles) == 1 and profiles[0].port else 8080)
    )
    interval = data.get("snapshot_interval") or env.get("BRIDGE_SNAPSHOT_INTERVAL")
    health = data.get("health_interval") or env.get("BRIDGE_HEALTH_INTERVAL")
    header_timeout = data.get("header_timeout") or env.get("BRIDGE_HEADER_TIMEOUT")
    body_timeout = data.get("body_timeout") or env.get("BRIDGE_BODY_TIMEOUT")
    max_connections = data.get("max_connections") or env.get("BRIDGE_MAX_CONNECTIONS")
    store, database_url = _store(data, env)
    return Settings(
        profiles=tuple(profiles),
        var_dir=resolved_var,
        host=host or str(data.get("host") or env.get("BRIDGE_HOST") or "127.0.0.1"),
        port=_int(port_value, "port", 0, 65535),
        max_body_bytes=_int(
            data.get("max_body_bytes") or env.get("BRIDGE_MAX_BODY_BYTES") or 1024 * 1024,
            "max_body_bytes",
            1024,
        ),
        header_timeout=_float(header_timeout, "header_timeout") if header_timeout else 10.0,
        body_timeout=_float(body_timeout, "body_timeout") if body_timeout else 30.0,
        max_connections=_int(max_connections, "max_connections", 1) if max_connections else 1024,
        snapshot_interval=_float(interval, "snapshot_interval") if interval else 300.0,
        health_interval=_float(health, "health_interval") if health else 120.0,
        log_format=str(data.get("log_format") or env.get("BRIDGE_LOG_FORMAT") or "auto"),
        log_level=str(data.get("log_level") or env.get("BRIDGE_LOG_LEVEL") or "info").lower(),
        event_loop=str(data.get("event_loop") or env.get("BRIDGE_EVENT_LOOP") or "auto").lower(),
        stall_log_ms=_stall_log_ms(data.get("stall_log_ms", env.get("BRIDGE_STALL_LOG_MS"))),
        metrics_token=_secret(
            "metrics_token", data, env, "BRIDGE_METRICS_TOKEN", ("metrics_token",)
        ),
        api_token=_api_token(data, env),
        accept_data_loss=env.get("BRIDGE_ACCEPT_DATA_LOSS", "").lower() in ("1", "true", "yes"),
        store=store,
        database_url=database_url,
        notify_socket=env.get("NOTIFY_SOCKET") or None,
        listen_fds=env.get("LISTEN_FDS") or None,
        listen_pid=env.get("LISTEN_PID") or None,
        listen_fdnames=env.get("LISTEN_FDNAMES") or None,
        watchdog_usec=env.get("WATCHDOG_USEC") or None,
        watchdog_pid=env.get("WATCHDOG_PID") or None,
    )
