"""HTTPS in the service (E2EE_PROV_TLS_CERTFILE/KEYFILE, docs/deployment.md): with a CA made at
test time (e2ee_host.broker.dev_tls, nothing committed), a client that trusts the CA gets answers,
one with the system's trust store fails the handshake, plain HTTP gets no answer; a certificate
without its key is refused before the service listens, naming the settings only."""
from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from e2ee_host.broker import dev_tls
from e2ee_host.service import free_port

OPERATOR_KEY = "tls-tests-operator-key-40c2a9"


def _env(**settings: object) -> dict[str, str]:
    """This environment without E2EE_PROV_* or SSL_CERT_* variables, plus E2EE_PROV_<settings>."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2EE_PROV_", "SSL_CERT_"))}
    env.update({"E2EE_PROV_" + k.upper(): str(v) for k, v in settings.items()})
    return env


@pytest.fixture
def https_service(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The service over HTTPS on a free port: (base URL, CA file)."""
    tls = dev_tls(tmp_path / "tls", hostname="localhost")
    port = free_port()
    log = open(tmp_path / "service.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "e2ee_provisioning", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
        env=_env(data_dir=tmp_path / "data", operator_api_key=OPERATOR_KEY, tls_certfile=tls["cert"],
                 tls_keyfile=tls["key"]))
    url = "https://localhost:%d" % port
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "service.log").read_text()
            try:
                if httpx.get(url + "/healthz", verify=ssl.create_default_context(cafile=tls["ca"]), timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (tmp_path / "service.log").read_text()
                time.sleep(0.1)
        yield url, tls["ca"]
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_a_client_trusting_the_ca_connects_others_fail(https_service: tuple[str, Path]) -> None:
    url, ca = https_service
    trusted = httpx.get(url + "/ca", verify=ssl.create_default_context(cafile=ca), timeout=5)
    assert trusted.status_code == 200 and trusted.url.scheme == "https"
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url + "/healthz", timeout=5)  # the system's trust store: not our CA
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)  # no plain HTTP on the port


def test_the_host_client_trusts_the_ca_through_ssl_cert_file(https_service: tuple[str, Path]) -> None:
    # e2ee_host.client (and the `e2ee` CLI) use httpx's trust: SSL_CERT_FILE names the service's CA
    url, ca = https_service
    code = ("import sys; from e2ee_host.client import OperatorClient; "
            "print(OperatorClient(sys.argv[1], sys.argv[2]).list_devices())")
    run = [sys.executable, "-c", code, url, OPERATOR_KEY]
    trusted = subprocess.run(run, env={**_env(), "SSL_CERT_FILE": str(ca)}, capture_output=True, text=True, timeout=60)
    assert trusted.returncode == 0 and trusted.stdout.strip() == "[]", trusted.stderr
    untrusted = subprocess.run(run, env=_env(), capture_output=True, text=True, timeout=60)
    # the same service, untrusted: the handshake fails (the client names no more than ConnectError)
    assert untrusted.returncode != 0 and "is unreachable" in untrusted.stderr, untrusted.stderr


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    tls = dev_tls(tmp_path / "tls")
    done = subprocess.run([sys.executable, "-m", "e2ee_provisioning", "--port", str(free_port())],
                          env=_env(data_dir=tmp_path, operator_api_key=OPERATOR_KEY, tls_certfile=tls["cert"]),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "E2EE_PROV_TLS_CERTFILE and E2EE_PROV_TLS_KEYFILE go together" in done.stderr
    assert str(tls["cert"]) not in done.stderr
