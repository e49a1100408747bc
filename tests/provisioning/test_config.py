"""core/config.py: default operator secret refused outside development; keys kept hashed."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from e2ee_provisioning.core.config import DEFAULT_OPERATOR_KEY, Settings, hash_api_key


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_default_operator_key_is_refused_outside_development(environment: str) -> None:
    with pytest.raises(ValidationError, match="default development key"):
        Settings(_env_file=None, environment=environment)  # type: ignore[call-arg]
    ok = Settings(_env_file=None, environment=environment, operator_api_key="x" * 32)  # type: ignore[call-arg]
    assert ok.operator_key_hashes() == {hash_api_key("x" * 32)}


def test_development_accepts_the_default_and_hashed_keys() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.operator_key_hashes() == {hash_api_key(DEFAULT_OPERATOR_KEY)}
    assert s.sqlalchemy_url.startswith("sqlite:///") and s.sqlalchemy_url.endswith("provisioning.db")
    only_hash = Settings(_env_file=None, environment="production", operator_api_key=None,  # type: ignore[call-arg]
                         operator_api_key_hashes=hash_api_key("k1") + "," + hash_api_key("k2"))
    assert only_hash.operator_key_hashes() == {hash_api_key("k1"), hash_api_key("k2")}
    assert DEFAULT_OPERATOR_KEY not in repr(Settings(_env_file=None))  # type: ignore[call-arg]


def test_no_operator_key_at_all_is_refused() -> None:
    with pytest.raises(ValidationError, match="no operator API key"):
        Settings(_env_file=None, operator_api_key=None)  # type: ignore[call-arg]
