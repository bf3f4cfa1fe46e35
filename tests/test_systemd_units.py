"""The systemd units: required directives, agreement with the bridge's config, systemd's verdict.

The units are parsed with a small reader of systemd's syntax (repeated keys, empty
assignments, comments); where `systemd-analyze` is installed, systemd itself checks them too.
"""

from __future__ import annotations

import codecs
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from bridge.cli import build_parser
from bridge.config import Settings, load_settings
from bridge.http.guard import FD_RESERVE
from bridge.ops.sdnotify import watchdog_interval

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
MAIN = SYSTEMD / "whatsapp-bridge.service"
TEMPLATE = SYSTEMD / "whatsapp-bridge@.service"
EXAMPLE_TOML = SYSTEMD / "bridge.example.toml"
UNITS = [MAIN, TEMPLATE]
SOCKETS = [SYSTEMD / "whatsapp-bridge.socket", SYSTEMD / "whatsapp-bridge@.socket"]
BACKUP = SYSTEMD / "whatsapp-bridge-backup@.service"
BACKUP_TIMER = SYSTEMD / "whatsapp-bridge-backup@.timer"
ADMIN_EXEC = "/opt/whatsapp-bridge/.venv/bin/sessions-admin"
CREDENTIALS = ("verify_token", "app_secret", "access_token", "key", "assistant_api_key")
EXEC = "/opt/whatsapp-bridge/.venv/bin/bridge"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections to keys to every assigned value, in order, as systemd reads a unit file.

    A key may repeat (each assignment adds a value); an empty assignment (`Key=`) is kept as
    "" because for list settings it means "reset" and for CapabilityBoundingSet= "none".
    """
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):  # continuation: the next line joins this one
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def load(path: Path) -> Unit:
    return parse_unit(path.read_text(encoding="utf-8"))


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= expected once, found {values}"
    return values[0]


def environment(unit: Unit) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in unit["Service"].get("Environment", []):
        for assignment in line.split():
            name, _, value = assignment.partition("=")
            env[name] = value
    return env


def credentials(lines: list[str]) -> dict[str, str]:
    """`LoadCredential=ID:PATH` values as {ID: PATH}."""
    pairs = (line.split(":", 1) for line in lines)
    return {cred_id: path for cred_id, path in pairs}


def set_credential_defaults(lines: list[str]) -> dict[str, str]:
    """`SetCredential=ID:VALUE` with systemd's C escapes resolved, as the service sees it."""
    pairs = (line.split(":", 1) for line in lines)
    return {cred_id: codecs.decode(value, "unicode_escape") for cred_id, value in pairs}


def dropin_example(path: Path) -> Unit:
    """The credentials drop-in shown in the main unit's header comment."""
    lines = [
        m.group(1)
        for m in re.finditer(r"^#\s+(\S.*)$", path.read_text(encoding="utf-8"), re.MULTILINE)
        if m.group(1).startswith(("[Service]", "LoadCredential=", "SetCredential="))
    ]
    return parse_unit("\n".join(lines))


COMMON = {
    ("Unit", "StartLimitIntervalSec"): "300",
    ("Service", "Type"): "notify",
    ("Service", "NotifyAccess"): "main",
    ("Service", "WatchdogSec"): "30",
    ("Service", "Restart"): "on-failure",
    ("Service", "RestartSec"): "5",
    ("Service", "RestartPreventExitStatus"): "2",
    ("Service", "TimeoutStopSec"): "60",
    ("Service", "KillSignal"): "SIGTERM",
    ("Service", "User"): "whatsapp-bridge",
    ("Service", "Group"): "whatsapp-bridge",
    ("Service", "StateDirectory"): "whatsapp-bridge",
    ("Service", "StateDirectoryMode"): "0700",
    ("Service", "UMask"): "0077",
    ("Service", "NoNewPrivileges"): "yes",
    ("Service", "ProtectSystem"): "strict",
    ("Service", "ProtectHome"): "yes",
    ("Service", "PrivateTmp"): "yes",
    ("Service", "PrivateDevices"): "yes",
    ("Service", "PrivateMounts"): "yes",
    ("Service", "ProtectKernelTunables"): "yes",
    ("Service", "ProtectKernelModules"): "yes",
    ("Service", "ProtectKernelLogs"): "yes",
    ("Service", "ProtectControlGroups"): "yes",
    ("Service", "ProtectClock"): "yes",
    ("Service", "ProtectHostname"): "yes",
    ("Service", "ProtectProc"): "invisible",
    ("Service", "ProcSubset"): "pid",
    ("Service", "RestrictAddressFamilies"): "AF_UNIX AF_INET AF_INET6",
    ("Service", "RestrictNamespaces"): "yes",
    ("Service", "RestrictRealtime"): "yes",
    ("Service", "RestrictSUIDSGID"): "yes",
    ("Service", "LockPersonality"): "yes",
    ("Service", "MemoryDenyWriteExecute"): "yes",
    ("Service", "SystemCallArchitectures"): "native",
    ("Service", "CapabilityBoundingSet"): "",
    ("Service", "AmbientCapabilities"): "",
    ("Install", "WantedBy"): "multi-user.target",
}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
@pytest.mark.parametrize(("section", "key"), list(COMMON), ids="/".join)
def test_unit_sets_required_directive(path: Path, section: str, key: str) -> None:
    assert one(load(path), section, key) == COMMON[(section, key)]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_filters_system_calls_to_service_set_minus_privileged(path: Path) -> None:
    assert load(path)["Service"]["SystemCallFilter"] == [
        "@system-service",
        "~@privileged @resources",
    ]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_points_state_and_logs_where_the_sandbox_allows(path: Path) -> None:
    env = environment(load(path))

    assert env["BRIDGE_VAR_DIR"] == "%S/whatsapp-bridge"  # %S: /var/lib for system units
    assert env["BRIDGE_LOG_FORMAT"] == "json"


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_puts_no_secret_in_the_environment(path: Path) -> None:
    names = environment(load(path))

    assert not [n for n in names if re.search(r"TOKEN|SECRET|KEY", n)]


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_stop_timeout_leaves_room_for_shutdown_and_final_snapshot(path: Path) -> None:
    shutdown_timeout = Settings(profiles=()).shutdown_timeout
    timeout_stop = float(one(load(path), "Service", "TimeoutStopSec"))

    # In-flight requests get shutdown_timeout, then the final snapshot needs its own time.
    assert timeout_stop >= shutdown_timeout + 30


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_open_files_limit_leaves_the_default_connection_cap_whole(path: Path) -> None:
    limit = int(one(load(path), "Service", "LimitNOFILE"))  # one value: soft and hard
    default_cap = Settings(profiles=()).max_connections

    # The bridge lowers its cap to LimitNOFILE - FD_RESERVE; the default must not need that.
    assert limit - FD_RESERVE >= default_cap


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_watchdog_pings_come_twice_per_watchdog_period(path: Path) -> None:
    seconds = int(one(load(path), "Service", "WatchdogSec"))

    assert watchdog_interval(str(seconds * 1_000_000)) == seconds / 2


def test_exec_start_runs_the_bridge_console_script() -> None:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"]

    assert Path(EXEC).name in scripts


def test_main_unit_serves_every_profile_of_the_toml_file() -> None:
    exec_start = one(load(MAIN), "Service", "ExecStart")

    assert exec_start == f"{EXEC} serve --config /etc/whatsapp-bridge/bridge.toml"
    args = build_parser().parse_args(exec_start.split()[1:])
    assert (args.command, args.config, args.profile) == (
        "serve",
        Path("/etc/whatsapp-bridge/bridge.toml"),
        [],
    )


def test_template_serves_the_instance_profile() -> None:
    unit = load(TEMPLATE)
    exec_start = one(unit, "Service", "ExecStart")

    assert exec_start == f"{EXEC} serve --profile %i"
    assert environment(unit)["BRIDGE_PROFILE"] == "%i"
    assert one(unit, "Service", "EnvironmentFile") == "-/etc/whatsapp-bridge/%i.env"
    args = build_parser().parse_args(exec_start.replace("%i", "shop").split()[1:])
    assert (args.command, args.profile) == ("serve", ["shop"])


def test_template_loads_every_secret_as_an_instance_credential() -> None:
    loaded = credentials(load(TEMPLATE)["Service"]["LoadCredential"])

    assert loaded == {name: f"/etc/whatsapp-bridge/credentials/%i/{name}" for name in CREDENTIALS}


def test_template_credentials_are_the_names_the_config_reads(tmp_path: Path) -> None:
    """systemd's $CREDENTIALS_DIRECTORY for whatsapp-bridge@shop, read by `load_settings`."""
    unit = load(TEMPLATE)
    cred_dir = tmp_path / "credentials"
    cred_dir.mkdir()
    for cred_id in credentials(unit["Service"]["LoadCredential"]):
        (cred_dir / cred_id).write_text(f"secret-{cred_id}\n")
    env = {"CREDENTIALS_DIRECTORY": str(cred_dir), "BRIDGE_PROFILE": "shop"}

    profile = load_settings(env=env, selected=("shop",)).profile("shop")

    assert (profile.verify_token, profile.app_secret, profile.access_token, profile.key) == (
        "secret-verify_token",
        "secret-app_secret",
        "secret-access_token",
        "secret-key",
    )
    assert profile.assistant.api_key == "secret-assistant_api_key"


def test_template_assistant_key_defaults_to_no_key(tmp_path: Path) -> None:
    """Without its file, SetCredential='s default is what the service finds: no API key."""
    defaults = set_credential_defaults(load(TEMPLATE)["Service"]["SetCredential"])
    assert set(defaults) == {"assistant_api_key"}
    cred_dir = tmp_path / "credentials"
    cred_dir.mkdir()
    (cred_dir / "assistant_api_key").write_text(defaults["assistant_api_key"])
    env = {"CREDENTIALS_DIRECTORY": str(cred_dir), "BRIDGE_PROFILE": "shop"}

    assert not load_settings(env=env).profile("shop").assistant.api_key


def test_main_unit_documents_a_credentials_dropin_the_config_reads(tmp_path: Path) -> None:
    dropin = dropin_example(MAIN)["Service"]
    loaded = credentials(dropin["LoadCredential"])
    assert loaded == {
        f"shop.{name}": f"/etc/whatsapp-bridge/credentials/shop/{name}" for name in CREDENTIALS
    }
    assert set(set_credential_defaults(dropin["SetCredential"])) == {"shop.assistant_api_key"}
    cred_dir = tmp_path / "credentials"
    cred_dir.mkdir()
    for cred_id in loaded:
        (cred_dir / cred_id).write_text(f"secret-{cred_id}\n")

    settings = load_settings(env={"CREDENTIALS_DIRECTORY": str(cred_dir)}, config_path=EXAMPLE_TOML)

    shop = settings.profile("shop")
    assert (shop.verify_token, shop.app_secret, shop.access_token, shop.key) == (
        "secret-shop.verify_token",
        "secret-shop.app_secret",
        "secret-shop.access_token",
        "secret-shop.key",
    )
    assert shop.assistant.api_key == "secret-shop.assistant_api_key"


def test_example_config_loads_with_state_under_the_units_var_dir() -> None:
    env = {"BRIDGE_VAR_DIR": "/var/lib/whatsapp-bridge"}

    settings = load_settings(env=env, config_path=EXAMPLE_TOML)

    assert [p.slug for p in settings.profiles] == ["shop", "support"]
    assert settings.var_dir == Path("/var/lib/whatsapp-bridge")
    assert settings.host == "127.0.0.1"


def test_example_config_holds_no_secrets() -> None:
    with EXAMPLE_TOML.open("rb") as fh:
        data = tomllib.load(fh)
    secret_keys = {*CREDENTIALS, "api_key"}

    def keys(table: dict[str, object]) -> set[str]:
        found = set(table)
        for value in table.values():
            if isinstance(value, dict):
                found |= keys(value)
        return found

    assert not keys(data) & secret_keys


# The bridge units' hardening and identity, which the backup unit shares: everything in
# COMMON from the user on, except what only a long-running notify service has.
SHARED_WITH_BACKUP = {
    key: value
    for key, value in COMMON.items()
    if key[0] == "Service"
    and key[1]
    not in {
        "Type",
        "NotifyAccess",
        "WatchdogSec",
        "Restart",
        "RestartSec",
        "RestartPreventExitStatus",
        "TimeoutStopSec",
        "KillSignal",
        "RestrictAddressFamilies",
    }
}


@pytest.mark.parametrize(("section", "key"), list(SHARED_WITH_BACKUP), ids="/".join)
def test_backup_unit_is_hardened_like_the_bridge(section: str, key: str) -> None:
    assert one(load(BACKUP), section, key) == SHARED_WITH_BACKUP[(section, key)]


def test_backup_unit_needs_no_network_and_files_the_same_system_calls() -> None:
    service = load(BACKUP)["Service"]

    assert service["PrivateNetwork"] == ["yes"] and service["IPAddressDeny"] == ["any"]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX"]
    assert service["SystemCallFilter"] == load(TEMPLATE)["Service"]["SystemCallFilter"]


def test_backup_unit_backs_up_the_instance_profile_with_its_key() -> None:
    from admin.cli import build_parser as admin_parser

    unit = load(BACKUP)
    exec_start = one(unit, "Service", "ExecStart")
    assert one(unit, "Service", "Type") == "oneshot"
    assert exec_start == f"{ADMIN_EXEC} --profile %i backup --keep 14"
    args = admin_parser().parse_args(exec_start.replace("%i", "shop").split()[1:])
    assert (args.command, args.profile, args.keep, args.to) == ("backup", "shop", 14, None)
    env = environment(unit)
    assert env["BRIDGE_PROFILE"] == "%i" and env["BRIDGE_VAR_DIR"] == "%S/whatsapp-bridge"
    # The same key credential as the bridge instance's: archives are encrypted with it.
    key = credentials(unit["Service"]["LoadCredential"])
    assert key == {"key": credentials(load(TEMPLATE)["Service"]["LoadCredential"])["key"]}


def test_backup_timer_runs_daily_catching_up_with_a_random_delay() -> None:
    timer = load(BACKUP_TIMER)

    assert one(timer, "Timer", "OnCalendar") == "daily"
    assert one(timer, "Timer", "Persistent") == "true"
    assert one(timer, "Timer", "RandomizedDelaySec") == "1h"
    assert one(timer, "Install", "WantedBy") == "timers.target"
    assert "Unit" not in timer["Timer"]  # it starts the service of its own name


def test_make_install_systemd_installs_every_unit(tmp_path: Path) -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "install-systemd", f"DESTDIR={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    installed = tmp_path / "etc" / "systemd" / "system"
    names = sorted(p.name for p in installed.iterdir())
    assert names == sorted(p.name for p in [*UNITS, BACKUP, BACKUP_TIMER, *SOCKETS])
    assert all((installed / n).stat().st_mode & 0o777 == 0o644 for n in names)


# systemd checks the ExecStart= binary exists; it is not installed on a test machine.
MISSING_BINARY = re.compile(
    rf"Command ({re.escape(EXEC)}|{re.escape(ADMIN_EXEC)}) is not executable: No such file"
)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (Debian package: systemd)"
)


def instantiated_units(tmp_path: Path) -> list[Path]:
    """Copies systemd can load: a template is only checked through an instance."""
    copies = {
        MAIN: tmp_path / MAIN.name,
        TEMPLATE: tmp_path / "whatsapp-bridge@shop.service",
        BACKUP: tmp_path / "whatsapp-bridge-backup@shop.service",
        BACKUP_TIMER: tmp_path / "whatsapp-bridge-backup@shop.timer",
        SOCKETS[0]: tmp_path / "whatsapp-bridge.socket",
        SOCKETS[1]: tmp_path / "whatsapp-bridge@shop.socket",
    }
    for source, copy in copies.items():
        shutil.copy(source, copy)
    return list(copies.values())


@pytest.mark.parametrize("path", SOCKETS, ids=lambda p: p.name)
def test_socket_units_hand_over_a_socket_named_http_to_their_service(path: Path) -> None:
    unit = parse_unit(path.read_text())
    assert unit["Socket"]["FileDescriptorName"] == ["http"]
    assert unit["Socket"]["ListenStream"]
    service = unit["Socket"]["Service"][0]
    assert service.replace("%i", "") in (MAIN.name, TEMPLATE.name)
    assert unit["Install"]["WantedBy"] == ["sockets.target"]


@pytest.mark.slow
@needs_systemd_analyze
def test_systemd_analyze_verify_finds_nothing_but_the_missing_binary(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *map(str, instantiated_units(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).splitlines()
    ours = [line for line in output if "whatsapp-bridge" in line]
    unexpected = [line for line in ours if not MISSING_BINARY.search(line)]

    assert unexpected == [], "\n".join(output)
    if result.returncode != 0:  # the missing binary must be the whole reason
        assert ours, "\n".join(output)


@pytest.mark.slow
@needs_systemd_analyze
@pytest.mark.parametrize(
    "name",
    [
        "whatsapp-bridge.service",
        "whatsapp-bridge@shop.service",
        "whatsapp-bridge-backup@shop.service",
    ],
)
def test_systemd_analyze_security_rates_exposure_ok(tmp_path: Path, name: str) -> None:
    assert SYSTEMD_ANALYZE is not None
    instantiated_units(tmp_path)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)

    assert match, result.stdout + result.stderr
    # 1.2 today; only PrivateNetwork=, PrivateUsers=, IPAddressDeny= and the sockets the
    # bridge needs remain. A rise means a hardening line was lost.
    assert float(match.group(1)) <= 1.5
