"""Webhook throughput and latency under wrk: `bridge serve` (durable, encrypted) against a bare
aiohttp handler that only reads the body and answers 200, measured side by side in one run.

Deliveries are pre-generated and correctly signed, each with a unique message id, over 1,000
phones; wrk cycles through them from a Lua script. The warm-up run gets its own deliveries,
so the measured run records new messages only (a redelivery is far cheaper). The server is
pinned to core 0 and wrk to core 1 (taskset), since the machine has two.

Besides wrk's numbers, the server's CPU time per request is read from /proc (robust against
the other core's noise), and for the bridge the time until every reply to the measured
messages has been produced, journaled and sent: the acknowledgement rate alone would hide
reply work left queued behind the load.

Usage: python -m tests.bench.webhook_load [--seconds 10] [--connections 32] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bridge import simulate
from tests.load import publish

SECRET = "bench-app-secret"
LUA = """
local bodies, sigs = {}, {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
for line in io.lines("%(sigs)s") do sigs[#sigs + 1] = line end
local i = 0
request = function()
  i = i + 1
  local k = ((i - 1) %% #bodies) + 1
  return wrk.format("POST", "/webhook",
    {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = sigs[k]}, bodies[k])
end
"""

BARE = """
import sys
from aiohttp import web
async def handle(request):
    await request.read()
    return web.Response(text="ok")
app = web.Application()
app.router.add_post("/webhook", handle)
app.router.add_get("/readyz", lambda r: web.Response(text="ok"))
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"server on {port} did not start")


def write_deliveries(directory: Path, count: int) -> tuple[Path, Path]:
    bodies, sigs = directory / "bodies.txt", directory / "sigs.txt"
    with bodies.open("w") as b, sigs.open("w") as s:
        for i in range(count):
            message = simulate.text_message(f"order status for #{i}?", f"3460{i % 1000:07d}")
            raw = simulate.encode(simulate.delivery(simulate.change_value([message])))
            b.write(raw.decode() + "\n")
            s.write(simulate.signed_headers(raw, SECRET)["X-Hub-Signature-256"] + "\n")
    return bodies, sigs


def parse_wrk(output: str) -> dict[str, float]:
    def ms(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = ms(re.search(r"\s50%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"\s99%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    top = ms(re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = float(non2xx.group(1)) if non2xx else 0.0
    return {"rps": rps, "p50": p50, "p99": p99, "max": top, "requests": total, "errors": errors}


def run_wrk(port: int, script: Path, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}/webhook",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(out)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bridge_counts(port: int) -> dict[str, float]:
    """Messages recorded and held, replies queued, redeliveries: from the bridge's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for key, name in (
        ("recorded", "messages_recorded_total"),
        ("held", "messages"),
        ("outbox", "outbox"),
        ("duplicates", "duplicates_total"),
    ):
        found = re.search(rf"^whatsapp_bridge_{name}{{[^}}]*}} (\S+)$", text, re.M)
        out[key] = float(found.group(1)) if found else 0.0
    return out


def wait_replied(port: int, timeout: float = 300) -> dict[str, float]:
    """Until every recorded message has its reply stored and nothing is left to send.

    Holds while no conversation has reached the 250-message cap, which 1,000 phones and the
    benchmark's message counts never do."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = bridge_counts(port)
        if counts["outbox"] == 0 and counts["held"] >= 2 * counts["recorded"]:
            return counts
        time.sleep(0.05)
    raise SystemExit("the bridge did not finish its replies in time")


def measure(
    cmd: list[str],
    env: dict[str, str],
    port: int,
    scripts: tuple[Path, Path],
    seconds: int,
    connections: int,
    log: Path,
    *,
    bridge: bool,
) -> dict[str, float]:
    """Warm up, then one measured wrk run; CPU per request, and for the bridge the replies."""
    with log.open("w") as fh:
        proc = subprocess.Popen(["taskset", "-c", "0", *cmd], env=env, stdout=fh, stderr=fh)
    try:
        wait_ready(port)
        run_wrk(port, scripts[0], 2, connections)  # warm-up, its own deliveries
        before = wait_replied(port) if bridge else {}
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        result = run_wrk(port, scripts[1], seconds, connections)
        cpu1 = cpu_seconds(proc.pid)
        result["cpu_us"] = (cpu1 - cpu0) / result["requests"] * 1e6
        if bridge:
            after = wait_replied(port)
            elapsed = time.monotonic() - t0
            recorded = after["recorded"] - before["recorded"]
            result["recorded"] = recorded
            result["duplicates"] = after["duplicates"] - before["duplicates"]
            result["replied_per_s"] = recorded / elapsed
            result["cpu_us_replied"] = (cpu_seconds(proc.pid) - cpu0) / recorded * 1e6
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--deliveries",
        type=int,
        default=100_000,
        help="unique deliveries for the measured run (wrk repeats them past the end)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        scripts = []
        for part, count in (("warm-up", 20_000), ("measured", args.deliveries)):
            (tmp / part).mkdir()
            bodies, sigs = write_deliveries(tmp / part, count)
            script = tmp / f"{part}.lua"
            script.write_text(LUA % {"bodies": bodies, "sigs": sigs})
            scripts.append(script)
        pair = (scripts[0], scripts[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        bare_port, bridge_port = free_port(), free_port()
        bare = measure(
            [sys.executable, "-c", BARE, str(bare_port)],
            env,
            bare_port,
            pair,
            args.seconds,
            args.connections,
            tmp / "bare.log",
            bridge=False,
        )
        bridge_env = {
            **env,
            "BRIDGE_APP_SECRET": SECRET,
            "BRIDGE_VERIFY_TOKEN": "v",
            "BRIDGE_VAR_DIR": str(tmp / "var"),
            "BRIDGE_PORT": str(bridge_port),
            "BRIDGE_LOG_FORMAT": "json",
            "BRIDGE_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "info"),
            # Every message gets its own reply, as before the debounce existed.
            "BRIDGE_REPLY_DEBOUNCE_SECONDS": "0",
        }
        bridge = measure(
            [sys.executable, "-m", "bridge", "serve"],
            bridge_env,
            bridge_port,
            pair,
            args.seconds,
            args.connections,
            tmp / "bridge.log",
            bridge=True,
        )
    table = render(bare, bridge, args.connections, args.seconds)
    publish(table, args.out)


def render(bare: dict[str, float], bridge: dict[str, float], connections: int, seconds: int) -> str:
    lines = [
        f"wrk -t1 -c{connections} -d{seconds}s; server on core 0, wrk on core 1; "
        "CPU = server process time per request",
        "",
        "| server | requests/s | p50 ms | p99 ms | max ms | non-2xx | CPU us/request |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [
        ("bare aiohttp handler (read body, 200)", bare),
        ("bridge serve (verify, parse, dedupe, journal fsync, 200)", bridge),
    ]
    lines += [
        f"| {name} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.1f} "
        f"| {r['errors']:.0f} | {r['cpu_us']:.0f} |"
        for name, r in rows
    ]
    lines.append(
        f"| **ratio bridge / bare** | **{bridge['rps'] / bare['rps']:.2f}** | | | | "
        f"| {bridge['cpu_us'] / bare['cpu_us']:.1f}x |"
    )
    lines += [
        "",
        f"Bridge, whole message path (200, assistant reply journaled, sent, sent status "
        f"journaled): {bridge['recorded']:.0f} new messages, {bridge['duplicates']:.0f} "
        f"redelivered; every reply done at {bridge['replied_per_s']:.0f} messages/s "
        f"({bridge['cpu_us_replied']:.0f} us CPU per message, all included).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
