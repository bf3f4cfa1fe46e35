"""The media work in a real bridge: fetched after the 200 from a fake Graph API, checked,
stored encrypted, transcribed; failures recorded and answered; erasure and retention."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpServer

from bridge import simulate
from bridge.config import ProfileConfig
from bridge.conversations import Message
from bridge.media import upkeep as media_upkeep
from bridge.media.store import MediaStore, MediaWriter
from bridge.media.worker import DAY_MS
from bridge.persistence.crypto import Keyring
from bridge.persistence.keys import new_key
from bridge.records import ConversationDeleted, MessageAdded
from bridge.store.durable import DurableStore
from tests.conftest import StartBridge, eventually
from tests.fakes.audio import ogg_opus
from tests.fakes.graph import FakeGraph
from tests.media.support import (
    PHONE,
    MediaRig,
    media_message,
    start_media_bridge,
    voice_note,
)

JPEG = b"\xff\xd8\xff\xe0" + os.urandom(200_000)


@pytest.fixture
async def rig(start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path) -> MediaRig:
    return await start_media_bridge(start_bridge, aiohttp_server, tmp_path)


def image(media_id: str, data: bytes | None = JPEG, **kw: Any) -> dict[str, Any]:
    return media_message("image", media_id, data, "image/jpeg", caption="salado?", **kw)


async def test_an_image_is_stored_encrypted_and_readable(rig: MediaRig) -> None:
    rig.graph.add_media("media-1", JPEG)
    message = image("media-1")
    assert await rig.post(message) == 200
    await rig.settle()
    media = rig.media(str(message["id"]))
    assert (media["state"], media["size"], media["mime_type"]) == (
        "stored",
        len(JPEG),
        "image/jpeg",
    )
    (path,) = rig.files()
    assert JPEG[:64] not in path.read_bytes()
    assert rig.runtime.media.files.read(media["file"], str(message["id"])) == JPEG
    assert rig.graph.bodies() == ["Echo: [image] salado?"]
    assert rig.graph.lookups == ["media-1"]
    metrics = rig.runtime.metrics.render().decode()
    assert 'whatsapp_bridge_media_downloads_total{profile="default",result="stored"} 1.0' in metrics
    assert f'whatsapp_bridge_media_bytes_total{{profile="default"}} {float(len(JPEG))}' in metrics


async def test_a_digest_mismatch_is_refused_and_the_reply_still_happens(rig: MediaRig) -> None:
    rig.graph.add_media("media-1", JPEG)
    message = image("media-1", data=b"something else")  # the webhook's digest: another file
    await rig.post(message)
    await rig.settle()
    media = rig.media(str(message["id"]))
    assert media["state"] == "failed" and media["error"].startswith("digest_mismatch")
    assert rig.files() == []  # nothing kept of what did not match
    assert rig.graph.bodies() == ["Echo: [image] salado?"]


async def test_the_lookups_hex_digest_is_checked_too(rig: MediaRig) -> None:
    rig.graph.add_media("media-1", JPEG, sha256="00" * 32)
    message = image("media-1", data=None)  # no digest in the webhook: the lookup's counts
    await rig.post(message)
    await rig.settle()
    assert rig.media(str(message["id"]))["error"].startswith("digest_mismatch")


async def test_an_image_over_the_limit_is_refused_without_downloading_it(rig: MediaRig) -> None:
    big = os.urandom(50 * 1024 * 1024)
    rig.graph.add_media("media-big", big)
    message = image("media-big", data=None)
    await rig.post(message)
    await rig.settle()
    media = rig.media(str(message["id"]))
    assert media["state"] == "failed" and media["error"].startswith("too_large")
    assert rig.graph.downloads == [] and rig.files() == []
    assert rig.graph.bodies() == ["Echo: [image] salado?"]


async def test_a_body_larger_than_announced_is_cut_at_the_limit(rig: MediaRig) -> None:
    big = os.urandom(6 * 1024 * 1024)
    rig.graph.add_media("media-big", big, file_size=1000)  # Meta's size says small
    message = image("media-big", data=None)
    await rig.post(message)
    await rig.settle()
    assert rig.media(str(message["id"]))["error"].startswith("too_large")
    media_dir = rig.profile.state_dir / "media"
    assert [p.name for p in media_dir.iterdir()] == []  # no temp file either


async def test_a_server_error_is_retried_with_the_url_looked_up_again(rig: MediaRig) -> None:
    rig.graph.add_media("media-1", JPEG)
    rig.graph.download_failures.append(503)
    message = image("media-1")
    await rig.post(message)
    await rig.settle()
    assert rig.media(str(message["id"]))["state"] == "stored"
    assert rig.graph.lookups == ["media-1", "media-1"]
    assert len(rig.files()) == 1


async def test_an_expired_url_from_the_webhook_is_looked_up_again(rig: MediaRig) -> None:
    rig.graph.add_media("media-1", JPEG)
    message = image("media-1", url=f"{rig.profile.graph_url}/whatsapp_business/attachments/?mid=x")
    await rig.post(message)
    await rig.settle()
    assert rig.media(str(message["id"]))["state"] == "stored"
    assert rig.graph.lookups == ["media-1"]  # the webhook's URL was tried first


async def test_a_url_on_a_foreign_host_never_gets_the_token(rig: MediaRig) -> None:
    rig.graph.add_media("media-1", JPEG)
    message = image("media-1", url="https://evil.example/steal")
    await rig.post(message)
    await rig.settle()
    assert rig.media(str(message["id"]))["state"] == "stored"  # looked up instead


async def test_a_media_id_that_never_resolves_is_recorded_and_answered(rig: MediaRig) -> None:
    message = image("media-unknown")
    assert await rig.post(message) == 200
    await rig.settle()
    media = rig.media(str(message["id"]))
    assert media["state"] == "failed" and media["error"].startswith("not_found")
    assert rig.graph.bodies() == ["Echo: [image] salado?"]


async def test_a_voice_note_is_transcribed_into_its_entry(rig: MediaRig) -> None:
    audio = ogg_opus(7.2)
    rig.graph.add_media("media-v", audio, "audio/ogg; codecs=opus")
    message = voice_note("media-v", audio)
    await rig.post(message)
    await rig.settle()
    entry = rig.entry(str(message["id"]))
    assert entry.content == "[voice 0:07] quiero fotos de salado"
    assert rig.graph.bodies() == ["Echo: [voice 0:07] quiero fotos de salado"]
    metrics = rig.runtime.metrics.render().decode()
    assert 'whatsapp_bridge_transcription_seconds_count{profile="default"} 1.0' in metrics


async def test_transcription_errors_are_retried_then_recorded(rig: MediaRig) -> None:
    audio = ogg_opus(3)
    rig.graph.add_media("media-v", audio, "audio/ogg; codecs=opus")
    rig.transcriber.failures.extend([500, 400])  # a retryable error, then a permanent one
    message = voice_note("media-v", audio)
    await rig.post(message)
    await rig.settle()
    media = rig.media(str(message["id"]))
    assert "transcript" not in media and "400" in media["transcript_error"]
    assert rig.entry(str(message["id"])).content == "[voice 0:03]"
    assert len(rig.transcriber.requests) == 2
    assert rig.graph.bodies() == ["Echo: [voice 0:03]"]


async def test_a_file_that_is_not_audio_labelled_audio_is_answered_gracefully(
    rig: MediaRig,
) -> None:
    rig.graph.add_media("media-v", JPEG, "audio/ogg")
    message = voice_note("media-v", JPEG)
    assert await rig.post(message) == 200
    await rig.settle()
    media = rig.media(str(message["id"]))
    assert media["state"] == "stored" and "duration_ms" not in media
    assert "Invalid file format" in media["transcript_error"]
    assert rig.graph.bodies() == ["Echo: [voice]"]


async def test_without_a_transcription_backend_the_entry_says_voice_and_duration(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    rig = await start_media_bridge(start_bridge, aiohttp_server, tmp_path, transcribe=False)
    audio = ogg_opus(65)
    rig.graph.add_media("media-v", audio, "audio/ogg; codecs=opus")
    await rig.post(voice_note("media-v", audio))
    await rig.settle()
    assert rig.graph.bodies() == ["Echo: [voice 1:05]"]


async def test_a_reply_waits_for_the_media_then_goes_ahead_after_the_timeout(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    rig = await start_media_bridge(
        start_bridge, aiohttp_server, tmp_path, media={"wait_seconds": 0.5}
    )
    audio = ogg_opus(7)
    rig.graph.add_media("media-v", audio, "audio/ogg; codecs=opus")
    rig.graph.hold_downloads.set()
    message = voice_note("media-v", audio)
    await rig.post(message)
    await eventually(rig.graph.held.is_set, what="the download to be held")
    await eventually(lambda: bool(rig.graph.bodies()), what="the reply to go ahead")
    assert rig.graph.bodies() == ["Echo: [voice]"]
    metrics = rig.runtime.metrics.render().decode()
    assert 'whatsapp_bridge_media_pending{profile="default"} 1.0' in metrics
    rig.graph.hold_downloads.clear()
    await rig.settle()
    assert rig.entry(str(message["id"])).content == "[voice 0:07] quiero fotos de salado"


async def test_a_reply_waits_for_a_transcript_in_time(rig: MediaRig) -> None:
    rig.transcriber.delay = 0.5
    audio = ogg_opus(2)
    rig.graph.add_media("media-v", audio, "audio/ogg; codecs=opus")
    await rig.post(voice_note("media-v", audio))
    await rig.settle()
    assert rig.graph.bodies() == ["Echo: [voice 0:02] quiero fotos de salado"]


async def test_an_erasure_deletes_the_media_files_once_durable(rig: MediaRig) -> None:
    rig.graph.add_media("media-1", JPEG)
    await rig.post(image("media-1"))
    await rig.settle()
    assert len(rig.files()) == 1
    deletion = rig.state.deletion(PHONE)
    assert deletion is not None
    await rig.runtime.store.commit([deletion])
    await eventually(lambda: rig.files() == [], what="the file to be deleted")
    assert not rig.state.media_files


async def test_an_erasure_during_a_download_leaves_no_file(rig: MediaRig) -> None:
    rig.graph.add_media("media-1", JPEG)
    rig.graph.hold_downloads.set()
    await rig.post(image("media-1"))
    await eventually(rig.graph.held.is_set, what="the download to be held")
    await rig.runtime.store.commit([ConversationDeleted(PHONE)])
    rig.graph.hold_downloads.clear()
    await eventually(lambda: rig.runtime.media.busy == 0, what="the job to end")
    assert rig.files() == []
    assert [p.name for p in (rig.profile.state_dir / "media").iterdir()] == []


async def test_media_retention_drops_the_bytes_and_keeps_the_entry(rig: MediaRig) -> None:
    audio = ogg_opus(7)
    rig.graph.add_media("media-v", audio, "audio/ogg; codecs=opus")
    message = voice_note("media-v", audio)
    await rig.post(message)
    await rig.settle()
    now = int(time.time() * 1000)
    assert await rig.runtime.media.maintain(now + 89 * DAY_MS) == 0
    assert await rig.runtime.media.maintain(now + 91 * DAY_MS) == 1
    assert rig.files() == []
    entry = rig.entry(str(message["id"]))
    assert entry.content == "[voice 0:07] quiero fotos de salado"
    media = rig.media(str(message["id"]))
    assert media["state"] == "dropped" and "file" not in media and media["size"] == len(audio)


async def test_media_dropped_by_the_cap_are_deleted(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    rig = await start_media_bridge(start_bridge, aiohttp_server, tmp_path)
    rig.graph.add_media("media-1", JPEG)
    await rig.post(image("media-1"))
    await rig.settle()
    cap = rig.state.max_messages
    assert cap is not None
    for n in range(cap):
        text = Message("user", f"text {n}", int(time.time() * 1000), id=f"wamid.t{n}", type="text")
        await rig.runtime.store.commit([MessageAdded(PHONE, text)])
    assert not rig.state.media_files
    await rig.runtime.media.maintain()
    assert rig.files() == []


async def test_two_media_of_one_burst_are_both_ready_before_the_reply(rig: MediaRig) -> None:
    audio = ogg_opus(4)
    rig.graph.add_media("media-v", audio, "audio/ogg; codecs=opus")
    rig.graph.add_media("media-1", JPEG)
    rig.transcriber.delay = 0.3
    body = simulate.delivery(
        simulate.change_value([voice_note("media-v", audio), image("media-1")])
    )
    await rig.bridge.post(body)
    await rig.settle()
    assert rig.graph.bodies()[0] == "Echo: [voice 0:04] quiero fotos de salado"


async def test_media_left_in_a_long_idle_conversation_are_not_asked_for(
    start_bridge: StartBridge, aiohttp_server: AiohttpServer, tmp_path: Path
) -> None:
    """An old store (or a long outage): what was never fetched in a conversation idle for
    more than 7 days fails without a lookup; an active conversation's old-stamped media are
    fetched (a sender's stamp alone decides nothing)."""
    now = int(time.time() * 1000)
    old = now - 10 * DAY_MS

    def entry(wamid: str, media_id: str) -> Message:
        extra = {"media": {"id": media_id, "mime_type": "image/jpeg"}}
        return Message("user", "[image]", old, id=wamid, type="image", extra=extra)

    async def write_old_store(profile: ProfileConfig) -> None:
        store = DurableStore(profile)
        await store.open()
        await store.commit(
            [
                MessageAdded("34600000009", entry("wamid.idle", "media-idle"), received_ms=old),
                MessageAdded(PHONE, entry("wamid.active", "media-active"), received_ms=now),
            ]
        )
        await store.close()

    graph = FakeGraph()
    graph.add_media("media-active", JPEG)
    rig = await start_media_bridge(
        start_bridge, aiohttp_server, tmp_path, graph=graph, before_start=write_old_store
    )
    await eventually(lambda: rig.runtime.media.busy == 0, what="the resumed work")
    assert rig.media("wamid.idle", "34600000009")["error"] == "too old to fetch"
    assert rig.media("wamid.active")["state"] == "stored"
    assert rig.graph.lookups == ["media-active"]


async def test_a_media_file_that_cannot_be_written_is_retried_not_crashed(
    rig: MediaRig,
) -> None:
    """The disk refuses the file (full, or its directory unusable) in the middle of a
    download: an OSError, not a MediaError. The job must not die with it (a traceback, and
    the media left undone until a restart): it is retried and stored once the disk is back."""
    rig.graph.add_media("media-1", JPEG)
    media_dir = rig.profile.state_dir / "media"
    assert not media_dir.exists()  # made by the first file
    media_dir.write_bytes(b"")  # a file where the directory should be: every write fails
    message = image("media-1")
    assert await rig.post(message) == 200
    # A second lookup: the first try failed on the disk, and the job goes on.
    await eventually(lambda: len(rig.graph.lookups) >= 2, timeout=10, what="a retry")
    media_dir.unlink()
    media_dir.mkdir(mode=0o700)
    await eventually(
        lambda: rig.media(str(message["id"])).get("state") == "stored",
        timeout=20,
        what="the media stored once the disk is back",
    )
    assert len(rig.files()) == 1


async def test_a_download_that_spans_a_key_rotation_is_stored_under_the_new_key(
    rig: MediaRig,
) -> None:
    """`rotate-key` while a file is being downloaded: its re-encryption pass only sees the
    files recorded so far, so the file being written (sealed with the key of its start)
    must not be recorded under the old key: the new key alone must read it afterwards."""
    rig.graph.add_media("media-1", JPEG)
    rig.graph.hold_downloads.set()
    message = image("media-1")
    assert await rig.post(message) == 200
    await eventually(rig.graph.held.is_set, what="the download to be held")
    store = rig.runtime.store
    assert isinstance(store, DurableStore)
    fresh = new_key()
    await store.rekey(Keyring([fresh, *store.keyring.keys]))
    assert await media_upkeep.reseal(store) == 0  # nothing recorded yet
    rig.graph.hold_downloads.clear()
    await rig.settle()
    media = rig.media(str(message["id"]))
    assert media["state"] == "stored"
    files = rig.runtime.media.files
    assert files.sealed_with(media["file"]) == Keyring([fresh]).active_id
    new_only = MediaStore(files.directory, lambda: Keyring([fresh]), files.slug)
    assert new_only.read(media["file"], str(message["id"])) == JPEG


async def erase_during_rotation(
    rig: MediaRig, monkeypatch: pytest.MonkeyPatch, owner: type[Any], step: str
) -> int:
    """One stored image; `rotate-key`'s re-encryption runs and is held at `owner.step`
    (a method run in a thread) while the image's user is erased and the erasure's sweep
    deletes the file; then it goes on. Returns what the rotation returned."""
    rig.graph.add_media("media-1", JPEG)
    await rig.post(image("media-1"))
    await rig.settle()
    assert len(rig.files()) == 1
    reached, release = threading.Event(), threading.Event()
    original = getattr(owner, step)

    def held(*args: Any) -> Any:
        reached.set()
        release.wait(10)
        return original(*args)

    monkeypatch.setattr(owner, step, held)
    store = rig.runtime.store
    assert isinstance(store, DurableStore)
    await store.rekey(Keyring([new_key(), *store.keyring.keys]))
    rotation = asyncio.create_task(media_upkeep.reseal(store))
    await eventually(reached.is_set, what=f"the rotation to reach {step}")
    deletion = rig.state.deletion(PHONE)
    assert deletion is not None
    await store.commit([deletion])
    await eventually(lambda: rig.files() == [], what="the erasure's sweep")
    release.set()
    return await rotation


async def test_a_file_erased_before_rotate_key_reaches_it_is_skipped(
    rig: MediaRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rotate-key` lists the files to re-encrypt, then takes them one by one; a user erased
    in between takes their file with them. The rotation skips it instead of failing halfway
    (the operator would have had to run it again)."""
    assert await erase_during_rotation(rig, monkeypatch, MediaStore, "reseal") == 0
    assert rig.files() == []


async def test_an_erasure_during_rotate_key_does_not_bring_the_file_back(
    rig: MediaRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`rotate-key` re-encrypts a file into a temp file renamed over it; the user is erased
    meanwhile and the erasure's sweep deletes the file. The rename must not bring the
    erased user's file back (until some later sweep): it goes once the rotation sees that
    no message names it any longer."""
    await erase_during_rotation(rig, monkeypatch, MediaWriter, "finish_sync")
    assert rig.files() == []
