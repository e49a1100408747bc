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
import ipaddress
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from e2ee.transport import topics
from e2ee_host import resources
from e2ee_host.transport import MAX_RECONNECT_DELAY, paho_client

__all__ = ["Bridge", "BrokerError", "DynSec", "MosquittoProcess", "REQUEST_TOPICS", "SiteBrokers",
           "bridge_config", "bridge_role", "jetstream_bridge_config", "bridge_user", "claim_role", "dev_tls", "device_role", "init_dynamic_security",
           "service_role", "with_settings"]

TEMPLATE = resources.folder("broker-config") / "mosquitto.conf.template"
BRIDGE_TEMPLATE = resources.folder("broker-config") / "bridge.conf"
JETSTREAM_BRIDGE_TEMPLATE = resources.folder("broker-config") / "jetstream-bridge.conf"
CONTROL = "$CONTROL/dynamic-security/v1"
SERVICE_ROLE = "e2ee-service"
# Inbox messages received but not yet stored by the relay. The broker sends at most its
# max_inflight_messages (20) unacknowledged ones, so this only fills with redeliveries; beyond it a
# message stays unacknowledged at the broker, which sends it again on the next connection.
MAX_INBOX_BACKLOG = 1000
# What the service channel's worker serves (api/channel.py): devices' signed requests and claims'
# enrollments.
REQUEST_TOPICS = (topics.service_request("+", "+"), topics.enroll_request("+", "+"))

log = logging.getLogger(__name__)

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
            # and 127.0.0.1: a site broker's bridge dials the address and checks it (bridge.conf)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


def with_settings(conf: str, settings: Mapping[str, str]) -> str:
    """Mosquitto configuration text `conf` with the values of the options in `settings` replaced
    (every line of such an option; comments and other lines as written) and the options it lacks
    appended."""
    out, seen = [], set()
    for line in conf.splitlines():
        key = line.strip().partition(" ")[0]
        if key in settings and not line.lstrip().startswith("#"):
            out.append("%s %s" % (key, settings[key]))
            seen.add(key)
        else:
            out.append(line)
    out += ["%s %s" % (key, value) for key, value in settings.items() if key not in seen]
    return "\n".join(out) + "\n"


def init_dynamic_security(path: str | os.PathLike[str], admin_user: str, admin_password: str) -> None:
    """The dynamic-security state file for a broker's first start (development and production,
    docs/broker.md): `mosquitto_ctrl dynsec init` makes the admin client, then the admin gets the
    service's role too (service_role(): publish revocation lists and relayed envelopes; without it
    the broker acknowledges and silently drops both). Mode 0600: it holds password hashes."""
    path = Path(path)
    # the password goes in on stdin (mosquitto_ctrl asks twice), not on the command line where
    # every local user could read it in /proc
    subprocess.run([_find("mosquitto_ctrl"), "dynsec", "init", str(path), admin_user],
                   input="%s\n%s\n" % (admin_password, admin_password), text=True, check=True,
                   capture_output=True, umask=0o077)
    state = json.loads(path.read_text())
    state["roles"].append(service_role())
    for client in state["clients"]:
        if client["username"] == admin_user:
            client["roles"].append({"rolename": SERVICE_ROLE})
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(state, indent=1))


def bridge_user(site: str) -> str:
    """The central broker's username (and client id) of a site's bridge: the colon is outside the
    device-id alphabet, so no device can enroll under the bridge's name."""
    return "bridge:%s" % site


@dataclass(frozen=True)
class Bridge:
    """A site broker's bridge to the central broker (broker-config/bridge.conf): the site's name,
    the fleets whose topics cross, where the central broker's TLS listener is and the CA file that
    signed its certificate, the bridge credential's password (never shown), the reconnect backoff."""
    site: str
    fleets: tuple[str, ...]
    central_host: str
    central_port: int
    central_ca: str
    password: str = field(repr=False)
    restart: tuple[int, int] = (1, 5)


def bridge_config(bridge: Bridge) -> str:
    """broker-config/bridge.conf filled in for `bridge`: the connection once, the topic block (its
    part from "# Topics of fleet") once per fleet."""
    for name in (bridge.site, *bridge.fleets):
        if not name or any(c in name for c in "/+#\n :{}"):
            raise BrokerError("not a site or fleet name for a bridge: %r" % name)
    if not bridge.fleets:
        raise BrokerError("a bridge carries at least one fleet")
    text = BRIDGE_TEMPLATE.read_text()
    head, marker, block = text.partition("# Topics of fleet")
    common = dict(site=bridge.site, central_host=bridge.central_host, central_port=bridge.central_port,
                  central_ca=bridge.central_ca, bridge_password=bridge.password,
                  restart_base=bridge.restart[0], restart_cap=bridge.restart[1])
    out = head.format(**common)
    for fleet in bridge.fleets:
        out += (marker + block).format(fleet=fleet, **common)
    return out


def jetstream_bridge_config(site: str, fleets: Iterable[str], nats_host: str, nats_mqtt_port: int,
                            restart: tuple[int, int] = (1, 5)) -> str:
    """broker-config/jetstream-bridge.conf filled in: this broker's inbox traffic of `fleets`
    copied into nats-server's MQTT listener (the relay's JetStream source)."""
    fleets = list(fleets)
    for name in (site, *fleets):
        if not name or any(c in name for c in "/+#\n :{}"):
            raise BrokerError("not a site or fleet name for a bridge: %r" % name)
    if not fleets:
        raise BrokerError("a bridge carries at least one fleet")
    head, marker, block = JETSTREAM_BRIDGE_TEMPLATE.read_text().partition("# Topics of fleet")
    common = dict(site=site, nats_host=nats_host, nats_mqtt_port=nats_mqtt_port, restart_base=restart[0],
                  restart_cap=restart[1])
    return head.format(**common) + "".join((marker + block).format(fleet=f, **common) for f in fleets)


def bridge_role(site: str, fleets: Iterable[str]) -> dict[str, Any]:
    """The bridge credential's role on the central broker: exactly the topics bridge.conf carries,
    per fleet: subscribe (what comes down) the inboxes, group topics, the revocation list and the
    service channel's answers; publish (what goes up) the inboxes, group topics and the service
    channel's requests. Nothing else: no $CONTROL, no enrollment topics, no other fleet."""
    acls = []
    for fleet in fleets:
        acls += [_acl("subscribePattern", topics.all_inboxes(fleet)),
                 _acl("subscribePattern", topics.group(fleet, "+")),
                 _acl("subscribePattern", topics.crl(fleet)),
                 _acl("subscribePattern", topics.service_response(fleet, "+")),
                 _acl("publishClientSend", topics.all_inboxes(fleet)),
                 _acl("publishClientSend", topics.group(fleet, "+")),
                 _acl("publishClientSend", topics.service_request(fleet, "+"))]
    return {"rolename": "brg-%s" % site, "acls": acls}


class MosquittoProcess:
    """The project's broker on 127.0.0.1:<free port> (and a TLS listener when tls=True), state in
    `data_dir` (kept across restart() and kill()). `settings` replaces the values of some options
    of the template (benchmarks of other queue or autosave settings); options the template lacks
    are appended. `bridge`: this is a site broker, bridged to a central one (broker-config/bridge.conf
    appended to its configuration, which is then mode 0600: it holds the bridge's password; or
    a bridge section's text as it is, e.g. jetstream_bridge_config())."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None, tls: bool = False,
                 settings: Mapping[str, str] | None = None, bridge: Bridge | str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.bridge = bridge
        self.settings = dict(settings or {})
        # the admin secret, password hashes (dynsec state) and queued messages: the owner's only
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
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
            init_dynamic_security(dynsec, self.admin_user, self.admin_password)
        tls = ""
        if self.tls_port:
            self.tls_files = self.tls_files or dev_tls(self.data_dir / "tls")
            tls = "listener %d %s\ncafile %s\ncertfile %s\nkeyfile %s" % (
                self.tls_port, self.host, self.tls_files["ca"], self.tls_files["cert"], self.tls_files["key"])
        conf = TEMPLATE.read_text().format(data_dir=self.data_dir, port=self.port, bind=self.host, tls=tls,
                                           dynsec_plugin=_plugin(), user=getpass.getuser())
        conf = with_settings(conf, self.settings)
        if self.bridge is not None:
            conf += "\n" + (self.bridge if isinstance(self.bridge, str) else bridge_config(self.bridge))
        path = self.data_dir / "mosquitto.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(conf)
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
                    log_file = self.data_dir / "mosquitto.log"
                    raise BrokerError("mosquitto did not start: %s" % (
                        log_file.read_text()[-500:] if log_file.exists() else ""))
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

    def kill(self) -> None:
        """SIGKILL: a crash. What changed since the last autosave is lost (docs/broker.md, "Crash
        loss" under "Offline promise and queue sizing"); the data directory stays for start()."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def restart(self) -> MosquittoProcess:
        self.stop()
        return self.start()

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": True}


def service_role() -> dict[str, Any]:
    """The provisioning service publishes the revocation list of every fleet (retained), as the
    HTTP relay envelopes into inboxes, and the answers of the service channel and of enrollment
    by claim (api/channel.py)."""
    return {"rolename": SERVICE_ROLE, "acls": [
        _acl("publishClientSend", topics.PREFIX + "+/crl"),
        _acl("publishClientSend", topics.PREFIX + "+/d/+/inbox"),
        _acl("publishClientSend", topics.service_response("+", "+")),
        _acl("publishClientSend", topics.enroll_response("+", "+"))]}


def device_role(fleet: str, device_id: str) -> dict[str, Any]:
    """One role per device (Mosquitto 2.0's dynsec does not expand %u in role ACLs): read its own
    inbox and its fleet's revocation list, write to the inboxes of its fleet; the service channel:
    write its own request topic, read its own answer topic."""
    return {"rolename": "dev-%s-%s" % (fleet, device_id), "acls": [
        _acl("subscribePattern", topics.inbox(fleet, device_id)),
        _acl("subscribePattern", topics.crl(fleet)),
        _acl("publishClientSend", topics.all_inboxes(fleet)),
        _acl("publishClientSend", topics.service_request(fleet, device_id)),
        _acl("subscribePattern", topics.service_response(fleet, device_id)),
    ]}


def claim_role(fleet: str, claim_id: int) -> dict[str, Any]:
    """A claim's credential may do nothing but enroll: write its enroll request topic, read its
    enroll answer topic (zero-touch enrollment, docs/provisioning.md)."""
    return {"rolename": "clm-%s-%d" % (fleet, claim_id), "acls": [
        _acl("publishClientSend", topics.enroll_request(fleet, claim_id)),
        _acl("subscribePattern", topics.enroll_response(fleet, claim_id)),
    ]}


def _hand_over(worker_queue: queue.Queue[Any], msg: Any, full: str) -> None:
    """A received message to its worker; on a full queue it stays unacknowledged: the broker sends
    it again on the next connection."""
    try:
        worker_queue.put_nowait(msg)
    except queue.Full:
        log.warning(full, MAX_INBOX_BACKLOG)


class DynSec:
    """Admin of the broker's dynamic-security plugin: commands on $CONTROL/dynamic-security/v1,
    answers matched by correlation data. Implements the provisioning service's BrokerAdmin.

    paho's network thread only reads packets: answers wake the waiting command(), inbox messages
    for the relay go to a worker thread of their own (their store may wait on a database that a
    request holding this admin locked) and are acknowledged (PUBACK) only once on_inbox returned.
    Every (re)connect subscribes again before commands go out. Failures are BrokerError."""

    def __init__(self, host: str, port: int, user: str, password: str, timeout: float = 10.0,
                 client_id: str | None = None, on_inbox: Callable[[str, str, bytes], None] | None = None,
                 tls_ca: str | None = None, on_request: Callable[[str, bytes], None] | None = None,
                 observe: Callable[[str, float, bool], None] | None = None, share_group: str | None = None) -> None:
        """client_id: a fixed id makes the session persistent (clean_session False), so inbox
        messages for relay clients that arrive while the service is down, or that it received but
        had not stored, wait at the broker. Each replica of the service has an id of its own (two
        admins with one id take the session from each other, the broker ending one connection at
        every reconnect). share_group: the inbox and request subscriptions become the shared
        subscriptions $share/<group>/<filter> (MQTT 5, which Mosquitto 2 grants to MQTT 3.1.1
        clients too): the broker hands each message to one admin of the group, so replicas
        share the relay and the service channel instead of each serving every message.
        on_inbox(fleet, device_id, payload): every inbox message
        (the relay), called on the inbox worker, in order; an exception is logged (its type only)
        and the same message is offered again after a pause, so a failing store delays the relay
        but loses nothing. tls_ca: connect over TLS trusting this CA file (hostname checked).
        on_request(topic, payload): every request of the service channel and of enrollment by
        claim (their req topics), called on a worker of its own, in order; it answers through
        publish_answer(); acknowledged once it returned, whatever it raised (logged by type: a
        request is never served twice). observe(command, seconds, ok): called after every command
        and acknowledged publish (publish_answer, publish_inbox, publish_revocation_list) with the
        time to the broker's answer, ok False when none came (a refusal is an answer), for the
        service's metrics. Raises BrokerError when the broker
        refuses or does not answer within `timeout`."""
        self.timeout = timeout
        self._observe = observe
        self._where = "%s:%d" % (host, port)
        self._answers: dict[str, dict[str, Any]] = {}  # only for correlation ids in _waiting
        self._waiting: set[str] = set()
        self._cond = threading.Condition()
        self._ready = threading.Event()  # connected, and the subscriptions of this connection granted
        self._lock = threading.Lock()  # orders subscribe() and its SUBACK
        self._sub_mid: int | None = None
        self._failure: str | None = None  # why the last connect or subscribe was refused
        self._closing = threading.Event()
        self._on_inbox = on_inbox
        # the last revocation list this admin published per fleet, published again after every
        # reconnect: a broker that crashed before saving it would serve an older one
        self._lists: dict[str, bytes] = {}
        self._inbox: queue.Queue[Any] = queue.Queue(MAX_INBOX_BACKLOG)
        self._worker: threading.Thread | None = None
        self._on_request = on_request
        self._share = "$share/%s/" % share_group if share_group else ""
        self._requests: queue.Queue[Any] = queue.Queue(MAX_INBOX_BACKLOG)
        self._request_worker: threading.Thread | None = None
        self._client = paho_client(self, client_id or "e2ee-admin-" + uuid.uuid4().hex[:8], user, password,
                                   clean_session=client_id is None, tls_ca=tls_ca, manual_ack=True)
        if on_inbox is not None:
            self._client.message_callback_add(topics.PREFIX + "+/d/+/inbox", self._on_inbox_message)
            self._worker = threading.Thread(target=self._inbox_worker, args=(on_inbox,), name="e2ee-relay-inbox",
                                            daemon=True)
            self._worker.start()
        if on_request is not None:
            for pattern in REQUEST_TOPICS:
                self._client.message_callback_add(pattern, self._on_request_message)
            self._request_worker = threading.Thread(target=self._request_loop, args=(on_request,),
                                                    name="e2ee-service-channel", daemon=True)
            self._request_worker.start()
        try:
            self._client.connect(host, port)
        except (OSError, ValueError) as e:  # refused, unreachable, TLS handshake (ssl.SSLError)
            self._stop_worker()
            raise BrokerError("no admin connection to the broker at %s: %s" % (self._where, type(e).__name__)) from None
        self._client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._ready.is_set() and self._failure is None and time.monotonic() < deadline:
            self._ready.wait(0.05)
        if not self._ready.is_set():
            why = self._failure or "no answer within %.0f s" % timeout
            self.close()
            raise BrokerError("no admin connection to the broker at %s: %s" % (self._where, why))
        self._check_service_role(user)
        if on_request is not None:
            self._ensure_service_acls()

    def __repr__(self) -> str:
        return "<DynSec %s>" % self._where

    @property
    def connected(self) -> bool:
        """Connected, and this connection's subscriptions granted: commands can go out."""
        return self._ready.is_set()

    def queued(self) -> dict[str, int]:
        """Messages received and not yet taken by their worker: {"inbox": n, "requests": n}."""
        return {"inbox": self._inbox.qsize(), "requests": self._requests.qsize()}

    def _observed(self, name: str, started: float, ok: bool) -> None:
        if self._observe is not None:
            self._observe(name, time.monotonic() - started, ok)

    def _check_service_role(self, user: str) -> None:
        """An MQTT 3.1.1 broker acknowledges a publish its ACLs deny and drops it: without the
        service's role the revocation lists and relayed envelopes would vanish without an error."""
        try:
            roles = self.command("getClient", username=user)["data"]["client"].get("roles", [])
        except (BrokerError, KeyError, TypeError, AttributeError):
            return
        if not any(isinstance(r, dict) and r.get("rolename") == SERVICE_ROLE for r in roles):
            log.warning("broker admin %s lacks the role %s: the broker will drop the revocation lists "
                        "and relayed envelopes it publishes (docs/broker.md, init_dynamic_security)",
                        user, SERVICE_ROLE)

    def _ensure_service_acls(self) -> None:
        """A dynamic-security state made before the service channel lacks the service role's
        answer ACLs: the broker would drop every answer. Added here (existing ones stay)."""
        for acl in service_role()["acls"]:
            try:
                self.command("addRoleACL", rolename=SERVICE_ROLE, **acl)
            except BrokerError as e:
                if "already exists" not in str(e):
                    log.warning("broker admin: the service role lacks %s and could not get it", acl["topic"])

    def close(self) -> None:
        """Stops the inbox worker (what it had not stored stays unacknowledged: the broker sends
        it again to the next session with this client id), then disconnects."""
        self._stop_worker()
        self._client.disconnect()
        self._client.loop_stop()

    def _stop_worker(self) -> None:
        self._closing.set()
        if self._request_worker is not None:
            try:
                self._requests.put_nowait(None)
            except queue.Full:
                pass
            self._request_worker.join(self.timeout)
        if self._worker is not None:
            try:
                self._inbox.put_nowait(None)
            except queue.Full:
                pass  # the worker sees _closing after its current message
            self._worker.join(self.timeout)

    # --- paho's network thread: read, hand over, never wait ---

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            self._failure = "CONNACK %s" % rc
            return
        wanted = [(CONTROL + "/response", 1)]  # never shared: every admin waits for its own answers
        if self._on_inbox is not None:
            wanted.append((self._share + topics.PREFIX + "+/d/+/inbox", 1))
        if self._on_request is not None:
            wanted += [(self._share + pattern, 1) for pattern in REQUEST_TOPICS]
        if self._share and len(wanted) > 1:  # a session from before sharing: its plain filters go
            client.unsubscribe([topic[len(self._share):] for topic, _ in wanted[1:]])
        with self._lock:  # the SUBACK (same thread) cannot come before _sub_mid is known
            result, self._sub_mid = client.subscribe(wanted)
        if result != mqtt.MQTT_ERR_SUCCESS:
            self._failure = "SUBSCRIBE not sent (%s)" % mqtt.error_string(result)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._lock:
            if mid != self._sub_mid:
                return
        if any(code.is_failure for code in codes):
            self._failure = "the broker refused the admin's subscriptions (%s)" % ", ".join(str(c) for c in codes)
            log.error("broker admin at %s: %s", self._where, self._failure)
            return
        self._failure = None
        for fleet, data in list(self._lists.items()):  # before any command's publish of this connection
            client.publish(topics.crl(fleet), data, qos=1, retain=True)
        self._ready.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self._ready.clear()
        if not self._closing.is_set():
            log.warning("broker admin lost its connection to %s (%s); reconnecting", self._where, rc)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        client.ack(msg.mid, msg.qos)  # an answer needs nothing durable: acknowledged at once
        try:
            doc = json.loads(msg.payload)
            answers = doc.get("responses", [])
        except (ValueError, AttributeError):
            return
        with self._cond:
            for answer in answers:
                corr = answer.get("correlationData") if isinstance(answer, dict) else None
                if corr in self._waiting:  # other admins' answers come on this topic too
                    self._answers[corr] = answer
            self._cond.notify_all()

    def _on_inbox_message(self, client: Any, userdata: Any, msg: Any) -> None:
        _hand_over(self._inbox, msg, "relay backlog full (%d messages): one inbox message left at the broker")

    def _on_request_message(self, client: Any, userdata: Any, msg: Any) -> None:
        _hand_over(self._requests, msg, "service channel backlog full (%d requests): one request left at the broker")

    # --- the request worker: serve (answers published from there), then acknowledge ---

    def _request_loop(self, on_request: Callable[[str, bytes], None]) -> None:
        while True:
            msg = self._requests.get()
            if msg is None or self._closing.is_set():
                return
            try:
                on_request(msg.topic, bytes(msg.payload))
            except Exception as e:  # served (or spent) already: never again
                log.error("service channel request on %s failed (%s)", msg.topic, type(e).__name__)
            self._client.ack(msg.mid, msg.qos)

    # --- the inbox worker: store, then acknowledge ---

    def _inbox_worker(self, on_inbox: Callable[[str, str, bytes], None]) -> None:
        while True:
            msg = self._inbox.get()
            if msg is None or self._closing.is_set():
                return
            parts = msg.topic.split("/")
            pause = 0.5
            while True:
                try:
                    on_inbox(parts[2], parts[4], bytes(msg.payload))
                    break
                except Exception as e:  # a database away or locked: keep the message, try again
                    log.error("relay could not store an inbox message for %s (%s); retrying in %.1f s",
                              parts[4], type(e).__name__, pause)
                    if self._closing.wait(pause):
                        return  # unacknowledged: the broker keeps it
                    pause = min(pause * 2, MAX_RECONNECT_DELAY)
            self._client.ack(msg.mid, msg.qos)

    # --- commands ---

    def _wait_ready(self, deadline: float, what: str) -> None:
        """Waits (until `deadline`) for the connection and its subscriptions: after a broker
        restart paho reconnects by itself, and a command sent before the answer topic is
        subscribed again would never be answered."""
        if not self._ready.wait(max(0.0, deadline - time.monotonic())):
            raise BrokerError("%s: no connection to the broker at %s within %.0f s%s" % (
                what, self._where, self.timeout, " (%s)" % self._failure if self._failure else ""))

    def command(self, command: str, **fields: Any) -> dict[str, Any]:
        """Sends one command; returns the answer. Raises BrokerError when the plugin refused it or
        the broker did not answer within `timeout` (waiting for a reconnection counts)."""
        started = time.monotonic()
        try:
            answer = self._command(command, started + self.timeout, fields)
        except BrokerError:
            self._observed(command, started, False)
            raise
        self._observed(command, started, True)  # answered: the broker is there, whatever it said
        if answer.get("error"):
            raise BrokerError("%s refused: %s" % (command, answer["error"]))
        return answer

    def _command(self, command: str, deadline: float, fields: dict[str, Any]) -> dict[str, Any]:
        self._wait_ready(deadline, command)
        corr = uuid.uuid4().hex
        with self._cond:
            self._waiting.add(corr)
        try:
            info = self._client.publish(CONTROL, json.dumps({"commands": [dict(fields, command=command,
                                                                              correlationData=corr)]}), qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
                raise BrokerError("%s not sent: %s" % (command, mqtt.error_string(info.rc)))
            with self._cond:
                while corr not in self._answers:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise BrokerError("the broker did not answer %s within %.0f s" % (command, self.timeout))
                    self._cond.wait(left)
                answer = self._answers[corr]
        finally:
            with self._cond:
                self._waiting.discard(corr)
                self._answers.pop(corr, None)
        return answer

    def _publish(self, topic: str, payload: bytes, retain: bool, what: str, name: str) -> None:
        """QoS 1; returns once the broker acknowledged (PUBACK). BrokerError otherwise: then paho
        may still deliver it after a reconnection (at least once). `name` is the observer's."""
        started = time.monotonic()
        try:
            self._publish_acknowledged(topic, payload, retain, what, started + self.timeout)
        except BrokerError:
            self._observed(name, started, False)
            raise
        self._observed(name, started, True)

    def _publish_acknowledged(self, topic: str, payload: bytes, retain: bool, what: str, deadline: float) -> None:
        self._wait_ready(deadline, what)
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        except (RuntimeError, ValueError) as e:
            raise BrokerError("%s not sent: %s" % (what, e)) from None
        if not info.is_published():
            raise BrokerError("%s: no PUBACK from the broker within %.0f s" % (what, self.timeout))

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

    def provision_claim(self, fleet: str, claim_id: int, token: str) -> None:
        """The claim's broker credential: username claim:<id> (no device id has a colon), the
        token as password, any client id (boards of one batch claim connect at once), its role
        allowing only its enroll topics."""
        role = claim_role(fleet, claim_id)
        try:
            self.command("createRole", rolename=role["rolename"], acls=role["acls"])
        except BrokerError as e:
            if "already exists" not in str(e):
                raise
        self.command("createClient", username=topics.claim_user(claim_id), password=token,
                     roles=[{"rolename": role["rolename"]}])

    def remove_claim(self, fleet: str, claim_id: int) -> None:
        """deleteClient ends a live connection of the claim and refuses it from then on; a claim
        without a credential is no error."""
        for command, field in (("deleteClient", {"username": topics.claim_user(claim_id)}),
                               ("deleteRole", {"rolename": claim_role(fleet, claim_id)["rolename"]})):
            try:
                self.command(command, **field)
            except BrokerError as e:
                if "not found" not in str(e).lower():
                    raise

    def publish_answer(self, topic: str, payload: bytes) -> None:
        """An answer of the service channel (QoS 1, not retained); BrokerError when the broker did
        not acknowledge it within the timeout."""
        self._publish(topic, payload, False, "service channel answer", "publish_answer")

    # --- the HTTP relay (e2ee_provisioning.core.relay) ---

    def publish_inbox(self, fleet: str, to: str, sender: str, envelope: bytes) -> None:
        """An envelope into a device's inbox on behalf of `sender` (QoS 1); BrokerError when the
        broker did not acknowledge it within the timeout."""
        self._publish(topics.inbox(fleet, to), topics.frame(sender, envelope), False, "relayed envelope",
                      "publish_inbox")

    def publish_revocation_list(self, fleet: str, data: bytes) -> None:
        """The signed revocation list, retained, on the fleet's topic (QoS 1); BrokerError when the
        broker did not acknowledge it within the timeout. Published again after every reconnect of
        this admin (a broker crash loses what it acknowledged since its last save, docs/broker.md):
        peers that hold it already refuse the copy as certificate.RolledBack, which they ignore."""
        self._lists[fleet] = data
        self._publish(topics.crl(fleet), data, True, "revocation list", "publish_revocation_list")

    # --- site brokers (broker-config/bridge.conf) ---

    def provision_bridge(self, site: str, fleets: Iterable[str], password: str) -> None:
        """The credential of a site broker's bridge on this (central) broker: client and username
        bridge:<site>, its role brg-<site> allowing exactly the bridged topics of `fleets`
        (bridge_role). Run again: a new password, the role's ACLs those of `fleets` now."""
        role = bridge_role(site, fleets)
        try:
            self.command("deleteRole", rolename=role["rolename"])
        except BrokerError as e:
            if "not found" not in str(e).lower():
                raise
        self.command("createRole", rolename=role["rolename"], acls=role["acls"])
        try:
            self.command("createClient", username=bridge_user(site), clientid=bridge_user(site),
                         password=password, roles=[{"rolename": role["rolename"]}])
        except BrokerError as e:
            if "already exists" not in str(e):
                raise
            self.command("setClientPassword", username=bridge_user(site), password=password)
            self.command("addClientRole", username=bridge_user(site), rolename=role["rolename"])
            self.command("enableClient", username=bridge_user(site))


class SiteBrokers:
    """The service's broker admin when site brokers are bridged to a central one (docs/broker.md,
    "Site brokers bridged to the gateway"): credentials go to every broker's dynamic security
    (the central one first, then each site's), so a device may connect at any of them and a
    revoked device is cut wherever it is connected; everything else (revocation lists, relayed
    envelopes, the service channel's answers, the relay's inbox watch, claims' credentials: their
    enroll topics are not bridged) happens on the central broker only, and the bridges carry it to
    the sites. A site that fails does not stop the
    others: each is tried, then the first BrokerError is raised."""

    def __init__(self, central: DynSec, sites: Iterable[DynSec]) -> None:
        self.central = central
        self.sites = list(sites)

    def __repr__(self) -> str:
        return "<SiteBrokers %r + %d sites>" % (self.central, len(self.sites))

    def __getattr__(self, name: str) -> Any:  # publish_*, connected, queued, command: the central admin's
        return getattr(self.central, name)

    def _everywhere(self, method: str, *args: Any) -> None:
        failed: BrokerError | None = None
        for admin in (self.central, *self.sites):
            try:
                getattr(admin, method)(*args)
            except BrokerError as e:
                log.warning("broker admin %r: %s failed", admin, method)
                failed = failed or e
        if failed is not None:
            raise failed

    def provision_device(self, fleet: str, device_id: str, password: str) -> None:
        self._everywhere("provision_device", fleet, device_id, password)

    def revoke_device(self, device_id: str) -> None:
        self._everywhere("revoke_device", device_id)

    def add_group_member(self, fleet: str, group_id: str, device_id: str) -> None:
        self._everywhere("add_group_member", fleet, group_id, device_id)

    def remove_group_member(self, fleet: str, group_id: str, device_id: str) -> None:
        self._everywhere("remove_group_member", fleet, group_id, device_id)

    def close(self) -> None:
        for admin in (*self.sites, self.central):
            admin.close()
