"""Voice note durations read from the Ogg pages, without decoding."""

from __future__ import annotations

import os

from bridge.media.audio import Probe, ogg_duration_ms
from bridge.media.entry import audio_content, duration_text
from tests.fakes.audio import ogg_opus


def probe(data: bytes, step: int = 7000) -> int | None:
    found = Probe()
    for start in range(0, len(data), step):
        found.feed(data[start : start + step])
    return found.duration_ms()


def test_the_duration_of_an_ogg_opus_voice_note() -> None:
    assert probe(ogg_opus(7.2)) == 7200
    assert probe(ogg_opus(754.5, size=400_000), step=65536) == 754_500


def test_anything_else_has_no_duration() -> None:
    assert probe(b"\xff\xd8\xff\xe0" + os.urandom(10_000)) is None
    assert probe(b"ID3\x04" + os.urandom(10_000)) is None
    assert ogg_duration_ms(b"OggS", b"") is None
    no_position = b"OggS\0\0" + (-1).to_bytes(8, "little", signed=True) + bytes(12)
    assert ogg_duration_ms(b"OggS" + b"OpusHead" + bytes(12), no_position) is None


def test_durations_read_as_on_a_phone() -> None:
    assert [duration_text(ms) for ms in (0, 7_200, 65_000, 3_723_000)] == [
        "0:00",
        "0:07",
        "1:05",
        "1:02:03",
    ]
    voice = {"voice": True, "duration_ms": 7000}
    assert audio_content(voice, "hola") == "[voice 0:07] hola"
    assert audio_content({"duration_ms": 7000}, None) == "[audio 0:07]"
    assert audio_content({"voice": True}, "") == "[voice]"
