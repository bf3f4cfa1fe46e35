"""sessions-admin applies the settings stored with the data, never its own environment's.

The scenario of the issue: the service runs with a cap of 1000 messages and a retention of
ten years from its own environment file; the operator's shell has neither. Reads and writes
must neither truncate nor expire anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.admin.support import DAY_MS, admin, admin_json, now_ms, seed_conversation, write_seed
from tests.test_cli import clean_env, free_port, run, start_serve

BIG = "34600000600"  # 600 messages, under the service's cap of 1000
OLD = "34600000002"  # idle for two years, kept by the service's ten-year retention
OTHER = "34600000003"  # the user whose data the operator erases


def service_env(var: Path) -> dict[str, str]:
    return clean_env(
        BRIDGE_PORT=str(free_port()),
        BRIDGE_VAR_DIR=str(var),
        BRIDGE_MAX_MESSAGES="1000",
        BRIDGE_RETENTION_DAYS="3650",
    )


def counts(exported: list[Any]) -> dict[str, int]:
    return {key: len(conv["messages"]) for key, conv in exported}


def test_admin_commands_neither_truncate_nor_expire_what_the_bridge_keeps(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    env = service_env(var)
    server = start_serve(var, "--dev", env=env)
    for text in ("hola", "adiós"):
        assert run(["simulate", text, "--from", OTHER], env).returncode == 0
    code, _ = server.stop()
    assert code == 0
    # The data arrives with the service's own settings (as every version could do it).
    seed = write_seed(
        tmp_path / "seed.json",
        [
            seed_conversation(BIG, 600, now_ms() - 3600_000),
            seed_conversation(OLD, 4, now_ms() - 730 * DAY_MS),
        ],
    )
    imported = admin(["import", str(seed)], env)
    assert imported.returncode == 0, imported.stderr

    operator = clean_env(BRIDGE_VAR_DIR=str(var))  # no settings at all: defaults 250 / 365
    assert len(admin_json(["export", BIG], operator)[0][1]["messages"]) == 600
    assert len(admin_json(["show", BIG], operator)["messages"]) == 600
    listed = {r["key"]: r["messages"] for r in admin_json(["list"], operator)}
    assert listed[BIG] == 600 and listed[OLD] == 4

    deleted = admin(["delete", OTHER], operator)
    assert deleted.returncode == 0, deleted.stderr
    assert counts(admin_json(["export"], operator)) == {BIG: 600, OLD: 4}

    more = write_seed(tmp_path / "more.json", [seed_conversation("34600000009", 2, now_ms())])
    assert admin(["import", str(more)], operator).returncode == 0
    assert counts(admin_json(["export"], operator)) == {BIG: 600, OLD: 4, "34600000009": 2}

    # The service, started again with its settings, finds everything and keeps it.
    again = start_serve(var, env=env)
    code, events = again.stop()
    assert code == 0
    assert "store_settings_changed" not in [e["event"] for e in events]
    assert counts(admin_json(["export"], operator)) == {BIG: 600, OLD: 4, "34600000009": 2}


def test_an_explicit_different_setting_is_reported_once_and_not_applied(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = service_env(var)
    start_serve(var, "--dev", env=env).stop()
    seed = write_seed(tmp_path / "seed.json", [seed_conversation(BIG, 600, now_ms() - 3600_000)])
    assert admin(["import", str(seed)], env).returncode == 0

    operator = clean_env(
        BRIDGE_VAR_DIR=str(var), BRIDGE_MAX_MESSAGES="250", BRIDGE_RETENTION_DAYS="365"
    )
    listed = admin(["list", "--json"], operator)
    assert listed.returncode == 0
    (warning,) = listed.stderr.strip().splitlines()
    assert "warning" in warning
    assert "max_messages=1000" in warning and "max_messages=250" in warning
    assert "retention_days=3650" in warning and "retention_days=365 " in warning
    deleted = admin(["delete", BIG], operator)
    assert deleted.returncode == 0 and len(deleted.stderr.strip().splitlines()) == 1

    # Matching values, or none given: nothing to say.
    assert admin(["list"], env).stderr == ""
    assert admin(["list"], clean_env(BRIDGE_VAR_DIR=str(var))).stderr == ""


def test_stats_shows_the_stored_settings(tmp_path: Path) -> None:
    var = tmp_path / "var"
    env = service_env(var)
    start_serve(var, "--dev", env=env).stop()
    stats = admin_json(["stats"], clean_env(BRIDGE_VAR_DIR=str(var)))
    assert (stats["max_messages"], stats["retention_days"]) == (1000, 3650)
    text = admin(["stats"], clean_env(BRIDGE_VAR_DIR=str(var))).stdout
    assert "1000 messages" in text and "3650 days" in text
