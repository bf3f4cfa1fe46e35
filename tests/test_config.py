"""Settings from the environment, TOML files and systemd credentials; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError


def test_defaults_give_one_default_profile_on_localhost_8080() -> None:
    settings = load_settings({})
    assert (settings.host, settings.port, settings.var_dir) == ("127.0.0.1", 8080, Path("var"))
    (profile,) = settings.profiles
    assert profile.slug == "default"
    assert profile.state_dir == Path("var/profiles/default")
    assert profile.assistant.kind == "echo"
    assert (profile.max_messages, profile.retention_days) == (250, 365)


def test_environment_configures_one_profile() -> None:
    settings = load_settings(
        {
            "BRIDGE_PROFILE": "shop",
            "BRIDGE_VAR_DIR": "/srv/b",
            "BRIDGE_PORT": "9000",
            "BRIDGE_APP_SECRET": "s",
            "BRIDGE_VERIFY_TOKEN": "v",
            "BRIDGE_ACCESS_TOKEN": "a",
            "BRIDGE_PHONE_NUMBER_ID": "123",
            "BRIDGE_ASSISTANT": "openai",
            "BRIDGE_ASSISTANT_URL": "http://127.0.0.1:11434",
            "BRIDGE_ASSISTANT_MODEL": "llama3",
            "BRIDGE_ASSISTANT_SYSTEM_PROMPT": "Be brief.",
            "BRIDGE_ASSISTANT_API_KEY": "k",
        }
    )
    (p,) = settings.profiles
    assert (p.slug, p.state_dir, settings.port) == ("shop", Path("/srv/b/profiles/shop"), 9000)
    assert (p.app_secret, p.verify_token, p.access_token, p.phone_number_id) == (
        "s",
        "v",
        "a",
        "123",
    )
    assert (p.assistant.kind, p.assistant.url, p.assistant.model) == (
        "openai",
        "http://127.0.0.1:11434",
        "llama3",
    )
    assert (p.assistant.system_prompt, p.assistant.api_key) == ("Be brief.", "k")


def test_secrets_are_not_in_repr() -> None:
    (p,) = load_settings(
        {"BRIDGE_APP_SECRET": "hunter2", "BRIDGE_ASSISTANT_API_KEY": "sk-1"}
    ).profiles
    assert "hunter2" not in repr(p) and "sk-1" not in repr(p)


def test_secret_from_file_and_from_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "verify_token").write_text("from-cred")
    env = {"BRIDGE_APP_SECRET_FILE": str(tmp_path / "secret"), "CREDENTIALS_DIRECTORY": str(creds)}
    (p,) = load_settings(env).profiles
    assert (p.app_secret, p.verify_token) == ("from-file", "from-cred")


def test_unreadable_secret_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read BRIDGE_APP_SECRET_FILE"):
        load_settings({"BRIDGE_APP_SECRET_FILE": str(tmp_path / "missing")})


TOML = """
host = "0.0.0.0"
port = 8443
var_dir = "{var}"

[profiles.shop]
phone_number_id = "111"
verify_token = "v-shop"
app_secret_file = "{secret}"
retention_days = 30
[profiles.shop.assistant]
kind = "http"
url = "http://127.0.0.1:9/reply"
timeout = 5
fallback_reply = "Sorry, try again later."

[profiles.clinic]
phone_number_id = "222"
max_messages = 100
"""


def _toml(tmp_path: Path) -> Path:
    (tmp_path / "app_secret").write_text("s-shop")
    path = tmp_path / "bridge.toml"
    path.write_text(TOML.format(var=tmp_path / "var", secret=tmp_path / "app_secret"))
    return path


def test_toml_configures_several_profiles_with_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "clinic.app_secret").write_text("s-clinic")
    settings = load_settings({"CREDENTIALS_DIRECTORY": str(creds)}, config_path=_toml(tmp_path))
    assert (settings.host, settings.port) == ("0.0.0.0", 8443)
    shop, clinic = settings.profiles
    assert (shop.slug, shop.phone_number_id, shop.app_secret, shop.verify_token) == (
        "shop",
        "111",
        "s-shop",
        "v-shop",
    )
    assert shop.retention_days == 30
    assert (shop.assistant.kind, shop.assistant.timeout, shop.assistant.fallback_reply) == (
        "http",
        5.0,
        "Sorry, try again later.",
    )
    assert (clinic.app_secret, clinic.max_messages) == ("s-clinic", 100)
    assert clinic.state_dir == tmp_path / "var" / "profiles" / "clinic"


def test_profile_selection_keeps_only_named_profiles(tmp_path: Path) -> None:
    settings = load_settings({}, config_path=_toml(tmp_path), selected=("clinic",))
    assert [p.slug for p in settings.profiles] == ["clinic"]


def test_unknown_selected_profile_names_the_configured_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown profile 'nope' \(configured: shop, clinic\)"):
        load_settings({}, config_path=_toml(tmp_path), selected=("nope",))


@pytest.mark.parametrize("slug", ["Shop", "-x", "a" * 33, "a_b", ""])
def test_invalid_slug_is_refused(slug: str) -> None:
    with pytest.raises(ConfigError, match="invalid profile name"):
        load_settings({"BRIDGE_PROFILE": slug} if slug else {}, selected=(slug,))


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings({}, config_path=tmp_path / "nope.toml")


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("port = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings({}, config_path=path)


def test_two_profiles_with_one_phone_number_id_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    path.write_text('[profiles.a]\nphone_number_id = "1"\n[profiles.b]\nphone_number_id = "1"\n')
    with pytest.raises(ConfigError, match="share one phone_number_id"):
        load_settings({}, config_path=path)


def test_unknown_assistant_kind_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown assistant 'gpt'"):
        load_settings({"BRIDGE_ASSISTANT": "gpt"})


def test_http_assistant_without_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a URL"):
        load_settings({"BRIDGE_ASSISTANT": "openai"})


def test_bad_port_is_refused() -> None:
    with pytest.raises(ConfigError, match="port must be 0..65535"):
        load_settings({"BRIDGE_PORT": "70000"})


def test_missing_secret_message_says_how_to_fix() -> None:
    (p,) = load_settings({"BRIDGE_VERIFY_TOKEN": "v"}).profiles
    with pytest.raises(ConfigError, match="missing secret app_secret .*BRIDGE_APP_SECRET"):
        p.require_secrets()


def test_connection_limits_from_the_environment_and_toml(tmp_path: Path) -> None:
    defaults = load_settings({})
    assert (defaults.header_timeout, defaults.body_timeout, defaults.max_connections) == (
        10.0,
        30.0,
        1024,
    )
    env = load_settings(
        {
            "BRIDGE_HEADER_TIMEOUT": "2.5",
            "BRIDGE_BODY_TIMEOUT": "7",
            "BRIDGE_MAX_CONNECTIONS": "300",
        }
    )
    assert (env.header_timeout, env.body_timeout, env.max_connections) == (2.5, 7.0, 300)
    toml = tmp_path / "bridge.toml"
    toml.write_text("header_timeout = 4\nmax_connections = 50\n[profiles.shop]\n")
    from_toml = load_settings({}, config_path=toml)
    assert (from_toml.header_timeout, from_toml.max_connections) == (4.0, 50)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BRIDGE_HEADER_TIMEOUT", "0", "header_timeout must be positive"),
        ("BRIDGE_BODY_TIMEOUT", "soon", "body_timeout must be a number"),
        ("BRIDGE_MAX_CONNECTIONS", "many", "max_connections must be a whole number"),
    ],
)
def test_bad_connection_limits_are_one_line(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({name: value})


def test_humans_in_the_loop_settings_from_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "api_token"
    token_file.write_text("0123456789abcdef-from-a-file\n")
    settings = load_settings(
        {
            "BRIDGE_API_TOKEN_FILE": str(token_file),
            "BRIDGE_HANDOFF_MINUTES": "0",
            "BRIDGE_HANDOFF_KEYWORDS": "humano, agente ,,human",
            "BRIDGE_HANDOFF_REPLY": "Te paso con una persona",
            "BRIDGE_OPT_IN_KEYWORDS": "",  # switched off
            "BRIDGE_NOTIFY_URL": "https://hooks.example.com/x",
            "BRIDGE_NOTIFY_SECRET": "s",
        }
    )
    assert settings.api_token == "0123456789abcdef-from-a-file"
    (p,) = settings.profiles
    assert p.handoff_minutes == 0
    assert p.handoff_keywords == ("humano", "agente", "human")
    assert p.handoff_reply == "Te paso con una persona"
    assert (p.opt_out_keywords, p.opt_in_keywords) == (("STOP", "BAJA"), ())
    assert (p.notify_url, p.notify_secret) == ("https://hooks.example.com/x", "s")


def test_keywords_in_toml_are_lists(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(
        'api_token = "0123456789abcdef0123"\n'
        "[profiles.shop]\n"
        'handoff_keywords = ["humano", "Hablar con alguien"]\n'
        'opt_out_keywords = ["STOP", "BAJA", "baja por favor"]\n'
        "handoff_minutes = 120\n"
    )
    settings = load_settings({}, config_path=config)
    (shop,) = settings.profiles
    assert shop.handoff_keywords == ("humano", "Hablar con alguien")
    assert shop.opt_out_keywords == ("STOP", "BAJA", "baja por favor")
    assert shop.handoff_minutes == 120
    assert settings.api_token == "0123456789abcdef0123"


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"BRIDGE_API_TOKEN": "short"}, "too short"),
        ({"BRIDGE_HANDOFF_MINUTES": "-5"}, "handoff_minutes"),
        ({"BRIDGE_HANDOFF_MINUTES": "soon"}, "handoff_minutes"),
        ({"BRIDGE_NOTIFY_URL": "hooks.example.com"}, "notify_url"),
    ],
)
def test_humans_in_the_loop_settings_are_checked(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_settings(env)


def test_media_and_transcription_from_the_environment() -> None:
    settings = load_settings(
        {
            "BRIDGE_TRANSCRIBE_URL": "http://127.0.0.1:8000",
            "BRIDGE_TRANSCRIBE_MODEL": "Systran/faster-whisper-small",
            "BRIDGE_TRANSCRIBE_API_KEY": "stt-key",
            "BRIDGE_TRANSCRIBE_LANGUAGE": "es",
            "BRIDGE_TRANSCRIBE_TIMEOUT": "20",
            "BRIDGE_MEDIA_IMAGE_MAX_MB": "2.5",
            "BRIDGE_MEDIA_RETENTION_DAYS": "30",
            "BRIDGE_MEDIA_WAIT_SECONDS": "10",
            "BRIDGE_ASSISTANT": "openai",
            "BRIDGE_ASSISTANT_URL": "http://127.0.0.1:11434",
            "BRIDGE_ASSISTANT_VISION": "true",
            "BRIDGE_ASSISTANT_MEDIA_MAX_ITEMS": "2",
            "BRIDGE_READ_RECEIPTS": "false",
        }
    )
    (p,) = settings.profiles
    t = p.media.transcribe
    assert (t.url, t.model, t.api_key, t.language, t.timeout) == (
        "http://127.0.0.1:8000",
        "Systran/faster-whisper-small",
        "stt-key",
        "es",
        20.0,
    )
    assert "stt-key" not in repr(p)
    assert p.media.limit("image") == int(2.5 * 1024 * 1024)
    assert p.media.limit("document") == 100 * 1024 * 1024  # Meta's own limit, by default
    assert (p.media.retention_days, p.media.wait_seconds, p.media.fetch) == (30, 10.0, True)
    assert p.read_receipts is False and load_settings({}).profiles[0].read_receipts is True
    assert (p.assistant.vision, p.assistant.send_media, p.assistant.media_max_items) == (
        True,
        False,
        2,
    )


def test_media_and_transcription_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(
        """
[profiles.shop]
phone_number_id = "111"
[profiles.shop.transcribe]
url = "https://api.groq.com/openai/v1"
model = "whisper-large-v3"
api_key_file = "%s"
[profiles.shop.media]
fetch = false
audio_max_mb = 4
[profiles.shop.assistant]
kind = "http"
url = "http://127.0.0.1:9000/bot"
send_media = true
[profiles.clinic]
phone_number_id = "222"
"""
        % (tmp_path / "stt-key")
    )
    (tmp_path / "stt-key").write_text("groq-key\n")
    shop, clinic = load_settings({"BRIDGE_TRANSCRIBE_URL": "http://ignored"}, path).profiles
    assert shop.media.transcribe.model == "whisper-large-v3"
    assert shop.media.transcribe.api_key == "groq-key"
    assert (shop.media.fetch, shop.media.limit("audio")) == (False, 4 * 1024 * 1024)
    assert shop.assistant.send_media is True
    assert clinic.media.transcribe.url is None  # TOML profiles take nothing from the env


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("BRIDGE_MEDIA_FETCH", "maybe", "media fetch must be true or false, got 'maybe'"),
        ("BRIDGE_MEDIA_VIDEO_MAX_MB", "-1", "media video_max_mb must be between 0 and 4096 MB"),
        ("BRIDGE_MEDIA_RETENTION_DAYS", "0", "media retention_days must be >= 1, got 0"),
        ("BRIDGE_TRANSCRIBE_TIMEOUT", "soon", "transcribe timeout must be a number"),
    ],
)
def test_bad_media_settings_are_one_line(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings({name: value})
