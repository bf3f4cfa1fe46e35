"""Shared fixtures: a real bridge app on 127.0.0.1 (aiohttp test server) and signed requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpServer

from bridge import simulate
from bridge.assistants.base import Assistant
from bridge.config import AssistantConfig, ProfileConfig, Settings
from bridge.http.app import create_app
from bridge.ops import gcpolicy, logs
from bridge.ops.metrics import Metrics
from bridge.runtime import ProfileRuntime, StoreFactory, memory_store
from bridge.state import State
from bridge.whatsapp.graph import GraphClient
from bridge.whatsapp.pacing import PairPacer
from bridge.whatsapp.sender import Sender
from tests.fakes.graph import TOKEN, FakeGraph
from tests.pg import PostgresServer, fresh_database, start_server


@pytest.fixture(autouse=True)
def _no_gc_policy_left_behind() -> Iterator[None]:
    """The bridge's GC policy is process-wide (bridge/ops/gcpolicy.py): a test that ran a bridge
    in this process must not leave it installed for the next one."""
    yield
    gcpolicy.uninstall()


# In-process bridges log to the console (pytest shows it for failing tests).
logs.configure("console", "info")

APP_SECRET = "test-app-secret"
VERIFY_TOKEN = "test-verify-token"
PHONE_NUMBER_ID = "100000000000001"

AiohttpClient = Callable[..., Awaitable[TestClient[Any, Any]]]


def make_profile(tmp_path: Path, slug: str = "default", **overrides: Any) -> ProfileConfig:
    base = ProfileConfig(
        slug=slug,
        state_dir=tmp_path / "profiles" / slug,
        verify_token=VERIFY_TOKEN,
        app_secret=APP_SECRET,
        phone_number_id=PHONE_NUMBER_ID,
        assistant=AssistantConfig(kind="echo"),
        reply_debounce_seconds=0.0,  # a reply per message unless a test is about bursts
    )
    return replace(base, **overrides)


async def eventually(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Wait for background work (replies, sends) to reach a state; fail after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Bridge:
    """A started bridge app plus helpers to talk to it as Meta does."""

    client: TestClient[Any, Any]
    runtimes: dict[str, ProfileRuntime]

    def state(self, slug: str = "default") -> State:
        return self.runtimes[slug].store.state

    async def post(
        self,
        body: dict[str, Any] | bytes,
        secret: str | None = APP_SECRET,
        path: str = "/webhook",
        headers: dict[str, str] | None = None,
    ) -> ClientResponse:
        raw = body if isinstance(body, bytes) else simulate.encode(body)
        sent = simulate.signed_headers(raw, secret) if secret is not None else {}
        sent.update(headers or {})
        return await self.client.post(path, data=raw, headers=sent)

    async def post_text(self, text: str, sender: str = "34600000001", **kw: Any) -> ClientResponse:
        message = simulate.text_message(text, sender, kw.pop("wamid", None))
        return await self.post(
            simulate.delivery(simulate.change_value([message], phone_number_id=PHONE_NUMBER_ID)),
            **kw,
        )

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until every reply is produced and every outbox item is sent or failed."""
        await eventually(
            lambda: all(
                r.replier.busy == 0 and not r.store.state.outbox for r in self.runtimes.values()
            ),
            timeout,
            "replies to be produced and sent",
        )


StartBridge = Callable[..., Awaitable[Bridge]]


@pytest.fixture
def start_bridge(aiohttp_client: AiohttpClient, tmp_path: Path) -> StartBridge:
    """Start the real app for some profiles; each profile may get its own sender/assistant."""

    async def start(
        profiles: Sequence[ProfileConfig] | None = None,
        store_factory: StoreFactory = memory_store,
        senders: dict[str, Sender] | None = None,
        assistants: dict[str, Assistant] | None = None,
        **settings: Any,
    ) -> Bridge:
        profiles = list(profiles or [make_profile(tmp_path)])
        metrics = Metrics()
        runtimes = [
            ProfileRuntime.build(
                p,
                store_factory=store_factory,
                sender=(senders or {}).get(p.slug),
                assistant=(assistants or {}).get(p.slug),
                metrics=metrics,
            )
            for p in profiles
        ]
        app = create_app(
            Settings(profiles=tuple(profiles), var_dir=tmp_path, **settings), runtimes, metrics
        )
        client = await aiohttp_client(app)
        return Bridge(client, {r.slug: r for r in runtimes})

    return start


@pytest.fixture
async def bridge(start_bridge: StartBridge) -> Bridge:
    return await start_bridge()


@pytest.fixture
async def graph(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[FakeGraph, GraphClient]]:
    """A fake Graph API (tests/fakes/graph.py) and a client of it, without the per-user
    pacing (tests/whatsapp/test_pacing.py is about that)."""
    fake = FakeGraph()
    server = await aiohttp_server(fake.app())
    client = GraphClient(
        str(server.make_url("")), "v21.0", "1", TOKEN, timeout=5, pacer=PairPacer(0.001)
    )
    yield fake, client
    await client.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole session (tests/pg.py); skips without one."""
    yield from start_server()


@pytest.fixture
def database_url(pg_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    return fresh_database(pg_server)
