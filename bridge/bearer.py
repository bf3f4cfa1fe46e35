"""An HTTP client of one outside service that takes a bearer token (an assistant backend, a
transcription server): one `ClientSession`, made on first use, and the token kept out of
error messages.

The session is created on first use rather than up front because aiohttp binds a session to
the running event loop, and these clients are built before the loop starts. Once closed, a
client refuses to make a new session (which would leak) with the error its owner chooses.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp


class BearerClient:
    def __init__(
        self, api_key: str | None, timeout: float, closed: Callable[[], Exception]
    ) -> None:
        self._api_key = api_key
        self._timeout = timeout
        self._closed_error = closed
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise self._closed_error()
        if self._session is None:
            # No await between the check and the assignment, so concurrent first calls share one.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    def headers(self, **fields: str) -> dict[str, str]:
        """`fields` (with `_` for `-` in their names), and the bearer token when there is one."""
        out = {name.replace("_", "-"): value for name, value in fields.items()}
        if self._api_key:
            out["Authorization"] = f"Bearer {self._api_key}"
        return out

    def redact(self, text: str) -> str:
        """Some servers echo the credential they rejected; it must not reach the logs."""
        return text.replace(self._api_key, "***") if self._api_key else text

    async def close(self) -> None:
        """Close the session; idempotent, and later calls fail instead of leaking a new one."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
