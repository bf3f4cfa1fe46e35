"""`bridge doctor` as an operator runs it (a subprocess) against a fake Graph API and a fake
LLM: every check one line, the failures Meta's API gives, --fix, --deep, --json, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pytest_aiohttp import AiohttpServer

from bridge.config import ProfileConfig
from bridge.ops import doctor as doctor_module
from tests.admin.support import admin
from tests.conftest import APP_SECRET, VERIFY_TOKEN
from tests.fakes.graph import APP_ID, TOKEN, FakeGraph
from tests.fakes.llm import FakeLLM
from tests.fakes.threaded import serve_in_thread
from tests.test_cli import BRIDGE, clean_env, free_port, start_serve

PHONE_NUMBER_ID = "106540352242922"
WABA = "102290129340398"
CHECKS = [
    "configuration",
    "secrets",
    "permissions",
    "store",
    "disk",
    "bridge",
    "graph",
    "subscription",
    "assistant",
    "transcription",
]


@dataclass
class Doctor:
    graph: FakeGraph
    llm: FakeLLM
    env: dict[str, str]
    var: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*BRIDGE, "doctor", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def lines(self, *args: str) -> tuple[int, dict[str, str]]:
        """Exit code and each check's line, by check name."""
        result = self.run(*args)
        assert result.stderr == "", result.stderr
        by_check = {}
        for line in result.stdout.splitlines():
            check = line.split(": ", 1)[0].split()[-1]
            by_check[check] = line
        assert list(by_check) == CHECKS, result.stdout
        return result.returncode, by_check

    def json(self, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
        result = self.run("--json", *args)
        data = json.loads(result.stdout)
        assert data["ok"] == (result.returncode == 0)
        return result.returncode, {c["check"]: c for c in data["checks"]}


@pytest.fixture
def doctor(tmp_path: Path) -> Iterator[Doctor]:
    graph = FakeGraph(subscriptions={WABA: [APP_ID]})
    llm = FakeLLM()
    with serve_in_thread(graph.app()) as graph_url, serve_in_thread(llm.app()) as llm_url:
        var = tmp_path / "var"
        env = clean_env(
            BRIDGE_VAR_DIR=str(var),
            BRIDGE_PORT=str(free_port()),
            BRIDGE_APP_SECRET=APP_SECRET,
            BRIDGE_VERIFY_TOKEN=VERIFY_TOKEN,
            BRIDGE_ACCESS_TOKEN=TOKEN,
            BRIDGE_PHONE_NUMBER_ID=PHONE_NUMBER_ID,
            BRIDGE_BUSINESS_ACCOUNT_ID=WABA,
            BRIDGE_GRAPH_URL=graph_url,
            BRIDGE_ASSISTANT="openai",
            BRIDGE_ASSISTANT_URL=f"{llm_url}/v1",
        )
        assert admin(["profiles", "create", "default"], env).returncode == 0
        yield Doctor(graph, llm, env, var)


def test_a_healthy_profile_passes_every_check_and_shows_no_secret(doctor: Doctor) -> None:
    code, lines = doctor.lines()

    assert code == 0
    assert [line[0] for line in lines.values()] == [
        "✓",
        "✓",
        "✓",
        "✓",
        "✓",
        "!",
        "✓",
        "✓",
        "✓",
        "-",
    ]
    assert "number +34 600 00 00 00 (Tienda de Prueba), quality GREEN" in lines["graph"]
    assert f"'Bridge test app' is subscribed to WABA {WABA}" in lines["subscription"]
    assert "not running" in lines["bridge"]  # a warning: exit 0 all the same
    everything = "\n".join(lines.values())
    assert TOKEN not in everything and APP_SECRET not in everything
    # The number was read with the fields an operator needs, with the bearer token.
    read = [r for r in doctor.graph.received if r.path.endswith(PHONE_NUMBER_ID)]
    assert read[0].query == {"fields": "display_phone_number,verified_name,quality_rating"}
    assert read[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert doctor.llm.requests == []  # no completion without --deep


def test_an_expired_token_is_a_failure_that_says_what_to_do(doctor: Doctor) -> None:
    doctor.graph.token = "a-newer-token"  # ours no longer works: Meta answers 190

    code, lines = doctor.lines()

    assert code == 1
    assert lines["graph"].startswith("✗ [default] graph: the access token is expired or invalid")
    assert "190: Error validating access token" in lines["graph"]
    assert "→ create a new one" in lines["graph"]
    assert lines["subscription"].endswith("not checked: the access token was refused")


def test_an_unknown_phone_number_id_is_a_failure(doctor: Doctor) -> None:
    doctor.graph.numbers = {"999999999999999": {"display_phone_number": "+1 555 0100"}}

    code, lines = doctor.lines()

    assert code == 1
    assert f"phone number id {PHONE_NUMBER_ID} not found" in lines["graph"]
    assert "100: Unsupported get request" in lines["graph"]
    assert "→ check the id in WhatsApp Manager" in lines["graph"]


def test_an_unsubscribed_app_fails_and_fix_subscribes_it(doctor: Doctor) -> None:
    doctor.graph.subscriptions[WABA] = ["111111111111111"]  # another app, not ours

    code, lines = doctor.lines()
    assert code == 1
    assert "'Bridge test app' is not subscribed to WABA" in lines["subscription"]
    assert "Meta sends it no webhooks → run `bridge doctor --fix`" in lines["subscription"]
    assert doctor.graph.subscriptions[WABA] == ["111111111111111"]  # reading changed nothing

    code, lines = doctor.lines("--fix")
    assert code == 0, lines["subscription"]
    assert lines["subscription"].endswith("now (--fix)")
    assert doctor.graph.subscriptions[WABA] == ["111111111111111", APP_ID]
    posts = [r for r in doctor.graph.received if r.method == "POST"]
    assert [r.path for r in posts] == [f"/v21.0/{WABA}/subscribed_apps"]

    assert doctor.lines()[0] == 0  # and it stays subscribed


def test_an_unknown_business_account_is_a_failure(doctor: Doctor) -> None:
    doctor.env["BRIDGE_BUSINESS_ACCOUNT_ID"] = "123"

    code, lines = doctor.lines()

    assert code == 1 and "business account 123 not found" in lines["subscription"]


def test_deep_asks_the_assistant_for_a_completion(doctor: Doctor) -> None:
    code, checks = doctor.json("--deep")
    assert code == 0 and checks["assistant"]["status"] == "ok"
    assert "a completion of" in checks["assistant"]["detail"]
    assert doctor.llm.requests[0]["messages"][-1]["role"] == "user"

    doctor.llm.fail_status = 503
    code, checks = doctor.json("--deep")
    assert code == 1 and checks["assistant"]["status"] == "fail"
    assert checks["assistant"]["detail"].startswith("completion failed")
    assert checks["assistant"]["fix"]


def test_an_unreachable_assistant_is_a_failure(doctor: Doctor) -> None:
    doctor.env["BRIDGE_ASSISTANT_URL"] = f"http://127.0.0.1:{free_port()}/v1"

    code, checks = doctor.json()

    assert code == 1 and checks["assistant"]["status"] == "fail"
    assert "unreachable" in checks["assistant"]["detail"]


def test_local_problems_each_fail_their_own_check(doctor: Doctor) -> None:
    state = doctor.var / "profiles" / "default"
    (state / "snapshot.wab").write_bytes(b"WABSNAP2" + b"0" * 40)
    os.chmod(state / "key", 0o644)
    del doctor.env["BRIDGE_APP_SECRET"]

    code, checks = doctor.json()

    assert code == 1
    assert checks["secrets"]["status"] == "fail" and "app_secret" in checks["secrets"]["detail"]
    assert checks["permissions"]["status"] == "fail"
    assert f"{state / 'key'} (644)" in checks["permissions"]["detail"]
    assert checks["permissions"]["fix"].startswith("chmod -R go-rwx")
    assert checks["store"]["status"] == "fail" and "snapshot.wab" in checks["store"]["detail"]


def test_a_running_bridge_is_named_with_its_pid(doctor: Doctor) -> None:
    served = start_serve(doctor.var, env=doctor.env)
    try:
        code, checks = doctor.json()
    finally:
        served.stop()

    assert checks["bridge"]["status"] == "ok"
    assert checks["bridge"]["detail"] == f"running (pid {served.proc.pid})"
    assert checks["store"]["status"] == "ok"


def test_a_configuration_that_does_not_parse_is_one_failing_line(tmp_path: Path) -> None:
    bad = tmp_path / "bridge.toml"
    bad.write_text("[profiles.shop\n")

    result = subprocess.run(
        [*BRIDGE, "doctor", "--config", str(bad)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    assert result.stdout.startswith("✗ configuration: config file")
    assert len(result.stdout.splitlines()) == 1 and "Traceback" not in result.stderr


async def test_a_configured_transcription_backend_is_checked(aiohttp_server: AiohttpServer) -> None:
    """`profile.transcribe.url` comes with the media work; any profile that has one is
    checked (stood in for here, since this branch's ProfileConfig has no such field)."""
    server = await aiohttp_server(FakeLLM().app())

    def with_url(url: str | None) -> ProfileConfig:
        return cast(ProfileConfig, SimpleNamespace(transcribe=SimpleNamespace(url=url)))

    answered = await doctor_module.transcription(with_url(str(server.make_url("/v1"))))
    down = await doctor_module.transcription(with_url(f"http://127.0.0.1:{free_port()}/v1"))
    none = await doctor_module.transcription(with_url(None))

    assert answered.status == "ok" and "answers" in answered.detail
    assert down.status == "fail" and "unreachable" in down.detail and down.fix
    assert none.status == "skip"
