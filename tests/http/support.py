"""A real `bridge serve` with the operators' API on, sending to a local fake Graph API."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.config import ProfileConfig
from bridge.state import State
from bridge.store.durable import load_state
from tests.fakes.graph import FakeGraph
from tests.fakes.threaded import serve_in_thread
from tests.test_admin import admin as run_admin
from tests.test_cli import Served, graph_env, parse_log, run, start_serve

API_TOKEN = "test-api-token-0123456789"
ANA = "34600000001"


@dataclass
class Live:
    """The bridge process, its fake Graph API, and helpers to talk to both."""

    env: dict[str, str]
    graph: FakeGraph
    var: Path
    _server: Served | None = None

    @property
    def server(self) -> Served:
        assert self._server is not None, "the bridge is not started"
        return self._server

    @property
    def port(self) -> int:
        return int(self.env["BRIDGE_PORT"])

    def start(self) -> None:
        self._server = start_serve(self.var, env=self.env)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = API_TOKEN,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed JSON body or None)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")

    def conversation(self, key: str = ANA) -> dict[str, Any]:
        status, body = self.request("GET", f"/api/v1/profiles/default/conversations/{key}")
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    def say(self, text: str, sender: str = ANA, name: str | None = None) -> None:
        """A user's message, as Meta delivers it (signed), acknowledged with a 200."""
        args = ["simulate", text, "--from", sender] + (["--name", name] if name else [])
        result = run(args, self.env)
        assert result.returncode == 0, result.stdout + result.stderr

    def events(self) -> list[dict[str, Any]]:
        return parse_log(self.server.log_path.read_text())

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def wait_logged(self, event: str, count: int = 1, timeout: float = 15) -> None:
        self.wait(
            lambda: sum(1 for e in self.events() if e.get("event") == event) >= count,
            f"{count} {event} log line(s)",
            timeout,
        )

    def wait_sent(self, count: int, timeout: float = 15) -> list[str]:
        self.wait(lambda: len(self.graph.sent) >= count, f"{count} message(s) sent", timeout)
        return self.graph.bodies()

    def stored(self) -> State:
        return load_state(
            ProfileConfig(slug="default", state_dir=self.var / "profiles" / "default")
        )

    def kill(self) -> None:
        self.server.proc.kill()
        self.server.proc.wait()

    def stop(self) -> int:
        code, _ = self.server.stop()
        return code

    def close(self) -> None:
        if self._server is not None and self._server.proc.poll() is None:
            self._server.proc.kill()
            self._server.proc.wait()


def admin(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`sessions-admin ARGS` with the bridge's environment."""
    return run_admin(list(args), env)


def bridge_env(var: Path, graph_url: str, **extra: str) -> dict[str, str]:
    return graph_env(var, graph_url, BRIDGE_HEALTH_INTERVAL="3600", **extra)


@contextlib.contextmanager
def live_bridge(
    tmp_path: Path, api_token: str | None = API_TOKEN, start: bool = True, **extra: str
) -> Iterator[Live]:
    """A fake Graph API in a thread and (unless `start` is False) a bridge serving with it."""
    graph = FakeGraph()
    var = tmp_path / "var"
    with serve_in_thread(graph.app()) as graph_url:
        if api_token is not None:
            extra["BRIDGE_API_TOKEN"] = api_token
        live = Live(bridge_env(var, graph_url, **extra), graph, var)
        try:
            if start:
                live.start()
            yield live
        finally:
            live.close()
