"""`upload_media`: the Graph client fetches a file from a real local HTTP server, uploads it
to the fake Graph API's `/media` endpoint (multipart, as Meta documents it) and sends it by
id; each way a fetch or an upload can fail is a SendError the outbox knows what to do with."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pytest_aiohttp import AiohttpServer

from bridge.whatsapp.graph import GraphClient
from bridge.whatsapp.sender import OutboundMedia, SendError
from bridge.whatsapp.upload import MediaFetcher
from tests.fakes.graph import TOKEN, FakeGraph

PHONE_NUMBER_ID = "1234"
ANA = "34600000001"
JPEG = b"\xff\xd8\xff\xe0" + b"salado" * 1000 + b"\xff\xd9"
PDF = b"%PDF-1.4\n" + b"lista de precios\n" * 100
LIMIT = 64 * 1024  # the test's image limit


@dataclass
class FileServer:
    """A shop's own server, which Meta could not reach: serves the files, scripts trouble."""

    base: str = ""
    headers: list[dict[str, str]] = field(default_factory=list)
    flaky: int = 0  # the next N requests answer 503

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        if self.flaky:
            self.flaky -= 1
            return web.Response(status=503, text="busy")
        name = request.match_info["name"]
        if name == "salado.jpg":
            return web.Response(body=JPEG, content_type="image/jpeg")
        if name == "octet-salado.jpg":
            return web.Response(body=JPEG, content_type="application/octet-stream")
        if name == "lista.pdf":
            return web.Response(body=PDF, content_type="application/pdf")
        if name == "page.jpg":
            return web.Response(text="<html>login</html>", content_type="text/html")
        if name == "empty.jpg":
            return web.Response(body=b"", content_type="image/jpeg")
        if name == "big.jpg":
            return web.Response(body=b"x" * (LIMIT + 1), content_type="image/jpeg")
        if name in ("streamed-big.jpg", "slow.jpg"):
            resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for _ in range(LIMIT // 4096 + 2):
                await resp.write(b"x" * 4096)
                if name == "slow.jpg":
                    await asyncio.sleep(5)
            return resp
        return web.Response(status=404, text="not found")

    def url(self, name: str) -> str:
        return f"{self.base}/files/{name}"


@pytest.fixture
async def files(aiohttp_server: AiohttpServer) -> FileServer:
    server = FileServer()
    app = web.Application()
    app.router.add_get("/files/{name}", server.handle)
    server.base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    return server


@pytest.fixture
async def fake() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
async def graph_url(fake: FakeGraph, aiohttp_server: AiohttpServer) -> str:
    return str((await aiohttp_server(fake.app())).make_url("")).rstrip("/")


@pytest.fixture
async def client(graph_url: str) -> AsyncIterator[GraphClient]:
    fetcher = MediaFetcher(lambda kind: LIMIT if kind == "image" else 1 << 20, stall=1.0)
    client = GraphClient(
        graph_url, "v21.0", PHONE_NUMBER_ID, TOKEN, timeout=3, upload_media=fetcher
    )
    yield client
    await client.close()


def uploads(fake: FakeGraph) -> list[Any]:
    return [r.json for r in fake.received if r.path.endswith("/media")]


async def test_a_file_is_fetched_uploaded_and_sent_by_its_id(
    fake: FakeGraph, files: FileServer, client: GraphClient
) -> None:
    media = OutboundMedia("image", files.url("salado.jpg"), caption="Salado")
    assert await client.send_media(ANA, media, 1, "r1") == ["wamid.FAKE000002"]
    ((media_id, upload),) = fake.uploads.items()
    assert (upload.data, upload.mime_type) == (JPEG, "image/jpeg")
    assert uploads(fake) == [{"messaging_product": "whatsapp", "type": "image/jpeg"}]
    (request,) = [r for r in fake.received if r.path.endswith("/media")]
    assert request.path == f"/v21.0/{PHONE_NUMBER_ID}/media"
    assert request.headers["Content-Type"].startswith("multipart/form-data")
    assert fake.sent == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": ANA,
            "type": "image",
            "image": {"id": media_id, "caption": "Salado"},
            "biz_opaque_callback_data": "r1:1",
        }
    ]
    # The Graph token goes to Meta only, never to the file's server.
    assert [h.get("Authorization") for h in files.headers] == [None]


async def test_a_document_keeps_its_filename_and_a_generic_type_is_read_from_the_url(
    fake: FakeGraph, files: FileServer, client: GraphClient
) -> None:
    await client.send_media(
        ANA, OutboundMedia("document", files.url("lista.pdf"), filename="Precios.pdf"), 0
    )
    await client.send_media(ANA, OutboundMedia("image", files.url("octet-salado.jpg")), 1)
    assert [u.mime_type for u in fake.uploads.values()] == ["application/pdf", "image/jpeg"]
    first, second = fake.sent
    assert set(first["document"]) == {"id", "filename"}
    assert first["document"]["filename"] == "Precios.pdf"
    assert set(second["image"]) == {"id"}


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("missing.jpg", "HTTP 404"),
        ("page.jpg", "text/html, which WhatsApp does not take for image"),
        ("big.jpg", "larger than the image limit"),
        ("streamed-big.jpg", "larger than the image limit"),
        ("empty.jpg", "is empty"),
    ],
)
async def test_a_file_that_cannot_be_sent_fails_for_good_before_meta_is_asked(
    fake: FakeGraph, files: FileServer, client: GraphClient, name: str, error: str
) -> None:
    with pytest.raises(SendError, match=error) as failed:
        await client.send_media(ANA, OutboundMedia("image", files.url(name)), 0)
    assert not failed.value.retryable and not failed.value.uncertain
    assert uploads(fake) == [] and fake.requests == []


async def test_a_busy_or_stalled_file_server_is_retried_never_uncertain(
    fake: FakeGraph, files: FileServer, client: GraphClient
) -> None:
    files.flaky = 1
    with pytest.raises(SendError, match="HTTP 503") as busy:
        await client.send_media(ANA, OutboundMedia("image", files.url("salado.jpg")), 0)
    assert busy.value.retryable and not busy.value.uncertain
    with pytest.raises(SendError, match="timed out") as stalled:
        await client.send_media(ANA, OutboundMedia("image", files.url("slow.jpg")), 0)
    assert stalled.value.retryable and not stalled.value.uncertain
    unreachable = OutboundMedia("image", "http://127.0.0.1:9/salado.jpg")
    with pytest.raises(SendError, match="failed") as down:
        await client.send_media(ANA, unreachable, 0)
    assert down.value.retryable and not down.value.uncertain
    assert uploads(fake) == [] and fake.requests == []
    # Once the server answers, the same part goes out.
    await client.send_media(ANA, OutboundMedia("image", files.url("salado.jpg")), 0)
    assert len(fake.sent) == 1


async def test_a_failed_upload_is_retried_and_a_bad_token_is_an_auth_error(
    fake: FakeGraph, files: FileServer, client: GraphClient, graph_url: str
) -> None:
    fake.upload_failures.append(500)
    with pytest.raises(SendError, match="media upload") as failed:
        await client.send_media(ANA, OutboundMedia("image", files.url("salado.jpg")), 0)
    assert failed.value.retryable and not failed.value.uncertain
    assert fake.uploads == {} and fake.requests == []
    wrong = GraphClient(graph_url, "v21.0", PHONE_NUMBER_ID, "expired", upload_media=MediaFetcher())
    try:
        with pytest.raises(SendError) as auth:
            await wrong.send_media(ANA, OutboundMedia("image", files.url("salado.jpg")), 0)
    finally:
        await wrong.close()
    assert auth.value.auth and auth.value.code == 190 and not auth.value.uncertain


async def post(url: str, **kwargs: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
        session.post(url, **kwargs) as resp,
    ):
        return resp.status, await resp.json()


def form(**fields: Any) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in fields.items():
        if isinstance(value, bytes):
            data.add_field(name, value, filename="f", content_type="application/octet-stream")
        else:
            data.add_field(name, value)
    return data


async def test_the_fake_checks_uploads_and_ids_like_meta(fake: FakeGraph, graph_url: str) -> None:
    media_url = f"{graph_url}/v21.0/{PHONE_NUMBER_ID}/media"
    for fields in (
        {"type": "image/jpeg", "file": JPEG},  # no messaging_product
        {"messaging_product": "whatsapp", "type": "image/gif", "file": JPEG},
        {"messaging_product": "whatsapp", "type": "image/jpeg", "file": "not a file"},
        {"messaging_product": "whatsapp", "type": "image/jpeg", "file": b""},
    ):
        status, answer = await post(media_url, data=form(**fields))
        assert status == 400 and answer["error"]["code"] == 100, fields
    status, answer = await post(
        media_url, data=form(messaging_product="whatsapp", type="application/pdf", file=PDF)
    )
    assert status == 200
    pdf_id = answer["id"]
    messages = f"{graph_url}/v21.0/{PHONE_NUMBER_ID}/messages"
    base = {"messaging_product": "whatsapp", "to": ANA}
    for part in (
        {"image": {"id": "999999"}},  # never uploaded
        {"image": {"id": pdf_id}},  # a PDF is no image
        {"image": {"id": pdf_id, "link": "https://x/y.jpg"}},  # both
    ):
        kind = next(iter(part))
        status, answer = await post(messages, json={**base, "type": kind, **part})
        assert status == 400 and answer["error"]["code"] == 100, part
    status, _ = await post(messages, json={**base, "type": "document", "document": {"id": pdf_id}})
    assert status == 200


async def test_a_password_in_the_file_url_is_never_in_the_error(
    fake: FakeGraph, files: FileServer, client: GraphClient
) -> None:
    """An internal catalogue's URL may carry its credentials (`https://user:pass@host/...`):
    the error a failed fetch makes is logged and recorded in the history, so it shows the
    URL without them, as it already shows it without its query."""
    with_password = files.url("missing.jpg").replace("http://", "http://shop:s3cret@", 1)
    with pytest.raises(SendError, match="HTTP 404") as failed:
        await client.send_media(ANA, OutboundMedia("image", with_password), 0)
    assert "s3cret" not in str(failed.value)
    assert files.headers[-1].get("Authorization", "").startswith("Basic ")
