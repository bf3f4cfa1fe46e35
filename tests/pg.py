"""A throwaway PostgreSQL server for the tests: Debian's binaries, `initdb` into a temp dir.

Run as the unprivileged `postgres` user when the tests run as root (the server refuses to
run as root), listening on a free port on 127.0.0.1 with its unix socket in the temp dir,
so it never meets a system cluster. `make test` installs the `postgresql` package when it is
missing; without it the PostgreSQL tests are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_USER = "postgres"


def find_bin_dir() -> Path | None:
    """Where `initdb` and `pg_ctl` are: on PATH, else Debian's versioned directory (not on
    PATH there), the newest version first."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
        reverse=True,
    )
    return Path(candidates[0]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One `initdb`-made cluster; `url(db)` names a database on it."""

    def __init__(self, bin_dir: Path, root: Path, fsync: bool = False) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.port = _free_port()
        self.fsync = fsync
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(SERVER_USER)
            except KeyError:
                raise RuntimeError(
                    f"running as root and there is no {SERVER_USER!r} user"
                ) from None
            self._as_user = ["runuser", "-u", SERVER_USER, "--"]
            os.chown(root, entry.pw_uid, entry.pw_gid)
        self.sockets.mkdir()
        if self._as_user:
            entry = pwd.getpwnam(SERVER_USER)
            os.chown(self.sockets, entry.pw_uid, entry.pw_gid)
        self.user = SERVER_USER if self._as_user else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(
            [*self._as_user, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")

    def initdb(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )

    def _options(self) -> str:
        options = [
            f"-p {self.port}",
            "-h 127.0.0.1",
            f"-k {self.sockets}",
            "-c max_connections=300",
            "-c shared_buffers=32MB",
        ]
        if (
            not self.fsync
        ):  # tests: crashes here are process kills, never the OS: WAL written is kept
            options += ["-c fsync=off", "-c full_page_writes=off"]
        return " ".join(options)

    def start(self) -> None:
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            self._options(),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "start",
        )

    def restart_immediate(self) -> None:
        """Stop the way a crash does (no shutdown checkpoint: recovery at start), then start."""
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            self._options(),
            "-l",
            str(self.root / "server.log"),
            "-m",
            "immediate",
            "-w",
            "restart",
        )

    def stop(self) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def psql(self, database: str, sql: str) -> str:
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-At", "-d", self.url(database), "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {result.stderr.strip()}")
        return result.stdout

    def dump(self, database: str) -> bytes:
        """`pg_dump` of a database, as an operator's backup would hold it."""
        return subprocess.run(
            [str(self.bin_dir / "pg_dump"), "-d", self.url(database)],
            capture_output=True,
            timeout=120,
            check=True,
        ).stdout

    def create_database(self, name: str) -> str:
        self.psql("postgres", f'CREATE DATABASE "{name}"')
        return self.url(name)


def start_server(fsync: bool = False) -> Iterator[PostgresServer]:
    """Yields a started server (skips, saying why, when PostgreSQL is not installed)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb on PATH or under /usr/lib/postgresql); "
            "`make test` installs Debian's postgresql package"
        )
    root = Path(tempfile.mkdtemp(prefix="bridge-pg-"))
    try:
        server = PostgresServer(bin_dir, root, fsync=fsync)
    except RuntimeError as exc:  # root without a `postgres` user to run the server as
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL cannot be run here: {exc}")
    try:
        server.initdb()
        server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield server
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


_counter = iter(range(1, 1_000_000))


def fresh_database(server: PostgresServer) -> str:
    """A new empty database on `server`; its URL."""
    return server.create_database(f"t{os.getpid()}_{next(_counter)}_{int(time.time())}")
