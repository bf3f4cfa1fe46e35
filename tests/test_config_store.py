"""Choosing the store: the file store by default, PostgreSQL by BRIDGE_STORE / `store`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError

URL = "postgresql://bridge:s3cret@db.internal:5432/bridge"


def test_the_file_store_is_the_default() -> None:
    settings = load_settings({})
    assert (settings.store, settings.database_url) == ("file", None)


def test_postgres_from_the_environment_and_the_url_stays_out_of_repr() -> None:
    settings = load_settings({"BRIDGE_STORE": "postgres", "BRIDGE_DATABASE_URL": URL})
    assert (settings.store, settings.database_url) == ("postgres", URL)
    assert "s3cret" not in repr(settings)


def test_postgres_from_toml_with_the_url_in_a_file(tmp_path: Path) -> None:
    (tmp_path / "db-url").write_text(URL + "\n")
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'store = "postgres"\ndatabase_url_file = "{tmp_path / "db-url"}"\n'
        '[profiles.shop]\nphone_number_id = "1"\n'
    )
    settings = load_settings({}, config_path=config)
    assert (settings.store, settings.database_url) == ("postgres", URL)


def test_postgres_without_a_database_is_one_line() -> None:
    with pytest.raises(ConfigError, match="needs a database: set BRIDGE_DATABASE_URL"):
        load_settings({"BRIDGE_STORE": "postgres"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BRIDGE_STORE": "redis"}, "unknown store 'redis'"),
        ({"BRIDGE_STORE": "postgres", "BRIDGE_DATABASE_URL": "mysql://x"}, "must start with"),
    ],
)
def test_bad_store_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)
