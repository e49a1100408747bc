"""The service's log lines, one format per process (E2EE_PROV_LOG_FORMAT, docs/provisioning.md
"Logs"): `text` (`<time> <LEVEL> <logger>: <message>`, the lines of a multi-line message or a
traceback after it indented by two spaces) or `json` (one JSON object per line:
time, level, logger, message, and exception when there is one). uvicorn's own loggers (startup,
errors, access lines) go through the same handler, as do Python warnings.

What is logged is unchanged by the format: the service logs ids, counts and exception types,
never keys, tokens, PINs or payloads (tests/provisioning/test_no_secrets_at_rest.py)."""
from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Literal

__all__ = ["JsonFormatter", "TEXT_FORMAT", "TextFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT; every line after a record's first starts with two spaces, so a record starts
    where a line does not."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\n  ")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure_logging(level: str, fmt: Literal["text", "json"]) -> None:
    """Root logger at `level` with one stderr handler in `fmt`; uvicorn's loggers propagate to it
    (run uvicorn with log_config=None so it installs no handlers of its own)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.captureWarnings(True)
