"""Fuzz target on the boards' runtime: tests/device/fuzz_decoders.py runs every device-side
network decoder (envelope, certificates, revocation lists into a trust store, prekey bundles,
sender key distributions and group messages, link payloads, inbox frames, MQTT packets, service
channel answers, and
PreKey/Ratchet messages through certified sessions in three states) under the MicroPython unix
port with a 256 KB heap, fed seeded mutations of the valid inputs written here. Rounds:
E2EE_FUZZ_DEVICE_ROUNDS (default 3 x E2EE_FUZZ_EXAMPLES); seed: E2EE_FUZZ_SEED (default random,
printed on failure); E2EE_FUZZ_DEVICE_SEEDS runs (default 1) take the seeds after it. scripts/fuzz
runs many seeds with many more rounds.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import test_fuzz_channel
import test_fuzz_envelope
import test_fuzz_linking
import test_fuzz_transport
import vectorfile
from fuzzing import EXAMPLES, INTERESTING_KEYS
from support import DEVICE_TESTS, ROOT
from test_fuzz_certificate import Fleet
from test_fuzz_groups import Group
from test_fuzz_session import Pair

from e2ee.protocol.keys import KeyStore

ROUNDS = int(os.environ.get("E2EE_FUZZ_DEVICE_ROUNDS", str(3 * EXAMPLES)))
RUNS = int(os.environ.get("E2EE_FUZZ_DEVICE_SEEDS", "1"))  # device processes, one seed each
HEAP = "256K"  # the protocol tests' heap (tests/protocol/conftest.py): the SDK's bytecode sits in it


def build_cases(root: Path) -> Path:
    """Seeds and device directories for fuzz_decoders.py (its header names them)."""
    cases = root / "cases"
    cases.mkdir()
    fleet, group, pair = Fleet(root / "fleet"), Group(root / "group"), Pair(root / "pair")
    shutil.copytree(fleet.template, cases / "trust")
    shutil.copytree(group.template, cases / "group")
    for name, path in (("pump-fresh", pair.pump_fresh), ("gw-pending", pair.gw_pending),
                       ("pump-after", pair.pump_after)):
        shutil.copytree(path, cases / name)
    (cases / "ca-keys.bin").write_bytes(b"".join(fleet.ca_keys))
    peer = KeyStore.generate(2)
    seeds: dict[str, list[bytes]] = {
        "envelope": test_fuzz_envelope.SEEDS[:12],
        "certificate": fleet.certificates(),
        "crl": fleet.lists(),
        "bundle": [peer.bundle().to_bytes(), peer.bundle(peer.one_time_prekey_ids()[0]).to_bytes()],
        "distribution": group.distributions,
        "group": group.messages[2:],
        "link": test_fuzz_linking.RAW,
        "frame": test_fuzz_transport.FRAMES,
        "service": test_fuzz_channel.answers(peer.bundle(peer.one_time_prekey_ids()[0]).to_bytes(),
                                             fleet.certificates()[0]),
        "mqtt": test_fuzz_transport.STREAMS,
        "prekey": pair.prekeys,
        "answer": pair.answers,
        "ratchet": pair.ratchets + pair.prekeys,
        "key": pair.keys + fleet.ca_keys + list(INTERESTING_KEYS),
    }
    recs: list[dict[str, Any]] = [{"id": name, "data": data}
                                  for name, values in seeds.items() for data in values]
    header = "Seeds of tests/device/fuzz_decoders.py (test_fuzz_device.py)."
    vectorfile.write(str(cases / "seeds.txt"), header, recs)
    return cases


@pytest.fixture(scope="module")
def cases(tmp_path_factory: Any) -> Path:
    return build_cases(tmp_path_factory.mktemp("device-fuzz"))


@pytest.mark.parametrize("run", range(RUNS))
def test_fuzz_device_decoders_micropython(micropython: Any, cases: Path, run: int) -> None:
    seed = int(os.environ.get("E2EE_FUZZ_SEED") or random.randrange(1, 2**31)) + run
    out = micropython.run(DEVICE_TESTS / "fuzz_decoders.py", str(cases), str(seed), str(ROUNDS),
                          heapsize=HEAP)
    assert out.splitlines()[-1] == "ok fuzz %d" % ROUNDS, "seed %d: %s" % (seed, out)


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_fuzzfound_device_decoders(runtime: str, micropython: Any) -> None:
    # The inputs of test_fuzzfound_unframe_sender_not_utf8 and the test_fuzzfound_* of
    # test_fuzz_linking.py, on the boards' runtime too (tests/device/check_fuzzfound.py).
    script = DEVICE_TESTS / "check_fuzzfound.py"
    if runtime == "micropython":
        out = micropython.run(script, heapsize=HEAP)
    else:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "firmware"), str(DEVICE_TESTS)]))
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT,
                              env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
    assert out.strip() == "ok fuzzfound", out
