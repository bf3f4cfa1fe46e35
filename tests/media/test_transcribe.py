"""The transcription client against a fake OpenAI-compatible server over real HTTP."""

from __future__ import annotations

import pytest
from pytest_aiohttp import AiohttpServer

from bridge.config import TranscribeConfig
from bridge.errors import ConfigError
from bridge.media.transcribe import Transcriber, TranscriptionError, transcriptions_url
from tests.fakes.audio import ogg_opus
from tests.fakes.transcribe import FakeTranscriber


async def server(aiohttp_server: AiohttpServer) -> tuple[FakeTranscriber, str]:
    fake = FakeTranscriber()
    return fake, str((await aiohttp_server(fake.app())).make_url("")).rstrip("/")


@pytest.mark.parametrize(
    ("given", "endpoint"),
    [
        ("http://stt:8000", "http://stt:8000/v1/audio/transcriptions"),
        ("http://stt:8000/v1/", "http://stt:8000/v1/audio/transcriptions"),
        ("https://api.groq.com/openai/v1", "https://api.groq.com/openai/v1/audio/transcriptions"),
        ("http://stt/x/audio/transcriptions", "http://stt/x/audio/transcriptions"),
    ],
)
def test_the_endpoint_from_the_url_an_operator_pastes(given: str, endpoint: str) -> None:
    assert str(transcriptions_url(given)) == endpoint


def test_a_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="http:// or https://"):
        transcriptions_url("stt:8000")


async def test_the_multipart_request_carries_file_model_language_and_format(
    aiohttp_server: AiohttpServer,
) -> None:
    fake, url = await server(aiohttp_server)
    fake.model = "Systran/faster-whisper-small"
    client = Transcriber(
        TranscribeConfig(url=url, model=fake.model, api_key="sk-test", language="es")
    )
    audio = ogg_opus(3)
    try:
        text, seconds = await client.transcribe(audio, "audio/ogg; codecs=opus")
    finally:
        await client.close()
    assert text == "quiero fotos de salado" and seconds >= 0
    (request,) = fake.requests
    assert (request.model, request.language, request.response_format) == (
        fake.model,
        "es",
        "json",
    )
    assert (request.filename, request.content_type, request.size) == (
        "audio.ogg",
        "audio/ogg; codecs=opus",
        len(audio),
    )
    assert request.authorization == "Bearer sk-test"


async def test_server_errors_are_retryable_and_refusals_are_not(
    aiohttp_server: AiohttpServer,
) -> None:
    fake, url = await server(aiohttp_server)
    client = Transcriber(TranscribeConfig(url=url, model="other-model"))
    fake.failures.append(503)
    try:
        with pytest.raises(TranscriptionError) as busy:
            await client.transcribe(ogg_opus(1), "audio/ogg")
        assert busy.value.retryable
        with pytest.raises(TranscriptionError, match="model 'other-model' not found") as wrong:
            await client.transcribe(ogg_opus(1), "audio/ogg")
        assert not wrong.value.retryable
    finally:
        await client.close()


async def test_a_slow_server_times_out_as_retryable(aiohttp_server: AiohttpServer) -> None:
    fake, url = await server(aiohttp_server)
    fake.delay = 2
    client = Transcriber(TranscribeConfig(url=url, timeout=0.2))
    try:
        with pytest.raises(TranscriptionError, match="timed out") as slow:
            await client.transcribe(ogg_opus(1), "audio/ogg")
        assert slow.value.retryable
    finally:
        await client.close()
