"""Media files shared by replicas through PostgreSQL: what one replica fetched from Meta,
another reads byte for byte; the database holds only sealed frames; an erasure takes the
rows; a replica killed between the upload and the record leaves no record naming a file the
database lacks (a real server, real stores, a fake Graph API, a real child process killed)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pytest_aiohttp import AiohttpServer

from bridge import simulate
from bridge.assistants.media import attachments
from bridge.config import ProfileConfig
from bridge.conversations import Message
from bridge.media.entry import media_of
from bridge.media.store import MediaFileError
from bridge.media.worker import MediaWorker
from bridge.ops.metrics import Metrics
from bridge.persistence import layout
from bridge.persistence.crypto import Keyring
from bridge.persistence.keys import encode_key, new_key
from bridge.records import ConversationDeleted, MessageAdded
from bridge.runtime import media_worker
from bridge.store.pg.media import DatabaseMedia
from bridge.store.pg.rotation import rotate
from bridge.store.postgres import PostgresStore, configured_keyring
from tests.assistants.test_media import data_url
from tests.conftest import APP_SECRET, eventually, make_profile
from tests.fakes.graph import TOKEN, FakeGraph
from tests.fakes.llm import FakeLLM
from tests.fakes.threaded import serve_in_thread
from tests.load import post_signed_sync
from tests.media.support import PHONE, b64_sha256, delivery, media_message
from tests.pg import PostgresServer
from tests.test_cli import Served, graph_env, start_serve

KEY = encode_key(new_key())
# Several chunks (1 MiB each), so a file is more frames than one round trip carries.
IMAGE = os.urandom(2 * 1024 * 1024 + 12345)
# Small enough for the fake model's request body limit (1 MiB, base64 included).
PHOTO = b"\xff\xd8\xff\xe0" + os.urandom(300_000)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Replica:
    profile: ProfileConfig
    store: PostgresStore
    worker: MediaWorker

    @property
    def media_dir(self) -> Path:
        return layout.media_dir(self.profile.state_dir)

    def local_files(self) -> list[str]:
        return sorted(p.name for p in self.media_dir.glob("*.wam"))

    def media(self, wamid: str) -> dict[str, Any]:
        message = self.store.state.find_message(PHONE, wamid)
        media = media_of(message) if message is not None else None
        return dict(media or {})


OpenReplica = Callable[[str], Awaitable[Replica]]


@pytest.fixture
async def graph(aiohttp_server: AiohttpServer) -> tuple[FakeGraph, str]:
    fake = FakeGraph()
    url = str((await aiohttp_server(fake.app())).make_url("")).rstrip("/")
    return fake, url


@pytest.fixture
async def open_replica(
    tmp_path: Path, database_url: str, graph: tuple[FakeGraph, str]
) -> AsyncIterator[OpenReplica]:
    """Replicas of one profile: each its own directory (its media cache), one database."""
    opened: list[Replica] = []

    async def open_one(name: str) -> Replica:
        profile = make_profile(tmp_path / name, key=KEY, access_token=TOKEN, graph_url=graph[1])
        store = PostgresStore(profile, database_url, poll_seconds=0.05)
        await store.open()
        worker = media_worker(profile, store, Metrics())  # the bridge's own wiring
        await worker.start()
        replica = Replica(profile, store, worker)
        opened.append(replica)
        return replica

    yield open_one
    for replica in opened:
        await replica.worker.stop()
        await replica.store.close()


def image_message(wamid: str, media_id: str, data: bytes = IMAGE) -> MessageAdded:
    now = int(time.time() * 1000)
    media = {"id": media_id, "mime_type": "image/jpeg", "sha256": b64_sha256(data)}
    message = Message(
        "user", "[image] salado?", now, id=wamid, type="image", extra={"media": media}
    )
    return MessageAdded(PHONE, message, "Ana", now)


async def deliver_image(replica: Replica, wamid: str, media_id: str) -> str:
    """The message recorded by `replica`, which fetches its image; the stored file's name."""
    await replica.store.commit([image_message(wamid, media_id)])
    replica.worker.enqueue(PHONE, wamid)
    await eventually(lambda: replica.media(wamid).get("state") == "stored", 15, "stored")
    await eventually(lambda: replica.worker.busy == 0, 15, "media work")
    return str(replica.media(wamid)["file"])


async def rows(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def test_a_file_one_replica_fetched_is_read_byte_for_byte_by_another(
    open_replica: OpenReplica, graph: tuple[FakeGraph, str]
) -> None:
    a, b = await open_replica("a"), await open_replica("b")
    graph[0].add_media("media-1", IMAGE)
    name = await deliver_image(a, "wamid.1", "media-1")
    await b.store.refresh()
    assert b.media("wamid.1")["file"] == name
    assert b.local_files() == []  # B never fetched it from Meta
    assert await b.worker.files.load(name, "wamid.1") == IMAGE
    # Now in B's cache, as A sealed it, byte for byte; Meta was asked once.
    assert (b.media_dir / f"{name}.wam").read_bytes() == (a.media_dir / f"{name}.wam").read_bytes()
    assert graph[0].lookups == ["media-1"]
    # What a reply on B hands the assistant (vision, send_media) reads it the same way.
    c = await open_replica("c")
    await c.store.refresh()
    view = c.store.state.get(PHONE)
    assert view is not None
    attached = await attachments(
        view.messages, c.worker.files, types={"image"}, max_items=3, max_bytes=10 * 2**20
    )
    assert [x.data for x in attached.values()] == [IMAGE]


async def test_the_database_holds_only_sealed_frames(
    open_replica: OpenReplica,
    graph: tuple[FakeGraph, str],
    database_url: str,
    pg_server: PostgresServer,
) -> None:
    a = await open_replica("a")
    graph[0].add_media("media-1", IMAGE)
    name = await deliver_image(a, "wamid.1", "media-1")
    (file,) = await rows(database_url, "SELECT name, frames, bytes, recorded FROM bridge_media")
    frames = await rows(database_url, "SELECT frame FROM bridge_media_frames ORDER BY idx")
    assert (file["name"], file["frames"], file["recorded"]) == (name, 5, True)  # H, 3 C, E
    stored = b"".join(bytes(r["frame"]) for r in frames)
    assert file["bytes"] == len(stored)
    dump = pg_server.dump(database_url.rsplit("/", 1)[1])
    windows = [IMAGE[i : i + 32] for i in range(0, len(IMAGE) - 32, 50_000)]
    for window in windows:
        assert window not in stored
        assert window not in dump and window.hex().encode() not in dump  # bytea dumps as hex
    for secret in (
        b"wamid.1",
        b"media-1",
        PHONE.encode(),
        hashlib.sha256(IMAGE).hexdigest().encode(),
    ):
        assert secret not in dump


async def test_a_damaged_cached_copy_is_fetched_again(
    open_replica: OpenReplica, graph: tuple[FakeGraph, str]
) -> None:
    a = await open_replica("a")
    graph[0].add_media("media-1", IMAGE)
    name = await deliver_image(a, "wamid.1", "media-1")
    cached = a.media_dir / f"{name}.wam"
    data = bytearray(cached.read_bytes())
    data[5000] ^= 1
    cached.write_bytes(bytes(data))
    assert await a.worker.files.load(name, "wamid.1") == IMAGE
    assert cached.read_bytes() != bytes(data)  # replaced by the database's copy


async def test_a_frame_moved_to_another_file_does_not_open(
    open_replica: OpenReplica, graph: tuple[FakeGraph, str], database_url: str
) -> None:
    a = await open_replica("a")
    graph[0].add_media("media-1", IMAGE)
    graph[0].add_media("media-2", IMAGE)
    first = await deliver_image(a, "wamid.1", "media-1")
    second = await deliver_image(a, "wamid.2", "media-2")
    # Someone with database access swaps a frame of the same position between two files.
    await rows(
        database_url,
        "UPDATE bridge_media_frames SET frame = (SELECT frame FROM bridge_media_frames "
        "WHERE name = $2 AND idx = 1) WHERE name = $1 AND idx = 1",
        first,
        second,
    )
    b = await open_replica("b")
    with pytest.raises(MediaFileError, match="frame 1 does not decrypt"):
        await b.worker.files.load(first, "wamid.1")


async def test_erasing_the_conversation_takes_the_rows_and_every_cached_copy(
    open_replica: OpenReplica, graph: tuple[FakeGraph, str], database_url: str
) -> None:
    a, b = await open_replica("a"), await open_replica("b")
    graph[0].add_media("media-1", IMAGE)
    name = await deliver_image(a, "wamid.1", "media-1")
    await b.store.refresh()
    await b.worker.files.ensure_local(name)
    assert b.local_files() == [f"{name}.wam"]
    await b.store.commit([ConversationDeleted(PHONE)])  # an operator's delete, on B

    async def gone() -> bool:
        return not await rows(database_url, "SELECT name FROM bridge_media_frames")

    deadline = time.monotonic() + 10
    while not await gone():
        assert time.monotonic() < deadline, "the rows are still there"
        await asyncio.sleep(0.05)
    assert await rows(database_url, "SELECT name FROM bridge_media") == []
    await eventually(lambda: a.local_files() == [] and b.local_files() == [], 10, "local sweep")


async def test_an_unrecorded_upload_is_kept_for_its_grace_then_swept(
    open_replica: OpenReplica, database_url: str
) -> None:
    a = await open_replica("a")
    writer = a.worker.files.writer("wamid.9", "image/jpeg")
    await writer.write(b"an upload whose record is still on its way")
    stored = await writer.finish()
    await a.worker.files.publish(stored.name)
    assert await a.worker.files.sweep_shared() == 0  # within the grace: left alone
    assert len(await rows(database_url, "SELECT name FROM bridge_media")) == 1
    assert await DatabaseMedia.of(a.store, grace_seconds=0).sweep() == 1
    assert await rows(database_url, "SELECT name FROM bridge_media_frames") == []


async def test_a_file_missing_from_the_database_is_a_media_error(
    open_replica: OpenReplica,
) -> None:
    a = await open_replica("a")
    with pytest.raises(MediaFileError, match="not in the database"):
        await a.worker.files.load("0" * 32)
    assert a.local_files() == []
    assert [p for p in a.media_dir.iterdir()] == []  # no temp file left


# -- a replica killed between the upload and the record ------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    from pathlib import Path

    from bridge.conversations import Message
    from bridge.ops.metrics import Metrics
    from bridge.records import MessageAdded
    from bridge.runtime import media_worker
    from bridge.store.pg.media import DatabaseMedia
    from bridge.store.postgres import PostgresStore
    from tests.conftest import make_profile

    root, database_url, graph_url, key, token, sha = sys.argv[1:7]
    real_upload = DatabaseMedia.upload

    async def upload_then_die(self, files, name):
        await real_upload(self, files, name)
        os.kill(os.getpid(), signal.SIGKILL)  # uploaded; the record never committed

    DatabaseMedia.upload = upload_then_die

    async def main():
        profile = make_profile(Path(root), key=key, access_token=token, graph_url=graph_url)
        store = PostgresStore(profile, database_url)
        await store.open()
        worker = media_worker(profile, store, Metrics())
        await worker.start()
        now = int(time.time() * 1000)
        media = {"id": "media-1", "mime_type": "image/jpeg", "sha256": sha}
        message = Message("user", "[image]", now, id="wamid.1", type="image",
                          extra={"media": media})
        await store.commit([MessageAdded("34600000001", message, "Ana", now)])
        worker.enqueue("34600000001", "wamid.1")
        await asyncio.sleep(30)

    asyncio.run(main())
    """
)


async def test_a_replica_killed_between_upload_and_record_leaves_no_dangling_reference(
    open_replica: OpenReplica,
    graph: tuple[FakeGraph, str],
    database_url: str,
    tmp_path: Path,
) -> None:
    graph[0].add_media("media-1", IMAGE)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(tmp_path / "killed"),
        database_url,
        graph[1],
        KEY,
        TOKEN,
        b64_sha256(IMAGE),
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(child.wait(), 60) == -signal.SIGKILL
    (orphan,) = await rows(database_url, "SELECT name, recorded FROM bridge_media")
    assert orphan["recorded"] is False
    # The other replica: no record names the orphan; it fetches the media itself and records
    # its own file, which the database holds; the orphan is not taken while in its grace.
    b = await open_replica("b")
    assert b.media("wamid.1").get("state") is None
    b.worker.enqueue(PHONE, "wamid.1")
    await eventually(lambda: b.media("wamid.1").get("state") == "stored", 15, "stored")
    name = b.media("wamid.1")["file"]
    assert name != orphan["name"]
    names = {r["name"] for r in await rows(database_url, "SELECT name FROM bridge_media")}
    assert names == {name, orphan["name"]}
    assert await b.worker.files.sweep_shared() == 0
    # Past its grace, the orphan goes; the recorded file stays, readable by anyone.
    assert await DatabaseMedia.of(b.store, grace_seconds=0).sweep() == 1
    c = await open_replica("c")
    assert c.media("wamid.1")["file"] == name
    assert await c.worker.files.load(name, "wamid.1") == IMAGE


# -- through `bridge serve` replicas -------------------------------------------------------


def test_a_replica_answers_with_an_image_another_replica_fetched(
    tmp_path: Path, database_url: str
) -> None:
    """Replica A records a photo and fetches it from Meta, then dies; replica B, which never
    saw the file, answers the user's next message with the photo in the model's context."""
    graph, llm = FakeGraph(), FakeLLM()
    llm.answer = "Sí, en rojo también"  # not an echo: the request holds the image's base64
    graph.add_media("media-1", PHOTO)
    with serve_in_thread(graph.app()) as graph_url, serve_in_thread(llm.app()) as llm_url:

        def replica(name: str) -> Served:
            var = tmp_path / name
            var.mkdir()
            env = graph_env(
                var,
                graph_url,
                BRIDGE_STORE="postgres",
                BRIDGE_DATABASE_URL=database_url,
                BRIDGE_KEY=KEY,
                BRIDGE_ASSISTANT="openai",
                BRIDGE_ASSISTANT_URL=llm_url,
                BRIDGE_ASSISTANT_VISION="true",
                BRIDGE_ASSISTANT_MEDIA_MAX_MB="5",
            )
            return start_serve(var, env=env)

        def wait_for(predicate: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 20
            while not predicate():
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.05)

        a = replica("a")
        try:
            photo = media_message("image", "media-1", PHOTO, "image/jpeg", caption="¿rojo?")
            raw = simulate.encode(delivery(photo))
            assert post_signed_sync(a.port, raw, APP_SECRET) == 200
            wait_for(lambda: len(llm.requests) == 1, "A's reply")
        finally:
            a.proc.kill()
            a.proc.wait()
        (a_file,) = (tmp_path / "a" / "profiles" / "default" / "media").glob("*.wam")

        b = replica("b")
        try:
            text = simulate.text_message("¿y en rojo?", PHONE)
            assert post_signed_sync(b.port, simulate.encode(delivery(text)), APP_SECRET) == 200
            wait_for(lambda: len(llm.requests) == 2, "B's reply")
        finally:
            b.stop()
    image_part = {"type": "image_url", "image_url": {"url": data_url(PHOTO)}}
    assert image_part in llm.requests[1]["messages"][0]["content"]
    assert graph.lookups == ["media-1"]  # B got the file from the database, not from Meta
    b_file = tmp_path / "b" / "profiles" / "default" / "media" / a_file.name
    assert b_file.read_bytes() == a_file.read_bytes()


async def test_rotate_key_reseals_the_shared_files_and_a_replica_with_the_new_key_alone_reads_them(
    open_replica: OpenReplica, graph: tuple[FakeGraph, str], database_url: str, tmp_path: Path
) -> None:
    a = await open_replica("a")
    graph[0].add_media("media-1", IMAGE)
    name = await deliver_image(a, "wamid.1", "media-1")
    new = encode_key(new_key())
    rotating = make_profile(tmp_path / "admin", key=f"{new},{KEY}")
    conn = await asyncpg.connect(database_url)
    try:
        done = await rotate(conn, "default", configured_keyring(rotating), "BRIDGE_KEY")
    finally:
        await conn.close()
    assert done.media_frames == 5 and not done.left
    new_id = Keyring([base64.urlsafe_b64decode(new)]).active_id
    frames = await rows(database_url, "SELECT frame FROM bridge_media_frames")
    assert {bytes(r["frame"])[:8] for r in frames} == {new_id}
    # A replica given the new key alone: the database's copy opens, byte for byte.
    profile = make_profile(tmp_path / "d", key=new, access_token=TOKEN, graph_url=graph[1])
    store = PostgresStore(profile, database_url)
    await store.open()
    worker = media_worker(profile, store, Metrics())
    try:
        assert await worker.files.load(name, "wamid.1") == IMAGE
    finally:
        await store.close()
