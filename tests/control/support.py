"""A real `bridge serve` taking a steady load of signed deliveries while operators write."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aiohttp

from bridge.config import ProfileConfig
from bridge.state import State
from bridge.store.durable import load_state
from tests.conftest import APP_SECRET
from tests.load import post_text
from tests.test_cli import Served, clean_env, free_port, start_serve


def bridge_env(var: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        BRIDGE_APP_SECRET=APP_SECRET,
        BRIDGE_VERIFY_TOKEN="v",
        BRIDGE_VAR_DIR=str(var),
        BRIDGE_PORT=str(free_port()),
        **extra,
    )


def serve(var: Path, env: dict[str, str] | None = None) -> Served:
    return start_serve(var, env=env or bridge_env(var))


def kill_9(server: Served) -> None:
    server.proc.kill()
    server.proc.wait()


def stored(var: Path, key: str | None = None) -> State:
    """The store as a restart would load it (with only `key`, when given)."""
    return load_state(
        ProfileConfig(slug="default", state_dir=var / "profiles" / "default", key=key)
    )


def user_ids(state: State) -> list[str]:
    return [
        m.id for c in state.conversations.values() for m in c.messages if m.role == "user" and m.id
    ]


@dataclass
class Ack:
    at: float  # time.monotonic() when the 200 arrived
    wamid: str
    phone: str


@dataclass
class Load:
    """Signed single-message deliveries at `rate` per second from a thread of its own, round
    robin over `phones`, each acknowledgement timed (Meta's side of the contract)."""

    port: int
    phones: list[str]
    rate: float = 100.0
    acked: list[Ack] = field(default_factory=list)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=30)

    def wait_for(self, count: int, timeout: float = 20) -> None:
        """Until `count` more deliveries than now were acknowledged."""
        target = len(self.acked) + count
        deadline = time.monotonic() + timeout
        while len(self.acked) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"the load got {len(self.acked)} of {target} acknowledgements")
            time.sleep(0.02)

    async def _run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

            async def one(n: int) -> None:
                phone = self.phones[n % len(self.phones)]
                wamid = await post_text(session, self.port, APP_SECRET, f"load {n}", phone)
                if wamid:
                    self.acked.append(Ack(time.monotonic(), wamid, phone))

            while not self._stop.is_set():
                task = asyncio.create_task(one(self.sent))
                self.sent += 1
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                await asyncio.sleep(1 / self.rate)
            await asyncio.gather(*tasks, return_exceptions=True)
