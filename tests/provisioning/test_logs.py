"""The service's log format (core/logs.py, E2EE_PROV_LOG_FORMAT): every line of a running
service, its own and uvicorn's (startup, access, shutdown), in one format: text lines of one
shape, or one JSON object per line; no token, key or PIN in either."""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest

from e2ee.protocol.keys import KeyStore
from e2ee_host.client import ApiError, DeviceClient, OperatorClient
from e2ee_host.service import ServiceProcess
from e2ee_provisioning.core.logs import JsonFormatter, TextFormatter

OPERATOR_KEY = "logs-tests-operator-key-2d9a"
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def test_json_formatter_writes_one_object_per_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord("e2ee_provisioning.x", logging.ERROR, __file__, 1, "stored %d for %s",
                                   (3, "gw-1"), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "ERROR" and doc["logger"] == "e2ee_provisioning.x" and doc["message"] == "stored 3 for gw-1"
    assert doc["time"].endswith("+00:00") and "ValueError: bad" in doc["exception"]
    text = TextFormatter().format(record).splitlines()  # one record: its further lines indented
    assert TEXT_LINE.match(text[0]) and text[0].endswith("stored 3 for gw-1")
    assert len(text) > 2 and all(line.startswith("  ") for line in text[1:])


def _scenario(url: str) -> list[str]:
    """Enrollments, a bundle, a refused request and a revocation; returns the secrets used."""
    with OperatorClient(url, OPERATOR_KEY) as op:
        tokens = [op.create_claims("plant-north").tokens[0] for _ in range(2)]
        pump = DeviceClient(url, "pump-1", "plant-north", KeyStore.generate(2))
        pump.enroll(tokens[0])
        pump.upload_prekeys()
        gateway = DeviceClient(url, "gw-1", "plant-north", KeyStore.generate(1))
        gateway.enroll(tokens[1])
        gateway.bundle("pump-1")
        with pytest.raises(ApiError):
            DeviceClient(url, "gw-2", "plant-north", KeyStore.generate(1)).enroll(tokens[0])  # spent claim
        op.revoke("pump-1", "stolen")
    return [OPERATOR_KEY, *tokens, pump.keystore.to_bytes().hex(), gateway.keystore.to_bytes().hex()]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_every_line_of_a_running_service_has_the_one_format(fmt: str, tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    with ServiceProcess(log, data_dir=tmp_path / "service", operator_api_key=OPERATOR_KEY,
                        log_format=fmt) as service:
        secrets_ = _scenario(service.url)
    lines = log.read_text().splitlines()
    assert len(lines) >= 10
    messages = []
    for line in lines:
        if fmt == "json":
            doc = json.loads(line)
            assert set(doc) <= {"time", "level", "logger", "message", "exception"} and doc["level"] in (
                "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
            messages.append("%s: %s" % (doc["logger"], doc["message"]))
        else:
            if line.startswith("  "):  # a record's further lines (a multi-line message, a traceback)
                continue
            assert TEXT_LINE.match(line), line
            messages.append(line.split(" ", 3)[3])
    text = "\n".join(messages)
    assert "uvicorn.error: Uvicorn running on" in text  # uvicorn's own lines in the same format
    assert re.search(r'uvicorn\.access: .*"POST /enroll HTTP/1\.1" 201', text)
    assert "e2ee_provisioning.api.routes.devices: revoked pump-1" in text
    assert "uvicorn.error: Shutting down" in text or "uvicorn.error: Finished server process" in text
    for secret in secrets_:
        assert secret not in log.read_text()
