"""systemd socket activation: the listening socket outlives the bridge, so restarts refuse
nothing. This test plays systemd: it holds the socket and starts the bridge with it under the
sd_listen_fds protocol (fd 3, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES), twice more, while a
steady load runs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from bridge import simulate
from tests.conftest import APP_SECRET
from tests.test_cli import clean_env
from tests.test_durability import stored, user_ids


def activated(sock: socket.socket, var: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start `bridge serve` as systemd would: the socket at fd 3, LISTEN_PID its own pid."""
    env = clean_env(
        BRIDGE_APP_SECRET=APP_SECRET,
        BRIDGE_VERIFY_TOKEN="v",
        BRIDGE_VAR_DIR=str(var),
        BRIDGE_PORT="1",  # must not be used: the inherited socket is
        LISTEN_FDS="1",
        LISTEN_FDNAMES="http",
    )
    fd = sock.fileno()

    def at_fd_3() -> None:
        os.dup2(fd, 3, inheritable=True)

    command = f'export LISTEN_PID=$$; exec "{sys.executable}" -m bridge serve --log-format json'
    with log.open("ab") as out:
        return subprocess.Popen(
            ["/bin/sh", "-c", command],
            env=env,
            preexec_fn=at_fd_3,
            pass_fds=(3,),  # kept open past the close of inherited fds
            stdout=out,
            stderr=out,
        )


async def steady_load(port: int, stop: asyncio.Event) -> tuple[list[str], list[str]]:
    """Signed deliveries, 8 at a time, each on a new connection, until `stop`; returns the
    acknowledged message ids and every failure (status or exception)."""
    acked: list[str] = []
    failures: list[str] = []
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(w: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                # A user per message: the 250-message cap must not hide any of them.
                message = simulate.text_message(f"w{w} n{n}", f"3469{w:02d}{n:05d}")
                raw = simulate.encode(simulate.delivery(simulate.change_value([message])))
                try:
                    async with session.post(
                        f"http://127.0.0.1:{port}/webhook",
                        data=raw,
                        headers=simulate.signed_headers(raw, APP_SECRET),
                    ) as resp:
                        if resp.status == 200:
                            acked.append(str(message["id"]))
                        else:
                            failures.append(f"HTTP {resp.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failures.append(repr(exc))
                await asyncio.sleep(0.01)

        await asyncio.gather(*(worker(w) for w in range(8)))
    return acked, failures


async def wait_ready(port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("the activated bridge never became ready")


def test_two_restarts_under_load_refuse_nothing(tmp_path: Path) -> None:
    var = tmp_path / "var"
    log = tmp_path / "bridge.log"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]

    async def scenario() -> tuple[list[str], list[str], list[int]]:
        proc = activated(sock, var, log)
        await wait_ready(port)
        stop = asyncio.Event()
        load = asyncio.ensure_future(steady_load(port, stop))
        codes = []
        for _ in range(2):
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            codes.append(await asyncio.to_thread(proc.wait, 60))
            proc = activated(sock, var, log)  # requests meanwhile wait in the backlog
        await asyncio.sleep(1.0)
        stop.set()
        acked, failures = await load
        proc.send_signal(signal.SIGTERM)
        codes.append(await asyncio.to_thread(proc.wait, 60))
        return acked, failures, codes

    try:
        acked, failures, codes = asyncio.run(scenario())
    finally:
        sock.close()
    assert codes == [0, 0, 0], log.read_text()[-3000:]
    assert failures == [], f"{len(failures)} refused or reset: {failures[:5]}"
    assert len(acked) > 50
    assert sorted(user_ids(stored(var))) == sorted(acked)
    assert '"urls": ["http://127.0.0.1:' in log.read_text() or f":{port}" in log.read_text()
