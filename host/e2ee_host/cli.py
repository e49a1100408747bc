"""`e2ee`: the operator's command line for the provisioning service (docs/provisioning.md, "CLI").

    e2ee claims create --fleet F [--quota N] [--count N] [--expires-in S] [--owner O] [--role R]... [--mqtt HOST:PORT]
    e2ee claims list [--fleet F]
    e2ee claims revoke CLAIM_ID [--reason TEXT]             no enrollment spends it from then on
    e2ee devices list [--fleet F] [--owner O]
    e2ee devices show DEVICE_ID
    e2ee devices revoke DEVICE_ID [--reason TEXT]
    e2ee devices clear-lock DEVICE_ID                      the registration lock's PIN and failed attempts
    e2ee devices unlock-backup DEVICE_ID                   a backup locked after too many wrong passphrases
    e2ee groups add --fleet F --group G DEVICE_ID...      members read and write the group topic
    e2ee groups remove --fleet F --group G DEVICE_ID...
    e2ee cert status SERIAL
    e2ee crl show [--ca-keys FILE]
    e2ee flash --port PORT [--app FILE] [--file LOCAL:BOARD_PATH ...]
    e2ee provision --port PORT --claim TOKEN --device-id ID --fleet F [--one-time N] [--force]
    e2ee board virtual --flash DIR [--profile esp32|rp2040|unix]
    e2ee board backup --port PORT [--passphrase-file F]          sealed on this host, stored by the service
    e2ee board restore --port PORT --device-id ID [--passphrase-file F]   onto a replacement board
    e2ee dev up [--dir D] [--port P] [--broker-port P]                  development broker + service, until Ctrl-C
    e2ee client init --dir D --device-id ID --fleet F --claim TOKEN [--no-broker]   a host client's install
    e2ee client show --dir D
    e2ee client link-qr --dir D [--png FILE] [--yes]                    this install is the new device
    e2ee client link-approve --dir D --qr PAYLOAD --owner O [--yes]     this install is the primary
    e2ee client owner-devices --dir D --owner O
    e2ee client revoke-linked --dir D --owner O DEVICE_ID
    e2ee client backup --dir D [--passphrase-file F]
    e2ee client restore --dir NEW --device-id ID [--passphrase-file F]
    e2ee client renew --dir D --claim TOKEN                             new certificate and MQTT credentials
    e2ee client send --dir D PEER TEXT|-                                encrypt, publish (docs/host-client.md)
    e2ee client send --dir D --owner O TEXT|-                           to every device of the owner, pairwise
    e2ee client group-join --dir D GROUP [--members A,B,...]            group messages wait at the broker
    e2ee client group-send --dir D GROUP TEXT|- [--members A,B,...]     one Sender Key message to the group
    e2ee client receive --dir D [--timeout S] [--count N]               decrypt, print "sender: text" lines

The service address and operator key come from --url / --api-key or E2EE_URL / E2EE_API_KEY
(`flash`, `provision` and `board` need no operator key: a device enrolls with its claim).
`--json` prints the service's answer as JSON. These three go before or after the subcommand
(`e2ee --json devices list` or `e2ee devices list --json`); `e2ee --version` prints the installed
version. Exit status: 0 done, 1 the service refused or did not answer (its reason, or "the service
at URL is unreachable: ...", is printed), 2 usage or verification error (a peer's certificate refused, a revoked or
expired peer), 3 the board, the install or the broker is missing, busy or refused.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e2ee.protocol import certificate
from e2ee_host.client import ApiError, OperatorClient, ServiceUnreachable
from e2ee_host.messenger import MESSAGE_ERRORS, Messenger

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8000"
# `client receive`: how often a long receive fetches the service's revocation list again (s), and
# how many one-time prekeys it publishes when the service reports the inventory low.
_REFRESH_EVERY = 60.0
_REPLENISH = 20


def _time(ts: int | str | None) -> str:
    if ts is None:
        return "-"
    if isinstance(ts, str):
        return ts
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


def _claims_create(client: OperatorClient, args: argparse.Namespace) -> Any:
    broker = None
    if args.mqtt:
        host, _, port = args.mqtt.rpartition(":")
        if not host or not port.isdigit():
            raise SystemExit("e2ee: --mqtt must be HOST:PORT (the broker as the boards reach it)")
        broker = (host, int(port))
    made = client.create_claims(args.fleet, quota=args.quota, count=args.count, expires_in=args.expires_in,
                                owner=args.owner, roles=args.role, label=args.label,
                                require_hardware=args.require_hardware, mqtt=broker is not None)
    if broker is not None:
        # a claim file per token: e2ee_data/claim.json on a board (docs/boards.md, "Zero-touch enrollment")
        ca_keys = [base64.b64encode(k).decode() for k in client.ca_keys()]
        files = [json.dumps({"fleet": args.fleet, "host": broker[0], "port": broker[1], "claim": c["id"],
                             "token": t, "ca_keys": ca_keys}) for c, t in zip(made.claims, made.tokens)]
        if args.json:
            return {"claims": made.claims, "tokens": made.tokens, "claim_files": [json.loads(f) for f in files]}
        return "\n".join(["created %d claim(s) for fleet %s with broker credentials, %d enrollment(s) each" % (
            len(made.tokens), args.fleet, args.quota),
            "claim files (shown once; one per board as e2ee_data/claim.json):", *files])
    if args.json:
        return {"claims": made.claims, "tokens": made.tokens}
    lines = ["created %d claim(s) for fleet %s, %d enrollment(s) each, expiring %s" % (
        len(made.tokens), args.fleet, args.quota, made.claims[0]["expires_at"])]
    lines.append("tokens (shown once; give each to the device or the factory line):")
    lines += made.tokens
    return "\n".join(lines)


def _claim_status(claim: dict[str, Any]) -> str:
    if claim.get("revoked_at"):
        return "revoked"
    if claim["used"] >= claim["quota"]:
        return "used up"
    expires = datetime.datetime.fromisoformat(claim["expires_at"])
    return "expired" if expires <= datetime.datetime.now(datetime.timezone.utc) else "active"


def _claims_list(client: OperatorClient, args: argparse.Namespace) -> Any:
    claims = client.list_claims(args.fleet)
    if args.json:
        return claims
    return _table([[c["id"], c["fleet"], c["owner"] or "-", "%d/%d" % (c["used"], c["quota"]), _claim_status(c),
                    c["expires_at"], c.get("revoked_at") or "-", c["label"]] for c in claims],
                  ["id", "fleet", "owner", "used", "status", "expires", "revoked", "label"])


def _claims_revoke(client: OperatorClient, args: argparse.Namespace) -> Any:
    c = client.revoke_claim(args.claim_id, args.reason)
    if args.json:
        return c
    return "claim %d of fleet %s revoked at %s (%d of %d enrollments used)" % (
        c["id"], c["fleet"], c["revoked_at"], c["used"], c["quota"])


def _devices_list(client: OperatorClient, args: argparse.Namespace) -> Any:
    devices = client.list_devices(args.fleet, args.owner)
    if args.json:
        return devices
    return _table([[d["device_id"], d["fleet"], d["owner"] or "-", ",".join(d["roles"]) or "-",
                    "revoked" if d["revoked"] else "active", d["fingerprint"][:16]] for d in devices],
                  ["device", "fleet", "owner", "roles", "status", "fingerprint"])


def _devices_show(client: OperatorClient, args: argparse.Namespace) -> Any:
    d = client.device(args.device_id)
    if args.json:
        return d
    fields = [("device", d["device_id"]), ("fleet", d["fleet"]), ("owner", d["owner"] or "-"),
              ("roles", ", ".join(d["roles"]) or "-"), ("status", "revoked" if d["revoked"] else "active"),
              ("fingerprint", d["fingerprint"]), ("identity DH key", d["ik_pub"]),
              ("identity signing key", d["is_pub"]),
              ("board id", base64.b64decode(d["board_uid"]).hex() if d["board_uid"] else "-"),
              ("registration lock", "on" if d["registration_lock"] else "off"),
              ("certificate", d["certificate_serial"] or "-"),
              ("certificate valid until", _time(d["certificate_not_after"])), ("enrolled", d["enrolled_at"])]
    try:
        inv = client.inventory(args.device_id)
        fields.append(("one-time prekeys", "%d%s" % (inv["one_time_prekeys"], " (replenish)" if inv["replenish"]
                                                      else "")))
    except ApiError:
        pass
    return "\n".join("%-24s %s" % (k + ":", v) for k, v in fields)


def _devices_revoke(client: OperatorClient, args: argparse.Namespace) -> Any:
    r = client.revoke(args.device_id, args.reason)
    if args.json:
        return r
    return "revoked %s: %d certificate(s) listed; revocation list version %d" % (
        r["device_id"], len(r["revoked_serials"]), r["revocation_list_version"])


def _devices_clear_lock(client: OperatorClient, args: argparse.Namespace) -> Any:
    client.clear_registration_lock(args.device_id)
    return {"device_id": args.device_id, "registration_lock": False} if args.json else \
        "registration lock of %s cleared" % args.device_id


def _devices_unlock_backup(client: OperatorClient, args: argparse.Namespace) -> Any:
    client.unlock_backup(args.device_id)
    return {"device_id": args.device_id, "backup_locked": False} if args.json else \
        "backup of %s unlocked: its wrong-passphrase count starts again" % args.device_id


def _groups(client: OperatorClient, args: argparse.Namespace) -> Any:
    change = client.add_group_member if args.command == "add" else client.remove_group_member
    for device_id in args.device_ids:
        change(args.fleet, args.group, device_id)
    verb = "added to" if args.command == "add" else "removed from"
    return {"group": args.group, args.command: args.device_ids} if args.json else "%s %s group %s/%s" % (
        ", ".join(args.device_ids), verb, args.fleet, args.group)


def _cert_status(client: OperatorClient, args: argparse.Namespace) -> Any:
    s = client.certificate_status(args.serial)
    if args.json:
        return s
    line = "%s: %s (device %s, valid %s .. %s)" % (s["serial"], s["status"], s["device_id"], _time(s["not_before"]),
                                                  _time(s["not_after"]))
    if s["revoked_at"]:
        line += "\nrevoked %s: %s" % (s["revoked_at"], s["revoke_reason"] or "-")
    return line


def _read_keys(path: str) -> list[bytes]:
    """Pinned CA public keys: one base64 or hex key per line."""
    keys = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(bytes.fromhex(line) if len(line) == 64 else base64.b64decode(line, validate=True))
    return keys


def _crl_show(client: OperatorClient, args: argparse.Namespace) -> Any:
    trusted = _read_keys(args.ca_keys) if args.ca_keys else client.ca_keys()
    info = client.revocation_list(trusted)
    crl = info.crl
    serials = [s.hex() for s in crl.serials()]
    if args.json:
        return {"version": crl.version, "issued_at": crl.issued_at, "issuer_key_id": crl.issuer_key_id.hex(),
                "revoked_serials": serials, "verified_with": "pinned" if args.ca_keys else "service"}
    lines = ["revocation list version %d, issued %s by CA key %s (signature verified with %s keys)" % (
        crl.version, _time(crl.issued_at), crl.issuer_key_id.hex(), "pinned" if args.ca_keys else "the service's")]
    lines.append("%d revoked certificate(s)%s" % (len(serials), ":" if serials else ""))
    lines += ["  " + s for s in serials]
    return "\n".join(lines)


def _flash(args: argparse.Namespace) -> Any:
    from e2ee_host.board_link import flash
    files = []
    for spec in args.file or ():
        local, _, target = spec.partition(":")
        files.append((Path(local), target or Path(local).name))
    done = flash(args.port, Path(args.app) if args.app else None, progress=_progress(args), files=files)
    return done if args.json else "flashed %(files)d files (%(bytes)d bytes, %(backend)s crypto) to %(port)s" % dict(
        done, port=args.port)


def _provision(args: argparse.Namespace) -> Any:
    from e2ee_host.board_link import provision
    done = provision(args.port, args.url, args.claim, args.device_id, args.fleet, one_time=args.one_time,
                     force=args.force, progress=_progress(args))
    if args.json:
        return done
    return ("enrolled %(device_id)s in fleet %(fleet)s: certificate %(serial)s, fingerprint %(fingerprint)s, "
            "%(one_time_prekeys)d one-time prekeys published" % done)


def _board_virtual(args: argparse.Namespace) -> Any:
    from e2ee_host.virtual_board import VirtualBoard
    with VirtualBoard(args.flash, args.profile) as board:
        print("virtual %s board on %s (flash %s, heap %s; boot.py and main.py run at power-on); Ctrl-C "
              "powers it off" % (board.profile.name, board.port, args.flash, board.heap), flush=True)
        try:
            while board.powered:  # a soft reset keeps it on, a crash of the interpreter does not
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return "virtual board powered off"


_NO_BACKUP = ("WARNING: no backup is set up. If this install is lost, its identity and sessions are gone "
              "for good. Run: e2ee client backup --dir %s")


def _passphrase(args: argparse.Namespace, confirm: bool = False) -> str:
    if args.passphrase_file:
        return Path(args.passphrase_file).read_text().strip()
    if os.environ.get("E2EE_BACKUP_PASSPHRASE"):
        return os.environ["E2EE_BACKUP_PASSPHRASE"]
    import getpass
    first = getpass.getpass("backup passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise SystemExit("e2ee: the passphrases differ")
    return first


def _ask(args: argparse.Namespace, question: str) -> bool:
    if args.yes:
        print(question + " y (--yes)", file=sys.stderr)
        return True
    return input(question + " [y/N] ").strip().lower() == "y"


def _client_init(args: argparse.Namespace) -> Any:
    from e2ee_host.install import HostInstall
    inst = HostInstall.init(args.dir, args.url, args.device_id, args.fleet, args.claim, one_time=args.one_time,
                            require_broker=not args.no_broker)
    if inst.settings.get("mqtt"):
        _open_mailbox(inst, args)
    print(_NO_BACKUP % args.dir, file=sys.stderr)
    return {"device_id": inst.device_id, "fingerprint": inst.client.keystore.fingerprint().hex(),
            "serial": inst.settings["serial"]} if args.json else (
        "enrolled %s: fingerprint %s, certificate %s" % (
            inst.device_id, inst.client.keystore.fingerprint().hex(), inst.settings["serial"]))


def _client_show(args: argparse.Namespace) -> Any:
    from e2ee_host.install import HostInstall
    inst = HostInstall.open(args.dir)
    backup = inst.settings.get("backup_at")
    info = {"device_id": inst.device_id, "fleet": inst.settings["fleet"], "service": inst.settings["url"],
            "fingerprint": inst.client.keystore.fingerprint().hex(), "certificate": inst.settings["serial"],
            "peers": inst.sessions.peers(), "backup": backup, "broker": _broker_address(inst),
            "revocation_list": inst.trust.version}
    if not backup:
        print(_NO_BACKUP % args.dir, file=sys.stderr)
    return info if args.json else "\n".join("%-12s %s" % (k + ":", v if v is not None else "none")
                                              for k, v in info.items())


def _client_link_qr(args: argparse.Namespace) -> Any:
    from e2ee_host.install import HostInstall
    from e2ee_host.linking import NewDeviceLink, LinkRefused, qr_png, qr_text
    inst = HostInstall.open(args.dir)
    link = NewDeviceLink(inst.client)
    payload = link.offer.payload()
    print(qr_text(payload), file=sys.stderr)
    print("link payload: " + payload, file=sys.stderr, flush=True)
    if args.png:
        qr_png(payload, args.png)
    code = link.wait(args.timeout)
    if not _ask(args, "primary %s of owner %s shows check code %s. Same code on both screens?" % (
            link.hello.get("primary"), link.hello.get("owner"), code)):
        raise LinkRefused("check code not confirmed")
    link.accept()
    return {"linked_to": link.hello.get("owner"), "check_code": code} if args.json else \
        "accepted the link to owner %s (check code %s)" % (link.hello.get("owner"), code)


def _client_link_approve(args: argparse.Namespace) -> Any:
    from e2ee_host.install import HostInstall
    from e2ee_host.linking import approve
    inst = HostInstall.open(args.dir)

    def confirm(code: str) -> bool:
        return _ask(args, "the new device must show check code %s. Same code on both screens?" % code)

    done = approve(inst.client, args.qr, args.owner, trusted_keys=inst.trusted_keys(), confirm=confirm,
                   timeout=args.timeout)
    inst.save()
    return done if args.json else "linked %s to owner %s" % (done["device_id"], done["owner"])


def _client_owner_devices(args: argparse.Namespace) -> Any:
    from e2ee_host.install import HostInstall
    inst = HostInstall.open(args.dir)
    devices = inst.client.signed("GET", "/owners/%s/devices" % args.owner)
    inst.save()
    if args.json:
        return devices
    return _table([[d["device_id"], d["fingerprint"][:16], d["primary"] or "-"] for d in devices],
                  ["device", "fingerprint", "approved by"])


def _client_revoke_linked(args: argparse.Namespace) -> Any:
    from e2ee_host.install import HostInstall
    inst = HostInstall.open(args.dir)
    r = inst.client.signed("POST", "/owners/%s/devices/%s/revoke" % (args.owner, args.device_id),
                           json.dumps({"reason": "revoked by owner"}).encode())
    inst.save()
    return r if args.json else "revoked %s; revocation list version %d" % (r["device_id"],
                                                                        r["revocation_list_version"])


def _client_backup(args: argparse.Namespace) -> Any:
    from e2ee_host import backup
    from e2ee_host.install import HostInstall
    inst = HostInstall.open(args.dir)
    blob, auth = backup.seal(backup.export_state(args.dir, inst.storage_key), _passphrase(args, confirm=True))
    stored = inst.client.put_backup(blob, auth)
    inst.settings["backup_at"] = stored["updated_at"]
    inst.save()
    return stored if args.json else "backup stored: %d bytes, sealed on this machine (Argon2id + ChaCha20-Poly1305)" % (
        stored["size"])


def _client_restore(args: argparse.Namespace) -> Any:
    import base64 as b64

    from e2ee_host import backup
    from e2ee_host.client import ServiceClient
    from e2ee_host.install import HostInstall
    service = ServiceClient(args.url)
    params = service.backup_params(args.device_id)
    kdf = backup.KdfParams(params["memory_kib"], params["iterations"], params["lanes"])
    passphrase = _passphrase(args)
    blob = service.fetch_backup(args.device_id, backup.auth_token(b64.b64decode(params["salt"]), kdf, passphrase))
    inst = HostInstall.restore(args.dir, backup.open_blob(blob, passphrase))
    # docs/backup.md, "Never restored": identity, settings and trust only; sessions start anew
    return {"device_id": inst.device_id, "peers": inst.sessions.peers()} if args.json else \
        "restored %s into %s (identity and trust; sessions and group sender keys start anew)" % (
            inst.device_id, args.dir)


# --- messaging (docs/host-client.md) ---

def _broker_address(inst: Any) -> str | None:
    mqtt = inst.settings.get("mqtt")
    if not mqtt or not mqtt.get("password"):
        return None
    return "%s:%s" % (mqtt.get("host") or "?", mqtt.get("port") or "?")


def _connect(inst: Any, args: argparse.Namespace, timeout: float) -> Any:
    """The install's HostLink, connected (TransportError when the broker is unreachable or refuses)."""
    from e2ee_host.transport import TransportError
    link = inst.link(getattr(args, "broker", None), timeout=timeout, tls_ca=getattr(args, "tls_ca", None))
    try:
        return link.connect()
    except OSError as e:  # refused or unreachable before any MQTT exchange
        host, port = inst.broker_address(getattr(args, "broker", None))
        raise TransportError("the broker at %s:%d is unreachable: %s" % (host, port, e)) from None


def _open_mailbox(inst: Any, args: argparse.Namespace) -> None:
    """After enrollment: open the install's persistent session at the broker, so messages sent to
    it before its first `receive` wait there. A warning, not an error, when that fails."""
    from e2ee_host.install import InstallError
    from e2ee_host.transport import TransportError
    try:
        link = _connect(inst, args, 30.0)
    except InstallError as e:
        print("e2ee: warning: %s" % e, file=sys.stderr)
        return
    except TransportError as e:
        print("e2ee: warning: %s; messages sent to %s before its first receive may be lost" % (
            e, inst.device_id), file=sys.stderr)
        return
    try:
        inst.open_mailbox(link)
    except TransportError as e:
        print("e2ee: warning: the mailbox at the broker did not answer (%s)" % e, file=sys.stderr)
    finally:
        link.close()
        inst.spool_rest(link)


def _refresh_revocation_list(inst: Any) -> None:
    """The newest list from the service; when the service is unreachable or its list does not
    verify with the pinned CA keys, the stored one (with a warning)."""
    try:
        inst.refresh_revocation_list()
    except (ApiError, certificate.CertificateError) as e:
        print("e2ee: warning: no new revocation list (%s: %s); peers are checked against version %d" % (
            type(e).__name__, e, inst.trust.version), file=sys.stderr)


def _client_renew(args: argparse.Namespace) -> Any:
    from e2ee_host.install import HostInstall
    inst = HostInstall.open(args.dir)
    enrolled = inst.renew(args.claim)
    _open_mailbox(inst, args)
    serial, broker = enrolled.cert.serial.hex(), _broker_address(inst)
    return {"device_id": inst.device_id, "serial": serial, "broker": broker} if args.json else \
        "renewed %s: certificate %s, broker %s" % (inst.device_id, serial, broker or "none (the service drives none)")


def _message_bytes(args: argparse.Namespace) -> bytes:
    if args.text != "-":
        return str(args.text).encode()
    data = sys.stdin.buffer.read()
    return data[:-1] if data.endswith(b"\n") else data  # the newline `echo` adds


class _UsageError(Exception):
    """The command line does not say enough (exit status 2)."""


class _Failed(Exception):
    """Some of a fan-out's sends failed (each said why on stderr): exit with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _close(inst: Any, link: Any) -> None:
    """Closes a send's link; what the broker delivered to it meanwhile (the install's persistent
    session: inbox, joined groups) is spooled for the next receive, not lost."""
    if link is None:
        return
    link.close()
    for sender, envelope in inst.spool_rest(link):
        print("e2ee: undecryptable message from %s: Oversize: %d bytes" % (_printable(sender), len(envelope)),
              file=sys.stderr)


def _client_send(args: argparse.Namespace) -> Any:
    from e2ee_host.install import HostInstall, InstallError
    if args.owner is not None:
        if args.peer is not None:
            raise _UsageError("give either PEER or --owner, not both")
        return _client_send_owner(args)
    if args.peer is None:
        raise _UsageError("send needs PEER and TEXT (or --owner OWNER and TEXT)")
    inst = HostInstall.open(args.dir)
    inst.broker_address(args.broker)  # no credentials: stop before anything else
    if args.peer == inst.device_id:
        raise InstallError("%s cannot send to itself" % args.peer)
    data = _message_bytes(args)
    link = None
    try:
        _refresh_revocation_list(inst)
        inst.ensure_certificate()
        new = inst.needs_session(args.peer)
        if new:
            inst.start_session(args.peer)
        link = _connect(inst, args, args.timeout)  # before encrypt(): no message key spent on a dead broker
        messenger = Messenger(inst, link)
        seq = messenger.send(args.peer, data)
        status, reason = messenger.status(args.peer, seq)
    finally:
        _close(inst, link)
        inst.save()
    if status == "failed":  # the peer is refused (2: revoked or expired, as encrypt() says), or gone (3)
        refused = str(reason).startswith(("PeerRevoked", "PeerExpired", "UncertifiedSession"))
        raise _Failed(2 if refused else 3, "message %d to %s failed: %s" % (seq, args.peer, reason))
    waiting = messenger.pending(args.peer)
    if args.json:
        return {"to": args.peer, "id": seq, "status": status, "bytes": len(data), "new_session": new,
                "awaiting_receipt": waiting}
    return "%s message %d to %s (%d bytes%s; %d awaiting a receipt: `e2ee client receive` collects receipts)" % (
        "sent" if status == "sent" else "queued", seq, args.peer, len(data), ", new session" if new else "", waiting)


def _refusal(e: Exception) -> tuple[int, bool]:
    """(exit status, revoked?) of one peer's failure in a fan-out: revoked peers are skipped."""
    from e2ee.protocol import session
    from e2ee_host.transport import TransportError
    if isinstance(e, ApiError):
        return 1, e.status == 410
    if isinstance(e, (session.PeerRefused, certificate.CertificateError)):
        return 2, isinstance(e, (session.PeerRevoked, certificate.Revoked))
    if isinstance(e, TransportError):
        return 3, False
    raise e


def _client_send_owner(args: argparse.Namespace) -> Any:
    """`send --owner O TEXT`: the message to every device of the owner (GET /owners/{owner}/devices,
    docs/linking.md §4), each over its own certified pairwise session; revoked ones skipped."""
    from e2ee.protocol import delivery, session
    from e2ee_host.install import HostInstall
    from e2ee_host.transport import TransportError
    inst = HostInstall.open(args.dir)
    inst.broker_address(args.broker)
    data = _message_bytes(args)
    owner = args.owner
    sent: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    failed: list[tuple[str, int]] = []

    def refused(device: str, e: Exception) -> None:
        status, revoked = _refusal(e)
        reason = "%s: %s" % (type(e).__name__, e)
        if revoked:
            skipped.append({"device": device, "reason": reason})
            print("e2ee: skipped %s: revoked (%s)" % (device, reason), file=sys.stderr, flush=True)
        else:
            failed.append((device, status))
            print("e2ee: not sent to %s: %s" % (device, reason), file=sys.stderr, flush=True)

    link = None
    try:
        _refresh_revocation_list(inst)
        inst.ensure_certificate()
        listed = [str(d["device_id"]) for d in inst.client.signed("GET", "/owners/%s/devices" % owner)]
        devices = [d for d in listed if d != inst.device_id]
        remembered = inst.settings.setdefault("owners", {})
        for gone in remembered.get(owner, []):  # the service lists unrevoked devices only
            if gone not in listed:
                skipped.append({"device": gone, "reason": "no longer listed (revoked or unlinked)"})
                print("e2ee: skipped %s: no longer a device of owner %s (revoked or unlinked)" % (gone, owner),
                      file=sys.stderr, flush=True)
        if not devices:
            raise ApiError(404, "owner %s has no unrevoked device to send to%s" % (
                owner, " but this install" if listed else ""))
        remembered[owner] = devices
        ready = []
        for device in devices:
            try:
                new = inst.needs_session(device)
                if new:
                    inst.start_session(device)
                ready.append((device, new))
            except (ApiError, session.PeerRefused, certificate.CertificateError) as e:
                refused(device, e)
        if ready:
            link = _connect(inst, args, args.timeout)  # before encrypt(): no message key spent on a dead broker
        messenger = Messenger(inst, link) if ready else None
        for device, new in ready:
            assert messenger is not None
            try:
                seq = messenger.send(device, data)
            except (session.PeerRefused, TransportError, delivery.DeliveryError) as e:
                refused(device, e)
                continue
            status, reason = messenger.status(device, seq)
            if status == "failed":
                refused(device, delivery.Undeliverable(str(reason)))
                continue
            sent.append({"to": device, "id": seq, "status": status, "bytes": len(data), "new_session": new})
            if not args.json:
                print("%s message %d to %s (%d bytes%s)" % ("sent" if status == "sent" else "queued", seq, device,
                                                             len(data), ", new session" if new else ""), flush=True)
    finally:
        _close(inst, link)
        inst.save()
    if args.json:
        print(json.dumps({"owner": owner, "sent": sent, "skipped": skipped,
                          "failed": [device for device, _ in failed]}, indent=2))
    summary = "sent to %d of %d device(s) of owner %s" % (len(sent), len(devices), owner)
    if skipped:
        summary += ", %d skipped (revoked)" % len(skipped)
    if failed:
        raise _Failed(max(status for _, status in failed), "%s, %d failed: %s" % (
            summary, len(failed), ", ".join(device for device, _ in failed)))
    print("e2ee: " + summary, file=sys.stderr)
    return None


def _members(args: argparse.Namespace) -> list[str] | None:
    if args.members is None:
        return None
    return [m for given in args.members for m in given.split(",") if m]


def _join(inst: Any, link: Any, group: str) -> None:
    from e2ee_host.install import NotGroupMember
    if not link.join_group(group):
        raise NotGroupMember("the broker refused the topic of group %s to %s: the operator has not added it "
                             "(e2ee groups add --fleet %s --group %s %s)" % (
                                 group, inst.device_id, inst.settings["fleet"], group, inst.device_id))
    inst.remember_group(group)


def _client_group_join(args: argparse.Namespace) -> Any:
    """Subscribes the install's persistent session to the group topic, so the group's messages
    wait at the broker while it is offline (as the mailbox does for its inbox)."""
    from e2ee_host.install import HostInstall
    inst = HostInstall.open(args.dir)
    inst.broker_address(args.broker)
    members = _members(args)
    if members is not None:  # whose sender keys this install accepts (docs/groups.md, "Membership")
        inst.set_group_members(args.group, members)
        inst.save()
    link = _connect(inst, args, args.timeout)
    try:
        _join(inst, link, args.group)
    finally:
        _close(inst, link)
        inst.save()
    return {"joined": args.group} if args.json else "joined group %s: its messages wait at the broker for %s" % (
        args.group, inst.device_id)


def _client_group_send(args: argparse.Namespace) -> Any:
    """`group-send GROUP TEXT`: this install's sender key to the members that lack it (made the
    first time, new after a member left; each over its certified pairwise session), then one
    Sender Key message on the group topic (docs/groups.md)."""
    from e2ee_host.install import HostInstall
    inst = HostInstall.open(args.dir)
    inst.broker_address(args.broker)
    data = _message_bytes(args)
    members = _members(args)
    if members is None:
        if not inst.group_members(args.group):
            raise _UsageError("the first send to group %s needs --members (the other members' device ids)"
                              % args.group)
        members = inst.group_members(args.group)
    link = None
    try:
        _refresh_revocation_list(inst)
        inst.ensure_certificate()
        pending = inst.set_group_members(args.group, members)
        inst.save()
        for member in pending:  # every session before the broker: a refused member stops the send here
            if inst.needs_session(member):
                inst.start_session(member)
        link = _connect(inst, args, args.timeout)
        _join(inst, link, args.group)
        messenger = Messenger(inst, link)
        for member in pending:  # through the outbox: kept and resent until the member's receipt
            messenger.send(member, inst.distribution_message(args.group))
            inst.distributed(args.group, member)
            inst.save()
        wire = inst.groups.encrypt(args.group, data)  # the advanced chain is stored before it leaves
        link.send_group(args.group, wire)
    finally:
        _close(inst, link)
        inst.save()
    if args.json:
        return {"group": args.group, "bytes": len(wire), "sender_key_sent_to": pending}
    return "sent to group %s (%d bytes%s)" % (args.group, len(wire), ", sender key sent to %s" % ", ".join(pending)
                                               if pending else "")


def _printable(text: str) -> str:
    return text if text.isprintable() else ascii(text)


def _message_errors() -> tuple[type[Exception], ...]:
    """The typed errors of a message this install cannot use (audit finding 6): it is
    acknowledged and dropped, counted, and logged by its error type, never retried
    (messenger.MESSAGE_ERRORS: decode, ratchet, key agreement, certificate, session, delivery and
    group cipher errors); every StoreError and OSError is the install's, and stops the receiver."""
    from e2ee.crypto.errors import InvalidTag
    return MESSAGE_ERRORS + (InvalidTag,)


class _Receiver:
    """Decrypts and prints what arrives: `sender: text` (pairwise) and `group/sender: text` (group)
    on stdout (or JSON lines with --json), duplicates and undecryptable messages as one line each
    on stderr. Sender key distributions are installed, not printed; `joined(group)` is called for
    the group of each one. A message that cannot be decrypted is dropped (counted in `failed`):
    one poison message never blocks the ones after it, in this run or the next."""

    def __init__(self, inst: Any, args: argparse.Namespace, joined: Any = None) -> None:
        self.inst, self.json, self.joined = inst, args.json, joined
        self.printed = self.duplicates = self.failed = 0
        self.delivery = inst.delivery(on_status=self.status)
        self.link: Any = None

    def status(self, peer: str, seq: int, status: str, reason: str | None) -> None:
        """What became of a message this install sent: delivered (receipt) or failed, on stderr."""
        if status == "sent":
            return
        print("e2ee: message %d to %s %s%s" % (seq, _printable(peer), status, ": %s" % reason if reason else ""),
              file=sys.stderr, flush=True)

    def flush(self) -> None:
        """Receipts, resends and reset requests out, when connected (a link that is down stops it)."""
        from e2ee_host.transport import TransportError
        if self.link is None:
            return
        try:
            self.delivery.flush(self.link.send)
        except TransportError as e:
            print("e2ee: warning: %s" % e, file=sys.stderr, flush=True)

    def handle(self, sender: str, envelope: bytes) -> None:
        """A pairwise envelope, or a spooled group message (its sender as the spool keeps it)."""
        from e2ee.protocol import ratchet
        from e2ee.protocol.store import StoreError
        inst = self.inst
        group = inst.spooled_group(sender)
        if group is not None:
            self.handle_group(group, envelope)
            return
        if inst.is_probe(sender, envelope):
            return
        who = _printable(sender)
        try:
            self.delivery.handle(sender, envelope, self.deliver)
        except ratchet.DuplicateMessage:
            self.duplicates += 1
            print("e2ee: duplicate message from %s skipped (DuplicateMessage: received before)" % who,
                  file=sys.stderr, flush=True)
            return
        except _message_errors() as e:  # typed: the message's fault; its text names ids, never keys
            self.dropped(who, e, str(e))
            return
        except (StoreError, OSError):
            raise  # the install itself failed: stop (the message goes back to the spool)
        except Exception as e:  # an untyped error still drops the message; its text is not shown
            self.dropped(who, e, "untyped error")
            return

    def deliver(self, sender: str, payload: Any) -> None:
        """A message's payload, once per message id: a sender key distribution is installed, the
        rest shown."""
        plaintext = bytes(payload)
        group = self.inst.accept_distribution(sender, plaintext)
        if group is not None:
            self.inst.save()
            print("e2ee: sender key of %s for group %s installed" % (_printable(sender), _printable(group)),
                  file=sys.stderr, flush=True)
            if self.joined is not None:
                self.joined(group)
            return
        self.show(None, sender, plaintext)

    def handle_group(self, group: str, wire: bytes) -> None:
        from e2ee.protocol import sender_key
        from e2ee.protocol.store import StoreError
        where = _printable(group)
        try:
            opened = self.inst.decrypt_group(group, wire)
        except sender_key.Duplicate as e:
            self.duplicates += 1
            print("e2ee: duplicate group message in %s skipped (Duplicate: %s)" % (where, e), file=sys.stderr,
                  flush=True)
            return
        except _message_errors() as e:
            self.dropped(where, e, str(e), "undecryptable group message in")
            return
        except (StoreError, OSError):
            raise
        except Exception as e:
            self.dropped(where, e, "untyped error", "undecryptable group message in")
            return
        if opened is not None:  # None: this install's own message, back from the broker
            self.show(group, *opened)

    def dropped(self, who: str, error: Exception, detail: str,
                what: str = "undecryptable message from") -> None:
        """One message dropped: counted, and one line with the error's type on stderr."""
        self.failed += 1
        print("e2ee: %s %s: %s: %s" % (what, who, type(error).__name__, detail), file=sys.stderr, flush=True)

    def show(self, group: str | None, sender: str, plaintext: bytes) -> None:
        self.printed += 1
        who = _printable(sender) if group is None else "%s/%s" % (_printable(group), _printable(sender))
        try:
            text: str | None = plaintext.decode()
        except UnicodeDecodeError:
            text = None
        if self.json:
            fields: dict[str, Any] = {} if group is None else {"group": group}
            fields["from"] = sender
            fields.update({"text": text} if text is not None else {"hex": plaintext.hex()})
            line = json.dumps(fields)
        elif text is not None and text.isprintable():
            line = "%s: %s" % (who, text)
        else:  # binary, or text with control characters (a terminal would obey them)
            line = "%s: [hex] %s" % (who, plaintext.hex())
        print(line, flush=True)


def _next(link: Any, wait: float) -> tuple[str | None, str, bytes] | None:
    """(None, sender, envelope) from the inbox or (group, "", wire) from a joined group, within
    `wait` seconds, else None. The inbox goes first: a sender key distribution is handled before
    the group messages its sender published after it."""
    import queue
    deadline = time.monotonic() + wait
    while True:
        try:
            sender, envelope = link.inbox.get(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
            return None, sender, bytes(envelope)
        except queue.Empty:
            pass
        try:
            group, wire = link.group_messages.get_nowait()
            return group, "", bytes(wire)
        except queue.Empty:
            pass
        if time.monotonic() >= deadline:
            return None


def _client_receive(args: argparse.Namespace) -> Any:
    from e2ee_host.install import HostInstall, NotGroupMember
    from e2ee_host.transport import TransportError
    inst = HostInstall.open(args.dir)
    inst.broker_address(args.broker)  # no credentials: stop before anything else
    _refresh_revocation_list(inst)
    refreshed = time.monotonic()
    link = None
    tried: set[str] = set()

    def join(group: str) -> None:
        """The group's topic on this connection (once per run); a refusal is a note, not an error."""
        if link is None or group in tried:
            return
        tried.add(group)
        try:
            _join(inst, link, group)
        except (NotGroupMember, TransportError) as e:
            print("e2ee: group %s: %s" % (_printable(group), e), file=sys.stderr, flush=True)

    receiver = _Receiver(inst, args, join)
    prekeys = len(inst.client.keystore.one_time_prekey_publics())

    def enough() -> bool:
        return args.count is not None and receiver.printed >= args.count

    current: tuple[str, bytes] | None = None
    try:
        for seq, sender, envelope in inst.spooled():  # delivered to an earlier run, not handled yet
            if enough():
                break
            receiver.handle(sender, envelope)
            inst.unspool(seq)
        if not enough():
            link = _connect(inst, args, 30.0)
            receiver.link = link
            receiver.flush()  # receipts for the spooled ones, and what the outbox holds
            for group in inst.known_groups():
                join(group)
        idle_since = time.monotonic()
        while not enough():
            if time.monotonic() - refreshed >= _REFRESH_EVERY:  # revocations during a long receive
                _refresh_revocation_list(inst)
                refreshed = time.monotonic()
            wait = 1.0  # flush at least every second: resends and receipts do not wait for traffic
            if args.timeout is not None:
                wait = min(wait, args.timeout - (time.monotonic() - idle_since))
                if wait <= 0:
                    break
            got = _next(link, wait)
            if got is None:
                receiver.flush()
                continue
            group, sender, envelope = got
            if group is None:
                current = (sender, envelope)
                receiver.handle(sender, envelope)
            else:
                current = (inst.group_spool_sender(group), envelope)
                receiver.handle_group(group, envelope)
            current = None
            idle_since = time.monotonic()
            if link.inbox.empty():  # a batch handled: one receipt per sender for all of it
                receiver.flush()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.flush()
        refused = inst.spool([current] if current else [])  # delivered, acknowledged, not handled
        if link is not None:
            link.close()
            refused += inst.spool_rest(link)
        for sender, envelope in refused:
            receiver.failed += 1
            print("e2ee: undecryptable message from %s: Oversize: %d bytes" % (
                _printable(sender), len(envelope)), file=sys.stderr)
        if len(inst.client.keystore.one_time_prekey_publics()) < prekeys:  # new sessions used some
            _replenish(inst)
        inst.save()
    summary = "received %d message(s)" % receiver.printed
    if receiver.duplicates:
        summary += ", %d duplicate(s) skipped" % receiver.duplicates
    if receiver.failed:
        summary += ", %d undecryptable" % receiver.failed
    print("e2ee: " + summary, file=sys.stderr)
    if receiver.failed:  # acknowledged and dropped: they do not come back, so say it in the status
        raise _Failed(4, "%d message(s) could not be decrypted and were dropped" % receiver.failed)
    return None


def _replenish(inst: Any) -> None:
    """New sessions used one-time prekeys: publish new ones when the service asks for them."""
    try:
        if inst.client.inventory().get("replenish"):
            inst.client.upload_prekeys(signed_prekey=False, one_time=_REPLENISH)
    except ApiError as e:
        print("e2ee: warning: one-time prekeys not replenished: %s" % e, file=sys.stderr)


def _dev_up(args: argparse.Namespace) -> Any:
    """`e2ee dev up`: the development broker and service wired together, in the foreground until
    Ctrl-C (or SIGTERM), then both stopped (docs/host-client.md, "A development system")."""
    import signal
    from e2ee_host.devstack import DevStack

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    dev = DevStack(args.dir, port=args.port, broker_port=args.broker_port)
    with dev:
        exports = dev.exports()
        print("e2ee dev up: broker %s:%d (the project's Mosquitto, data in %s), service %s (SQLite, log %s)" % (
            dev.broker.host, dev.broker.port, dev.broker.data_dir, dev.service.url, dev.service.log_file),
            file=sys.stderr)
        print("In another shell (or: . %s):" % (dev.directory / "env"), file=sys.stderr)
        for name, value in exports.items():
            print("export %s=%s" % (name, value), flush=True)
        print("Ctrl-C stops both.", file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(0.5)
                problem = dev.exited()
                if problem is not None:
                    raise _Failed(3, "%s (logs in %s)" % (problem, dev.directory))
        except KeyboardInterrupt:
            pass
    print("e2ee dev up: stopped", file=sys.stderr)
    return None


def _board_backup(args: argparse.Namespace) -> Any:
    from e2ee_host.board_link import backup_board
    stored = backup_board(args.port, args.url, _passphrase(args, confirm=True), progress=_progress(args))
    return stored if args.json else "backup of the board stored: %d bytes" % stored["size"]


def _board_restore(args: argparse.Namespace) -> Any:
    from e2ee_host.board_link import restore_board
    status = restore_board(args.port, args.url, args.device_id, _passphrase(args), progress=_progress(args))
    return status if args.json else "restored %s onto the board at %s (fingerprint %s)" % (
        status["device_id"], args.port, status["fingerprint"])


def _progress(args: argparse.Namespace) -> Any:
    def show(line: str) -> None:
        if not args.json:
            print("  " + line, file=sys.stderr, flush=True)
    return show


def _version() -> str:
    """The installed package's version (its metadata, as `pip show e2ee-iot` reports it)."""
    from importlib import metadata
    try:
        return metadata.version("e2ee-iot")
    except metadata.PackageNotFoundError:
        return "unknown (the e2ee-iot package is not installed; run from a checkout)"


def _global_options(parser: argparse.ArgumentParser, below: bool) -> None:
    """--url, --api-key and --json, on the top parser with their defaults and on every parser below
    it with SUPPRESS: given after the subcommand they set the value, absent they leave the top's."""
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if below else value
    parser.add_argument("--url", default=default(os.environ.get("E2EE_URL", DEFAULT_URL)),
                        help="the provisioning service's URL (default: E2EE_URL or %s)" % DEFAULT_URL)
    parser.add_argument("--api-key", default=default(None), help="operator API key (default: E2EE_API_KEY)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print the result as JSON")


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below `parser`, depth first (each once, though aliases could list it twice)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if sub not in found:
                    found += [sub] + [s for s in _subparsers(sub) if s not in found]
    return found


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="e2ee", description="e2ee-iot: the provisioning service's operator commands, boards, host client "
        "installs and a development system",
        epilog="--url, --api-key and --json go before or after the subcommand. Exit status: 0 done, 1 the service "
        "refused or did not answer, 2 usage or verification error, 3 the board, the install or the broker is "
        "missing, busy or refused. `e2ee COMMAND [ACTION] --help` for each command's options.")
    p.add_argument("--version", action="version", version="%(prog)s " + _version(),
                   help="print the installed e2ee-iot version and exit")
    _global_options(p, below=False)
    groups = p.add_subparsers(dest="group", required=True, metavar="COMMAND", help="what to work on")

    claims = groups.add_parser("claims", help="enrollment claims").add_subparsers(
        dest="command", required=True, metavar="ACTION", help="what to do with claims")
    c = claims.add_parser("create", help="create claim tokens")
    c.add_argument("--fleet", required=True, help="the fleet the claimed devices join")
    c.add_argument("--quota", type=int, default=1, help="enrollments per token (1: single use)")
    c.add_argument("--count", type=int, default=1, help="tokens to create")
    c.add_argument("--expires-in", type=int, default=86_400, help="seconds until the tokens expire (default: a day)")
    c.add_argument("--owner", default="", help="the owner the enrolled devices belong to (for linking)")
    c.add_argument("--role", action="append", default=[], help="role/group for the certificates (repeatable)")
    c.add_argument("--label", default="", help="a note for operators, shown by `claims list`")
    c.add_argument("--require-hardware", action="store_true", help="enrollment must carry hardware evidence")
    c.add_argument("--mqtt", metavar="HOST:PORT", help="zero-touch: each token also a broker credential that may only "
                   "enroll; prints a board claim file per token")
    c.set_defaults(run=_claims_create)
    c = claims.add_parser("list", help="list claims")
    c.add_argument("--fleet", help="only this fleet's claims")
    c.set_defaults(run=_claims_list)
    c = claims.add_parser("revoke", help="revoke a claim: no enrollment spends it from then on")
    c.add_argument("claim_id", type=int, help="the claim's id (`claims list`)")
    c.add_argument("--reason", default="", help="why, kept with the claim")
    c.set_defaults(run=_claims_revoke)

    devices = groups.add_parser("devices", help="enrolled devices").add_subparsers(
        dest="command", required=True, metavar="ACTION", help="what to do with devices")
    d = devices.add_parser("list", help="devices per fleet and owner")
    d.add_argument("--fleet", help="only this fleet's devices")
    d.add_argument("--owner", help="only this owner's devices")
    d.set_defaults(run=_devices_list)
    for name, run, help_text in (("show", _devices_show, "one device"), ("revoke", _devices_revoke, "revoke a device"),
                                 ("clear-lock", _devices_clear_lock,
                                  "clear a registration lock (its PIN and failed attempts)"),
                                 ("unlock-backup", _devices_unlock_backup,
                                  "unlock a device's backup locked after too many wrong passphrases")):
        d = devices.add_parser(name, help=help_text)
        d.add_argument("device_id", help="the device's id")
        if name == "revoke":
            d.add_argument("--reason", default="", help="why, recorded with the revocation")
        d.set_defaults(run=run)

    grp = groups.add_parser("groups", help="group membership on the broker").add_subparsers(
        dest="command", required=True, metavar="ACTION", help="add or remove members")
    for name in ("add", "remove"):
        g = grp.add_parser(name, help="%s members" % name)
        g.add_argument("--fleet", required=True, help="the members' fleet")
        g.add_argument("--group", required=True, help="the group's name (its broker topic)")
        g.add_argument("device_ids", nargs="+", help="the members' device ids")
        g.set_defaults(run=_groups)

    cert = groups.add_parser("cert", help="certificates").add_subparsers(
        dest="command", required=True, metavar="ACTION", help="what to ask about a certificate")
    s = cert.add_parser("status", help="status of a certificate serial (hex)")
    s.add_argument("serial", help="the certificate's serial, 32 hex digits")
    s.set_defaults(run=_cert_status)

    crl = groups.add_parser("crl", help="revocation list").add_subparsers(
        dest="command", required=True, metavar="ACTION", help="what to do with the revocation list")
    s = crl.add_parser("show", help="fetch, verify and print the current revocation list")
    s.add_argument("--ca-keys", help="file of pinned CA public keys (base64 or hex, one per line)")
    s.set_defaults(run=_crl_show)

    f = groups.add_parser("flash", help="copy the SDK (compiled for the board) and an application to a board")
    f.add_argument("--port", required=True, help="serial port of the board (e.g. /dev/ttyUSB0, or a virtual board's)")
    f.add_argument("--app", help="application to install as main.py")
    f.add_argument("--file", action="append", metavar="LOCAL[:BOARD_PATH]",
                   help="another file to copy, e.g. claim.json:e2ee_data/claim.json (repeatable)")
    f.set_defaults(board=_flash)
    f = groups.add_parser("provision", help="make the board's identity on the board and enroll it")
    f.add_argument("--port", required=True, help="serial port of the board")
    f.add_argument("--claim", required=True, help="enrollment claim token")
    f.add_argument("--device-id", required=True, help="the board's device id")
    f.add_argument("--fleet", required=True, help="the fleet the claim is for")
    f.add_argument("--one-time", type=int, default=20, help="one-time prekeys to generate and publish")
    f.add_argument("--force", action="store_true", help="replace an existing identity (re-enrollment)")
    f.set_defaults(board=_provision)
    b = groups.add_parser("board", help="boards").add_subparsers(
        dest="command", required=True, metavar="ACTION", help="what to do with a board")
    v = b.add_parser("virtual", help="run a virtual board (MicroPython unix port behind a pty)")
    v.add_argument("--flash", required=True, help="the board's flash directory")
    v.add_argument("--profile", default="esp32", choices=["esp32", "rp2040", "unix"],
                   help="the board profile: heap size and platform (default: esp32)")
    v.set_defaults(board=_board_virtual)
    for name, run, help_text in (("backup", _board_backup, "back up a board's identity and settings"),
                                 ("restore", _board_restore, "restore a backup onto a fresh board")):
        v = b.add_parser(name, help=help_text)
        v.add_argument("--port", required=True, help="serial port of the board")
        v.add_argument("--passphrase-file", help="backup passphrase (default: E2EE_BACKUP_PASSPHRASE or a prompt)")
        if name == "restore":
            v.add_argument("--device-id", required=True, help="the device id whose backup to restore")
        v.set_defaults(board=run)

    dev = groups.add_parser("dev", help="a development system on this machine").add_subparsers(
        dest="command", required=True, metavar="ACTION", help="what to do with the development system")
    c = dev.add_parser("up", help="start the development broker and service wired together (until Ctrl-C) and "
                       "print what to export")
    c.add_argument("--dir", default="~/.e2ee-dev", help="their data, kept across runs (default: ~/.e2ee-dev)")
    c.add_argument("--port", type=int, default=8000, help="the service's port (default: 8000)")
    c.add_argument("--broker-port", type=int, default=1883, help="the broker's port (default: 1883)")
    c.set_defaults(board=_dev_up)

    client = groups.add_parser("client", help="a host client's install (identity, messages, links, backup)")
    cs = client.add_subparsers(dest="command", required=True, metavar="ACTION", help="what the install does")
    c = cs.add_parser("init", help="make an identity here and enroll it")
    c.add_argument("--device-id", required=True, help="the install's device id")
    c.add_argument("--fleet", required=True, help="the fleet the claim is for")
    c.add_argument("--claim", required=True, help="enrollment claim token")
    c.add_argument("--one-time", type=int, default=20, help="one-time prekeys to generate and publish")
    c.add_argument("--no-broker", action="store_true",
                   help="enroll even though the service gives no broker credentials (linking, backup and the relay "
                   "only; send and receive need `client renew` on a service with a broker)")
    c.set_defaults(board=_client_init)
    cs.add_parser("show", help="this install's identity").set_defaults(board=_client_show)
    c = cs.add_parser("link-qr", help="show this install's QR to be linked by the owner's primary")
    c.add_argument("--png", help="also write the QR code as PNG")
    c.set_defaults(board=_client_link_qr)
    c = cs.add_parser("link-approve", help="as the owner's primary, link the device whose QR payload this is")
    c.add_argument("--qr", required=True, help="the payload the new device shows (E2EE-LINK:...)")
    c.add_argument("--owner", required=True, help="the owner both devices belong to")
    c.set_defaults(board=_client_link_approve)
    c = cs.add_parser("owner-devices", help="the owner's devices")
    c.add_argument("--owner", required=True, help="the owner whose devices to list")
    c.set_defaults(board=_client_owner_devices)
    c = cs.add_parser("revoke-linked", help="revoke one of the owner's devices")
    c.add_argument("--owner", required=True, help="the owner both devices belong to")
    c.add_argument("device_id", help="the device to revoke")
    c.set_defaults(board=_client_revoke_linked)
    c = cs.add_parser("backup", help="seal this install's state under a passphrase and store it")
    c.set_defaults(board=_client_backup)
    c = cs.add_parser("restore", help="restore a backup into a new install")
    c.add_argument("--device-id", required=True, help="the device id whose backup to restore")
    c.set_defaults(board=_client_restore)
    c = cs.add_parser("renew", help="re-enroll this identity: new certificate and MQTT credentials")
    c.add_argument("--claim", required=True, help="enrollment claim token")
    c.set_defaults(board=_client_renew)
    c = cs.add_parser("send", help="encrypt a message to a peer (or every device of an owner) and publish it")
    c.add_argument("peer", nargs="?", help="the peer's device id (not with --owner)")
    c.add_argument("text", help="the message; - reads it from stdin (one trailing newline dropped)")
    c.add_argument("--owner", help="send to every unrevoked device of this owner, each pairwise")
    c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker")
    c = cs.add_parser("group-join", help="subscribe this install to a group's topic (messages wait while offline)")
    c.add_argument("group", help="the group's name")
    c.add_argument("--members", action="append",
                   help="the other members' device ids, comma-separated (remembered): only their sender keys "
                        "are accepted")
    c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker")
    c.set_defaults(board=_client_group_join)
    c = cs.add_parser("group-send", help="publish one Sender Key message to a group")
    c.add_argument("group", help="the group's name")
    c.add_argument("text", help="the message; - reads it from stdin (one trailing newline dropped)")
    c.add_argument("--members", action="append",
                   help="the other members' device ids, comma-separated (remembered; needed the first time; "
                        "a member left out gets no new sender key)")
    c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker")
    c.set_defaults(board=_client_group_send)
    c = cs.add_parser("receive", help="decrypt and print messages from the install's inbox")
    c.add_argument("--timeout", type=float, default=None,
                   help="stop after S seconds without a message (default: run until Ctrl-C or --count)")
    c.add_argument("--count", type=int, default=None, help="stop after N messages")
    c.set_defaults(board=_client_receive)
    cs.choices["send"].set_defaults(board=_client_send)
    for name in ("init", "send", "receive", "renew", "group-join", "group-send"):
        cs.choices[name].add_argument("--broker", help="HOST:PORT instead of the address the service gave")
        cs.choices[name].add_argument("--tls-ca", help="connect to the broker over TLS, trusting this CA file")
    for name, sub in cs.choices.items():
        sub.add_argument("--dir", required=True, help="the install's directory")
        if name in ("send", "receive", "renew", "group-join", "group-send"):
            continue
        sub.add_argument("--yes", action="store_true", help="answer yes to the check-code question")
        sub.add_argument("--timeout", type=float, default=300.0,
                         help="seconds to wait for the other device (linking; default: 300)")
        sub.add_argument("--passphrase-file", help="backup passphrase (default: E2EE_BACKUP_PASSPHRASE or a prompt)")
    for sub in _subparsers(p):
        _global_options(sub, below=True)
    return p


def _refused(e: ApiError) -> str:
    """The line for a service error: no answer at all (status 0) is not a refusal."""
    if isinstance(e, ServiceUnreachable):
        return "e2ee: %s" % e
    return "e2ee: the service refused: %s" % e


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "board", None) is not None:
        return _run_board(args)
    api_key = args.api_key or os.environ.get("E2EE_API_KEY", "")
    if not api_key:
        print("e2ee: an operator API key is needed (--api-key or E2EE_API_KEY)", file=sys.stderr)
        return 2
    with OperatorClient(args.url, api_key) as client:
        try:
            out = args.run(client, args)
        except ApiError as e:
            print(_refused(e), file=sys.stderr)
            return 1
        except certificate.CertificateError as e:
            print("e2ee: verification failed: %s: %s" % (type(e).__name__, e), file=sys.stderr)
            return 2
    print(json.dumps(out, indent=2) if args.json else out)
    return 0


def _run_board(args: argparse.Namespace) -> int:
    from e2ee.protocol import session
    from e2ee.protocol.linking import LinkError
    from e2ee_host.backup import BackupError
    from e2ee_host.board_link import BoardError
    from e2ee_host.install import InstallError
    from e2ee_host.transport import TransportError
    from e2ee.protocol.sender_key import SenderKeyError
    try:
        out = args.board(args)
    except _UsageError as e:
        print("e2ee: %s" % e, file=sys.stderr)
        return 2
    except _Failed as e:
        print("e2ee: %s" % e, file=sys.stderr)
        return e.status
    except (BoardError, InstallError, BackupError, LinkError, TransportError) as e:
        print("e2ee: %s" % e, file=sys.stderr)
        return 3
    except ApiError as e:
        print(_refused(e), file=sys.stderr)
        return 1
    except SenderKeyError as e:  # a group message refused on this side (too long, chain exhausted)
        print("e2ee: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        return 2
    except (certificate.CertificateError, session.PeerRefused) as e:
        peer = getattr(args, "peer", None)
        print("e2ee: %s: %s: %s" % ("refused to talk to %s" % peer if peer else "verification failed", type(e).__name__,
                                    e), file=sys.stderr)
        return 2
    if out is not None:
        print(json.dumps(out, indent=2) if args.json else out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
