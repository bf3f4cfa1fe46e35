"""Durability under crashes, with everything that writes mixed in.

Each cycle: a real `bridge serve` takes signed deliveries at a steady rate while it takes a
snapshot every second (each one runs the retention sweep) and sends the echo replies to a
local fake Graph API, which reports a status webhook for each, as Meta does; some cycles
take a backup under that load. Under the same load an operator writes through the running
bridge's control channel: deletes a user who is writing right now, imports fresh
conversations, or rotates the key (the kill may cut an import or a rotation short). The bridge is killed with SIGKILL at a
random moment; while it is down an operator writes directly: imports idle history (40 days
old, so the next sweep erases it while new messages for the same users arrive), deletes a
user, or imports fresh conversations, an import that is itself killed on some cycles. Then
the next cycle.

At the end (a last run settles every reply, then SIGTERM) it checks:
- every message that got a 200 is present exactly once, unless an operator's `delete` of
  its user came after it, and then it is gone (erasure is complete). A delete through the
  running bridge is decided by the bridge: what was acknowledged before the command was
  sent is gone, what was acknowledged after it returned is present, and what was
  acknowledged in between is present at most once (either way is right); when the kill
  came before the delete's answer, its user's earlier messages may go either way too;
take a backup under that load. Meanwhile operators use the HTTP API: they pause users'
conversations and write to them as a person. The bridge is killed with SIGKILL at a random
moment; while it is down an operator writes: queues a message as a person and resumes a
paused conversation (`sessions-admin send`, `resume`), imports idle history (40 days old, so
the next sweep erases it while new messages for the same users arrive), deletes a user, or
imports fresh conversations, an import that is itself killed on some cycles. Then the next
cycle.

At the end (a last run settles every reply, then SIGTERM) it checks:
- every message that got a 200 is present exactly once, unless an operator's `delete` of
  its user came after it, and then it is gone (erasure is complete);
- every pause the API acknowledged is still there (or a later change of that conversation
  is); every operator message acknowledged is recorded and reached Graph exactly once;
- each imported conversation is whole (or absent, when its import was killed);
- the idle history retention erased is gone, and what arrived for those users is kept;
- no user message was answered twice or left unanswered (unless a person took the
  conversation over); no reply reached Graph twice;
- every backup taken under load verifies; no temp file is left behind;
- every image (a tenth of the deliveries, fetched from the fake Graph API after the 200 and
  stored encrypted while the kills come) ends up stored, with exactly one file each: no
  file of an erased user or of a download a kill interrupted is left, and `verify`
  decrypts every one.

Usage: python -m tests.bench.crash_loop [--cycles 20] [--rate 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from bridge import simulate
from bridge.config import ProfileConfig
from bridge.modes import owed_answer
from bridge.state import State
from bridge.store.durable import load_state
from tests.bench.webhook_load import free_port, wait_ready
from tests.fakes.graph import TOKEN, FakeGraph
from tests.fakes.threaded import serve_in_thread
from tests.load import post_message, post_text, publish, start_bridge_quietly
from tests.media.support import b64_sha256

SECRET = "crash-app-secret"
API_TOKEN = "crash-api-token-0123456789"
DAY_MS = 24 * 3600 * 1000
LIVE_PHONES = 300
# A tenth of the deliveries are images, from this many files the fake Graph API serves.
PHOTOS = [os.urandom(150_000) for _ in range(5)]


@dataclass
class Ledger:
    """What the operator and Meta were told, to check the store against at the end."""

    acked: dict[str, str] = field(default_factory=dict)  # wamid -> phone, for every 200
    acked_at: dict[str, float] = field(default_factory=dict)  # wamid -> time.monotonic()
    erased: set[str] = field(default_factory=set)  # acked, then their user deleted
    either: set[str] = field(default_factory=set)  # acked while a live delete was decided
    imported: dict[str, list[str]] = field(default_factory=dict)  # key -> message ids
    killed_imports: dict[str, list[str]] = field(default_factory=dict)
    idle_old: dict[str, list[str]] = field(default_factory=dict)  # 40 days old, by user
    idle_phones: list[str] = field(default_factory=list)  # get traffic in the next cycle
    hot: str | None = None  # writes often this cycle: a live delete takes them mid-stream
    backups: list[Path] = field(default_factory=list)
    counter: int = 0
    requests: int = 0
    deletes: int = 0
    live_deletes: int = 0
    live_deletes_cut: int = 0  # the kill came before the answer
    live_imports: int = 0
    live_imports_cut: int = 0
    live_rotations: int = 0
    live_rotations_cut: int = 0
    pauses: dict[str, int] = field(default_factory=dict)  # key -> time of its acked pause
    operator_texts: dict[str, str] = field(default_factory=dict)  # acked text -> key


async def load(port: int, rate: float, seconds: float, ledger: Ledger) -> None:
    """Post single-message deliveries at `rate`/s for `seconds` (the process is killed
    meanwhile); a fifth of them go to the users whose idle history was just imported, and a
    fifth to this cycle's hot user, if any."""
    idle = list(ledger.idle_phones)
    hot = ledger.hot
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        tasks: set[asyncio.Task[None]] = set()

        async def one(n: int) -> None:
            idle_turn = idle and n % 5 == 0
            phone = idle[n % len(idle)] if idle_turn else f"3465{n % LIVE_PHONES:07d}"
            if hot and n % 5 == 1:
                phone = hot
            if n % 10 == 3:
                wamid = await post_image(session, port, n, phone)
            else:
                wamid = await post_text(session, port, SECRET, f"crash test {n}", phone)
            if wamid:
                ledger.acked[wamid] = phone
                ledger.acked_at[wamid] = time.monotonic()

        while loop.time() < end:
            ledger.counter += 1
            ledger.requests += 1
            task = asyncio.create_task(one(ledger.counter))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks, return_exceptions=True)


async def post_image(session: aiohttp.ClientSession, port: int, n: int, phone: str) -> str | None:
    """One image delivery (photo `n % len(PHOTOS)`); its wamid if it got a 200."""
    photo = n % len(PHOTOS)
    body = {
        "id": f"media-{photo}",
        "mime_type": "image/jpeg",
        "sha256": b64_sha256(PHOTOS[photo]),
        "caption": f"crash photo {n}",  # every reply text unique, like the texts'
    }
    return await post_message(session, port, SECRET, simulate.typed_message("image", body, phone))


def admin(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "admin", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class LiveWrite:
    """An operator's write sent to the running bridge during the load."""

    kind: str  # "delete", "import" or "rotate-key"
    env: dict[str, str]
    tmp: Path
    number: int
    victim: str = ""
    ids: dict[str, list[str]] = field(default_factory=dict)
    sent: float = 0.0
    returned: float = 0.0
    result: subprocess.CompletedProcess[str] | None = None

    async def run(self, ledger: Ledger, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.kind == "delete":
            # The hot user, writing right now: messages before, during and after.
            if ledger.hot is None or ledger.hot not in ledger.acked.values():
                return
            self.victim = ledger.hot
            args = ["delete", self.victim]
        elif self.kind == "rotate-key":
            args = ["rotate-key"]
        else:
            now = int(time.time() * 1000)
            fresh = conversations_at(f"3468{self.number:03d}", 1000, 5, now - 60_000, "live")
            path = seed_file(self.tmp / f"live-{self.number}.json", fresh)
            self.ids = {k: [str(m["id"]) for m in msgs if "id" in m] for k, msgs in fresh.items()}
            args = ["import", str(path)]
        self.sent = time.monotonic()
        self.result = await asyncio.to_thread(admin, self.env, *args)
        self.returned = time.monotonic()

    def account(self, ledger: Ledger, killed_at: float) -> None:
        """Book the outcome: what the write took and what it must have left."""
        if self.result is None:
            return
        done = self.result.returncode == 0
        if not done and killed_at > self.returned:
            raise SystemExit(f"live {self.kind} failed: {self.result.stderr.strip()}")
        if self.kind == "rotate-key":  # the store must read after every restart: checked then
            ledger.live_rotations += 1
            ledger.live_rotations_cut += not done
            return
        if self.kind == "import":
            ledger.live_imports += 1
            if done:
                ledger.imported.update(self.ids)
            else:  # cut short by the kill: each conversation whole or absent
                ledger.live_imports_cut += 1
                ledger.killed_imports.update(self.ids)
            return
        ledger.live_deletes += 1
        # Decided by the bridge between `sent` and `returned` (or, when the kill came first,
        # at some moment after `sent`, or not at all).
        bound = self.returned if done else float("inf")
        if not done:
            ledger.live_deletes_cut += 1
        for wamid, phone in list(ledger.acked.items()):
            if phone != self.victim:
                continue
            at = ledger.acked_at[wamid]
            if at < self.sent and done:
                ledger.erased.add(wamid)
            elif at <= bound:
                ledger.either.add(wamid)
            else:
                continue
            del ledger.acked[wamid]
        # The erasure takes the user's mode and operator messages too (may, when it was cut).
        ledger.pauses.pop(self.victim, None)
        for text in [t for t, k in ledger.operator_texts.items() if k == self.victim]:
            del ledger.operator_texts[text]


async def operators_at_work(port: int, seconds: float, ledger: Ledger) -> None:
    """Through the API while deliveries come in: pause a user's conversation and write to
    another one as a person, until the kill (refused or cut requests were not acknowledged)."""
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    base = f"http://127.0.0.1:{port}/api/v1/profiles/default/conversations"
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=5), headers=headers
    ) as session:
        while loop.time() < end:
            await asyncio.sleep(random.uniform(0.05, 0.3))
            phones = sorted({p for p in ledger.acked.values() if p.startswith("3465")})
            if not phones:
                continue
            key = random.choice(phones)
            try:
                if random.random() < 0.5:
                    async with session.post(f"{base}/{key}/pause", json={}) as resp:
                        if resp.status == 200:
                            ledger.pauses[key] = (await resp.json())["set"]["at"]
                else:
                    ledger.counter += 1
                    text = f"operator message {ledger.counter}"
                    async with session.post(f"{base}/{key}/messages", json={"text": text}) as resp:
                        if resp.status == 202:
                            ledger.operator_texts[text] = key
            except (aiohttp.ClientError, TimeoutError):
                pass


async def cycle(
    proc: subprocess.Popen[bytes],
    port: int,
    rate: float,
    kill_at: float,
    ledger: Ledger,
    backup_env: dict[str, str] | None,
    live: LiveWrite | None,
) -> None:
    """Load the bridge, maybe back it up and write through it meanwhile, and SIGKILL it
    `kill_at` seconds in."""
    began = time.monotonic()
    task = asyncio.ensure_future(load(port, rate, kill_at + 0.5, ledger))
    writing = (
        asyncio.ensure_future(live.run(ledger, random.uniform(0.1, kill_at / 2)))
        if live is not None
        else None
    )
    operators = asyncio.ensure_future(operators_at_work(port, kill_at + 0.5, ledger))
    if backup_env is not None:
        result = await asyncio.to_thread(admin, backup_env, "backup", "--json")
        if result.returncode == 0:
            ledger.backups.append(Path(orjson.loads(result.stdout)["path"]))
        else:
            raise SystemExit(f"backup under load failed: {result.stderr.strip()}")
    await asyncio.sleep(max(0.0, kill_at - (time.monotonic() - began)))
    killed_at = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    await task
    if writing is not None and live is not None:
        await writing
        live.account(ledger, killed_at)
    await operators


def seed_file(path: Path, conversations: dict[str, list[dict[str, object]]]) -> Path:
    path.write_bytes(orjson.dumps([[k, {"messages": m}] for k, m in conversations.items()]))
    return path


def conversations_at(
    prefix: str, count: int, per: int, when_ms: int, tag: str
) -> dict[str, list[dict[str, object]]]:
    """Old-system history: `per` user messages each, the last one answered (an import of
    answered history owes nobody a reply)."""
    out: dict[str, list[dict[str, object]]] = {}
    for i in range(count):
        key = f"{prefix}{i:05d}"
        out[key] = [
            {
                "role": "user",
                "content": f"{tag} {key} {j}",
                "timestamp": when_ms + j,
                "id": f"wamid.{tag}.{key}.{j}",
            }
            for j in range(per)
        ]
        out[key].append({"role": "assistant", "content": "ok", "timestamp": when_ms + per})
    return out


def operator_writes(number: int, tmp: Path, env: dict[str, str], ledger: Ledger) -> None:
    """While the bridge is down: an operator's message and a resume, idle history for the
    next cycle, then one more write."""
    now = int(time.time() * 1000)
    phones = sorted({p for p in ledger.acked.values() if p.startswith("3465")})
    if phones:
        key = random.choice(phones)
        text = f"operator message while down {number}"
        result = admin(env, "send", key, text, "--as", "crash-loop")
        if result.returncode != 0:
            raise SystemExit(f"send failed: {result.stderr.strip()}")
        ledger.operator_texts[text] = key
    if ledger.pauses:
        result = admin(env, "resume", random.choice(sorted(ledger.pauses)))
        if result.returncode != 0:
            raise SystemExit(f"resume failed: {result.stderr.strip()}")
    idle = conversations_at(f"3466{number:03d}", 20, 3, now - 40 * DAY_MS, "idle")
    result = admin(env, "import", str(seed_file(tmp / f"idle-{number}.json", idle)))
    if result.returncode != 0:
        raise SystemExit(f"idle import failed: {result.stderr.strip()}")
    ledger.idle_phones = list(idle)
    ledger.idle_old.update(
        {k: [str(m["id"]) for m in msgs if "id" in m] for k, msgs in idle.items()}
    )
    kind = number % 3
    if kind == 0:
        # A user's data erased on request: everything acknowledged for them so far goes.
        phones = sorted({p for p in ledger.acked.values() if p.startswith("3465")})
        if phones:
            victim = random.choice(phones)
            result = admin(env, "delete", victim)
            if result.returncode != 0:
                raise SystemExit(f"delete failed: {result.stderr.strip()}")
            gone = {w for w, p in ledger.acked.items() if p == victim}
            ledger.erased |= gone
            # Its mode and queued messages go with it.
            ledger.pauses.pop(victim, None)
            for text in [t for t, k in ledger.operator_texts.items() if k == victim]:
                del ledger.operator_texts[text]
            for wamid in gone:
                del ledger.acked[wamid]
            ledger.deletes += 1
        return
    # Big enough that a kill lands in the middle of the import.
    fresh = conversations_at(
        f"3467{number:03d}", 200 if kind == 1 else 3000, 5, now - 60_000, "fresh"
    )
    path = seed_file(tmp / f"fresh-{number}.json", fresh)
    ids = {k: [str(m["id"]) for m in msgs if "id" in m] for k, msgs in fresh.items()}
    if kind == 1:
        result = admin(env, "import", str(path))
        if result.returncode != 0:
            raise SystemExit(f"import failed: {result.stderr.strip()}")
        ledger.imported.update(ids)
        return
    # An import killed at a random moment: each conversation must be whole or absent.
    proc = subprocess.Popen(
        [sys.executable, "-m", "admin", "import", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(random.uniform(0.2, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ledger.killed_imports.update(ids)


def settle(var: Path, timeout: float = 120) -> State:
    """Wait until the running bridge has sent every reply and owes none."""
    deadline = time.monotonic() + timeout
    while True:
        state = read(var)
        now = int(time.time() * 1000)
        owed = [
            c
            for c in state.conversations.values()
            if now - (c.last_user_message or 0) < DAY_MS and owed_answer(c, now) is not None
        ]
        if not state.outbox and not owed and not state.media_jobs:
            return state
        if time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def read(var: Path) -> State:
    return load_state(ProfileConfig(slug="default", state_dir=var / "profiles" / "default"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    ledger = Ledger()
    graph = FakeGraph()
    graph.delay = 0.05  # replies are on the wire when the kill comes
    graph.trickle = 0.01  # and downloads are running
    for index, photo in enumerate(PHOTOS):
        graph.add_media(f"media-{index}", photo)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp_name, serve_in_thread(graph.app()) as graph_url:
        tmp = Path(tmp_name)
        var = tmp / "var"
        port = free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        base.update(BRIDGE_APP_SECRET=SECRET, BRIDGE_VERIFY_TOKEN="v", BRIDGE_VAR_DIR=str(var))
        env = dict(
            base,
            BRIDGE_PORT=str(port),
            BRIDGE_LOG_LEVEL="warning",
            BRIDGE_ACCESS_TOKEN=TOKEN,
            BRIDGE_PHONE_NUMBER_ID="100000000000001",
            BRIDGE_GRAPH_URL=graph_url,
            BRIDGE_SNAPSHOT_INTERVAL="1",
            BRIDGE_RETENTION_DAYS="30",
            BRIDGE_SEND_RECONCILE_SECONDS="2",
            BRIDGE_HEALTH_INTERVAL="3600",
            BRIDGE_API_TOKEN=API_TOKEN,
        )
        # The operator's shell: the same store, none of the service's settings.
        admin_env = dict(base, BRIDGE_RETENTION_DAYS="3650")
        graph.report_to(f"http://127.0.0.1:{port}/webhook", SECRET)
        for number in range(args.cycles):
            proc = start_bridge_quietly(env)
            wait_ready(port)
            kill_at = random.uniform(0.3, 2.0)
            backup_env = admin_env if number % 4 == 1 else None
            kind = ("delete", "import", "rotate-key")[number % 3]
            live = LiveWrite(kind, admin_env, tmp, number)
            ledger.hot = f"3465{random.randrange(LIVE_PHONES):07d}" if kind == "delete" else None
            asyncio.run(cycle(proc, port, args.rate, kill_at, ledger, backup_env, live))
            proc.wait()
            operator_writes(number, tmp, admin_env, ledger)
        # A last run: every reply produced and sent, then an orderly stop.
        proc = start_bridge_quietly(env)
        wait_ready(port)
        time.sleep(1.5)  # at least one sweep of the idle history imported last
        settle(var)
        proc.send_signal(signal.SIGTERM)
        stop_code = proc.wait(timeout=90)
        state = read(var)
        verified = sum(
            admin(admin_env, "verify", str(path)).returncode == 0 for path in ledger.backups
        )
        temp_files = [p for p in (var / "profiles").rglob("*.tmp")]
        media_dir = var / "profiles" / "default" / "media"
        media_files = {p.name[:-4] for p in media_dir.glob("*.wam")}
        live_verify = admin(admin_env, "verify", "--json")
        sent_texts = Counter(m["text"]["body"] for m in graph.sent)
    seconds = time.monotonic() - started
    report = check(state, ledger)
    sent_twice = sum(1 for n in sent_texts.values() if n > 1)
    operators_unsent = sum(1 for text in ledger.operator_texts if sent_texts[text] == 0)
    images = [
        m
        for c in state.conversations.values()
        for m in c.messages
        if m.role == "user" and m.type == "image" and m.extra
    ]
    not_stored = sum(1 for m in images if m.extra and m.extra["media"].get("state") != "stored")
    referenced = set(state.media_files)
    orphans = len(media_files - referenced)
    missing = len(referenced - media_files)
    verified_media = (
        orjson.loads(live_verify.stdout)["media_files"] if live_verify.returncode == 0 else -1
    )
    rows = [
        (
            "cycles (load and a live operator write, kill -9 at a random moment, operator "
            "write, restart)",
            args.cycles,
        ),
        ("requests sent", ledger.requests),
        ("acknowledged (200)", len(ledger.acked) + len(ledger.erased) + len(ledger.either)),
        ("acknowledged and present (user not deleted since)", report["present"]),
        ("present more than once", report["duplicated"]),
        ("lost", report["lost"]),
        ("erased by `delete` (acknowledged before it)", len(ledger.erased)),
        ("erased but still present", report["erased_present"]),
        (
            "live deletes through the running bridge / cut short by the kill",
            f"{ledger.live_deletes} / {ledger.live_deletes_cut}",
        ),
        (
            "acknowledged while a live delete was decided: kept / erased / present twice",
            f"{report['either_kept']} / {len(ledger.either) - report['either_kept']} / "
            f"{report['either_duplicated']}",
        ),
        (
            "live imports through the running bridge / cut short by the kill",
            f"{ledger.live_imports} / {ledger.live_imports_cut}",
        ),
        (
            "live key rotations through the running bridge / cut short by the kill",
            f"{ledger.live_rotations} / {ledger.live_rotations_cut}",
        ),
        ("imported conversations, whole", report["imports_whole"]),
        ("imported conversations, damaged", report["imports_damaged"]),
        (
            "killed imports: conversations whole / absent / partial",
            f"{report['killed_whole']} / {report['killed_absent']} / {report['killed_partial']}",
        ),
        (
            "idle users imported / erased by retention / kept though they never wrote",
            f"{report['idle_users']} / {report['idle_erased']} / "
            f"{report['idle_kept_without_traffic']}",
        ),
        (
            "pauses acknowledged by the API / lost",
            f"{len(ledger.pauses)} / {report['pauses_lost']}",
        ),
        (
            "operator messages acknowledged / not recorded / never sent",
            f"{len(ledger.operator_texts)} / {report['operator_lost']} / {operators_unsent}",
        ),
        ("user messages answered twice", report["answered_twice"]),
        ("conversations left owing a reply", report["owed"]),
        ("reply texts sent to Graph twice", sent_twice),
        ("backups under load taken / verified", f"{len(ledger.backups)} / {verified}"),
        (
            "images present / stored / not stored",
            f"{len(images)} / {len(images) - not_stored} / {not_stored}",
        ),
        (
            "media files / orphans (unreferenced) / missing / verified",
            f"{len(media_files)} / {orphans} / {missing} / {verified_media}",
        ),
        ("temp files left behind", len(temp_files)),
        ("final SIGTERM exit code", stop_code),
        ("duration", f"{seconds:.0f} s"),
    ]
    table = "| measure | count |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    publish(table, args.out)
    failures = [
        name
        for name, bad in (
            ("acknowledged messages lost", report["lost"]),
            (
                "acknowledged messages duplicated",
                report["duplicated"] + report["either_duplicated"],
            ),
            ("deleted data still present", report["erased_present"]),
            ("imports damaged", report["imports_damaged"] + report["killed_partial"]),
            ("idle history kept past retention", report["idle_kept_without_traffic"]),
            ("acknowledged pauses lost", report["pauses_lost"]),
            ("acknowledged operator messages lost", report["operator_lost"]),
            ("acknowledged operator messages never sent", operators_unsent),
            ("messages answered twice", report["answered_twice"]),
            ("replies owed", report["owed"]),
            ("backups that do not verify", len(ledger.backups) - verified),
            ("temp files left", len(temp_files)),
            ("images not stored", not_stored),
            ("media files orphaned or missing", orphans + missing),
            ("media files that do not verify", verified_media != len(referenced)),
            ("final stop failed", stop_code),
        )
        if bad
    ]
    if failures:
        raise SystemExit("FAILED: " + ", ".join(failures))


def check(state: State, ledger: Ledger) -> dict[str, int]:
    stored = Counter(
        m.id for c in state.conversations.values() for m in c.messages if m.role == "user" and m.id
    )
    present = sum(1 for wamid in ledger.acked if stored[wamid] >= 1)
    killed = [sum(1 for i in ids if stored[i]) for ids in ledger.killed_imports.values()]
    size = {k: len(ids) for k, ids in ledger.killed_imports.items()}
    whole = sum(f == n for f, n in zip(killed, size.values(), strict=True))
    # A user who wrote before the sweep reached them is active again: their conversation is
    # no longer idle, and retention rightly keeps its old part.
    active = set(ledger.acked.values())
    idle_kept = sum(
        1
        for key, ids in ledger.idle_old.items()
        if key not in active and any(stored[i] for i in ids)
    )
    answers = Counter(
        m.reply_to
        for c in state.conversations.values()
        for m in c.messages
        if m.role == "assistant" and m.reply_to
    )
    now = int(time.time() * 1000)
    operator_kept = {
        (k, m.content)
        for k, c in state.conversations.items()
        for m in c.messages
        if m.role == "assistant" and m.extra and "operator" in m.extra
    }

    def pause_lost(key: str, at: int) -> bool:
        conv = state.conversations.get(key)
        return conv is None or conv.mode is None or conv.mode.at_ms < at

    return {
        "pauses_lost": sum(1 for key, at in ledger.pauses.items() if pause_lost(key, at)),
        "operator_lost": sum(
            1 for text, key in ledger.operator_texts.items() if (key, text) not in operator_kept
        ),
        "present": present,
        "duplicated": sum(1 for wamid in ledger.acked if stored[wamid] > 1),
        "lost": len(ledger.acked) - present,
        "erased_present": sum(1 for wamid in ledger.erased if stored[wamid]),
        "either_kept": sum(1 for wamid in ledger.either if stored[wamid]),
        "either_duplicated": sum(1 for wamid in ledger.either if stored[wamid] > 1),
        "imports_whole": sum(all(stored[i] for i in ids) for ids in ledger.imported.values()),
        "imports_damaged": sum(
            not all(stored[i] == 1 for i in ids) for ids in ledger.imported.values()
        ),
        "killed_whole": whole,
        "killed_absent": sum(f == 0 for f in killed),
        "killed_partial": len(killed) - whole - sum(f == 0 for f in killed),
        "idle_users": len(ledger.idle_old),
        "idle_erased": sum(
            1 for ids in ledger.idle_old.values() if not any(stored[i] for i in ids)
        ),
        "idle_kept_without_traffic": idle_kept,
        "answered_twice": sum(1 for n in answers.values() if n > 1),
        "owed": sum(
            1
            for c in state.conversations.values()
            if now - (c.last_user_message or 0) < DAY_MS and owed_answer(c, now) is not None
        ),
    }


if __name__ == "__main__":
    main()
