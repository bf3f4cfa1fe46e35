"""The tests' own PostgreSQL server: started by the suite, reachable, and restartable."""

from __future__ import annotations

from tests.pg import PostgresServer


def test_server_answers_and_survives_an_immediate_restart(
    pg_server: PostgresServer, database_url: str
) -> None:
    name = database_url.rsplit("/", 1)[1]
    pg_server.psql(name, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
    pg_server.restart_immediate()
    assert pg_server.psql(name, "SELECT x FROM t").strip() == "7"
