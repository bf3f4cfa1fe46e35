"""The WhatsApp Cloud API (Graph API) client: send text replies, check the number is reachable.

`POST {graph}/{version}/{phone_number_id}/messages` with a bearer token; Meta answers
`{"messages": [{"id": "wamid..."}]}` or `{"error": {"code", "message", ...}}`. Error codes
(Meta's "Error codes" reference for the Cloud API):
- 130429 throughput limit, 131056 pair rate limit, 80007/4/17/32/613 rate limits,
  131000/131016 something went wrong / service unavailable: temporary, retry later.
- 190 access token expired or invalid (also HTTP 401): keep the reply, alert the operator.
- 131047 re-engagement: more than 24 h since the user's last message, free-form text is
  refused; retrying cannot help.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from bridge.config import ProfileConfig
from bridge.whatsapp.sender import Sender, SendError, split_text

RETRYABLE_CODES = frozenset({130429, 131056, 80007, 4, 17, 32, 613, 131000, 131016, 2})
AUTH_CODES = frozenset({190})
WINDOW_CLOSED = 131047


class PartialSendError(SendError):
    """Some parts of a split reply were sent before a part failed.

    `sent_ids` are the wamids of the parts that went out, in order; a retry passes
    `skip_parts=len(sent_ids)` so the user never receives a part twice.
    """

    def __init__(self, cause: SendError, sent_ids: list[str]) -> None:
        super().__init__(str(cause), cause.code, cause.retryable, cause.auth)
        self.sent_ids = sent_ids


class GraphClient(Sender):
    def __init__(
        self,
        base_url: str,
        version: str,
        phone_number_id: str,
        access_token: str,
        timeout: float = 15.0,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/{version}/{phone_number_id}"
        self._token = access_token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_profile(cls, profile: ProfileConfig) -> GraphClient:
        if not profile.access_token or not profile.phone_number_id:
            raise ValueError("GraphClient needs an access token and a phone_number_id")
        return cls(
            profile.graph_url, profile.graph_version, profile.phone_number_id, profile.access_token
        )

    def _client(self) -> aiohttp.ClientSession:
        # Created on first use so it binds to the running loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers={"Authorization": f"Bearer {self._token}"}
            )
        return self._session

    async def send_text(self, to: str, text: str, skip_parts: int = 0) -> list[str]:
        """Send each part of `text` in order; returns the wamid of every part sent now."""
        sent: list[str] = []
        for part in split_text(text)[skip_parts:]:
            body = {
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": to,
                "type": "text",
                "text": {"preview_url": False, "body": part},
            }
            try:
                sent.append(await self._post_message(body))
            except SendError as exc:
                if sent:
                    raise PartialSendError(exc, sent) from None
                raise
        return sent

    async def _post_message(self, body: dict[str, Any]) -> str:
        data = await self._request("POST", f"{self._url}/messages", body)
        try:
            return str(data["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise SendError("Graph API answered without a message id", retryable=False) from None

    async def check(self) -> None:
        """A cheap authenticated read of the phone number: token valid, number reachable."""
        await self._request("GET", f"{self._url}?fields=id", None)

    async def _request(self, method: str, url: str, body: dict[str, Any] | None) -> Any:
        try:
            async with self._client().request(method, url, json=body) as resp:
                try:
                    data = await resp.json(content_type=None)
                except ValueError:
                    data = None
                if resp.status < 300 and isinstance(data, dict):
                    return data
                raise _error(resp.status, data)
        except SendError:
            raise
        except TimeoutError:
            raise SendError("Graph API timed out", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise SendError(f"Graph API unreachable: {exc}", retryable=True) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            # Let the connector's transports close before the loop goes (aiohttp's advice).
            await asyncio.sleep(0)


def _error(status: int, data: Any) -> SendError:
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return SendError(f"Graph API HTTP {status}", retryable=status >= 500 or status == 429)
    code = error.get("code")
    code = code if isinstance(code, int) else None
    message = str(error.get("message") or "error")[:300]
    details = (
        error.get("error_data", {}).get("details")
        if isinstance(error.get("error_data"), dict)
        else None
    )
    text = f"{code}: {message}" + (f" ({details})" if details else "")
    if code in AUTH_CODES or status == 401:
        return SendError(text, code, retryable=True, auth=True)
    retryable = status >= 500 or status == 429 or code in RETRYABLE_CODES
    return SendError(text, code, retryable=retryable)
