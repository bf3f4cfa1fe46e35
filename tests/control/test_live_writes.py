"""sessions-admin's writes while a real `bridge serve` runs, under a steady load of signed
deliveries, each followed by kill -9 and a restart: the change stuck, nothing else was lost."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from bridge.persistence.crypto import key_id
from bridge.persistence.keys import encode_key, new_key, parse_keys
from tests.admin.support import admin, admin_json, now_ms, seed_conversation, write_seed
from tests.control.conftest import Serving
from tests.control.support import Ack, Load, bridge_env, kill_9, stored, user_ids

DAY_MS = 24 * 3600 * 1000
VICTIM = "34600000001"
PHONES = [VICTIM, *(f"3460000{i:04d}" for i in range(2, 10))]
IDLE = "34699999999"  # 40 days without a message: `prune --older-than 30` takes it
ARGS = {
    "delete": lambda seed: ["delete", VICTIM],
    "import": lambda seed: ["import", str(seed)],
    "prune": lambda seed: ["prune", "--older-than", "30", "--json"],
    "rotate-key": lambda seed: ["rotate-key"],
}


def present_once(ids: Counter[str], acked: list[Ack]) -> list[str]:
    """The acknowledged messages that are not in the store exactly once."""
    return [a.wamid for a in acked if ids[a.wamid] != 1]


@pytest.mark.slow
@pytest.mark.parametrize("op", ["delete", "import", "prune", "rotate-key"])
def test_live_write_under_load_survives_kill_9(op: str, tmp_path: Path, serving: Serving) -> None:
    var = tmp_path / "var"
    env = bridge_env(var)
    # Idle history, imported while no bridge runs (sessions-admin writes directly).
    idle = write_seed(tmp_path / "idle.json", [seed_conversation(IDLE, 4, now_ms() - 40 * DAY_MS)])
    assert admin(["profiles", "create", "default"], env).returncode == 0
    assert admin(["import", str(idle)], env).returncode == 0
    fresh = [seed_conversation(f"3461{i:07d}", 6, now_ms() - 3600_000) for i in range(40)]
    seed = write_seed(tmp_path / "fresh.json", fresh)
    server = serving(var, env)
    before_archive = admin(["backup"], env)
    assert before_archive.returncode == 0, before_archive.stderr

    with Load(server.port, PHONES) as load:
        load.wait_for(60)
        sent = time.monotonic()
        result = admin(ARGS[op](seed), env)
        returned = time.monotonic()
        assert result.returncode == 0, result.stderr
        load.wait_for(60)
        kill_9(server)
    acked = load.acked
    assert len(acked) > 120

    key = None
    if op == "rotate-key":
        keys = parse_keys((var / "profiles" / "default" / "key").read_text(), "key")
        assert len(keys) == 2 and key_id(keys[0]).decode() in result.stdout
        key = encode_key(keys[0])  # the new key alone reads everything: all re-encrypted
    state = stored(var, key=key)
    ids = Counter(user_ids(state))

    if op == "delete":
        assert result.stdout == f"deleted conversation {VICTIM} from profile 'default'\n"
        before = [a for a in acked if a.phone == VICTIM and a.at < sent]
        after = [a for a in acked if a.phone == VICTIM and a.at > returned]
        assert before and after
        assert not [a.wamid for a in before if ids[a.wamid]], "erased messages came back"
        assert present_once(ids, after) == [], "a message acknowledged after the delete was lost"
        assert all(ids[a.wamid] <= 1 for a in acked if a.phone == VICTIM)
        acked = [a for a in acked if a.phone != VICTIM]
    assert present_once(ids, acked) == [], "acknowledged messages lost or duplicated"
    if op == "import":
        assert "imported 240 new message(s) into 40 conversation(s)" in result.stdout
        for key_, conv in fresh:
            assert len(state.conversations[key_].messages) == len(conv["messages"])
    if op == "prune":
        assert json.loads(result.stdout) == {"deleted": 1}
        assert IDLE not in state.conversations
    else:
        assert IDLE in state.conversations

    # The restarted bridge agrees, and an orderly stop keeps it all.
    again = serving(var, env)
    rows = admin_json(["list"], env)
    code, _ = again.stop()
    assert code == 0
    assert {r["key"] for r in rows} == set(stored(var).conversations)
    assert Counter(user_ids(stored(var))) == ids
    if op == "rotate-key":  # archives made before the rotation still open (old key kept)
        assert admin(["verify", before_archive.stdout.strip()], env).returncode == 0


def test_writes_while_running_print_what_they_print_when_stopped(
    tmp_path: Path, serving: Serving
) -> None:
    var = tmp_path / "var"
    env = bridge_env(var)
    seed = write_seed(tmp_path / "seed.json", [seed_conversation("34600000005", 3, now_ms())])
    server = serving(var, env)
    live = admin(["import", str(seed), "--json"], env)
    again_live = admin(["import", str(seed), "--json"], env)
    deleted = admin(["delete", "+34 600 000 005"], env)
    missing = admin(["delete", "34600000005"], env)
    code, events = server.stop()
    assert code == 0
    direct = admin(["import", str(seed), "--json"], env)

    assert json.loads(live.stdout) == {
        "imported": {"conversations": 1, "messages": 3, "skipped_expired": 0, "over_cap": 0},
        "file": str(seed),
    }
    assert json.loads(again_live.stdout)["imported"]["messages"] == 0  # nothing twice
    assert deleted.stdout == "deleted conversation 34600000005 from profile 'default'\n"
    assert missing.returncode == 1
    assert missing.stderr == (
        "sessions-admin: error: no conversation '34600000005' in profile 'default'\n"
    )
    assert json.loads(direct.stdout) == json.loads(live.stdout)  # the same code wrote both
    requests = [e for e in events if e["event"] == "control_request"]
    assert [(e["op"], e["exit"]) for e in requests] == [
        ("import", 0),
        ("import", 0),
        ("delete", 0),
        ("delete", 1),
    ]
    assert "34600000005" not in json.dumps(events)  # no phone number in the bridge's log


@pytest.mark.slow
def test_a_large_import_goes_in_parts_while_deliveries_keep_being_acknowledged(
    tmp_path: Path, serving: Serving
) -> None:
    var = tmp_path / "var"
    env = bridge_env(var)
    pairs = [seed_conversation(f"3462{i:07d}", 10, now_ms() - 3600_000) for i in range(3000)]
    seed = write_seed(tmp_path / "big.json", pairs)
    assert seed.stat().st_size > 2 * 1024 * 1024  # more than one part
    server = serving(var, env)
    with Load(server.port, PHONES, rate=50) as load:
        load.wait_for(20)
        started = time.monotonic()
        result = admin(["import", str(seed)], env)
        ended = time.monotonic()
        load.wait_for(20)
    assert result.returncode == 0, result.stderr
    assert "imported 30000 new message(s) into 3000 conversation(s)" in result.stdout
    during = [a for a in load.acked if started < a.at < ended]
    assert len(during) >= (ended - started) * 50 * 0.5, "deliveries stalled during the import"
    assert len(load.acked) == load.sent, "a delivery failed during the import"
    code, events = server.stop()
    assert code == 0
    parts = [e for e in events if e["event"] == "control_request" and e["op"] == "import"]
    assert len(parts) >= 2 and all(e["exit"] == 0 for e in parts)
    assert len(stored(var).conversations) == 3000 + len(PHONES)


def test_rotate_key_with_an_external_key_file_while_running(
    tmp_path: Path, serving: Serving
) -> None:
    """The documented procedure with BRIDGE_KEY_FILE, the bridge running: it reads the file
    again for the command, re-encrypts under its first key, and refuses a file that could
    not read what is stored."""
    var, key_file = tmp_path / "var", tmp_path / "keys"
    old, new = new_key(), new_key()
    key_file.write_text(encode_key(old) + "\n")
    env = bridge_env(var, BRIDGE_KEY_FILE=str(key_file))
    server = serving(var, env)
    with Load(server.port, PHONES) as load:
        load.wait_for(30)
        refused = admin(["rotate-key"], env)
        key_file.write_text(f"{encode_key(new_key())}\n{encode_key(new_key())}\n")
        unreadable = admin(["rotate-key"], env)
        key_file.write_text(f"{encode_key(new)}\n{encode_key(old)}\n")
        rotated = admin(["rotate-key"], env)
        load.wait_for(30)
        kill_9(server)
    assert refused.returncode == 1 and "new key" in refused.stderr
    assert str(key_file) in refused.stderr and "first line" in refused.stderr
    assert unreadable.returncode == 1
    (line,) = unreadable.stderr.splitlines()
    assert f"cannot read data sealed with key(s) {key_id(old).decode()}" in line
    assert rotated.returncode == 0, rotated.stderr
    assert f"now encrypted with key {key_id(new).decode()}" in rotated.stdout
    state = stored(var, key=encode_key(new))  # the new key alone reads it all
    assert present_once(Counter(user_ids(state)), load.acked) == []
