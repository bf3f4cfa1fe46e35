"""Replicas on PostgreSQL against the file store: signed deliveries per second, side by side.

Three runs of wrk against `bridge serve`: one replica on the file store (journal fsync), one
replica on PostgreSQL (commit with synchronous_commit on, fsync on: the server is started
by the benchmark, as the tests do), and two replicas on the same PostgreSQL profile, each
loaded by its own wrk with half the connections. Every delivery is new (a unique wamid).

This machine has two cores, shared by the database, wrk and the replicas, so the ratio of
two replicas to one says little about a bigger host. What scales is read from the CPU time
each process used during the measured run: the replicas', the database's (all its
processes), and the messages per CPU-second of a replica.

Usage: python -m tests.bench.replicas [--seconds 10] [--connections 16] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bridge.persistence.keys import encode_key, new_key
from tests.bench.webhook_load import (
    LUA,
    SECRET,
    cpu_seconds,
    free_port,
    run_wrk,
    wait_ready,
    write_deliveries,
)
from tests.load import publish
from tests.pg import PostgresServer, find_bin_dir


def scripts(directory: Path, name: str, count: int) -> Path:
    """A wrk script cycling through `count` new signed deliveries (random wamids)."""
    (directory / name).mkdir()
    bodies, sigs = write_deliveries(directory / name, count)
    script = directory / f"{name}.lua"
    script.write_text(LUA % {"bodies": bodies, "sigs": sigs})
    return script


def database_cpu(server: PostgresServer) -> float:
    """CPU seconds of the server: the postmaster and every process it started."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    total = cpu_seconds(postmaster)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == postmaster:
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


def start_bridge(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve"], env=env, stdout=fh, stderr=fh
        )
    wait_ready(int(env["BRIDGE_PORT"]))
    return proc


def run(
    envs: list[dict[str, str]],
    warm: list[Path],
    measured: list[Path],
    seconds: int,
    connections: int,
    tmp: Path,
    server: PostgresServer | None,
) -> dict[str, object]:
    procs = [start_bridge(env, tmp / f"bridge-{env['BRIDGE_PORT']}.log") for env in envs]
    ports = [int(env["BRIDGE_PORT"]) for env in envs]
    per = max(1, connections // len(procs))
    try:
        for port, script in zip(ports, warm, strict=False):
            run_wrk(port, script, 2, per)
        results: list[dict[str, float]] = [{} for _ in procs]
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        db0 = database_cpu(server) if server else 0.0

        def one(index: int) -> None:
            results[index] = run_wrk(ports[index], measured[index], seconds, per)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(procs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        db = (database_cpu(server) - db0) if server else 0.0
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=120)
    ok = sum(r["requests"] - r["errors"] for r in results)
    return {
        "rps": sum(r["rps"] for r in results) * ok / max(1, sum(r["requests"] for r in results)),
        "errors": sum(r["errors"] for r in results),
        "p99": max(r["p99"] for r in results),
        "cpu": cpu,
        "db_cpu": db,
        "acked": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        warm = [scripts(tmp, f"warm{i}", 5000) for i in range(6)]
        measured = [scripts(tmp, f"run{i}", 60_000) for i in range(4)]
        base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        key = encode_key(new_key())

        def env(var: str, **extra: str) -> dict[str, str]:
            return {
                **base,
                "BRIDGE_APP_SECRET": SECRET,
                "BRIDGE_VERIFY_TOKEN": "v",
                "BRIDGE_VAR_DIR": str(tmp / var),
                "BRIDGE_PORT": str(free_port()),
                "BRIDGE_LOG_FORMAT": "json",
                "BRIDGE_LOG_LEVEL": "warning",
                "BRIDGE_REPLY_DEBOUNCE_SECONDS": "0",
                "BRIDGE_KEY": key,
                **extra,
            }

        file_run = run(
            [env("file")], warm[:1], measured[:1], args.seconds, args.connections, tmp, None
        )
        root = Path(tempfile.mkdtemp(prefix="bridge-bench-pg-"))
        server = PostgresServer(bin_dir, root, fsync=True)
        server.initdb()
        server.start()
        try:
            url = server.create_database("bench")
            pg = {"BRIDGE_STORE": "postgres", "BRIDGE_DATABASE_URL": url}
            one = run(
                [env("pg1", **pg)],
                warm[1:2],
                measured[1:2],
                args.seconds,
                args.connections,
                tmp,
                server,
            )
            two = run(
                [env("pg2a", **pg), env("pg2b", **pg)],
                warm[2:4],
                measured[2:4],
                args.seconds,
                args.connections,
                tmp,
                server,
            )
        finally:
            server.stop()
            subprocess.run(["rm", "-rf", str(root)], check=False)
    publish(render(file_run, one, two, args), args.out)


def render(
    file_run: dict[str, object],
    one: dict[str, object],
    two: dict[str, object],
    args: argparse.Namespace,
) -> str:
    seconds = args.seconds

    def row(name: str, r: dict[str, object]) -> str:
        cpu = r["cpu"]
        assert isinstance(cpu, list)
        acked = float(r["acked"])  # type: ignore[arg-type]
        per_replica = acked / len(cpu)
        per_cpu = " / ".join(f"{per_replica / c:.0f}" for c in cpu)
        cpu_text = " + ".join(f"{c:.1f}" for c in cpu)
        return (
            f"| {name} | {float(r['rps']):.0f} | {float(r['p99']):.1f} | {r['errors']:.0f} "  # type: ignore[arg-type]
            f"| {cpu_text} | {float(r['db_cpu']):.1f} | {per_cpu} |"  # type: ignore[arg-type]
        )

    lines = [
        f"wrk, {args.connections} connections in all, {seconds} s per run, every delivery new; "
        "2 cores shared by wrk, the replicas and PostgreSQL (fsync and synchronous_commit on)",
        "",
        "| setup | deliveries/s acked | p99 ms | non-2xx | replica CPU s | PostgreSQL CPU s "
        "| messages per replica CPU-s |",
        "|---|---|---|---|---|---|---|",
        row("file store, 1 replica", file_run),
        row("PostgreSQL, 1 replica", one),
        row("PostgreSQL, 2 replicas", two),
        "",
        f"PostgreSQL / file store, one replica: **{float(one['rps']) / float(file_run['rps']):.2f}x**; "  # type: ignore[arg-type]
        f"two replicas / one on PostgreSQL: **{float(two['rps']) / float(one['rps']):.2f}x** "  # type: ignore[arg-type]
        "(same two cores).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
