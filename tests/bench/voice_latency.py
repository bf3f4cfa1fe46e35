"""From a voice note's 200 to its reply: fetch, check, store encrypted, transcribe, answer.

A real `bridge serve` (durable store, echo assistant, reply debounce 0) with a local fake
Graph API serving the notes and a local fake transcription server that answers after
`--transcribe-ms` (0: as fast as a local server on a short note can; a real faster-whisper
on a CPU takes roughly 0.3-1x the audio's length). Voice notes of `--seconds` of audio go
one at a time, each from another user; the time is from the webhook's 200 to the reply
reaching the fake Graph API, so it includes the media lookup, the download, the encrypted
store, the journal commits, the transcription, the assistant and the send.

Usage: python -m tests.bench.voice_latency [--notes 30] [--seconds 7] [--transcribe-ms 0]
       [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bridge import simulate
from tests.bench.webhook_load import free_port, wait_ready
from tests.fakes.audio import ogg_opus
from tests.fakes.graph import TOKEN, FakeGraph
from tests.fakes.threaded import serve_in_thread
from tests.fakes.transcribe import FakeTranscriber
from tests.load import post_signed_sync, publish, start_bridge_quietly
from tests.media.support import voice_note

SECRET = "voice-bench-secret"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--notes", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=7.0, help="length of each voice note")
    parser.add_argument("--transcribe-ms", type=float, default=0.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    graph, stt = FakeGraph(), FakeTranscriber()
    stt.delay = args.transcribe_ms / 1000
    audio = ogg_opus(args.seconds, os.urandom(16), size=int(args.seconds * 2000))  # ~16 kbit/s
    for n in range(args.notes):
        graph.add_media(f"media-{n}", audio, "audio/ogg; codecs=opus")
    latencies: list[float] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve_in_thread(graph.app()) as graph_url,
        serve_in_thread(stt.app()) as stt_url,
    ):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        env.update(
            BRIDGE_APP_SECRET=SECRET,
            BRIDGE_VERIFY_TOKEN="v",
            BRIDGE_VAR_DIR=str(Path(tmp) / "var"),
            BRIDGE_PORT=str(port),
            BRIDGE_ACCESS_TOKEN=TOKEN,
            BRIDGE_PHONE_NUMBER_ID="100000000000001",
            BRIDGE_GRAPH_URL=graph_url,
            BRIDGE_TRANSCRIBE_URL=stt_url,
            BRIDGE_REPLY_DEBOUNCE_SECONDS="0",
            BRIDGE_LOG_LEVEL="warning",
            BRIDGE_HEALTH_INTERVAL="3600",
        )
        proc = start_bridge_quietly(env)
        try:
            wait_ready(port)
            for n in range(args.notes):
                message = voice_note(f"media-{n}", audio, sender=f"3467{n:07d}")
                raw = simulate.encode(simulate.delivery(simulate.change_value([message])))
                before = len(graph.sent)
                status = post_signed_sync(port, raw, SECRET)
                acked = time.monotonic()
                if status != 200:
                    raise SystemExit(f"voice note {n}: HTTP {status}")
                deadline = acked + 60
                while len(graph.sent) == before:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"voice note {n}: no reply in 60 s")
                    time.sleep(0.001)
                latencies.append(time.monotonic() - acked)
            replies = graph.bodies()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    if not all("quiero fotos de salado" in r for r in replies):
        raise SystemExit(f"a reply without the transcript: {replies[:3]}")
    latencies.sort()
    ms = [x * 1000 for x in latencies]
    table = "\n".join(
        [
            f"{args.notes} voice notes of {args.seconds:g} s ({len(audio):,} bytes), one at a "
            f"time; transcription server answering after {args.transcribe_ms:g} ms",
            "",
            "| 200 -> reply sent | ms |",
            "|---|---|",
            f"| p50 | {statistics.median(ms):.0f} |",
            f"| p90 | {ms[int(len(ms) * 0.9) - 1]:.0f} |",
            f"| max | {ms[-1]:.0f} |",
        ]
    )
    publish(table, args.out)


if __name__ == "__main__":
    main()
