"""Issue 17 item 1: a site broker bridged to the central broker (broker-config/bridge.conf,
docs/broker.md "Site brokers bridged to the gateway"). A central Mosquitto with a TLS listener and
the service; a site Mosquitto with its own dynamic security whose bridge dials the central one over
TLS with a credential that may use only the bridged topics. A host at the site (the board's role)
and a host at the center exchange messages through the project's Delivery (receipts cross the
bridge too), each message once, none echoed back; the revocation list comes down and is retained
at the site; a revoked device is cut at the site broker (the service drives its dynsec too:
SiteBrokers); the bridge cut and the central broker restarted mid-stream lose nothing."""
from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from e2ee.protocol.delivery import DELIVERED
from e2ee.transport import topics
from e2ee_host.broker import Bridge, DynSec, MosquittoProcess, bridge_user
from e2ee_host.client import OperatorClient
from e2ee_host.install import HostInstall
from e2ee_host.messenger import Messenger
from e2ee_host.service import ServiceProcess

FLEET = "plant-north"
OTHER = "plant-south"
SITE = "north"
OPERATOR_KEY = "site-bridge-operator-key-5b1e"
NOT_AUTHORIZED = 135  # CONNACK 5 of MQTT 3.1.1, as paho 2 reports it (its v5 reason code)


class System:
    def __init__(self, central: MosquittoProcess, site: MosquittoProcess, service: ServiceProcess,
                 bridge_password: str, tmp: Path) -> None:
        self.central, self.site, self.service, self.tmp = central, site, service, tmp
        self.bridge_password = bridge_password
        self.op = OperatorClient(service.url, OPERATOR_KEY)

    @property
    def site_address(self) -> str:
        return "%s:%d" % (self.site.host, self.site.port)

    def install(self, name: str, at_site: bool) -> HostInstall:
        """An enrolled host whose mailbox is open at its broker (the site's or the center's)."""
        inst = HostInstall.init(self.tmp / name, self.service.url, name, FLEET, self.op.create_claims(FLEET).tokens[0])
        link = inst.link(self.site_address if at_site else None, timeout=30).connect()
        try:
            inst.open_mailbox(link)
        finally:
            link.close()
        return inst

    def central_admin(self) -> DynSec:
        return DynSec(self.central.host, self.central.port, self.central.admin_user, self.central.admin_password)


def _bridge_up(central: MosquittoProcess, since: int, timeout: float = 20.0) -> None:
    """Waits until the central broker's log, past byte `since`, shows the bridge connected."""
    log = central.data_dir / "mosquitto.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ("as %s" % bridge_user(SITE)) in log.read_text()[since:]:
            time.sleep(0.3)  # its subscriptions follow the CONNACK
            return
        time.sleep(0.05)
    raise AssertionError("the site's bridge did not connect to the central broker within %.0f s" % timeout)


def _log_size(broker: MosquittoProcess) -> int:
    return len((broker.data_dir / "mosquitto.log").read_text())


@pytest.fixture(scope="module")
def system(tmp_path_factory) -> Iterator[System]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("site-bridge")
    with MosquittoProcess(tmp / "central", tls=True) as central:
        password = secrets.token_urlsafe(18)
        admin = DynSec(central.host, central.port, central.admin_user, central.admin_password)
        try:
            admin.provision_bridge(SITE, [FLEET], password)
        finally:
            admin.close()
        assert central.tls_port and central.tls_files
        bridge = Bridge(SITE, (FLEET,), central.host, central.tls_port, str(central.tls_files["ca"]), password)
        since = _log_size(central)
        with MosquittoProcess(tmp / "site", bridge=bridge) as site:
            _bridge_up(central, since)
            sites = json.dumps([{"host": site.host, "port": site.port, "user": site.admin_user,
                                 "password": site.admin_password}])
            with ServiceProcess(tmp / "service.log", data_dir=tmp / "service", operator_api_key=OPERATOR_KEY,
                                broker_admin_host=central.host, broker_admin_port=central.port,
                                broker_admin_user=central.admin_user, broker_admin_password=central.admin_password,
                                broker_sites=sites, mqtt_host=central.host, mqtt_port=central.port) as service:
                yield System(central, site, service, password, tmp)


class Raw:
    """A paho client that records what arrives on its subscriptions."""

    def __init__(self, host: str, port: int, user: str, password: str, client_id: str,
                 tls_ca: str | None = None) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.granted: list[int] = []
        self.rc: int | None = None
        self._event = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.username_pw_set(user, password)
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        self.client.on_message = lambda c, u, m: self.got.append((m.topic, m.payload, bool(m.retain)))
        self.client.on_connect = self._connected
        self.client.on_subscribe = self._subscribed
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._event.wait(10), "no CONNACK"
        self._event.clear()

    def _connected(self, c, u, flags, rc, props=None) -> None:  # type: ignore[no-untyped-def]
        self.rc = rc.value
        self._event.set()

    def _subscribed(self, c, u, mid, codes, props=None) -> None:  # type: ignore[no-untyped-def]
        self.granted = [code.value for code in codes]
        self._event.set()

    def subscribe(self, topic: str) -> int:
        self.client.subscribe(topic, qos=1)
        assert self._event.wait(10), "no SUBACK"
        self._event.clear()
        return self.granted[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _password(inst: HostInstall) -> str:
    return str(inst.broker_credentials()["password"])


def _exchange(a: Messenger, b: Messenger, count: int, timeout: float,
              during: dict[int, Callable[[], None]] | None = None) -> None:
    """a and b send each other `count` messages while both pump; `during[i]` runs in a thread of
    its own once a has sent i, while the traffic goes on (one at a time: the next waits for it).
    Returns once both received all and hold nothing without a receipt."""
    sent = 0
    running: threading.Thread | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while sent < count and a.pending(b.inst.device_id) < 32 and b.pending(a.inst.device_id) < 32:
            if during and sent in during and running is not None and running.is_alive():
                break
            if during and sent in during:
                running = threading.Thread(target=during.pop(sent), daemon=True)
                running.start()
            a.send(b.inst.device_id, b"a->b %04d" % sent)
            b.send(a.inst.device_id, b"b->a %04d" % sent)
            sent += 1
        a.pump(0.02)
        b.pump(0.02)
        if (sent == count and len(a.received) >= count and len(b.received) >= count
                and a.pending(b.inst.device_id) == 0 and b.pending(a.inst.device_id) == 0
                and not (running and running.is_alive())):
            return
    raise AssertionError("after %.0f s: sent %d, a got %d, b got %d, awaiting receipts %d and %d" % (
        timeout, sent, len(a.received), len(b.received), a.pending(b.inst.device_id), b.pending(a.inst.device_id)))


def test_delivery_both_ways_across_the_bridge_with_receipts(system: System) -> None:
    board = system.install("site-board-1", at_site=True)
    host = system.install("center-host-1", at_site=False)
    a_status: list[tuple[str, int, str, str | None]] = []
    b_status: list[tuple[str, int, str, str | None]] = []
    with Messenger.open(board, system.site_address, on_status=lambda *s: a_status.append(s)) as a, \
            Messenger.open(host, on_status=lambda *s: b_status.append(s)) as b:
        _exchange(a, b, 40, timeout=30)
        assert [d for _, d in a.received] == [b"b->a %04d" % i for i in range(40)]
        assert [d for _, d in b.received] == [b"a->b %04d" % i for i in range(40)]
    # every message reported delivered to its sender: the receipts crossed the bridge back
    assert len([s for s in a_status if s[2] == DELIVERED]) == 40
    assert len([s for s in b_status if s[2] == DELIVERED]) == 40


def test_each_message_crosses_once_and_never_comes_back(system: System) -> None:
    """Loop-free: one publish at each end arrives once at the other end's subscriber and not again
    at its own broker (an echo over the bridge would repeat it)."""
    board = system.install("site-board-2", at_site=True)
    host = system.install("center-host-2", at_site=False)
    site_sub = Raw(system.site.host, system.site.port, board.device_id, _password(board), board.device_id)
    center_sub = Raw(system.central.host, system.central.port, host.device_id, _password(host), host.device_id)
    try:
        assert site_sub.subscribe(topics.inbox(FLEET, board.device_id)) == 1
        assert center_sub.subscribe(topics.inbox(FLEET, host.device_id)) == 1
        # and each also watches the other's inbox where its ACLs allow: they do not (both brokers)
        assert site_sub.subscribe(topics.inbox(FLEET, host.device_id)) == 0x80
        assert center_sub.subscribe(topics.inbox(FLEET, board.device_id)) == 0x80
        assert site_sub.subscribe("e2ee/#") == 0x80
        site_sub.client.publish(topics.inbox(FLEET, host.device_id), topics.frame(board.device_id, b"up"), qos=1)
        center_sub.client.publish(topics.inbox(FLEET, board.device_id), topics.frame(host.device_id, b"down"), qos=1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (site_sub.got and center_sub.got):
            time.sleep(0.02)
        time.sleep(2.0)  # an echo or a loop would show by now
        assert [p for _, p, _ in center_sub.got] == [topics.frame(board.device_id, b"up")]
        assert [p for _, p, _ in site_sub.got] == [topics.frame(host.device_id, b"down")]
    finally:
        site_sub.close()
        center_sub.close()


def test_the_bridge_credential_reaches_exactly_the_bridged_topics(system: System) -> None:
    """The bridge's role on the central broker (bridge_role), tried with a credential of its own
    (the real bridge's client id would push the bridge off)."""
    admin = system.central_admin()
    try:
        admin.provision_bridge("probe", [FLEET], "probe-password-1234")
    finally:
        admin.close()
    assert system.central.tls_files is not None
    raw = Raw(system.central.host, system.central.tls_port or 0, bridge_user("probe"), "probe-password-1234",
              bridge_user("probe"), tls_ca=str(system.central.tls_files["ca"]))
    try:
        assert raw.rc == 0
        for allowed in (topics.all_inboxes(FLEET), topics.crl(FLEET), topics.service_response(FLEET, "+"),
                        topics.group(FLEET, "+")):
            assert raw.subscribe(allowed) == 1, allowed
        for refused in ("e2ee/#", topics.all_inboxes(OTHER), topics.crl(OTHER), topics.service_request(FLEET, "+"),
                        topics.enroll_request(FLEET, "+"), "$CONTROL/dynamic-security/v1/response", "#"):
            assert raw.subscribe(refused) == 0x80, refused
    finally:
        raw.close()
    wrong = Raw(system.central.host, system.central.tls_port or 0, bridge_user(SITE), "not-the-password",
                bridge_user(SITE) + "-x", tls_ca=str(system.central.tls_files["ca"]))
    try:
        assert wrong.rc == NOT_AUTHORIZED
    finally:
        wrong.close()


def test_revocation_lists_come_down_and_a_revoked_board_is_cut_at_its_site(system: System) -> None:
    board = system.install("site-board-3", at_site=True)
    watcher = system.install("site-board-4", at_site=True)
    before = Raw(system.site.host, system.site.port, watcher.device_id, _password(watcher), watcher.device_id)
    try:
        assert before.subscribe(topics.crl(FLEET)) == 1
        deadline = time.monotonic() + 10
        time.sleep(1.0)
        # what the site holds before (no list yet when nothing was revoked in this fleet)
        old_list = before.got[-1][1] if before.got else None
    finally:
        before.close()
    live = Raw(system.site.host, system.site.port, board.device_id, _password(board), board.device_id)
    disconnected = threading.Event()
    live.client.on_disconnect = lambda *args: disconnected.set()
    system.op.revoke(board.device_id, "stolen at the site")
    # the service drove the site's dynsec: the live session at the site broker ends ...
    assert disconnected.wait(10), "the revoked board stayed connected to its site broker"
    live.close()
    # ... and a new CONNECT there is refused
    again = Raw(system.site.host, system.site.port, board.device_id, _password(board), board.device_id + "-2")
    try:
        assert again.rc == NOT_AUTHORIZED
    finally:
        again.close()
    # the new list, published at the center only, is the site's retained list now
    current = system.op.revocation_list(system.op.ca_keys()).data
    assert current != old_list
    site_copy = Raw(system.site.host, system.site.port, watcher.device_id, _password(watcher), watcher.device_id)
    try:
        assert site_copy.subscribe(topics.crl(FLEET)) == 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not site_copy.got:
            time.sleep(0.05)
        assert site_copy.got == [(topics.crl(FLEET), current, True)]
    finally:
        site_copy.close()


def test_bridge_cut_and_central_restart_mid_stream_lose_nothing(system: System) -> None:
    """Both sides keep sending while the bridge is down: what they send waits in the bridge's
    persistent sessions (and the senders' outboxes) and arrives after, once, in order."""
    board = system.install("site-board-5", at_site=True)
    host = system.install("center-host-5", at_site=False)
    admin = system.central_admin()
    crossed_during: list[int] = []  # messages the center received while the bridge was down

    def cut_bridge() -> None:  # the bridge's connection refused at the center for 3 s, then back
        admin.command("disableClient", username=bridge_user(SITE))
        time.sleep(0.5)  # the bridge is gone
        got = len(b.received)
        time.sleep(2.5)
        crossed_during.append(len(b.received) - got)
        since = _log_size(system.central)
        admin.command("enableClient", username=bridge_user(SITE))
        _bridge_up(system.central, since)

    def restart_central() -> None:  # graceful stop, 2 s down, start: the bridge reconnects
        system.central.stop()
        time.sleep(2)
        since = _log_size(system.central)
        system.central.start()
        _bridge_up(system.central, since)

    try:
        with Messenger.open(board, system.site_address) as a, Messenger.open(host, timeout=30) as b:
            _exchange(a, b, 150, timeout=50, during={50: cut_bridge, 100: restart_central})
            assert [d for _, d in a.received] == [b"b->a %04d" % i for i in range(150)]
            assert [d for _, d in b.received] == [b"a->b %04d" % i for i in range(150)]
    finally:
        admin.close()
    assert crossed_during == [0]  # the cut was real: nothing crossed while it lasted
