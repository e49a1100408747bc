"""Fixtures of the host SDK tests: the project's Mosquitto and the service on SQLite driving it
(sdk_support.System), shared by a module's tests."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from sdk_support import OPERATOR_KEY, System

from e2ee_host.broker import MosquittoProcess
from e2ee_host.devstack import wired_service


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp = tmp_path_factory.mktemp("sdk")
    with MosquittoProcess(tmp / "broker") as broker:
        with wired_service(broker, tmp / "service.log", tmp / "service", OPERATOR_KEY) as service:
            yield System(broker, service)
