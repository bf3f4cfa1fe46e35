"""Media through a real `bridge serve`: fetched after the 200 from a fake Graph API, stored
encrypted, transcribed by a fake transcription server, answered; crashes and erasure."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from bridge import simulate
from bridge.config import ProfileConfig
from bridge.state import State
from bridge.store.durable import load_state
from tests.assistants.test_http import FakeBackend
from tests.conftest import APP_SECRET
from tests.fakes.audio import ogg_opus
from tests.fakes.graph import FakeGraph
from tests.fakes.threaded import serve_in_thread
from tests.fakes.transcribe import FakeTranscriber
from tests.load import post_signed_sync
from tests.media.support import PHONE, delivery, media_message, voice_note
from tests.test_admin import admin
from tests.test_cli import Served, graph_env, start_serve


@dataclass
class Setup:
    graph: FakeGraph
    transcriber: FakeTranscriber
    env: dict[str, str]
    var: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    graph, transcriber = FakeGraph(), FakeTranscriber()
    with serve_in_thread(graph.app()) as graph_url, serve_in_thread(transcriber.app()) as stt:
        env = graph_env(tmp_path / "var", graph_url, BRIDGE_TRANSCRIBE_URL=stt)
        yield Setup(graph, transcriber, env, tmp_path / "var")


def stored(var: Path) -> State:
    return load_state(ProfileConfig(slug="default", state_dir=var / "profiles" / "default"))


def wait_for(predicate: object, timeout: float = 15, what: str = "condition") -> None:
    async def poll() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():  # type: ignore[operator]
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    asyncio.run(poll())


def post(served: Served, *messages: dict[str, object]) -> int:
    return post_signed_sync(served.port, simulate.encode(delivery(*messages)), APP_SECRET)


def files_on_disk(var: Path) -> list[Path]:
    return [p for p in var.rglob("*") if p.is_file()]


def media_files(var: Path) -> list[Path]:
    return sorted((var / "profiles" / "default" / "media").glob("*.wam"))


def test_voice_note_is_fetched_stored_encrypted_transcribed_and_answered(setup: Setup) -> None:
    marker = b"PLAINTEXT-" + secrets.token_hex(8).encode()
    audio = ogg_opus(7.2, marker, size=300_000)
    setup.graph.add_media("media-voice-1", audio, "audio/ogg; codecs=opus")
    served = start_serve(setup.var, env=setup.env)
    try:
        assert post(served, voice_note("media-voice-1", audio)) == 200
        wait_for(lambda: setup.graph.bodies(), what="the reply")
        assert setup.graph.bodies() == ["Echo: [voice 0:07] quiero fotos de salado"]
        (request,) = setup.transcriber.requests
        assert (request.model, request.response_format, request.size) == (
            "whisper-1",
            "json",
            len(audio),
        )
        assert request.filename == "audio.ogg"
    finally:
        code, events = served.stop()
    assert code == 0
    names = [e["event"] for e in events]
    assert "media_stored" in names and "transcribed" in names
    # Not one plaintext byte of the file anywhere under the var dir (snapshot, journal, media).
    for path in files_on_disk(setup.var):
        assert marker not in path.read_bytes(), path
    assert len(media_files(setup.var)) == 1
    conv = stored(setup.var).conversations[PHONE]
    voice = conv.messages[0]
    assert voice.content == "[voice 0:07] quiero fotos de salado"
    assert voice.extra is not None
    media = voice.extra["media"]
    assert (media["state"], media["size"], media["duration_ms"]) == ("stored", len(audio), 7200)
    assert media["transcript"] == "quiero fotos de salado"


def test_kill_9_mid_download_resumes_after_restart_and_stores_once(setup: Setup) -> None:
    document = os.urandom(3 * 1024 * 1024)  # several chunks
    setup.graph.add_media("media-doc", document, "application/pdf")
    setup.graph.hold_downloads.set()  # the body stops half way
    served = start_serve(setup.var, env=setup.env)
    message = media_message(
        "document", "media-doc", document, "application/pdf", filename="catalogo.pdf"
    )
    assert post(served, message) == 200
    wait_for(setup.graph.held.is_set, what="the download to be held half way")
    served.proc.kill()
    served.proc.wait()
    media_dir = setup.var / "profiles" / "default" / "media"
    assert media_files(setup.var) == []  # only the temp file of the dead process, if any
    assert stored(setup.var).media_jobs  # still to do, in the journal
    setup.graph.hold_downloads.clear()
    again = start_serve(setup.var, env=setup.env)
    try:
        wait_for(lambda: setup.graph.bodies(), what="the reply after the restart")
    finally:
        code, events = again.stop()
    assert code == 0
    assert setup.graph.bodies() == ["Echo: [document] catalogo.pdf"]
    assert [e["event"] for e in events].count("media_stored") == 1
    (path,) = media_files(setup.var)
    assert [p.name for p in media_dir.iterdir()] == [path.name]  # no temp file left
    state = stored(setup.var)
    assert not state.media_jobs
    media = state.conversations[PHONE].messages[0].extra
    assert media is not None and media["media"]["size"] == len(document)
    # And an operator's `delete` erases the file with the conversation.
    result = admin(["delete", PHONE], setup.env)
    assert result.returncode == 0, result.stderr
    assert media_files(setup.var) == []


def test_refused_media_are_logged_and_still_answered(setup: Setup) -> None:
    photo = b"\xff\xd8\xff" + os.urandom(10_000)
    setup.graph.add_media("media-wrong", photo)
    setup.graph.add_media("media-huge", os.urandom(6 * 1024 * 1024))
    served = start_serve(setup.var, env=setup.env)
    try:
        wrong = media_message("image", "media-wrong", b"other bytes", "image/jpeg", caption="a")
        huge = media_message("image", "media-huge", None, "image/jpeg", caption="b")
        assert post(served, wrong) == 200 and post(served, huge) == 200
        wait_for(lambda: len(setup.graph.bodies()) == 2, what="both replies")
    finally:
        code, events = served.stop()
    assert code == 0
    assert sorted(setup.graph.bodies()) == ["Echo: [image] a", "Echo: [image] b"]
    failed = {e["reason"] for e in events if e["event"] == "media_failed"}
    assert failed == {"digest_mismatch", "too_large"}
    assert media_files(setup.var) == []


def test_an_http_backend_sends_an_image_by_link(setup: Setup) -> None:
    backend = FakeBackend()
    link = "https://shop.example/fotos/salado.jpg"
    backend.answer(
        orjson.dumps(
            {
                "reply": "Aquí la tienes",
                "media": [{"type": "image", "url": link, "caption": "Salado"}],
            }
        )
    )
    app = web.Application()
    app.router.add_post("/{tail:.*}", backend.handle)
    with serve_in_thread(app) as url:
        env = {**setup.env, "BRIDGE_ASSISTANT": "http", "BRIDGE_ASSISTANT_URL": f"{url}/bot"}
        served = start_serve(setup.var, env=env)
        try:
            assert post(served, simulate.text_message("¿foto del salado?", PHONE)) == 200
            wait_for(lambda: setup.graph.media_sent(), what="the image")
        finally:
            code, _ = served.stop()
    assert code == 0
    assert setup.graph.bodies() == ["Aquí la tienes"]
    assert setup.graph.media_sent() == [{"type": "image", "link": link, "caption": "Salado"}]
    reply = stored(setup.var).conversations[PHONE].messages[-1]
    assert (reply.content, reply.status) == ("Aquí la tienes\n[image] Salado", "sent")
    # The typing indicator went to the user's message before the reply.
    assert [r["message_id"] for r in setup.graph.read_receipts] == [
        stored(setup.var).conversations[PHONE].messages[0].id
    ]


def test_a_live_delete_erases_the_media_file(setup: Setup) -> None:
    """sessions-admin delete while the bridge runs: the bridge commits the erasure (control
    channel) and its media worker deletes the file once that is durable."""
    photo = b"\xff\xd8\xff" + os.urandom(50_000)
    setup.graph.add_media("media-photo", photo)
    served = start_serve(setup.var, env=setup.env)
    try:
        assert post(served, media_message("image", "media-photo", photo, "image/jpeg")) == 200
        wait_for(lambda: len(media_files(setup.var)) == 1, what="the photo to be stored")
        result = admin(["delete", PHONE], setup.env)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: media_files(setup.var) == [], what="the file to be deleted")
    finally:
        code, _ = served.stop()
    assert code == 0
