"""Media deliveries, as Meta posts them, for the media tests."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_aiohttp import AiohttpServer

from bridge import simulate
from bridge.config import AssistantConfig, MediaConfig, ProfileConfig, TranscribeConfig
from bridge.conversations import Message
from bridge.media.entry import media_of
from bridge.persistence import layout
from bridge.runtime import ProfileRuntime, durable_store
from bridge.state import State
from tests.conftest import Bridge, StartBridge, eventually, make_profile
from tests.fakes.graph import TOKEN, FakeGraph
from tests.fakes.transcribe import FakeTranscriber

PHONE = "34600000001"


def b64_sha256(data: bytes) -> str:
    """The digest as webhooks carry it: base64 of the SHA-256."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def media_message(
    mtype: str,
    media_id: str,
    data: bytes | None,
    mime_type: str,
    sender: str = PHONE,
    wamid: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One inbound media message; `data` gives the webhook's sha256 (None: no digest)."""
    body: dict[str, Any] = {"id": media_id, "mime_type": mime_type, **fields}
    if data is not None:
        body["sha256"] = b64_sha256(data)
    return simulate.typed_message(mtype, body, sender, wamid)


def voice_note(media_id: str, data: bytes, **kw: Any) -> dict[str, Any]:
    return media_message("audio", media_id, data, "audio/ogg; codecs=opus", voice=True, **kw)


def delivery(*messages: dict[str, Any]) -> dict[str, Any]:
    return simulate.delivery(simulate.change_value(list(messages)))


# -- an in-process bridge with a durable store, a fake Graph API and a fake transcriber ------


@dataclass
class MediaRig:
    bridge: Bridge
    graph: FakeGraph
    transcriber: FakeTranscriber
    profile: ProfileConfig

    @property
    def runtime(self) -> ProfileRuntime:
        return self.bridge.runtimes[self.profile.slug]

    @property
    def state(self) -> State:
        return self.runtime.store.state

    async def post(self, *messages: dict[str, Any]) -> int:
        resp = await self.bridge.post(delivery(*messages))
        return resp.status

    async def settle(self, timeout: float = 15) -> None:
        """Media work done, replies produced and sent."""
        await eventually(lambda: self.runtime.media.busy == 0, timeout, "media work")
        await self.bridge.settle(timeout)

    def entry(self, wamid: str, key: str = PHONE) -> Message:
        message = self.state.find_message(key, wamid)
        assert message is not None
        return message

    def media(self, wamid: str, key: str = PHONE) -> Mapping[str, Any]:
        media = media_of(self.entry(wamid, key))
        assert media is not None
        return media

    def files(self) -> list[Path]:
        return sorted(layout.media_dir(self.profile.state_dir).glob("*.wam"))


async def start_media_bridge(
    start_bridge: StartBridge,
    aiohttp_server: AiohttpServer,
    tmp_path: Path,
    *,
    transcribe: bool = True,
    media: dict[str, Any] | None = None,
    assistant: AssistantConfig | None = None,
    graph: FakeGraph | None = None,
    before_start: Callable[[ProfileConfig], Awaitable[None]] | None = None,
) -> MediaRig:
    """`before_start` writes to the profile's store before the bridge opens it."""
    graph, transcriber = graph or FakeGraph(), FakeTranscriber()
    graph_url = str((await aiohttp_server(graph.app())).make_url("")).rstrip("/")
    stt_url = str((await aiohttp_server(transcriber.app())).make_url("")).rstrip("/")
    config = MediaConfig(
        transcribe=TranscribeConfig(url=stt_url if transcribe else None), **(media or {})
    )
    profile = make_profile(
        tmp_path,
        access_token=TOKEN,
        graph_url=graph_url,
        media=config,
        assistant=assistant or AssistantConfig(kind="echo"),
    )
    if before_start is not None:
        await before_start(profile)
    bridge = await start_bridge([profile], store_factory=durable_store)
    return MediaRig(bridge, graph, transcriber, profile)
