"""Template messages: checked before they are queued, sent in Meta's documented shape, and
refused by the fake Graph API when malformed, as Meta refuses them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpServer

from bridge.whatsapp.graph import GraphClient
from bridge.whatsapp.sender import SendError
from bridge.whatsapp.template import TemplateError, build_template, template_from_json
from tests.fakes.graph import TOKEN, FakeGraph

PHONE_NUMBER_ID = "1234"
ANA = "34600000001"


@pytest.fixture
async def fake() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
async def base_url(fake: FakeGraph, aiohttp_server: AiohttpServer) -> str:
    return str((await aiohttp_server(fake.app())).make_url(""))


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[GraphClient]:
    client = GraphClient(base_url, "v21.0", PHONE_NUMBER_ID, TOKEN, timeout=2)
    yield client
    await client.close()


def test_a_template_reads_as_its_name_and_parameters() -> None:
    template = build_template("pedido_listo", "es", ["Ana", "1234"])
    assert template.readable() == "[template pedido_listo] Ana | 1234"
    assert build_template("hello_world", "en_US").readable() == "[template hello_world]"
    assert template_from_json(template.to_dict()) == template


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"name": "Pedido Listo", "language": "es"}, "template name"),
        ({"name": "pedido", "language": "spanish"}, "template language"),
        ({"name": "pedido"}, "needs language"),
        ({"name": "pedido", "language": "es", "lang": "es"}, "unknown template field"),
        ({"name": "pedido", "language": "es", "params": "Ana"}, "list of strings"),
        ({"name": "pedido", "language": "es", "params": [3]}, "parameter 1 must be a string"),
        ({"name": "pedido", "language": "es", "params": ["a", " "]}, "parameter 2 is empty"),
        ({"name": "pedido", "language": "es", "params": ["a\nb"]}, "newline"),
        ({"name": "pedido", "language": "es", "params": ["x" * 1025]}, "longer than"),
        ("pedido", "must be an object"),
    ],
)
def test_a_malformed_template_is_refused_with_the_reason(data: Any, error: str) -> None:
    with pytest.raises(TemplateError, match=error):
        template_from_json(data)


async def test_send_template_posts_metas_documented_body(
    fake: FakeGraph, client: GraphClient
) -> None:
    template = build_template("pedido_listo", "es", ["Ana", "1234"])
    assert await client.send_template(ANA, template, 0, "op.1") == ["wamid.FAKE000001"]
    assert fake.sent == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": ANA,
            "type": "template",
            "template": {
                "name": "pedido_listo",
                "language": {"code": "es"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": "Ana"},
                            {"type": "text", "text": "1234"},
                        ],
                    }
                ],
            },
            "biz_opaque_callback_data": "op.1:0",
        }
    ]


async def test_an_unapproved_template_or_wrong_parameter_count_is_metas_error(
    fake: FakeGraph, client: GraphClient
) -> None:
    fake.templates = {("pedido_listo", "es"): 2}
    with pytest.raises(SendError) as unknown:
        await client.send_template(ANA, build_template("pedido_listo", "en_US", ["a", "b"]))
    assert unknown.value.code == 132001 and not unknown.value.retryable
    with pytest.raises(SendError) as count:
        await client.send_template(ANA, build_template("pedido_listo", "es", ["a"]))
    assert count.value.code == 132000 and not count.value.retryable
    assert fake.sent == []


@pytest.mark.parametrize(
    "template",
    [
        {"language": {"code": "es"}},
        {"name": "pedido", "language": "es"},
        {"name": "pedido", "language": {"code": "es"}, "components": {"type": "body"}},
        {
            "name": "pedido",
            "language": {"code": "es"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": ""}]}],
        },
        {
            "name": "pedido",
            "language": {"code": "es"},
            "components": [{"type": "body", "parameters": ["Ana"]}],
        },
        {"name": "pedido", "language": {"code": "es"}, "components": [{"type": "footer"}]},
    ],
)
async def test_the_fake_refuses_a_malformed_template_like_meta(
    fake: FakeGraph, base_url: str, template: dict[str, Any]
) -> None:
    body = {"messaging_product": "whatsapp", "to": ANA, "type": "template", "template": template}
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
        session.post(f"{base_url}/v21.0/{PHONE_NUMBER_ID}/messages", json=body) as resp,
    ):
        answer = await resp.json()
    assert resp.status == 400
    assert answer["error"]["code"] == 100 and answer["error"]["error_data"]["details"]
    assert fake.sent == []
