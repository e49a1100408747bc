"""Fixtures that build the firmware C module's core for this host (scripts/build-cmodule) once per
test session and point the ctypes backend (e2ee_host.cmodule, backend "c" on CPython) at it.

Test modules that run backend "c" import them: `from cmodule.cmodule_build import ...`.
The build is cached by content hash in build/cmodule/, so a repeated run only hashes the sources.
No network or no compiler fails the tests with the reason; it never skips them.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
from support import ROOT

BUILD_SCRIPT = ROOT / "scripts" / "build-cmodule"


@functools.cache
def _build() -> tuple[dict[str, str] | None, str]:
    proc = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--json"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    if proc.returncode:
        return None, proc.stderr.strip() or proc.stdout.strip()
    return json.loads(proc.stdout), ""


@pytest.fixture(scope="session")
def cmodule() -> dict[str, str]:
    """Paths of the built core: {"lib", "asan", "monocypher"}. E2EE_CMODULE_LIB, when already set
    (the sanitizer run sets it to the ASan build), keeps choosing the library that is loaded."""
    paths, error = _build()
    if paths is None:
        pytest.fail("cannot build the C module core (scripts/build-cmodule): %s" % error, pytrace=False)
    os.environ.setdefault("E2EE_CMODULE_LIB", paths["lib"])
    return paths


@pytest.fixture(autouse=True)
def cmodule_for_backend_c(request: pytest.FixtureRequest) -> None:
    """Builds the core before any test parametrized with backend "c"."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("backend") == "c":
        request.getfixturevalue("cmodule")
