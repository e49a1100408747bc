"""Flashing and provisioning a board over its serial port with mpremote's transport (the raw
REPL, without a soft reset), for real boards and virtual ones alike (docs/boards.md).

    flash(port, app=Path("firmware/examples/app.py"))       # SDK as .mpy into lib/, app as main.py
    provision(port, url, token, "pump-1", "plant-north")     # keys made on the board, enrollment

Errors are `BoardError` subclasses with what to do: `BoardMissing` (no such port), `BoardBusy`
(the port answers nothing a REPL would, or another program holds it), `AlreadyEnrolled`,
`BoardFailed` (code on the board raised; its last traceback line is kept).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from e2ee_host import micropython as e2ee_micropython

__all__ = ["AlreadyEnrolled", "BoardBusy", "BoardError", "BoardFailed", "BoardLink", "BoardMissing", "backup_board",
           "flash", "provision", "restore_board"]

Progress = Callable[[str], None]


class BoardError(RuntimeError):
    pass


class BoardMissing(BoardError):
    pass


class BoardBusy(BoardError):
    pass


class BoardFailed(BoardError):
    pass


class AlreadyEnrolled(BoardError):
    pass


# Drops the SDK modules earlier calls imported and collects, before the next call imports its own.
_FRESH = ("import sys, gc\nfor _m in [m for m in sys.modules if m == 'e2ee' or m.startswith('e2ee.')]:\n"
          "    del sys.modules[_m]\ngc.collect()\n")


# Where the enrollment answer waits on the board until provision.install() stores it encrypted.
_ENROLLMENT_FILE = "e2ee_data/enrollment.json"


def _quiet(_: str) -> None:
    pass


class BoardLink:
    """One raw-REPL connection to a board (no soft reset: what runs on the board keeps its state)."""

    def __init__(self, port: str, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self._transport: Any = None

    def __enter__(self) -> BoardLink:
        if not os.path.exists(self.port):
            raise BoardMissing("no board at %s: is it plugged in (or the virtual board running)?" % self.port)
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport
        try:
            # timeout: a read gives up after 1 s, so a silent port ends in our timeout, not a hang
            self._transport = SerialTransport(self.port, baudrate=115200, timeout=1)
        except TransportError as e:
            raise BoardBusy("cannot open %s (another program may hold it): %s" % (self.port, e)) from None
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # mpremote prints what it read on failure
                self._transport.enter_raw_repl(soft_reset=False, timeout_overall=self.timeout)
        except TransportError:
            self._transport.close()
            raise BoardBusy("the board at %s does not answer with a REPL within %.0f s: it may be busy running "
                            "an application (press reset) or powered off" % (self.port, self.timeout)) from None
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._transport.exit_raw_repl()
        finally:
            self._transport.close()

    def exec(self, code: str, timeout: float | None = None) -> str:
        from mpremote.transport import TransportError, TransportExecError
        try:
            out = self._transport.exec_raw(code, timeout=timeout or 60)
        except TransportError as e:
            raise BoardBusy("the board stopped answering: %s" % e) from None
        stdout, stderr = out
        if stderr:
            lines = stderr.decode(errors="replace").strip().splitlines()
            raise BoardFailed("the board raised: %s" % (lines[-1] if lines else "an error"))
        return stdout.decode(errors="replace")  # type: ignore[no-any-return]

    def call(self, expression: str, timeout: float | None = None) -> Any:
        """Runs `print(<expression>)` on the board with the SDK freshly imported (modules an earlier
        call loaded are dropped first, so a 120 KB heap holds what this call needs); parses the
        JSON it prints."""
        out = self.exec(_FRESH + "print(%s)" % expression, timeout)
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BoardFailed("unexpected answer from the board: %r" % out[-200:]) from None

    def mkdir(self, path: str) -> None:
        self.exec("import os\ntry:\n os.mkdir(%r)\nexcept OSError:\n pass" % path)

    def put(self, data: bytes, path: str) -> None:
        self._transport.fs_writefile(path, data)

    def arch(self) -> str | None:
        """The -march of the native code the board loads (from sys.implementation._mpy); None
        when it loads bytecode only (a port built without native code)."""
        mpy = int(self.exec("import sys\nprint(sys.implementation._mpy)").strip())
        return e2ee_micropython.arch_of(mpy) if (mpy >> 10) & 0x3F else None

    def has_module(self, name: str) -> bool:
        """True when the board's firmware imports `name` (a built-in such as _e2ee_crypto)."""
        return self.exec("try:\n import %s\n print(1)\nexcept ImportError:\n print(0)" % name).strip() == "1"


def upload_prekeys(board: BoardLink, service: Any, device_id: str, *, signed_prekey: bool = False,
                   new: int = 0) -> dict[str, Any]:
    """Publishes the board's unpublished one-time prekeys (generating `new` first), in batches
    the board signs; returns the service's inventory."""
    inventory: dict[str, Any] = {}
    last_ts = 0
    while True:
        ts = max(int(time.time()), last_ts + 1)
        last_ts = ts
        signed = board.call("__import__('e2ee.provision').provision.prekeys('/keys', %d, %r, %d)" % (
            ts, signed_prekey, new), timeout=120)
        new = 0
        if signed["count"] == 0 and not signed_prekey:
            return inventory
        inventory = service.call("POST", "/keys", content=signed["body"].encode(), headers={
            "Content-Type": "application/json", "X-E2EE-Device": device_id, "X-E2EE-Timestamp": str(signed["ts"]),
            "X-E2EE-Signature": signed["signature"]})
        board.call("__import__('e2ee.provision').provision.uploaded(%d)" % signed["last_opk"])
        signed_prekey = False
        if signed["count"] == 0:
            return inventory


def flash(port: str, app: Path | None = None, *, progress: Progress = _quiet, source: Path | None = None,
          files: list[tuple[Path, str]] | None = None) -> dict[str, int]:
    """Compiles the SDK for the board's architecture and copies it to lib/ (and `app` to
    main.py): no host-only module, and of the crypto backends only the one the board runs
    (micropython.board_backend: none with the C module, viper where native code loads, else
    pure). `files`: more (local file, board path) pairs, e.g. a claim file to
    e2ee_data/claim.json; their directories are made. Returns {"files": n, "bytes": total,
    "backend": "viper" | "pure" | "c"}."""
    with BoardLink(port) as board:
        arch = board.arch()
        backend = e2ee_micropython.board_backend(arch, board.has_module("_e2ee_crypto"))
        progress("board at %s runs %s code; compiling the SDK with the %s crypto backend" % (
            port, arch or "bytecode-only", backend or "C module's"))
        with tempfile.TemporaryDirectory() as tmp:
            image = e2ee_micropython.compile_board_image(Path(tmp), arch, backend,
                                                         **({"source": source} if source else {}))
            dirs = sorted({str(f.parent.relative_to(tmp)) for f in image})
            board.mkdir("lib")
            for d in dirs:
                parts = Path(d).parts
                for i in range(1, len(parts) + 1):
                    board.mkdir("lib/" + "/".join(parts[:i]))
            total = 0
            for i, f in enumerate(image, 1):
                rel = f.relative_to(tmp).as_posix()
                data = f.read_bytes()
                board.put(data, "lib/" + rel)
                total += len(data)
                progress("[%d/%d] lib/%s (%d bytes)" % (i, len(image), rel, len(data)))
        if app is not None:
            data = app.read_bytes()
            board.put(data, "main.py")
            total += len(data)
            progress("main.py (%d bytes) from %s" % (len(data), app))
        for local, target in files or ():
            parts = Path(target).parts
            for i in range(1, len(parts)):
                board.mkdir("/".join(parts[:i]))
            data = local.read_bytes()
            board.put(data, target)
            total += len(data)
            progress("%s (%d bytes) from %s" % (target, len(data), local))
        # what the board sees now: the SDK imports from lib/
        board.exec("import e2ee.board")
    count = len(image) + (app is not None) + len(files or ())
    progress("flashed %d files, %d bytes" % (count, total))
    return {"files": count, "bytes": total, "backend": backend or "c"}


def provision(port: str, url: str, token: str, device_id: str, fleet: str, *, one_time: int = 20,
              force: bool = False, progress: Progress = _quiet, trusted_keys: list[bytes] | None = None) -> dict[str, Any]:
    """Generates the identity on the board, enrolls it with proof of possession (the board signs
    the service's challenge), stores the result on the board and publishes its prekeys."""
    from e2ee_host.client import ServiceClient
    service = ServiceClient(url)
    with BoardLink(port, timeout=15) as board:
        status = board.call("__import__('e2ee.provision').provision.status()")
        if status["enrolled"] and not force:
            raise AlreadyEnrolled("the board is already enrolled as %s (use --force to enroll it again with "
                                  "new keys)" % status["device_id"])
        progress("generating identity keys on the board (they never leave it)")
        public = board.call("__import__('e2ee.provision').provision.generate(%d, %r)" % (one_time, force),
                            timeout=120)
        progress("identity fingerprint %s" % public["fingerprint"])
        try:
            challenge = base64.b64decode(service.call("POST", "/enroll/challenge")["challenge"])
            progress("the board signs the service's challenge (proof of possession)")
            fields = board.call("__import__('e2ee.provision').provision.prove(%r, %r, %r, %r)" % (
                challenge.hex(), token, device_id, fleet), timeout=60)
            body = {"claim_token": token, "challenge": base64.b64encode(challenge).decode(), "device_id": device_id,
                    "fleet": fleet, **fields}
            result = service.call("POST", "/enroll", headers={"Content-Type": "application/json"},
                                   content=json.dumps(body).encode())
            if trusted_keys is not None and not set(trusted_keys) <= {base64.b64decode(k) for k in result["ca_keys"]}:
                raise BoardError("the service's CA keys differ from the pinned ones")
            progress("enrolled: certificate %s; storing it on the board" % result["serial"])
            doc = dict(result, service=url, now=int(time.time()))
            board.put(json.dumps(doc).encode(), _ENROLLMENT_FILE)
            installed = board.call("__import__('e2ee.provision').provision.install(%r)" % _ENROLLMENT_FILE,
                                   timeout=60)
            inventory = upload_prekeys(board, service, device_id, signed_prekey=True)
            progress("published the signed prekey and %d one-time prekeys" % inventory["one_time_prekeys"])
        finally:
            service.close()
    return {**installed, "fingerprint": public["fingerprint"], "one_time_prekeys": inventory["one_time_prekeys"]}


# --- host-assisted backup of a board (docs/backup.md) -----------------------------------------

_TRANSFER_FILE = "e2ee_data/transfer.bin"


def _agent(expression: str) -> str:
    return "__import__('e2ee.provision').provision." + expression


def backup_board(port: str, url: str, passphrase: str, *, params: Any = None,
                 progress: Progress = _quiet) -> dict[str, Any]:
    """Reads the board's records over the provisioning link, seals them here with Argon2id (the
    host's parameters: the board cannot afford them) and stores the blob with a request the
    board signs. Returns the service's answer (size, parameters)."""
    from e2ee_host import backup
    from e2ee_host.client import ServiceClient
    with BoardLink(port, timeout=15) as board:
        names = board.call(_agent("records()"))
        records = [(kind, name, bytes.fromhex(board.call(_agent("record(%r, %r)" % (kind, name)))))
                   for kind, name in names]
        progress("read %d records from the board" % len(records))
        blob, auth = backup.seal(backup.archive_of(records), passphrase, params or backup.HOST_PARAMS)
        progress("sealed %d bytes on this host (Argon2id + ChaCha20-Poly1305)" % len(blob))
        body = hashlib.sha256(auth).digest() + blob
        board.put(body, _TRANSFER_FILE)
        ts = int(time.time())
        status = board.call(_agent("status()"))
        path = "/backups/%s" % status["device_id"]
        signed = board.call(_agent("sign_request('PUT', %r, %d, %r)" % (path, ts, _TRANSFER_FILE)), timeout=120)
    service = ServiceClient(url)
    try:
        return service.call("PUT", path, content=body, headers={  # type: ignore[no-any-return]
            "Content-Type": "application/octet-stream", "X-E2EE-Device": signed["device_id"],
            "X-E2EE-Timestamp": str(signed["ts"]), "X-E2EE-Signature": signed["signature"]})
    finally:
        service.close()


def restore_board(port: str, url: str, device_id: str, passphrase: str, *, floor: Any = None,
                  progress: Progress = _quiet) -> dict[str, Any]:
    """Fetches and opens the device's backup here, then writes its records onto a replacement
    board that has no identity yet, under that board's own storage key: identity, settings and
    trust, never session state (docs/backup.md, "Never restored"). The Argon2id parameters are
    never below `floor` (default: the host parameters board backups are sealed with), whatever
    the service says (backup.WeakKdfParams)."""
    import base64 as b64

    from e2ee_host import backup
    from e2ee_host.client import ServiceClient
    service = ServiceClient(url)
    try:
        p = service.backup_params(device_id)
        kdf = backup.KdfParams(p["memory_kib"], p["iterations"], p["lanes"])
        floor = floor or backup.HOST_PARAMS
        token = backup.auth_token(b64.b64decode(p["salt"]), kdf, passphrase, floor)
        blob = service.fetch_backup(device_id, token)
    finally:
        service.close()
    records = backup.restorable(backup.records_of(backup.open_blob(blob, passphrase, floor)))
    with BoardLink(port, timeout=15) as board:
        if board.call(_agent("status()"))["identity"]:
            raise AlreadyEnrolled("the board already has an identity: restore onto a fresh board")
        for kind, name, data in records:
            board.put(data, _TRANSFER_FILE)
            board.call(_agent("put_record(%r, %r, %r)" % (kind, name, _TRANSFER_FILE)))
        progress("wrote %d records to the board" % len(records))
        return board.call(_agent("status()"))  # type: ignore[no-any-return]


# --- a board as the owner's primary in QR linking (docs/linking.md) ----------------------------

def _board_signed(board: BoardLink, service: Any, method: str, path: str, body: bytes = b"") -> Any:
    """A request the board signs (the body travels to it as a file)."""
    board.put(body, _TRANSFER_FILE)
    signed = board.call(_agent("sign_request(%r, %r, %d, %r)" % (method, path, int(time.time()), _TRANSFER_FILE)),
                        timeout=120)
    headers = {"X-E2EE-Device": signed["device_id"], "X-E2EE-Timestamp": str(signed["ts"]),
               "X-E2EE-Signature": signed["signature"]}
    if body:
        headers["Content-Type"] = "application/json"
    return service.call(method, path, content=body or None, headers=headers)


def approve_link_from_board(port: str, url: str, payload: str, owner: str, *, confirm: Callable[[str], bool],
                            timeout: float = 120.0, progress: Progress = _quiet) -> dict[str, Any]:
    """The linking primary's side run by a board: it checks the QR fingerprint against the new
    device's certificate with the CA keys it holds, derives the channel and the check code, and
    signs the approval; the host only carries bytes (rendezvous, service)."""
    from e2ee.protocol import certificate, keys, linking
    from e2ee_host.client import ServiceClient
    from e2ee_host.linking import LinkRefused, answer_consent, fetch_slot, put_slot
    offer = linking.Offer.parse(payload)
    service = ServiceClient(url)
    try:
        with BoardLink(port, timeout=15) as board:
            device = json.loads(bytes.fromhex(board.call(_agent("record('config', 'device')"))))
            trusted = [base64.b64decode(k) for k in device["ca_keys"]]
            ident = _board_signed(board, service, "GET", "/identities/%s" % offer.device_id)
            cert = certificate.verify_certificate(base64.b64decode(ident["certificate"]), trusted, int(time.time()))
            if cert.device_id != offer.device_id or keys.fingerprint(
                    cert.identity_dh, cert.identity_sign) != offer.fingerprint:
                raise LinkRefused("the QR code's fingerprint does not match %s's certified identity" % offer.device_id)
            status = board.call(_agent("status()"))
            hello = json.dumps({"owner": owner, "primary": status["device_id"], "fingerprint": status["fingerprint"]})
            made = _board_channel(board, payload, hello)  # the channel stays in the board's RAM
            put_slot(service, offer.rendezvous(), "offer", bytes.fromhex(made["message"]))
            progress("check code on the board: %s" % made["code"])
            if not confirm(made["code"]):
                raise LinkRefused("the check codes differ: someone else answered the QR code")
            answer_data = fetch_slot(service, offer.rendezvous(), "answer", timeout)
            answer = json.loads(bytes.fromhex(board.call("__import__('json').dumps(_e2ee_link.open_answer(%r).hex())"
                                                         % answer_data)))
            consent = answer_consent(answer, offer)
            signature = board.call(_agent("sign_approval(%r, %r, %r)" % (owner, offer.device_id, offer.fingerprint.hex())))
            body = json.dumps({"owner": owner, "device_id": offer.device_id,
                               "fingerprint": base64.b64encode(offer.fingerprint).decode(),
                               "approval": signature, "consent": consent})
            result = _board_signed(board, service, "POST", "/links", body.encode())
    finally:
        service.close()
    return {**result, "check_code": made["code"]}


def _board_channel(board: BoardLink, payload: str, hello: str) -> dict[str, Any]:
    """Runs Channel.for_primary on the board; the channel stays in its REPL as _e2ee_link."""
    out = board.exec(
        "import json\nfrom e2ee.protocol import linking as _l\n"
        "_o = _l.Offer.parse(%r)\n_e2ee_link, _pub = _l.Channel.for_primary(_o)\n"
        "print(json.dumps({'message': (bytes(_pub) + _e2ee_link.seal_offer(%r.encode())).hex(),"
        " 'code': _e2ee_link.check_code}))" % (payload, hello), timeout=60)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]
