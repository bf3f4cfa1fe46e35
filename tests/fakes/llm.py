"""A fake OpenAI-compatible `/v1/chat/completions` server for end-to-end tests.

It records every request, answers `Reply to: <last user content>`, and can be held shut
(`gate`) to play a slow model, or told to fail.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeLLM:
    requests: list[dict[str, Any]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    fail_status: int | None = None
    answer: str | None = None  # the answer to every request (default: `Reply to: <last>`)

    def __post_init__(self) -> None:
        self.gate.set()

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        await self.gate.wait()
        if self.fail_status is not None:
            return web.json_response(
                {"error": {"message": "model overloaded"}}, status=self.fail_status
            )
        last = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": self.answer or f"Reply to: {last}",
                        },
                        "finish_reason": "stop",
                    }
                ],
            }
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completions)
        return app
