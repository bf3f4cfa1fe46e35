"""sessions-admin and media: `show` lists them, `media` decrypts one, `verify` checks them,
backups carry them, `restore` brings them back, `rotate-key` re-encrypts them."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from admin.cli import main as admin_main
from bridge import simulate
from bridge.config import ProfileConfig
from bridge.media.store import MAGIC
from bridge.ops import logs
from bridge.persistence.files import temp_path
from bridge.persistence.keys import load_keyring
from bridge.store.durable import load_state
from tests.admin.support import admin, admin_json
from tests.conftest import APP_SECRET, eventually
from tests.fakes.audio import ogg_opus
from tests.fakes.graph import FakeGraph
from tests.fakes.threaded import serve_in_thread
from tests.fakes.transcribe import FakeTranscriber
from tests.load import post_signed_sync
from tests.media.support import PHONE, delivery, media_message, voice_note
from tests.test_cli import graph_env, start_serve

PHOTO = b"\xff\xd8\xff\xe0" + os.urandom(300_000)
AUDIO = ogg_opus(7.2)


@dataclass
class WithMedia:
    var: Path
    env: dict[str, str]
    photo_id: str  # wamids
    voice_id: str

    @property
    def media_dir(self) -> Path:
        return self.var / "profiles" / "default" / "media"

    def files(self) -> list[Path]:
        return sorted(self.media_dir.glob("*.wam"))


@pytest.fixture
def with_media(tmp_path: Path) -> Iterator[WithMedia]:
    """A stopped store that holds a photo and a transcribed voice note of PHONE."""
    graph, stt = FakeGraph(), FakeTranscriber()
    graph.add_media("media-photo", PHOTO)
    graph.add_media("media-voice", AUDIO, "audio/ogg; codecs=opus")
    with serve_in_thread(graph.app()) as graph_url, serve_in_thread(stt.app()) as stt_url:
        env = graph_env(tmp_path / "var", graph_url, BRIDGE_TRANSCRIBE_URL=stt_url)
        served = start_serve(tmp_path / "var", env=env)
        photo = media_message("image", "media-photo", PHOTO, "image/jpeg", caption="salado")
        voice = voice_note("media-voice", AUDIO)
        raw = simulate.encode(delivery(photo, voice))
        assert post_signed_sync(served.port, raw, APP_SECRET) == 200

        async def replies() -> None:
            await eventually(lambda: len(graph.bodies()) == 2, 15, "the replies")

        asyncio.run(replies())
        code, _ = served.stop()
        assert code == 0
    # The admin's shell: the same store, no Graph API.
    admin_env = {k: v for k, v in env.items() if not k.startswith("BRIDGE_TRANSCRIBE")}
    yield WithMedia(tmp_path / "var", admin_env, str(photo["id"]), str(voice["id"]))


def test_show_lists_each_media_entry(with_media: WithMedia) -> None:
    result = admin(["show", PHONE], with_media.env)
    assert result.returncode == 0, result.stderr
    assert f"media: image/jpeg, {len(PHOTO):,} bytes, stored (id {with_media.photo_id})" in (
        result.stdout
    )
    assert "[voice 0:07] quiero fotos de salado" in result.stdout
    assert f"media: audio/ogg, {len(AUDIO):,} bytes, 0:07, stored, transcribed" in result.stdout
    shown = admin_json(["show", PHONE], with_media.env)
    media = shown["messages"][1]["extra"]["media"]
    assert (media["transcript"], media["size"]) == ("quiero fotos de salado", len(AUDIO))
    exported = admin_json(["export", PHONE], with_media.env)
    assert exported[0][1]["messages"][0]["extra"]["media"]["mime_type"] == "image/jpeg"


def test_media_writes_the_decrypted_file(with_media: WithMedia, tmp_path: Path) -> None:
    out = tmp_path / "photo.jpg"
    result = admin(
        ["media", "+34 600 000 001", with_media.photo_id, "-o", str(out)], with_media.env
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == PHOTO and out.stat().st_mode & 0o777 == 0o600
    missing = admin(["media", PHONE, "wamid.NOPE", "-o", str(out)], with_media.env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"sessions-admin: error: no message 'wamid.NOPE' in conversation '{PHONE}'"
    )


def test_media_output_takes_no_mode_from_a_temp_file_left_behind(
    with_media: WithMedia, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decrypted file is written to a temp file named after the process, then renamed.
    One a killed run left with a looser mode (a pid used again) must not pass that mode on
    to the next user's file: it is replaced, not reopened. In-process, so the pid is known."""
    for name, value in with_media.env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "photo.jpg"
    left = temp_path(out)
    left.write_bytes(b"an earlier run's half")
    left.chmod(0o644)
    try:
        assert admin_main(["media", PHONE, with_media.photo_id, "-o", str(out)]) == 0
    finally:
        logs.configure("console", "info")  # the CLI set warning; as tests/conftest.py sets it up
    assert out.read_bytes() == PHOTO and out.stat().st_mode & 0o777 == 0o600
    assert not left.exists()


def test_verify_checks_every_media_file(with_media: WithMedia) -> None:
    ok = admin_json(["verify"], with_media.env)
    assert (ok["media_files"], ok["media_bytes"]) == (2, len(PHOTO) + len(AUDIO))
    victim = with_media.files()[0]
    data = bytearray(victim.read_bytes())
    data[len(MAGIC) + 200] ^= 1
    victim.write_bytes(bytes(data))
    bad = admin(["verify"], with_media.env)
    assert bad.returncode == 1
    assert f"{victim}: frame" in bad.stderr and "does not decrypt" in bad.stderr
    assert "1 media file(s) damaged" in bad.stderr


def test_a_backup_carries_the_media_and_restore_brings_them_back(
    with_media: WithMedia, tmp_path: Path
) -> None:
    target = tmp_path / "offsite"
    result = admin(["backup", "--to", str(target)], with_media.env)
    assert result.returncode == 0, result.stderr
    archive = Path(result.stdout.strip())
    copies = sorted(Path(str(archive) + ".media").glob("*.wam"))
    assert [p.name for p in copies] == [p.name for p in with_media.files()]
    verified = admin_json(["verify", str(archive)], with_media.env)
    assert verified["media_files"] == 2 and verified["media_missing"] == 0
    # The user asks to be forgotten: the files go with the conversation...
    assert admin(["delete", PHONE], with_media.env).returncode == 0
    assert with_media.files() == []
    # ... and a restore of the archive brings the conversation and its media back.
    restored = admin(["restore", str(archive)], with_media.env)
    assert restored.returncode == 0, restored.stderr
    assert len(with_media.files()) == 2
    out = tmp_path / "back.jpg"
    got = admin(["media", PHONE, with_media.photo_id, "-o", str(out)], with_media.env)
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == PHOTO
    assert admin_json(["verify"], with_media.env)["media_files"] == 2
    # Pruning an archive takes its media with it.
    again = admin(["backup", "--to", str(target), "--keep", "1"], with_media.env)
    assert again.returncode == 0, again.stderr
    newest = Path(again.stdout.strip())
    assert sorted(p.name for p in target.iterdir()) == [newest.name, newest.name + ".media"]


def test_rotate_key_re_encrypts_the_media(with_media: WithMedia, tmp_path: Path) -> None:
    profile = ProfileConfig(slug="default", state_dir=with_media.var / "profiles" / "default")
    before = {p.name: p.read_bytes() for p in with_media.files()}
    result = admin(["rotate-key"], with_media.env)
    assert result.returncode == 0, result.stderr
    keyring = load_keyring(profile, create=False)
    after = {p.name: p.read_bytes() for p in with_media.files()}
    assert after.keys() == before.keys() and all(after[n] != before[n] for n in after)
    assert all(keyring.active_id in data[: len(MAGIC) + 4 + 8] for data in after.values())
    out = tmp_path / "photo.jpg"
    # Only the new key: the old one is no longer needed for any media file.
    env = {**with_media.env, "BRIDGE_KEY": base64.urlsafe_b64encode(keyring.keys[0]).decode()}
    got = admin(["media", PHONE, with_media.photo_id, "-o", str(out)], env)
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == PHOTO
    assert load_state(profile).media_files
