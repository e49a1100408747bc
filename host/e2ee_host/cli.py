"""`e2ee`: the operator's command line for the provisioning service (docs/provisioning.md, "CLI").

    e2ee claims create --fleet F [--quota N] [--count N] [--expires-in S] [--owner O] [--role R]...
    e2ee claims list [--fleet F]
    e2ee devices list [--fleet F] [--owner O]
    e2ee devices show DEVICE_ID
    e2ee devices revoke DEVICE_ID [--reason TEXT]
    e2ee devices clear-lock DEVICE_ID
    e2ee cert status SERIAL
    e2ee crl show [--ca-keys FILE]
    e2ee flash --port PORT [--app FILE]
    e2ee provision --port PORT --claim TOKEN --device-id ID --fleet F [--one-time N] [--force]
    e2ee board virtual --flash DIR [--profile esp32|rp2040|unix]

The service address and operator key come from --url / --api-key or E2EE_URL / E2EE_API_KEY
(`flash`, `provision` and `board` need no operator key: a device enrolls with its claim).
`--json` prints the service's answer as JSON. Exit status: 0 done, 1 the service refused (its
reason is printed), 2 usage or verification error, 3 the board is missing, busy or refused.
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
from e2ee_host.client import ApiError, OperatorClient

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8000"


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
    made = client.create_claims(args.fleet, quota=args.quota, count=args.count, expires_in=args.expires_in,
                                owner=args.owner, roles=args.role, label=args.label,
                                require_hardware=args.require_hardware)
    if args.json:
        return {"claims": made.claims, "tokens": made.tokens}
    lines = ["created %d claim(s) for fleet %s, %d enrollment(s) each, expiring %s" % (
        len(made.tokens), args.fleet, args.quota, made.claims[0]["expires_at"])]
    lines.append("tokens (shown once; give each to the device or the factory line):")
    lines += made.tokens
    return "\n".join(lines)


def _claims_list(client: OperatorClient, args: argparse.Namespace) -> Any:
    claims = client.list_claims(args.fleet)
    if args.json:
        return claims
    return _table([[c["id"], c["fleet"], c["owner"] or "-", "%d/%d" % (c["used"], c["quota"]), c["expires_at"],
                    c["label"]] for c in claims], ["id", "fleet", "owner", "used", "expires", "label"])


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
    done = flash(args.port, Path(args.app) if args.app else None, progress=_progress(args))
    return done if args.json else "flashed %(files)d files (%(bytes)d bytes) to %(port)s" % dict(done, port=args.port)


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
        print("virtual %s board on %s (flash %s, heap %s); Ctrl-C powers it off" % (
            board.profile.name, board.port, args.flash, board.heap), flush=True)
        try:
            while board.running:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return "virtual board powered off"


def _progress(args: argparse.Namespace) -> Any:
    def show(line: str) -> None:
        if not args.json:
            print("  " + line, file=sys.stderr, flush=True)
    return show


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="e2ee", description="e2ee-iot operator commands (provisioning service)")
    p.add_argument("--url", default=os.environ.get("E2EE_URL", DEFAULT_URL), help="service URL (E2EE_URL)")
    p.add_argument("--api-key", default=None, help="operator API key (default: E2EE_API_KEY)")
    p.add_argument("--json", action="store_true", help="print JSON")
    groups = p.add_subparsers(dest="group", required=True)

    claims = groups.add_parser("claims", help="enrollment claims").add_subparsers(dest="command", required=True)
    c = claims.add_parser("create", help="create claim tokens")
    c.add_argument("--fleet", required=True)
    c.add_argument("--quota", type=int, default=1, help="enrollments per token (1: single use)")
    c.add_argument("--count", type=int, default=1, help="tokens to create")
    c.add_argument("--expires-in", type=int, default=86_400, help="seconds")
    c.add_argument("--owner", default="")
    c.add_argument("--role", action="append", default=[], help="role/group for the certificates (repeatable)")
    c.add_argument("--label", default="")
    c.add_argument("--require-hardware", action="store_true", help="enrollment must carry hardware evidence")
    c.set_defaults(run=_claims_create)
    c = claims.add_parser("list", help="list claims")
    c.add_argument("--fleet")
    c.set_defaults(run=_claims_list)

    devices = groups.add_parser("devices", help="enrolled devices").add_subparsers(dest="command", required=True)
    d = devices.add_parser("list", help="devices per fleet and owner")
    d.add_argument("--fleet")
    d.add_argument("--owner")
    d.set_defaults(run=_devices_list)
    for name, run, help_text in (("show", _devices_show, "one device"), ("revoke", _devices_revoke, "revoke a device"),
                                 ("clear-lock", _devices_clear_lock, "clear a registration lock")):
        d = devices.add_parser(name, help=help_text)
        d.add_argument("device_id")
        if name == "revoke":
            d.add_argument("--reason", default="")
        d.set_defaults(run=run)

    cert = groups.add_parser("cert", help="certificates").add_subparsers(dest="command", required=True)
    s = cert.add_parser("status", help="status of a certificate serial (hex)")
    s.add_argument("serial")
    s.set_defaults(run=_cert_status)

    crl = groups.add_parser("crl", help="revocation list").add_subparsers(dest="command", required=True)
    s = crl.add_parser("show", help="fetch, verify and print the current revocation list")
    s.add_argument("--ca-keys", help="file of pinned CA public keys (base64 or hex, one per line)")
    s.set_defaults(run=_crl_show)

    f = groups.add_parser("flash", help="copy the SDK (compiled for the board) and an application to a board")
    f.add_argument("--port", required=True, help="serial port of the board (e.g. /dev/ttyUSB0, or a virtual board's)")
    f.add_argument("--app", help="application to install as main.py")
    f.set_defaults(board=_flash)
    f = groups.add_parser("provision", help="make the board's identity on the board and enroll it")
    f.add_argument("--port", required=True)
    f.add_argument("--claim", required=True, help="enrollment claim token")
    f.add_argument("--device-id", required=True)
    f.add_argument("--fleet", required=True)
    f.add_argument("--one-time", type=int, default=20, help="one-time prekeys to generate and publish")
    f.add_argument("--force", action="store_true", help="replace an existing identity (re-enrollment)")
    f.set_defaults(board=_provision)
    b = groups.add_parser("board", help="boards").add_subparsers(dest="command", required=True)
    v = b.add_parser("virtual", help="run a virtual board (MicroPython unix port behind a pty)")
    v.add_argument("--flash", required=True, help="the board's flash directory")
    v.add_argument("--profile", default="esp32", choices=["esp32", "rp2040", "unix"])
    v.set_defaults(board=_board_virtual)
    return p


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
            print("e2ee: the service refused: %s" % e, file=sys.stderr)
            return 1
        except certificate.CertificateError as e:
            print("e2ee: verification failed: %s: %s" % (type(e).__name__, e), file=sys.stderr)
            return 2
    print(json.dumps(out, indent=2) if args.json else out)
    return 0


def _run_board(args: argparse.Namespace) -> int:
    from e2ee_host.board_link import BoardError
    try:
        out = args.board(args)
    except BoardError as e:
        print("e2ee: %s" % e, file=sys.stderr)
        return 3
    except ApiError as e:
        print("e2ee: the service refused: %s" % e, file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2) if args.json else out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
