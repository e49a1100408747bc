"""Fixtures of the host SDK tests: the project's Mosquitto and the service on SQLite driving it
(sdk_support.System), shared by a module's tests."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from sdk_support import OPERATOR_KEY, System

from e2ee_host.broker import MosquittoProcess
from e2ee_host.service import ServiceProcess


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp = tmp_path_factory.mktemp("sdk")
    with MosquittoProcess(tmp / "broker") as broker:
        with ServiceProcess(tmp / "service.log", data_dir=tmp / "service", operator_api_key=OPERATOR_KEY,
                            broker_admin_host=broker.host, broker_admin_port=broker.port,
                            broker_admin_user=broker.admin_user, broker_admin_password=broker.admin_password,
                            mqtt_host=broker.host, mqtt_port=broker.port) as service:
            yield System(broker, service)
