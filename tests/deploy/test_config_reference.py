"""The configuration reference in docs/deployment.md lists exactly the E2EE_PROV_* settings the
service has (read from the table's rows, compared with the settings class), each with its default
as the code has it; the block is what scripts/config-reference makes now; the example .env
validates through the settings class and names only real settings, and docs/deployment.md shows it
as it is."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from e2ee_provisioning.config_reference import BLOCK_END, BLOCK_START, PREFIX, comments, table
from e2ee_provisioning.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deployment.md"
EXAMPLE = ROOT / "deploy" / "provisioning.env.example"
STALE = "docs/deployment.md's configuration reference is stale: run scripts/config-reference"


def _block() -> str:
    text = DOC.read_text()
    return text.split(BLOCK_START, 1)[1].split(BLOCK_END, 1)[0].lstrip("\n")


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in _block().splitlines():
        found = re.match(r"\| `(%s[A-Z0-9_]+)` \|" % PREFIX, line)
        if found:
            rows[found.group(1)] = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
    return rows


def _example() -> dict[str, str]:
    pairs = {}
    for line in EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            pairs[name] = value
    return pairs


def test_the_table_lists_exactly_the_settings_of_the_code() -> None:
    rows = _rows()
    assert set(rows) == {PREFIX + name.upper() for name in Settings.model_fields}, STALE
    assert len(rows) == len(_block().splitlines()) - 2  # header and rule; no row twice or unparsed


def test_each_row_has_the_default_and_a_meaning() -> None:
    rows = _rows()
    for name, field in Settings.model_fields.items():
        default = field.default.get_secret_value() if isinstance(field.default, SecretStr) else field.default
        cell = rows[PREFIX + name.upper()][2]
        if default in (None, ""):
            assert cell == "(unset)", (name, STALE)
        else:
            assert cell.strip("`") == (str(default).lower() if isinstance(default, bool) else str(default)), STALE
        assert rows[PREFIX + name.upper()][4], name
    # a field without a comment of its own shares its group's: the first field of each has one
    assert comments()[next(iter(Settings.model_fields))][1]


def test_the_block_is_what_the_generator_makes_now() -> None:
    assert _block() == table(), STALE


def test_the_example_env_validates_and_names_only_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith(PREFIX)]:
        monkeypatch.delenv(name)  # the file alone
    pairs = _example()
    assert set(pairs) <= {PREFIX + name.upper() for name in Settings.model_fields}
    settings = Settings(_env_file=EXAMPLE)  # type: ignore[call-arg]
    assert settings.environment == "production" and settings.migrate_at_startup is False
    assert settings.tls_certfile is not None and settings.database_url.startswith("postgresql+psycopg://")
    assert settings.operator_api_key is not None and settings.operator_api_key.get_secret_value() == ""
    assert "```sh\n" + EXAMPLE.read_text() + "```" in DOC.read_text()
