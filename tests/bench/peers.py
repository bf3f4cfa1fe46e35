"""The servers the bridge is measured against in `webhook_load`, and the fake Graph API it sends to.

Each is the source of a small program run in its own process (pinned like the bridge):
- `BARE`: an aiohttp handler that reads the body and answers 200, on asyncio or uvloop: the
  floor any aiohttp service sits on.
- `PYWA`: pywa (the best-known Python WhatsApp framework) on FastAPI + uvicorn[standard]
  (uvloop + httptools), in a venv of its own, doing the work a fair peer does: it checks the
  signature (pywa's `validate_updates`), skips redelivered bodies (pywa's
  `skip_duplicate_updates`) and message ids it has seen, and keeps a capped history per
  phone. It keeps nothing durable and sends no reply.
- `GRAPH`: a minimal Graph API that accepts every send with a new wamid, so the bridge's
  replies really go out over HTTP (the full fake, tests/fakes/graph.py, records every request
  and would cost the core wrk runs on more than the sends are worth measuring).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PYWA_VERSION = "4.5.0"
PYWA_VENV = Path("var/bench/pywa-venv")

BARE = """
import asyncio, sys
from aiohttp import web
async def handle(request):
    await request.read()
    return web.Response(text="ok")
app = web.Application()
app.router.add_post("/webhook", handle)
app.router.add_get("/readyz", lambda r: web.Response(text="ok"))
loop = None
if sys.argv[2] == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)
"""

PYWA = """
import sys
from collections import defaultdict, deque
import uvicorn
from fastapi import FastAPI
from pywa_async import WhatsApp, types

HISTORY = 250
app = FastAPI()
wa = WhatsApp(
    server=app,
    webhook_endpoint="/webhook",
    verify_token="v",
    app_secret=sys.argv[2],
    validate_updates=True,
    skip_duplicate_updates=True,
)
history = defaultdict(lambda: deque(maxlen=HISTORY))
seen = set()

@wa.on_message()
async def on_message(_: WhatsApp, msg: types.Message) -> None:
    if msg.id in seen:
        return
    seen.add(msg.id)
    history[msg.from_user.wa_id].append((msg.id, msg.timestamp, msg.text))

@app.get("/readyz")
async def readyz() -> dict[str, int]:
    return {"messages": sum(len(h) for h in history.values())}

uvicorn.run(
    app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
    log_level="warning", access_log=False,
)
"""

GRAPH = """
import itertools, sys
import orjson, uvloop
from aiohttp import web
ids = itertools.count()
async def send(request):
    await request.read()
    return web.json_response(
        {"messaging_product": "whatsapp", "messages": [{"id": f"wamid.BENCH{next(ids)}"}]},
        dumps=lambda v: orjson.dumps(v).decode(),
    )
app = web.Application()
app.router.add_post("/{version}/{number}/messages", send)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None,
            loop=uvloop.new_event_loop())
"""


def pywa_python(venv: Path = PYWA_VENV) -> Path:
    """The Python of pywa's own venv, created (with pip) on first use."""
    python = venv / "bin" / "python"
    marker = venv / f".pywa-{PYWA_VERSION}"
    if not marker.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                f"pywa=={PYWA_VERSION}",
                "fastapi",
                "uvicorn[standard]",
            ],
            check=True,
        )
        marker.touch()
    return python
