"""Log output: JSON lines a log shipper can parse, on binary and text streams alike."""

from __future__ import annotations

import asyncio
import base64
import errno
import io
import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bridge import simulate
from bridge.config import ProfileConfig
from bridge.errors import StorageError
from bridge.ops import logs
from bridge.persistence import layout
from bridge.store.durable import DurableStore, load_state
from tests.conftest import APP_SECRET, make_profile
from tests.load import post_signed_sync
from tests.persistence.support import user
from tests.test_cli import BRIDGE, clean_env, free_port, parse_log, start_serve, wait_ready
from tests.tmpfs import fill, mounted_tmpfs


@pytest.fixture(autouse=True)
def restore_test_logging() -> object:
    yield None
    logs.configure("console", "info")  # as tests/conftest.py sets it up


@pytest.mark.parametrize("cache", [False, True])
def test_json_lines_on_a_binary_backed_stream(cache: bool) -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")
    logs.configure("json", "info", stream, cache=cache)
    log = logs.get_logger(profile="shop")
    log.info("reply_sent", to=logs.mask("34600000001"), parts=1)
    log.debug("hidden_at_info")
    lines = [json.loads(line) for line in raw.getvalue().decode().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["event"] == "reply_sent" and line["level"] == "info"
    assert line["profile"] == "shop" and line["to"] == "346*****001" and line["parts"] == 1
    assert line["timestamp"].endswith("Z")


def test_json_lines_on_a_text_only_stream() -> None:
    stream = io.StringIO()
    logs.configure("json", "warning", stream)
    logs.get_logger().warning("disk_low", free_mb=12, path=io)  # not JSON-native: repr'd
    line = json.loads(stream.getvalue())
    assert line["event"] == "disk_low" and line["free_mb"] == 12
    assert "module 'io'" in line["path"]


def test_a_stream_given_only_inline_is_kept_open() -> None:
    raw = io.BytesIO()
    logs.configure("json", "info", io.TextIOWrapper(raw, encoding="utf-8"))
    logs.get_logger().info("still_writable")  # the wrapper above was not kept by the caller
    assert b"still_writable" in raw.getvalue()


class FullDisk(io.StringIO):
    """A text stream on a disk that can fill up: writes fail with ENOSPC while `full`."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    def write(self, text: str) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(text)


def test_lines_of_the_loop_are_handed_over_once_a_turn_in_order_and_after_it_closes() -> None:
    raw = io.BytesIO()
    logs.configure("json", "info", io.TextIOWrapper(raw, encoding="utf-8"), background=True)
    log = logs.get_logger()
    sink = logs._sink
    assert sink is not None
    handed: list[int] = []
    original = sink._hand_over

    def counting() -> None:
        handed.append(len(sink._batch))
        original()

    sink._hand_over = counting  # type: ignore[method-assign]

    async def serve() -> None:
        logs.batch_on(asyncio.get_running_loop())
        for n in range(5):
            log.info("in_one_turn", n=n)
        await asyncio.sleep(0)  # the turn ends: handed over together
        log.info("next_turn", n=5)
        await asyncio.sleep(0)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(serve())
    loop.close()
    log.info("after_the_loop", n=6)  # its loop is closed: written all the same
    logs.foreground()
    assert handed == [5, 1, 1]  # a turn of five, a turn of one, then at once
    lines = [json.loads(line) for line in raw.getvalue().decode().splitlines()]
    assert [line["n"] for line in lines] == list(range(7))


@pytest.mark.parametrize("background", [False, True])
def test_a_failing_log_write_is_swallowed_counted_and_reported_once_writable(
    background: bool,
) -> None:
    stream = FullDisk()
    logs.configure("json", "info", stream, background=background)
    log = logs.get_logger(profile="shop")
    before = logs.lost_lines()
    stream.full = True
    for n in range(3):
        log.error("journal_write_failed", n=n)  # must not raise
    logs.foreground()  # the writer thread's queue tried, when there is one
    assert logs.lost_lines() == before + 3
    stream.full = False
    log.info("back")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["event"], line.get("lost")) for line in lines] == [
        ("log_lines_lost", 3),
        ("back", None),
    ]
    assert lines[0]["level"] == "warning"


def test_a_closed_binary_stream_is_a_lost_line_not_an_error() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")
    logs.configure("json", "info", stream)
    before = logs.lost_lines()
    raw.close()  # writing now raises ValueError
    logs.get_logger().warning("nobody_listens")
    assert logs.lost_lines() == before + 1


def test_in_the_background_a_log_nobody_reads_never_blocks_the_caller() -> None:
    """The server's sink: a pipe whose reader is stuck (a busy disk, a stalled journald)
    fills up, and the code that logs goes on; every line arrives later, whole and in order."""
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "w")
    logs.configure("json", "info", stream, background=True)
    log = logs.get_logger(profile="shop")
    started = time.monotonic()
    for n in range(20_000):  # about 2 MB: far more than a pipe holds (64 KB)
        log.info("delivery_recorded", n=n, padding="x" * 40)
    assert time.monotonic() - started < 5  # written directly, this would block for good
    received = bytearray()
    reader = os.fdopen(read_end, "rb")
    while received.count(b"\n") < 20_000:
        chunk = reader.read1(1 << 16)
        assert chunk, "the log writer stopped"
        received += chunk
    logs.configure("console", "info")  # the writer thread ends
    stream.close()
    reader.close()
    numbers = [json.loads(line)["n"] for line in received.decode().splitlines()]
    assert numbers == list(range(20_000))


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_value_the_renderer_refuses_still_gives_a_line(log_format: str) -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

        __str__ = __repr__

    stream = io.StringIO()
    logs.configure(log_format, "info", stream)
    logs.get_logger().info("odd_values", big=2**70, odd=Unprintable())  # must not raise
    assert "odd_values" in stream.getvalue()


async def test_the_journal_writer_survives_a_log_that_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer logs its own disk error; that log failing too must not kill it."""
    stream = FullDisk()
    logs.configure("json", "info", stream)
    store = DurableStore(make_profile(tmp_path))
    await store.open()
    try:
        real_write = os.write

        def disk_full(fd: int, data: bytes | memoryview) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        stream.full = True
        monkeypatch.setattr(os, "write", disk_full)
        with pytest.raises(StorageError, match="No space left"):
            async with asyncio.timeout(5):  # a dead writer would never answer
                await store.commit([user("34600000001", 1)])
        monkeypatch.setattr(os, "write", real_write)
        async with asyncio.timeout(5):
            await store.commit([user("34600000001", 2)])
        assert [m.content for m in store.state.conversations["34600000001"].messages] == ["hello 2"]
        stream.full = False
    finally:
        await store.close()
    assert "journal_write_failed" not in stream.getvalue()  # it was lost...
    assert '"event":"log_lines_lost"' in stream.getvalue()  # ...and counted


# --- a real `bridge serve` with its log on a disk that fills up -------------------------------


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _post(port: int, raw: bytes) -> int:
    return post_signed_sync(port, raw, APP_SECRET)


def _delivery(n: int) -> tuple[str, bytes]:
    message = simulate.text_message(f"disk full {n}", f"3462{n:07d}")
    return str(message["id"]), simulate.encode(simulate.delivery(simulate.change_value([message])))


def test_serve_keeps_its_promises_when_the_log_disk_and_then_the_state_disk_fill(
    tmp_path: Path,
) -> None:
    """Log on one full tmpfs, state on another: 200 while only the log is full, 503 while the
    journal is, 200 again once space returns, and SIGTERM still exits 0 with a snapshot."""
    with (
        mounted_tmpfs(tmp_path / "logdisk", "1m") as logdisk,
        mounted_tmpfs(tmp_path / "statedisk", "2m") as statedisk,
    ):
        var = statedisk / "var"
        port = free_port()
        env = clean_env(
            BRIDGE_APP_SECRET=APP_SECRET,
            BRIDGE_VERIFY_TOKEN="v",
            BRIDGE_VAR_DIR=str(var),
            BRIDGE_PORT=str(port),
        )
        log_path = logdisk / "bridge.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [*BRIDGE, "serve", "--log-format", "json"],
                env=env,
                stdout=log,
                stderr=log,
                text=True,
            )
        try:
            wait_ready(port, proc, log_path)
            acked: list[str] = []

            def deliver(n: int) -> int:
                wamid, raw = _delivery(n)
                status = _post(port, raw)
                if status == 200:
                    acked.append(wamid)
                return status

            log_filler = fill(logdisk)
            assert [deliver(n) for n in range(5)] == [200] * 5, "a full log disk changes nothing"
            state_filler = fill(statedisk)
            # The segment's last page may still take a few records before the disk says no.
            statuses = [deliver(n) for n in range(5, 105)]
            assert 503 in statuses, "journal full: 503, so Meta retries"
            # A failed write gives back the bytes it took, so one small delivery may still fit
            # now and then (and is then durable: every 200 is checked below); a full disk
            # must still refuse nearly everything from the first 503 on.
            after = statuses[statuses.index(503) :]
            assert after.count(503) >= 0.9 * len(after), after
            state_filler.unlink()
            assert [deliver(n) for n in range(200, 205)] == [200] * 5, "space is back: 200 again"
            log_filler.unlink()
            assert deliver(205) == 200
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # The line being written when the disk filled stays torn (half of it was written);
        # every other line is whole JSON, and the count of lost lines follows the torn one.
        lines = log_path.read_text().splitlines()
        torn = [i for i, line in enumerate(lines) if not _is_json(line)]
        assert len(torn) <= 1, torn
        events = parse_log("\n".join(line for line in lines if _is_json(line)))
        names = [e["event"] for e in events]
        assert "log_lines_lost" in names and names[-1] == "bridge_stopped"
        assert "Traceback" not in log_path.read_text()
        profile = ProfileConfig(slug="default", state_dir=var / "profiles" / "default")
        assert layout.snapshot_path(profile.state_dir).exists(), "the final snapshot was written"
        stored = load_state(profile)
        ids = [
            m.id
            for c in stored.conversations.values()
            for m in c.messages
            if m.role == "user" and m.id
        ]
        assert sorted(ids) == sorted(acked)


# --- wamids: logged as keyed hashes only -------------------------------------------------------


def realistic_wamid(phone: str) -> str:
    """A wamid as Meta makes them: base64 of a structure that embeds the sender's phone."""
    inner = b"\x18" + bytes([len(phone)]) + phone.encode() + b"\x15\x02\x00\x12\x18\x14"
    return "wamid." + base64.b64encode(inner + secrets.token_hex(10).upper().encode()).decode()


def test_message_id_fields_are_logged_as_keyed_hashes() -> None:
    stream = io.StringIO()
    logs.configure("json", "debug", stream)
    wamid, other = realistic_wamid("34612345678"), realistic_wamid("34699999999")
    key = secrets.token_bytes(32)
    logs.set_log_id_key("shop", key)
    log = logs.get_logger(profile="shop")
    log.info("delivery_recorded", message_ids=[wamid, other])
    log.debug("reply_queued", message_id=wamid, reply_id="out.1234")
    logs.get_logger(profile="elsewhere").info("seen", wamid=wamid)
    text = stream.getvalue()
    assert wamid not in text and other not in text and "34612345678" not in text
    first, second, third = (json.loads(line) for line in text.splitlines())
    hashed = logs.log_id(wamid, key=key)
    assert len(hashed) == 12 and int(hashed, 16) >= 0
    assert first["message_ids"] == [hashed, logs.log_id(other, "shop")]
    assert second["message_id"] == hashed and second["reply_id"] == "out.1234"
    assert third["wamid"] != hashed, "another profile hashes under another key"


def test_the_log_id_key_comes_from_the_oldest_encryption_key() -> None:
    oldest, newer = secrets.token_bytes(32), secrets.token_bytes(32)
    assert logs.log_id_key([oldest]) == logs.log_id_key([newer, oldest]), "survives rotate-key"
    assert logs.log_id_key([oldest]) != logs.log_id_key([newer])
    assert oldest not in logs.log_id_key([oldest])


def test_serve_logs_no_wamid_and_no_phone_and_the_same_hash_after_a_restart(
    tmp_path: Path,
) -> None:
    """A delivery from a known phone through a real `bridge serve`, whose assistant is down (so
    the message stays unanswered and is taken up again after the restart, logging its id)."""
    phone = "34612345678"
    wamid = realistic_wamid(phone)
    var = tmp_path / "var"
    env = clean_env(
        BRIDGE_APP_SECRET=APP_SECRET,
        BRIDGE_VERIFY_TOKEN="v",
        BRIDGE_VAR_DIR=str(var),
        BRIDGE_PORT=str(free_port()),
        BRIDGE_ASSISTANT="http",
        BRIDGE_ASSISTANT_URL=f"http://127.0.0.1:{free_port()}/reply",  # nobody listens
    )
    message = simulate.text_message("hola", phone, wamid=wamid)
    raw = simulate.encode(simulate.delivery(simulate.change_value([message])))
    texts = []
    for run in (1, 2):
        server = start_serve(var, env=env)
        if run == 1:
            assert _post(server.port, raw) == 200
        waited = time.monotonic() + 10
        while '"no_reply"' not in server.log_path.read_text() and time.monotonic() < waited:
            time.sleep(0.05)
        code, _ = server.stop()
        assert code == 0
        texts.append(server.log_path.read_text())
    hashed = subprocess.run(
        [*BRIDGE, "log-id", wamid],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for text in texts:
        assert wamid not in text and wamid[6:] not in text
        assert phone not in text, "no phone number in the logs"
    first, second = (parse_log(text) for text in texts)
    recorded = next(e for e in first if e["event"] == "delivery_recorded")
    assert recorded["message_ids"] == [hashed]
    failed = [e["message_id"] for e in first + second if e["event"] == "assistant_failed"]
    assert failed == [hashed, hashed], "the same hash before and after the restart"
