"""`bridge doctor`: what an operator runs when something is off, one line per check.

The most common complaint with the Cloud API is a deployment that receives nothing, and
its usual causes are outside the bridge: the app is not subscribed to the WhatsApp Business
Account (Meta then sends it no webhooks at all), the access token expired, the phone number
id is wrong. Add the causes inside (a secret missing, a store the key does not open, a full
disk, a bridge that is not running) and there is one list of things to look at, in the
order they depend on each other. Each check reads only; with `--fix` the one repair that is
safe to automate is made: subscribing the app to the WABA (`POST /{waba_id}/subscribed_apps`,
what WhatsApp Manager does when you connect an app). `--deep` also asks the assistant for a
real completion (which may cost a request to a paid API).

Results are `ok` (✓), `warn` (!: works, but look at it), `fail` (✗: this is why something is
broken; the line says what to do) and `skip` (-: not configured, nothing to check). Secrets
are never printed, nor is anything from the store but counts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bridge.assistants import Turn, create_assistant
from bridge.assistants.base import reply_parts
from bridge.config import ProfileConfig, Settings
from bridge.errors import BridgeError
from bridge.ops.diskspace import disk_space, low_disk_advice
from bridge.persistence import layout
from bridge.persistence.snapshot import SnapshotInfo

TIMEOUT = 10.0
MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}
# Graph API error codes, from Meta's "Error codes" reference: 190 the access token is
# expired or invalid; 100 with subcode 33 an object id that does not exist or that the token
# may not read; 10 / 200 missing permission.
TOKEN_INVALID = 190
NO_SUCH_OBJECT = 100
NO_PERMISSION = (10, 200)


@dataclass(frozen=True, slots=True)
class Result:
    """One check of one profile (or of the configuration, `profile` None)."""

    check: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str | None = None
    profile: str | None = None

    def line(self) -> str:
        where = f"[{self.profile}] " if self.profile else ""
        fix = f" → {self.fix}" if self.fix and self.status in ("fail", "warn") else ""
        return f"{MARKS[self.status]} {where}{self.check}: {self.detail}{fix}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def config_result(settings: Settings, source: Path | None) -> Result:
    names = ", ".join(p.slug for p in settings.profiles)
    where = f" ({source})" if source else ""
    return Result("configuration", "ok", f"parses{where}; profile(s): {names}")


async def diagnose(
    profiles: Sequence[ProfileConfig], *, fix: bool = False, deep: bool = False
) -> list[Result]:
    """Every check of every profile, in order; profiles are checked one after the other so
    their lines stay together."""
    results: list[Result] = []
    for profile in profiles:
        results.extend(await diagnose_profile(profile, fix=fix, deep=deep))
    return results


async def diagnose_profile(profile: ProfileConfig, *, fix: bool, deep: bool) -> list[Result]:
    """The checks of one profile, from the inside out: what the bridge needs locally, then
    what Meta and the backends say."""
    results = [
        secrets(profile),
        permissions(profile.state_dir),
        store(profile),
        disk(profile.state_dir),
        running(profile),
    ]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
        graph = Graph(session, profile)
        results.append(await graph.number())
        results.append(await graph.subscription(fix))
    results.append(await assistant(profile, deep))
    results.append(await transcription(profile))
    return [Result(r.check, r.status, r.detail, r.fix, profile.slug) for r in results]


# -- local checks -------------------------------------------------------------------------------


def secrets(profile: ProfileConfig) -> Result:
    """The webhook's secrets must be there; without an access token replies are only logged."""
    missing = [name for name in ("verify_token", "app_secret") if not getattr(profile, name)]
    if missing:
        env = ", ".join(f"BRIDGE_{m.upper()}" for m in missing)
        return Result(
            "secrets",
            "fail",
            f"missing {', '.join(missing)}: the webhook cannot verify or accept deliveries",
            f"set {env} (or _FILE, or the systemd credential of that name)",
        )
    if not profile.access_token:
        return Result(
            "secrets",
            "warn",
            "verify_token and app_secret set; no access_token: replies are logged, not sent",
            "set BRIDGE_ACCESS_TOKEN (or the access_token credential) to send replies",
        )
    return Result("secrets", "ok", "verify_token, app_secret and access_token set (not shown)")


def permissions(state_dir: Path) -> Result:
    """The state directory and everything in it private to the service's user (directories
    0700, files 0600, as the bridge creates them): no group or other bit, or another user
    could read the key or copy the store."""
    if not state_dir.is_dir():
        return Result("permissions", "skip", f"{state_dir} does not exist yet (nothing stored)")
    loose: list[str] = []
    for root, dirs, files in os.walk(state_dir):
        for name in [*dirs, *files]:
            path = os.path.join(root, name)
            try:
                mode = os.lstat(path).st_mode & 0o777
            except FileNotFoundError:
                continue
            if mode & 0o077:
                loose.append(f"{path} ({mode:o})")
    top = state_dir.stat().st_mode & 0o777
    if top & 0o077:
        loose.insert(0, f"{state_dir} ({top:o})")
    if loose:
        shown = ", ".join(loose[:3]) + (f" and {len(loose) - 3} more" if len(loose) > 3 else "")
        return Result(
            "permissions",
            "fail",
            f"readable by others: {shown}",
            f"chmod -R go-rwx {state_dir} (as the service's user; the bridge creates 0700/0600)",
        )
    return Result("permissions", "ok", f"{state_dir}: directories 0700, files 0600")


def store(profile: ProfileConfig) -> Result:
    """The key opens the store: the same reading as `sessions-admin verify`."""
    from bridge.store.durable import load_state

    if not profile.state_dir.is_dir():
        return Result("store", "skip", "no store yet")
    info = SnapshotInfo()
    try:
        state = load_state(profile, info=info)
    except BridgeError as exc:
        return Result(
            "store",
            "fail",
            str(exc),
            "check that the key is this profile's (BRIDGE_KEY, the key file or credential); "
            "`sessions-admin verify` says the same; `sessions-admin restore` a backup if a "
            "file is damaged",
        )
    fmt = f"snapshot {info.describe()}" if info.version else "no snapshot yet"
    return Result(
        "store",
        "ok",
        f"the key opens it: {len(state.conversations)} conversations, "
        f"{state.message_count()} messages; {fmt}",
    )


def disk(state_dir: Path) -> Result:
    try:
        space = disk_space(state_dir)
    except OSError as exc:
        return Result("disk", "fail", f"cannot check {state_dir}: {exc.strerror or exc}")
    if space.low:
        return Result("disk", "warn", low_disk_advice(space), "free space on that file system")
    return Result("disk", "ok", space.describe())


def running(profile: ProfileConfig) -> Result:
    status, pid = layout.run_status(profile.state_dir)
    unit = f"whatsapp-bridge@{profile.slug} (or whatsapp-bridge, serving a TOML file)"
    if status == "running":
        return Result("bridge", "ok", f"running (pid {pid})")
    if status == "crashed":
        return Result(
            "bridge",
            "warn",
            f"not running; its last run ended without a clean stop (pid {pid})",
            f"see `sessions-admin profiles events {profile.slug}` and the journal of "
            f"{unit}, then start it",
        )
    return Result("bridge", "warn", "not running: nothing receives webhooks", f"start {unit}")


# -- Graph API ----------------------------------------------------------------------------------


class Graph:
    """The few Graph API reads (and the one write) doctor makes, with the profile's token."""

    def __init__(self, session: aiohttp.ClientSession, profile: ProfileConfig) -> None:
        self._session = session
        self._profile = profile
        self._base = f"{profile.graph_url.rstrip('/')}/{profile.graph_version}"
        self.token_refused = False  # said once, by the number's check

    async def _call(self, method: str, path: str, **params: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self._profile.access_token}"}
        async with self._session.request(
            method, f"{self._base}/{path}", params=params, headers=headers
        ) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = None
            return resp.status, data

    async def call(self, method: str, path: str, **params: str) -> tuple[int, Any] | Result:
        """(status, JSON), or a failing Result when the API cannot be reached at all."""
        try:
            return await self._call(method, path, **params)
        except TimeoutError:
            return Result(
                "graph", "fail", f"{self._base} timed out after {TIMEOUT:g} s", _NETWORK_FIX
            )
        except aiohttp.ClientError as exc:
            return Result("graph", "fail", f"cannot reach {self._base}: {exc}", _NETWORK_FIX)

    def _failure(self, check: str, what: str, status: int, data: Any) -> Result:
        code, subcode, message = _graph_error(status, data)
        said = f"{code}: {message}" if code is not None else f"HTTP {status}"
        if code == TOKEN_INVALID or status == 401:
            self.token_refused = True
            return Result(
                check,
                "fail",
                f"the access token is expired or invalid ({said})",
                "create a new one (a system user's token does not expire: Business Settings → "
                "System users → Generate token, with whatsapp_business_messaging and "
                "whatsapp_business_management), put it where BRIDGE_ACCESS_TOKEN or the "
                "access_token credential comes from, restart the bridge",
            )
        if code == NO_SUCH_OBJECT and subcode == 33 or status == 404:
            return Result(
                check,
                "fail",
                f"{what} not found, or not readable with this token ({said})",
                "check the id in WhatsApp Manager (API setup) and that the token's app and "
                "system user have access to that business account",
            )
        if code in NO_PERMISSION:
            return Result(
                check,
                "fail",
                f"the token lacks a permission for {what} ({said})",
                "give the token whatsapp_business_management and whatsapp_business_messaging",
            )
        return Result(check, "fail", f"the Graph API refused: {said}", None)

    async def number(self) -> Result:
        """The token is valid and the phone number readable (no message is sent)."""
        profile = self._profile
        if not profile.access_token or not profile.phone_number_id:
            missing = "access_token" if not profile.access_token else "phone_number_id"
            return Result("graph", "skip", f"no {missing}: replies are not sent")
        answer = await self.call(
            "GET",
            profile.phone_number_id,
            fields="display_phone_number,verified_name,quality_rating",
        )
        if isinstance(answer, Result):
            return answer
        status, data = answer
        if status >= 300 or not isinstance(data, dict):
            return self._failure(
                "graph", f"phone number id {profile.phone_number_id}", status, data
            )
        number = data.get("display_phone_number", "?")
        name = data.get("verified_name", "?")
        quality = str(data.get("quality_rating", "UNKNOWN"))
        detail = f"token valid, number {number} ({name}), quality {quality}"
        if quality in ("RED", "YELLOW"):
            return Result(
                "graph",
                "warn",
                detail,
                "users have been blocking or reporting this number's messages; Meta may "
                "limit it (WhatsApp Manager → Insights)",
            )
        return Result("graph", "ok", detail)

    async def subscription(self, fix: bool) -> Result:
        """The app is subscribed to the WABA's webhooks: without it Meta sends nothing."""
        profile = self._profile
        waba = profile.business_account_id
        if not waba:
            return Result(
                "subscription",
                "skip",
                "business_account_id not configured: the app's webhook subscription is not "
                "checked (set BRIDGE_BUSINESS_ACCOUNT_ID to check it)",
            )
        if not profile.access_token:
            return Result("subscription", "skip", "no access_token to ask with")
        if self.token_refused:
            return Result("subscription", "skip", "not checked: the access token was refused")
        app = await self.call("GET", "app")
        app_id = app_name = None
        if not isinstance(app, Result) and app[0] < 300 and isinstance(app[1], dict):
            app_id, app_name = app[1].get("id"), app[1].get("name")
        answer = await self.call("GET", f"{waba}/subscribed_apps")
        if isinstance(answer, Result):
            return Result("subscription", answer.status, answer.detail, answer.fix)
        status, data = answer
        if status >= 300 or not isinstance(data, dict):
            return self._failure("subscription", f"business account {waba}", status, data)
        subscribed = [
            entry.get("whatsapp_business_api_data", {})
            for entry in data.get("data", [])
            if isinstance(entry, dict)
        ]
        ours = [a for a in subscribed if app_id is None or a.get("id") == app_id]
        if ours:
            name = ours[0].get("name") or app_name or ours[0].get("id")
            return Result("subscription", "ok", f"app {name!r} is subscribed to WABA {waba}")
        what = f"app {app_name!r}" if app_name else "this token's app"
        detail = f"{what} is not subscribed to WABA {waba}: Meta sends it no webhooks"
        if not fix:
            return Result(
                "subscription",
                "fail",
                detail,
                "run `bridge doctor --fix` (subscribes it: POST /{waba}/subscribed_apps), or "
                "connect the app in WhatsApp Manager",
            )
        answer = await self.call("POST", f"{waba}/subscribed_apps")
        if isinstance(answer, Result):
            return Result("subscription", "fail", f"{detail}; --fix: {answer.detail}")
        status, data = answer
        if status < 300 and isinstance(data, dict) and data.get("success") is True:
            return Result("subscription", "ok", f"{what} subscribed to WABA {waba} now (--fix)")
        failure = self._failure("subscription", f"business account {waba}", status, data)
        return Result("subscription", "fail", f"--fix failed: {failure.detail}", failure.fix)


_NETWORK_FIX = "check the network, DNS and any proxy between this machine and the Graph API"


def _graph_error(status: int, data: Any) -> tuple[int | None, int | None, str]:
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, None, f"HTTP {status}"
    code, subcode = error.get("code"), error.get("error_subcode")
    return (
        code if isinstance(code, int) else None,
        subcode if isinstance(subcode, int) else None,
        str(error.get("message") or "error")[:300],
    )


# -- backends -----------------------------------------------------------------------------------


async def _reachable(url: str) -> str | None:
    """None when `url` answers at all (any status below 500), else why not."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session,
            session.get(url) as resp,
        ):
            return None if resp.status < 500 else f"HTTP {resp.status}"
    except TimeoutError:
        return f"timed out after {TIMEOUT:g} s"
    except aiohttp.ClientError as exc:
        return f"unreachable: {exc}"


async def assistant(profile: ProfileConfig, deep: bool) -> Result:
    """The backend answers (any HTTP answer); with `deep`, it returns a completion."""
    config = profile.assistant
    if config.kind == "echo":
        return Result("assistant", "ok", "embedded echo backend")
    try:
        backend = create_assistant(config)
    except BridgeError as exc:
        return Result("assistant", "fail", str(exc), "fix the assistant's URL")
    try:
        url = backend.health_url()
        problem = await _reachable(url) if url else None
        if problem is not None:
            return Result(
                "assistant",
                "fail",
                f"{config.kind} backend at {url}: {problem}",
                "check BRIDGE_ASSISTANT_URL and that the server runs",
            )
        if not deep:
            return Result("assistant", "ok", f"{config.kind} backend at {url} answers")
        started = time.monotonic()
        try:
            answer = await asyncio.wait_for(
                backend.reply("doctor", [Turn("user", "Reply with the single word: OK")]),
                config.timeout,
            )
            text, _media = reply_parts(answer)
        except TimeoutError:
            return Result(
                "assistant",
                "fail",
                f"no completion within {config.timeout:g} s",
                "a slow model: raise the assistant timeout, or check the server's load",
            )
        except BridgeError as exc:
            return Result(
                "assistant",
                "fail",
                f"completion failed: {exc}",
                "check the model name, the API key and the server's log",
            )
        took = time.monotonic() - started
        if not text:
            return Result("assistant", "warn", f"an empty completion in {took:.1f} s", None)
        return Result("assistant", "ok", f"a completion of {len(text)} characters in {took:.1f} s")
    finally:
        await backend.close()


def transcription_url(profile: ProfileConfig) -> str | None:
    """The transcription backend of voice notes, when the profile configures one. The media
    work (issue 12) adds that setting, `profile.transcribe.url`; on a branch without it no
    profile has one and the check says so."""
    url = getattr(getattr(profile, "transcribe", None), "url", None)
    return url if isinstance(url, str) and url else None


async def transcription(profile: ProfileConfig) -> Result:
    url = transcription_url(profile)
    if url is None:
        return Result("transcription", "skip", "not configured")
    problem = await _reachable(url)
    if problem is not None:
        return Result(
            "transcription",
            "fail",
            f"backend at {url}: {problem}",
            "check the transcription URL and that the server runs",
        )
    return Result("transcription", "ok", f"backend at {url} answers")


def emit(results: Sequence[Result], as_json: bool) -> None:
    """One line per result, or one JSON document: {"ok", "checks": [...]}."""
    if as_json:
        ok = not any(r.status == "fail" for r in results)
        print(orjson.dumps({"ok": ok, "checks": [r.as_json() for r in results]}).decode())
        return
    for result in results:
        print(result.line())
