"""The servers the bridge is measured against in `webhook_load`, and the fake Graph API it sends to.

Each is the source of a small program run in its own process (pinned like the bridge):
- `BARE`: an aiohttp handler that reads the body and answers 200, on asyncio or uvloop: the
  floor any aiohttp service sits on.
- `PYWA`: pywa (the best-known Python WhatsApp framework) on FastAPI + uvicorn[standard]
  (uvloop + httptools), in a venv of its own, doing the work a fair peer does: it checks the
  signature (pywa's `validate_updates`), skips redelivered bodies (pywa's
  `skip_duplicate_updates`) and message ids it has seen, and keeps a capped history per
  phone. It keeps nothing durable and sends no reply.
- `DURABLE`: the durable floor. The message path's work and nothing else, as plainly as it
  can be written on the same libraries: a raw HTTP/1.1 reader (wrk's requests only), the
  signature (HMAC), orjson, a seen-set, the message journaled (one AES-GCM frame and one
  fsync per group, in a thread) before the 200 and kept in a capped history; then the echo
  reply journaled, sent to the Graph API with the bridge's keep-alive client, and its
  outcome journaled. What it leaves out is everything else the bridge does: limits and
  timeouts on connections, Meta's message types read in full, keywords and modes, opening
  hours, the 24-hour window, pacing, one worker per user (replies in order), retries and
  uncertain sends, log lines, metrics, snapshots, replicas. It shows how far the durable
  work alone is from pywa, and so how much of the bridge's cost is the rest.
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

DURABLE = """
import asyncio, hmac, os, sys
from collections import defaultdict, deque
import orjson, uvloop
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from bridge.http.client import KeepAliveClient

PORT, SECRET, GRAPH, DIRECTORY = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3], sys.argv[4]
HISTORY = 250
aead = AESGCM(AESGCM.generate_key(bit_length=256))
fd = os.open(os.path.join(DIRECTORY, "journal"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
history = defaultdict(lambda: deque(maxlen=HISTORY))
seen = set()
counts = {"recorded": 0, "held": 0, "outbox": 0, "duplicates": 0, "failed": 0}
queued = []  # (record, future) waiting for the next group commit
wake = asyncio.Event()
sending = asyncio.Semaphore(8)
client = KeepAliveClient(GRAPH, timeout=10, headers={"Authorization": "Bearer x"})
JSON = {"Content-Type": "application/json"}

def append(frame):
    os.write(fd, frame)
    os.fsync(fd)

async def journal():
    # Group commit: whatever was queued meanwhile goes in one sealed frame and one fsync.
    loop = asyncio.get_running_loop()
    while True:
        await wake.wait()
        wake.clear()
        while queued:
            batch = queued[:]
            queued.clear()
            nonce = os.urandom(12)
            sealed = nonce + aead.encrypt(nonce, b"\\n".join(r for r, _ in batch), None)
            await loop.run_in_executor(None, append, len(sealed).to_bytes(4, "big") + sealed)
            for _, done in batch:
                done.set_result(None)

def commit(record):
    done = asyncio.get_running_loop().create_future()
    queued.append((orjson.dumps(record), done))
    wake.set()
    return done

async def reply(phone, text):
    # The echo reply: journaled before it is sent, sent (8 at a time, as the bridge's outbox),
    # its outcome journaled.
    counts["outbox"] += 1
    try:
        entry = {"t": "q", "to": phone, "x": text}
        await commit(entry)
        history[phone].append(entry)
        counts["held"] += 1
        body = orjson.dumps({"messaging_product": "whatsapp", "to": phone, "type": "text",
                             "text": {"body": text}})
        async with sending:
            status, answer = await client.request("POST", "/v21.0/1/messages", body, JSON)
        await commit({"t": "o", "w": orjson.loads(answer)["messages"][0]["id"], "s": status})
    except Exception as exc:
        counts["failed"] += 1
        print("send failed:", repr(exc), file=sys.stderr)
    finally:
        counts["outbox"] -= 1

async def deliver(body, signature):
    expected = "sha256=" + hmac.digest(SECRET, body, "sha256").hex()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        return b"401 Unauthorized", []
    value = orjson.loads(body)["entry"][0]["changes"][0]["value"]
    fresh = []
    for message in value.get("messages", ()):
        if message["id"] in seen:
            counts["duplicates"] += 1
            continue
        seen.add(message["id"])
        fresh.append(message)
    if fresh:
        await commit({"t": "m", "m": fresh})
    for message in fresh:
        history[message["from"]].append(message)
        counts["recorded"] += 1
        counts["held"] += 1
    return b"200 OK", fresh

def metrics():
    return "".join(f"whatsapp_bridge_{name}{{profile=\\"floor\\"}} {counts[key]}\\n"
                   for key, name in (("recorded", "messages_recorded_total"), ("held", "messages"),
                                     ("outbox", "outbox"), ("duplicates", "duplicates_total"),
                                     ("failed", "sends_failed_total"))).encode()

class Server(asyncio.Protocol):
    # HTTP/1.1 as wrk sends it (no pipelining): the head, a Content-Length body.
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        end = self.buffer.find(b"\\r\\n\\r\\n")
        if end < 0:
            return
        lines = self.buffer[:end].decode("latin-1").split("\\r\\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        length = int(headers.get("content-length", 0))
        if len(self.buffer) < end + 4 + length:
            return
        body, self.buffer = self.buffer[end + 4 : end + 4 + length], self.buffer[end + 4 + length :]
        if lines[0].startswith("GET"):
            self.answer(b"200 OK", metrics())
        else:
            asyncio.get_running_loop().create_task(self.post(body, headers))

    async def post(self, body, headers):
        status, fresh = await deliver(body, headers.get("x-hub-signature-256", ""))
        self.answer(status, b"ok")
        for message in fresh:
            asyncio.get_running_loop().create_task(reply(message["from"], message["text"]["body"]))

    def answer(self, status, body):
        self.transport.write(b"HTTP/1.1 " + status + b"\\r\\nContent-Length: "
                             + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)

async def main():
    asyncio.get_running_loop().create_task(journal())
    server = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", PORT)
    await server.serve_forever()

uvloop.run(main())
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
