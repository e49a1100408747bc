"""The C core's vector suites once more, on its AddressSanitizer/UndefinedBehaviorSanitizer build.

A pytest subprocess runs every backend-"c" test of tests/crypto (RFC, Wycheproof, randomized
differential) and tests/cmodule/test_cmodule.py with E2EE_CMODULE_LIB pointing at
lib_e2ee_crypto_asan.so. CPython is not built with ASan, so the runtime is preloaded
(LD_PRELOAD=$(cc -print-file-name=libasan.so)); leak detection is off because CPython's own
allocations would be reported; PYTHONMALLOC=malloc makes every Python buffer its own malloc block,
so ASan's redzones surround the buffers the C code reads and writes. The build uses -fno-sanitize-recover=all: any finding aborts the
process, so a clean exit with every test passed means the sanitizers saw nothing.
"""
from __future__ import annotations

import os
import subprocess
import sys

from cmodule.cmodule_build import cmodule  # noqa: F401 (fixture)
from support import ROOT


def _libasan() -> str:
    cc = os.environ.get("CC", "cc")
    path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert os.path.isabs(path) and os.path.exists(path), "no libasan.so for %s (%r)" % (cc, path)
    return path


def _env(asan_lib: str) -> dict[str, str]:
    return dict(os.environ, LD_PRELOAD=_libasan(), ASAN_OPTIONS="detect_leaks=0", PYTHONMALLOC="malloc",
                UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", E2EE_CMODULE_LIB=asan_lib,
                E2EE_DEVICE_SOURCE="1")  # no mpy-cross run: nothing but the C backend executes


def test_asan_is_armed(cmodule):  # noqa: F811
    # A 100-byte read from a 4-byte buffer must abort the process: the clean run below means something.
    code = ("import ctypes, e2ee_host.cmodule as c\n"
            "c._lib.e2ee_poly1305(ctypes.create_string_buffer(16), ctypes.create_string_buffer(4), 100, bytes(32))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=_env(cmodule["asan"]), timeout=60)
    assert proc.returncode != 0 and "AddressSanitizer: heap-buffer-overflow" in proc.stderr, proc.stderr


def test_vectors_under_asan_and_ubsan(cmodule):  # noqa: F811
    env = _env(cmodule["asan"])
    # backend "c" of the parametrized suites, plus the unparametrized C tests (not the build script's)
    select = "cpython-c or not (cpython or micropython or build)"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", select,
           "tests/crypto/test_vectors.py", "tests/crypto/test_differential.py", "tests/cmodule/test_cmodule.py"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "Sanitizer" not in output and "runtime error" not in output, output[-6000:]
    summary = output.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary
