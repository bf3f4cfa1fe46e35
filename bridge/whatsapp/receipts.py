"""Read receipts with the typing indicator, sent when the bridge takes a message to answer.

`POST /{phone_number_id}/messages` with `{"messaging_product": "whatsapp", "status": "read",
"message_id": <wamid>, "typing_indicator": {"type": "text"}}` (Cloud API "Typing
indicators"): the user sees the blue ticks and "typing..." until the reply arrives or 25 s
pass. Sent once per reply, never on a timer, in the background: a failure is logged and
never delays or blocks the reply.
"""

from __future__ import annotations

import asyncio

from bridge.ops.logs import get_logger
from bridge.whatsapp.sender import Sender, SendError

# A receipt later than this is worthless (the reply is on its way); give up.
TIMEOUT = 5.0


class ReadReceipts:
    """Calls `sender.mark_read` for each message a reply is being made for."""

    def __init__(self, sender: Sender, *, profile: str) -> None:
        self._sender = sender
        self._log = get_logger(profile=profile)
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, message_id: str) -> None:
        task = asyncio.create_task(self._mark(message_id), name="read-receipt")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _mark(self, message_id: str) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                await self._sender.mark_read(message_id)
        except (SendError, TimeoutError) as exc:
            self._log.info(
                "read_receipt_failed", message_id=message_id, error=str(exc) or "timed out"
            )

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
