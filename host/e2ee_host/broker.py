"""The project's Mosquitto (docs/broker.md): a process with broker-config/mosquitto.conf.template
on a port of its own, its persistence and dynamic-security state in a data directory; and the
dynamic-security admin the provisioning service drives: one client and one role per device,
created at enrollment, disabled at revocation (which disconnects a live session), live over
`$CONTROL/dynamic-security/v1` (no restart, no file edits).

    with MosquittoProcess(tmp) as broker:
        admin = DynSec(broker.host, broker.port, broker.admin_user, broker.admin_password)
        admin.provision_device("plant-north", "pump-1", password)
        admin.revoke_device("pump-1")
"""
from __future__ import annotations

import getpass
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from e2ee.transport import topics

__all__ = ["BrokerError", "DynSec", "MosquittoProcess", "dev_tls", "device_role", "service_role"]

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "broker-config" / "mosquitto.conf.template"
CONTROL = "$CONTROL/dynamic-security/v1"

try:
    from e2ee_provisioning.core.broker import BrokerError
except ImportError:  # the host SDK without the service
    class BrokerError(Exception):  # type: ignore[no-redef]
        pass


def _find(binary: str) -> str:
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerError("%s not found: apt-get install mosquitto mosquitto-clients" % binary)
    return found


def _plugin() -> str:
    for pattern in ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so",
                    "/usr/local/lib/mosquitto_dynamic_security.so"):
        hits = glob.glob(pattern)
        if hits:
            return hits[0]
    raise BrokerError("mosquitto_dynamic_security.so not found (Debian's mosquitto package ships it)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dev_tls(directory: Path, hostname: str = "localhost") -> dict[str, Path]:
    """A development CA and a server certificate for the TLS listener, made now (nothing secret is
    committed): {"ca": ..., "cert": ..., "key": ...} in `directory`, keys mode 0600."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e2ee-iot development broker CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


class MosquittoProcess:
    """The project's broker on 127.0.0.1:<free port> (and a TLS listener when tls=True), state in
    `data_dir` (kept across restart())."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None, tls: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = port or _free_port()
        self.tls_port = _free_port() if tls else None
        self.admin_user = "e2ee-admin"
        secret_file = self.data_dir / "admin.secret"
        if not secret_file.exists():
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        self.admin_password = secret_file.read_text()
        self.tls_files: dict[str, Path] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return "<MosquittoProcess %s:%d>" % (self.host, self.port)

    def _configure(self) -> Path:
        dynsec = self.data_dir / "dynamic-security.json"
        if not dynsec.exists():
            subprocess.run([_find("mosquitto_ctrl"), "dynsec", "init", str(dynsec), self.admin_user,
                            self.admin_password], check=True, capture_output=True)
            # the service's own role: publish the retained revocation list of every fleet
            state = json.loads(dynsec.read_text())
            state["roles"].append(service_role())
            for client in state["clients"]:
                if client["username"] == self.admin_user:
                    client["roles"].append({"rolename": "e2ee-service"})
            dynsec.write_text(json.dumps(state, indent=1))
            os.chmod(dynsec, 0o600)
        tls = ""
        if self.tls_port:
            self.tls_files = self.tls_files or dev_tls(self.data_dir / "tls")
            tls = "listener %d %s\ncafile %s\ncertfile %s\nkeyfile %s" % (
                self.tls_port, self.host, self.tls_files["ca"], self.tls_files["cert"], self.tls_files["key"])
        conf = TEMPLATE.read_text().format(data_dir=self.data_dir, port=self.port, bind=self.host, tls=tls,
                                           dynsec_plugin=_plugin(), user=getpass.getuser())
        path = self.data_dir / "mosquitto.conf"
        path.write_text(conf)
        return path

    def start(self, timeout: float = 15.0) -> MosquittoProcess:
        conf = self._configure()
        self._proc = subprocess.Popen([_find("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.data_dir / "mosquitto.log")
                    raise BrokerError("mosquitto did not start: %s" % (log.read_text()[-500:] if log.exists() else ""))
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: Mosquitto writes its persistence file and exits."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def restart(self) -> MosquittoProcess:
        self.stop()
        return self.start()

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def service_role() -> dict[str, Any]:
    """The provisioning service publishes the revocation list of every fleet (retained) and, as
    the HTTP relay, envelopes into inboxes."""
    return {"rolename": "e2ee-service", "acls": [
        {"acltype": "publishClientSend", "topic": topics.PREFIX + "+/crl", "priority": 0, "allow": True},
        {"acltype": "publishClientSend", "topic": topics.PREFIX + "+/d/+/inbox", "priority": 0, "allow": True}]}


def device_role(fleet: str, device_id: str) -> dict[str, Any]:
    """One role per device (Mosquitto 2.0's dynsec does not expand %u in role ACLs): read its own
    inbox and its fleet's revocation list, write to the inboxes of its fleet."""
    return {"rolename": "dev-%s-%s" % (fleet, device_id), "acls": [
        {"acltype": "subscribePattern", "topic": topics.inbox(fleet, device_id), "priority": 0, "allow": True},
        {"acltype": "subscribePattern", "topic": topics.crl(fleet), "priority": 0, "allow": True},
        {"acltype": "publishClientSend", "topic": topics.all_inboxes(fleet), "priority": 0, "allow": True},
    ]}


class DynSec:
    """Admin of the broker's dynamic-security plugin: commands on $CONTROL/dynamic-security/v1,
    answers matched by correlation data. Implements the provisioning service's BrokerAdmin."""

    def __init__(self, host: str, port: int, user: str, password: str, timeout: float = 10.0,
                 client_id: str | None = None, on_inbox: Any = None) -> None:
        """client_id: a fixed id makes the session persistent (clean_session False), so inbox
        messages for relay clients that arrive while the service is down wait at the broker.
        on_inbox(fleet, device_id, payload): every inbox message (the relay); set before the
        connection, so what the broker kept for this session is handled, not dropped."""
        self.timeout = timeout
        self._answers: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=client_id or "e2ee-admin-" + uuid.uuid4().hex[:8],
                                   clean_session=client_id is None)
        self._client.username_pw_set(user, password)
        self._client.on_message = self._on_message
        if on_inbox is not None:
            def on_inbox_message(client: Any, userdata: Any, msg: Any) -> None:
                parts = msg.topic.split("/")
                on_inbox(parts[2], parts[4], bytes(msg.payload))
            self._client.message_callback_add(topics.PREFIX + "+/d/+/inbox", on_inbox_message)
        connected = threading.Event()
        result: list[Any] = []
        self._client.on_connect = lambda c, u, f, rc, p: (result.append(rc), connected.set())
        self._client.connect(host, port)
        self._client.loop_start()
        if not connected.wait(timeout) or result[0].is_failure:
            self._client.loop_stop()
            raise BrokerError("no admin connection to the broker at %s:%d (%s)" % (
                host, port, result[0] if result else "timeout"))
        self._client.subscribe(CONTROL + "/response", qos=1)
        if on_inbox is not None:
            self._client.subscribe(topics.PREFIX + "+/d/+/inbox", qos=1)
        self._fleets: dict[str, str] = {}

    def __repr__(self) -> str:
        return "<DynSec>"

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self._cond:
            for answer in doc.get("responses", []):
                if answer.get("correlationData"):
                    self._answers[answer["correlationData"]] = answer
            self._cond.notify_all()

    def command(self, command: str, **fields: Any) -> dict[str, Any]:
        """Sends one command; returns the answer, BrokerError when the plugin refused it."""
        corr = uuid.uuid4().hex
        self._client.publish(CONTROL, json.dumps({"commands": [dict(fields, command=command,
                                                                     correlationData=corr)]}), qos=1)
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while corr not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrokerError("the broker did not answer %s within %.0f s" % (command, self.timeout))
                self._cond.wait(left)
            answer = self._answers.pop(corr)
        if answer.get("error"):
            raise BrokerError("%s refused: %s" % (command, answer["error"]))
        return answer

    # --- what the provisioning service asks (e2ee_provisioning.core.broker.BrokerAdmin) ---

    def provision_device(self, fleet: str, device_id: str, password: str) -> None:
        role = device_role(fleet, device_id)
        try:
            self.command("createRole", rolename=role["rolename"])
        except BrokerError as e:
            if "already exists" not in str(e):
                raise
        for acl in role["acls"]:
            try:
                self.command("addRoleACL", rolename=role["rolename"], **acl)
            except BrokerError as e:
                if "already exists" not in str(e):
                    raise
        try:
            self.command("createClient", username=device_id, clientid=device_id, password=password,
                         roles=[{"rolename": role["rolename"]}])
        except BrokerError as e:
            if "already exists" not in str(e):
                raise
            # re-enrollment: a new password, enabled again
            self.command("setClientPassword", username=device_id, password=password)
            self.command("enableClient", username=device_id)

    def revoke_device(self, device_id: str) -> None:
        """disableClient refuses new connections and disconnects a live session."""
        self.command("disableClient", username=device_id)

    def add_group_member(self, fleet: str, group_id: str, device_id: str) -> None:
        """Members of a group read and write its topic (one role per group)."""
        name = "grp-%s-%s" % (fleet, group_id)
        topic = topics.group(fleet, group_id)
        try:
            self.command("createRole", rolename=name, acls=[
                {"acltype": "subscribePattern", "topic": topic, "priority": 0, "allow": True},
                {"acltype": "publishClientSend", "topic": topic, "priority": 0, "allow": True}])
        except BrokerError as e:
            if "already exists" not in str(e):
                raise
        self.command("addClientRole", username=device_id, rolename=name)

    def remove_group_member(self, fleet: str, group_id: str, device_id: str) -> None:
        self.command("removeClientRole", username=device_id, rolename="grp-%s-%s" % (fleet, group_id))

    # --- the HTTP relay (e2ee_provisioning.core.relay) ---

    def publish_inbox(self, fleet: str, to: str, sender: str, envelope: bytes) -> None:
        """An envelope into a device's inbox on behalf of `sender` (QoS 1)."""
        info = self._client.publish(topics.inbox(fleet, to), topics.frame(sender, envelope), qos=1)
        info.wait_for_publish(self.timeout)

    def publish_revocation_list(self, fleet: str, data: bytes) -> None:
        """The signed revocation list, retained, on the fleet's topic (QoS 1)."""
        info = self._client.publish(topics.crl(fleet), data, qos=1, retain=True)
        info.wait_for_publish(self.timeout)
