"""Fixtures of the broker-path tests: the project's Mosquitto on a free port (e2ee_host.broker)."""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator

import pytest

from e2ee_host.broker import MosquittoProcess


@pytest.fixture
def broker(tmp_path) -> Iterator[MosquittoProcess]:  # type: ignore[no-untyped-def]
    """A fresh broker (dynamic security, persistence) in its own data directory."""
    with MosquittoProcess(tmp_path / "broker") as running:
        yield running


@contextlib.contextmanager
def _sigstopped(broker: MosquittoProcess) -> Iterator[None]:
    pid = broker._proc.pid  # type: ignore[union-attr]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture
def paused() -> Callable[[MosquittoProcess], contextlib.AbstractContextManager[None]]:
    """`with paused(broker):` SIGSTOPs the broker: connections stay open and nothing is answered
    (no PUBACK, no SUBACK, no CONNACK) until SIGCONT when the block ends."""
    return _sigstopped
