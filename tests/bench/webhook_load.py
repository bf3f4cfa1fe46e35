"""Webhook throughput and latency under wrk: the bridge against its floor and its best Python
peer, side by side in one run.

Columns (each its own server process, pinned to core 0; wrk on core 1, taskset):
- a bare aiohttp handler that reads the body and answers 200, on asyncio and on uvloop;
- pywa on FastAPI + uvicorn[standard] (tests/bench/peers.py: signature, dedupe, history);
- the durable floor (peers.DURABLE): the message column's durable work written as plainly
  as it can be, with none of the bridge's other work: what the target is measured against;
- `bridge serve` (durable, encrypted) taking text messages: each is verified, parsed,
  deduplicated and journaled (fsync) before the 200, then answered by the echo assistant, the
  reply journaled and sent to a Graph API on 127.0.0.1 (peers.GRAPH), and its outcome
  journaled; with `BRIDGE_REPLY_DEBOUNCE_SECONDS=0` every message gets its own reply;
- `bridge serve` taking status webhooks only (the ack path: verify, parse, journal, 200).
  Each status names a message the bridge never sent, so it changes nothing: since the
  bridge journals only statuses that change a reply, this measures the path without a
  journal write (a status for one of its replies is journaled with fsync as before).

Deliveries are pre-generated and correctly signed, each with a unique message id and a phone
of its own (see write_deliveries); wrk cycles through them from a Lua script. The warm-up run gets its own deliveries,
so the measured run records new messages only (a redelivery is far cheaper).

The machine is shared: `--rounds` repeats every column (interleaved) and the table shows the
medians, and the ratios are the medians of each round's ratios. Besides wrk's numbers, the
server's CPU time per request is read from /proc (robust against the other core's noise), and
for the message path the time until every reply to the measured messages has been produced,
journaled and sent: the acknowledgement rate alone would hide reply work left queued.

Usage: python -m tests.bench.webhook_load [--seconds 10] [--connections 32] [--rounds 3]
           [--columns bare-asyncio,bare-uvloop,pywa,durable-floor,message,status] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bridge import simulate
from tests.bench import peers
from tests.load import publish

SECRET = "bench-app-secret"
PHONE_NUMBER_ID = "100000000000001"
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


# The same, but each body once: the thread stops after the last one (statuses of the bridge's
# own replies change it only the first time).
LUA_ONCE = LUA.replace(
    "  i = i + 1\n", "  i = i + 1\n  if i > #bodies then wrk.thread:stop() end\n"
)


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
    """`count` signed single-text deliveries over 1,000 phones (tests/bench/load_during_snapshot)."""
    bodies, sigs = directory / "bodies.txt", directory / "sigs.txt"
    with bodies.open("w") as b, sigs.open("w") as s:
        for i in range(count):
            message = simulate.text_message(f"order status for #{i}?", f"3460{i % 1000:07d}")
            raw = simulate.encode(simulate.delivery(simulate.change_value([message])))
            b.write(raw.decode() + "\n")
            s.write(simulate.signed_headers(raw, SECRET)["X-Hub-Signature-256"] + "\n")
    return bodies, sigs


def write_bench_deliveries(
    directory: Path, count: int, kind: str, first_phone: int
) -> tuple[Path, Path]:
    """`count` signed bodies of one text message each (`kind` "message") or one status.

    Each from its own phone: the bridge paces its sends to one user (WhatsApp's pair rate
    limit, about one message per 6 s, bridge/whatsapp/pacing.py), so a few phones writing
    thousands of messages would measure the pacing, not the bridge."""
    bodies, sigs = directory / "bodies.txt", directory / "sigs.txt"
    with bodies.open("w") as b, sigs.open("w") as s:
        for i in range(count):
            phone = f"346{first_phone + i:08d}"
            if kind == "message":
                # With the business-scoped user id next to the phone, as Meta's payloads now
                # carry it (pywa 4.5 requires it).
                body = simulate.simulated_text(
                    f"order status #{i}?",
                    phone,
                    f"ES.{int(phone) * 7919:020d}",
                    PHONE_NUMBER_ID,
                    name="WhatsApp User",
                )
            else:
                body = simulate.delivery(
                    simulate.change_value(
                        statuses=[simulate.status(simulate.new_wamid(), "delivered", phone)]
                    )
                )
            raw = simulate.encode(body)
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


def scrape(port: int) -> str:
    """The server's /metrics (the bridge's, or the durable floor's few lines of the same)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str) -> float | None:
    """The value of `whatsapp_bridge_<name>{...}` in a scrape, None when it has none."""
    found = re.search(rf"^whatsapp_bridge_{name}{{[^}}]*}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def bridge_counts(port: int) -> dict[str, float]:
    """Messages recorded and held, replies queued, redeliveries: from the bridge's /metrics."""
    text = scrape(port)
    return {
        key: metric(text, name) or 0.0
        for key, name in (
            ("recorded", "messages_recorded_total"),
            ("held", "messages"),
            ("outbox", "outbox"),
            ("duplicates", "duplicates_total"),
        )
    }


def wait_replied(port: int, timeout: float = 300) -> dict[str, float]:
    """Until every recorded message has its reply stored and nothing is left to send.

    Holds while no conversation has reached the 250-message cap, which the benchmark's
    deliveries (a few per phone) never do. Asked every 0.2 s: each scrape costs the bridge's
    core a walk over its conversations."""
    deadline = time.monotonic() + timeout
    counts: dict[str, float] = {}
    while time.monotonic() < deadline:
        counts = bridge_counts(port)
        if counts["outbox"] == 0 and counts["held"] >= 2 * counts["recorded"]:
            return counts
        time.sleep(0.2)
    raise SystemExit(f"the bridge did not finish its replies in {timeout:g} s: {counts}")


def profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """With `BENCH_PROFILE=dir`: py-spy samples the server (from core 1) into `dir`, as
    collapsed stacks (`tests/bench/profile_top.py` sums them up)."""
    directory = os.environ.get("BENCH_PROFILE")
    if not directory:
        return None
    target = Path(directory) / out.name
    target.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            "taskset",
            "-c",
            "1",
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--format",
            "raw",
            "--rate",
            "250",
        ]
        + ["--nonblocking", "-p", str(pid), "-o", str(target)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def measure(
    cmd: list[str],
    env: dict[str, str],
    port: int,
    scripts: tuple[Path, Path],
    seconds: int,
    connections: int,
    log: Path,
    *,
    replies: bool,
    check: Callable[[int], None] | None = None,
    cwd: Path | None = None,
) -> dict[str, float]:
    """Warm up, then one measured wrk run; CPU per request, and with `replies` the time until
    every reply is sent."""
    with log.open("w") as fh:
        proc = subprocess.Popen(
            ["taskset", "-c", "0", *cmd], env=env, stdout=fh, stderr=fh, cwd=cwd
        )
    try:
        wait_ready(port)
        run_wrk(port, scripts[0], 2, connections)  # warm-up, its own deliveries
        before = wait_replied(port) if replies else {}
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        spy = profiler(proc.pid, log.with_suffix(".pyspy.txt"))
        result = run_wrk(port, scripts[1], seconds, connections)
        cpu1 = cpu_seconds(proc.pid)
        result["cpu_us"] = (cpu1 - cpu0) / result["requests"] * 1e6
        if replies:
            after = wait_replied(port)
            elapsed = time.monotonic() - t0
            recorded = after["recorded"] - before["recorded"]
            result["recorded"] = recorded
            result["duplicates"] = after["duplicates"] - before["duplicates"]
            result["replied_per_s"] = recorded / elapsed
            result["cpu_us_replied"] = (cpu_seconds(proc.pid) - cpu0) / recorded * 1e6
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        if check is not None:
            check(port)
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


COLUMNS = (
    "bare-asyncio",
    "bare-uvloop",
    "pywa",
    "durable-floor",
    "message",
    "status",
    "status-journaled",
)
NAMES = {
    "bare-asyncio": "bare aiohttp handler (read body, 200), asyncio",
    "bare-uvloop": "bare aiohttp handler (read body, 200), uvloop: the floor",
    "pywa": f"pywa {peers.PYWA_VERSION}, FastAPI + uvicorn[standard] (signature, dedupe, history)",
    "durable-floor": "durable floor: the message path's work alone (journal + fsync, 200; reply journaled, sent, outcome journaled)",
    "message": "bridge, messages (verify, dedupe, journal fsync, 200; echo reply journaled, sent)",
    "status": "bridge, status webhooks only (verify, parse, 200; none changes a reply: no record)",
    "status-journaled": "bridge, statuses of its own replies (delivered, read: each journal + fsync, 200)",
}


class Bench:
    """Deliveries, scripts and ports of one run; `run(column)` measures one column once."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp = tmp
        self.args = args
        self.scripts: dict[str, tuple[Path, Path]] = {}
        for kind in ("message", "status"):
            pair = []
            for part, count, first in (
                ("warm-up", 20_000, 50_000_000),
                ("measured", args.deliveries, 0),
            ):
                directory = tmp / kind / part
                directory.mkdir(parents=True)
                bodies, sigs = write_bench_deliveries(directory, count, kind, first)
                script = directory / "wrk.lua"
                script.write_text(LUA % {"bodies": bodies, "sigs": sigs})
                pair.append(script)
            self.scripts[kind] = (pair[0], pair[1])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        self.runs = 0

    def run(self, column: str) -> dict[str, float]:
        self.runs += 1
        port = free_port()
        log = self.tmp / f"{column}-{self.runs}.log"
        common = (self.args.seconds, self.args.connections, log)
        if column.startswith("bare-"):
            cmd = [sys.executable, "-c", peers.BARE, str(port), column.removeprefix("bare-")]
            return measure(cmd, self.env, port, self.scripts["message"], *common, replies=False)
        if column == "pywa":
            cmd = [str(peers.pywa_python()), "-c", peers.PYWA, str(port), SECRET]
            return measure(
                cmd,
                self.env,
                port,
                self.scripts["message"],
                *common,
                replies=False,
                check=pywa_kept,
            )
        if column == "durable-floor":
            return self._durable_floor(port, common)
        var = self.tmp / f"var-{self.runs}"
        env = {
            **self.env,
            "BRIDGE_APP_SECRET": SECRET,
            "BRIDGE_VERIFY_TOKEN": "v",
            "BRIDGE_VAR_DIR": str(var),
            "BRIDGE_PORT": str(port),
            "BRIDGE_LOG_FORMAT": "json",
            "BRIDGE_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "info"),
            # Every message gets its own reply, as before the debounce existed.
            "BRIDGE_REPLY_DEBOUNCE_SECONDS": "0",
            # One send per reply: the read receipt would be a second call to the Graph API.
            "BRIDGE_READ_RECEIPTS": "false",
        }
        if "BENCH_EVENT_LOOP" in os.environ:
            env["BRIDGE_EVENT_LOOP"] = os.environ["BENCH_EVENT_LOOP"]
        cwd = None
        if column.endswith("-baseline"):
            # Another checkout's bridge (`--baseline DIR`), in this run, for before/after:
            # `python -m` finds the package in its working directory first.
            cwd = self.args.baseline
            column = column.removesuffix("-baseline")
        cmd = [sys.executable, "-m", "bridge", "serve"]
        if column == "status":
            try:
                return measure(
                    cmd, env, port, self.scripts["status"], *common, replies=False, cwd=cwd
                )
            finally:
                shutil.rmtree(var, ignore_errors=True)
        graph_port, graph = start_graph()
        env |= {
            "BRIDGE_ACCESS_TOKEN": "bench-token",
            "BRIDGE_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
            "BRIDGE_GRAPH_URL": f"http://127.0.0.1:{graph_port}",
        }
        try:
            if column == "status-journaled":
                return self._statuses_of_replies(cmd, env, port, log, cwd)
            return measure(cmd, env, port, self.scripts["message"], *common, replies=True, cwd=cwd)
        finally:
            graph.terminate()
            graph.wait(timeout=30)
            shutil.rmtree(var, ignore_errors=True)

    def _durable_floor(self, port: int, common: tuple[int, int, Path]) -> dict[str, float]:
        """peers.DURABLE: the message path's work with nothing else (see there), sending its
        replies to a Graph API of its own as the bridge's message column does."""
        graph_port, graph = start_graph()
        directory = self.tmp / f"floor-{self.runs}"
        directory.mkdir()
        cmd = [sys.executable, "-c", peers.DURABLE, str(port), SECRET]
        cmd += [f"http://127.0.0.1:{graph_port}", str(directory)]
        try:
            return measure(
                cmd, self.env, port, self.scripts["message"], *common, replies=True, check=sent_all
            )
        finally:
            graph.terminate()
            graph.wait(timeout=30)
            shutil.rmtree(directory, ignore_errors=True)

    def _statuses_of_replies(
        self, cmd: list[str], env: dict[str, str], port: int, log: Path, cwd: Path | None
    ) -> dict[str, float]:
        """Statuses that move the bridge's own replies, so each is journaled with fsync
        before its 200: messages first (their replies get the fake Graph's wamids
        `wamid.BENCH0`, 1, ... in order), then `delivered` and `read` for each reply, each
        once."""
        with log.open("w") as fh:
            proc = subprocess.Popen(
                ["taskset", "-c", "0", *cmd], env=env, stdout=fh, stderr=fh, cwd=cwd
            )
        try:
            wait_ready(port)
            run_wrk(port, self.scripts["message"][1], PREPARE_SECONDS, self.args.connections)
            replies = int(wait_replied(port)["recorded"])
            directory = self.tmp / f"statuses-{self.runs}"
            directory.mkdir()
            bodies, sigs = directory / "bodies.txt", directory / "sigs.txt"
            with bodies.open("w") as b, sigs.open("w") as sg:
                for status in ("delivered", "read"):
                    for n in range(replies):
                        value = simulate.change_value(
                            statuses=[simulate.status(f"wamid.BENCH{n}", status, "34600000000")]
                        )
                        raw = simulate.encode(simulate.delivery(value))
                        b.write(raw.decode() + "\n")
                        sg.write(simulate.signed_headers(raw, SECRET)["X-Hub-Signature-256"] + "\n")
            script = directory / "wrk.lua"
            script.write_text(LUA_ONCE % {"bodies": bodies, "sigs": sigs})
            cpu0 = cpu_seconds(proc.pid)
            result = run_wrk(port, script, self.args.seconds, self.args.connections)
            result["cpu_us"] = (cpu_seconds(proc.pid) - cpu0) / result["requests"] * 1e6
            result["statuses"] = 2 * replies
            return result
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)


def sent_all(port: int) -> None:
    """The durable floor sent every reply (a failed send would make it look cheaper)."""
    if metric(scrape(port), "sends_failed_total") != 0:
        raise SystemExit("the durable floor failed to send some replies (see its log)")


def start_graph() -> tuple[int, subprocess.Popen[bytes]]:
    """peers.GRAPH on core 1 (beside wrk): its port and process."""
    port = free_port()
    graph = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, "-c", peers.GRAPH, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:  # listening before the server starts: no send of the warm-up is refused
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port, graph
        except OSError:
            if time.monotonic() > deadline:
                graph.kill()
                raise SystemExit("the fake Graph API did not start") from None
            time.sleep(0.05)


# Seconds of message load that make the replies whose statuses the journaled column sends.
PREPARE_SECONDS = 8


def pywa_kept(port: int) -> None:
    """The pywa peer's handler really ran: its history holds messages (its /readyz counts)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
        kept = int(json.loads(resp.read())["messages"])
    if kept == 0:
        raise SystemExit("the pywa peer kept no message: its handler did not run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="repeat every column; medians")
    parser.add_argument("--columns", default=",".join(COLUMNS), help="a comma-separated subset")
    parser.add_argument(
        "--deliveries",
        type=int,
        default=160_000,
        help="unique deliveries for the measured run (wrk repeats them past the end)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of an earlier bridge: its message and status columns are measured too",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    columns = [c for c in args.columns.split(",") if c]
    if args.baseline:
        args.baseline = args.baseline.resolve()
        columns += [f"{c}-baseline" for c in columns if c in ("message", "status")]
    unknown = {c.removesuffix("-baseline") for c in columns} - set(COLUMNS)
    if unknown:
        parser.error(f"unknown columns: {', '.join(sorted(unknown))}")
    if "pywa" in columns:
        peers.pywa_python()  # created before anything is measured
    results: dict[str, list[dict[str, float]]] = {c: [] for c in columns}
    with tempfile.TemporaryDirectory() as tmp_name:
        bench = Bench(Path(tmp_name), args)
        for _ in range(args.rounds):
            for column in columns:
                results[column].append(bench.run(column))
                print(f"{column}: {results[column][-1]['rps']:.0f} req/s", file=sys.stderr)
    publish(render(results, args), args.out)


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _ratio(results: dict[str, list[dict[str, float]]], top: str, bottom: str) -> str:
    """The median over rounds of top/bottom requests per second, each pair from one round."""
    if top not in results or bottom not in results:
        return "-"
    pairs = zip(results[top], results[bottom], strict=True)
    return f"{statistics.median(t['rps'] / b['rps'] for t, b in pairs):.2f}"


def _per_core(results: dict[str, list[dict[str, float]]], top: str, bottom: str) -> str:
    """The same ratio from CPU time: what one quiet core would give (bottom's CPU per request
    over top's), which the other agents on a shared machine disturb far less than req/s.
    A message's CPU is all of it, its reply included."""
    if top not in results or bottom not in results:
        return "-"

    def cost(run: dict[str, float]) -> float:
        return run.get("cpu_us_replied", run["cpu_us"])

    pairs = zip(results[top], results[bottom], strict=True)
    return f"{statistics.median(cost(b) / cost(t) for t, b in pairs):.2f}"


def render(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> str:
    rounds = len(next(iter(results.values()), []))
    lines = [
        f"wrk -t1 -c{args.connections} -d{args.seconds}s; server on core 0, wrk on core 1; "
        f"median of {rounds} round(s); CPU = server process time per request",
        "",
        "| server | requests/s | p50 ms | p99 ms | max ms | non-2xx | CPU µs/request |",
        "|---|---|---|---|---|---|---|",
    ]
    for column, runs in results.items():
        name = NAMES[column.removesuffix("-baseline")]
        if column.endswith("-baseline"):
            name = f"baseline ({args.baseline.name}): {name}"
        lines.append(
            f"| {name} | {_median(runs, 'rps'):,.0f} | {_median(runs, 'p50'):.2f} "
            f"| {_median(runs, 'p99'):.2f} | {_median(runs, 'max'):.1f} "
            f"| {_median(runs, 'errors'):.0f} | {_median(runs, 'cpu_us'):.0f} |"
        )
    lines += [
        "",
        "| ratio (median of the rounds' ratios) | requests/s | per core (CPU) | target |",
        "|---|---|---|---|",
    ]
    pairs = [
        ("bridge messages / pywa", "message", "pywa", "≥ 1.5"),
        ("durable floor / pywa", "durable-floor", "pywa", ""),
        ("bridge messages / durable floor", "message", "durable-floor", ""),
        ("bridge status / bare on uvloop", "status", "bare-uvloop", "≥ 0.4"),
        ("bridge journaled status / bare on uvloop", "status-journaled", "bare-uvloop", ""),
        ("bridge messages / bare on uvloop", "message", "bare-uvloop", ""),
        ("bare on uvloop / bare on asyncio", "bare-uvloop", "bare-asyncio", ""),
        ("bridge messages / baseline", "message", "message-baseline", ""),
        ("bridge status / baseline", "status", "status-baseline", ""),
    ]
    for name, top, bottom, target in pairs:
        if top in results and bottom in results:
            bold = "**" if target else ""
            lines.append(
                f"| {name} | {bold}{_ratio(results, top, bottom)}{bold} "
                f"| {_per_core(results, top, bottom)} | {target} |"
            )
    if "status-journaled" in results:
        runs = results["status-journaled"]
        lines += [
            "",
            f"Journaled statuses, median run: {_median(runs, 'requests'):,.0f} requests of "
            f"{_median(runs, 'statuses'):,.0f} statuses, each sent once (`delivered`, then "
            "`read`, of replies the bridge sent just before).",
        ]
    for column, who in (("message", "Bridge"), ("durable-floor", "Durable floor")):
        if column not in results:
            continue
        runs = results[column]
        lines += [
            "",
            f"{who}, whole message path (200, echo reply journaled, sent to the Graph API, its "
            f"outcome journaled), median run: {_median(runs, 'recorded'):,.0f} new messages, "
            f"{_median(runs, 'duplicates'):.0f} redelivered; every reply done at "
            f"{_median(runs, 'replied_per_s'):,.0f} messages/s "
            f"({_median(runs, 'cpu_us_replied'):.0f} µs CPU per message, all included).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
