"""rotate-key with a key the operator supplies (BRIDGE_KEY_FILE, BRIDGE_KEY, a credential).

The documented procedure: put the new key first and the old one after it in that source, run
rotate-key, and everything is re-encrypted under the new key.
"""

from __future__ import annotations

import os
from pathlib import Path

from bridge.persistence.crypto import key_id
from bridge.persistence.keys import encode_key, new_key
from tests.admin.support import admin, admin_json
from tests.test_cli import clean_env, free_port, run, start_serve


def write_keys(path: Path, *keys: bytes) -> None:
    path.write_text("".join(encode_key(k) + "\n" for k in keys))
    os.chmod(path, 0o600)


def test_the_documented_procedure_reencrypts_under_the_new_external_key(tmp_path: Path) -> None:
    var = tmp_path / "var"
    key_file = tmp_path / "key"
    old, new = new_key(), new_key()
    write_keys(key_file, old)
    env = clean_env(
        BRIDGE_VAR_DIR=str(var), BRIDGE_KEY_FILE=str(key_file), BRIDGE_PORT=str(free_port())
    )
    server = start_serve(var, "--dev", env=env)
    assert run(["simulate", "hola", "--from", "34600000001"], env).returncode == 0
    assert server.stop()[0] == 0
    before = admin_json(["export"], env)
    archive = admin(["backup"], env).stdout.strip()

    refused = admin(["rotate-key"], env)
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert str(key_file) in line and "new key" in line and "first line" in line

    write_keys(key_file, new, old)  # what the refusal said to do
    rotated = admin(["rotate-key"], env)
    assert rotated.returncode == 0, rotated.stderr
    assert key_id(new).decode() in rotated.stdout
    assert key_file.read_text().split() == [encode_key(new), encode_key(old)]  # not written

    only_new = {**env, "BRIDGE_KEY_FILE": "", "BRIDGE_KEY": encode_key(new)}
    assert admin(["verify"], only_new).returncode == 0
    assert admin_json(["export"], only_new) == before
    assert admin(["verify", archive], env).returncode == 0  # old backups: the old key is kept

    again = admin(["rotate-key"], env)
    assert again.returncode == 0 and "nothing was re-encrypted" in again.stdout

    # BRIDGE_KEY takes several keys on one line too.
    newer = new_key()
    env_keys = {**only_new, "BRIDGE_KEY": f"{encode_key(newer)},{encode_key(new)}"}
    assert admin(["rotate-key"], env_keys).returncode == 0
    only_newer = {**only_new, "BRIDGE_KEY": encode_key(newer)}
    assert admin_json(["export"], only_newer) == before
    assert start_serve(var, "--dev", env=only_newer).stop()[0] == 0
