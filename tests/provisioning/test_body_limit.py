"""Request body caps (core/bodylimit.py, audit finding 9), against the service under uvicorn on both
engines: raw sockets speak HTTP/1.1 so the tests see what the server reads, which an in-process
client (it hands the app the whole body at once) cannot show.

Every route of the OpenAPI schema is tried with its path parameters filled in: a declared
Content-Length over the cap is answered 413 before a byte of the body is sent; a chunked body is
answered (413, or the route's own answer with `Connection: close` when it never reads its body)
once the cap is passed, not after the end of the body; bodies within the caps still pass; a
256 MiB chunked body is refused after a small fraction of it was read.
"""
from __future__ import annotations

import base64
import hashlib
import json
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from service_support import TestDevice

from e2ee_host import backup

CHUNK = 16 * 1024
# What may sit in socket buffers between the client's count and the server's reads on loopback
# (client send buffer pinned small below, server receive buffer autotuned up to a few MiB).
SLACK = 8 * 1024 * 1024
PATH_VALUES = {"device_id": "nobody-1", "channel": "0" * 32, "slot": "offer", "serial": "00" * 16,
               "fleet": "plant-north", "group": "g1", "owner": "o1", "claim_id": "1"}
FAST = backup.KdfParams(8 * 1024, 1, 1)  # tests only


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # path parameters filled in
    cap: int
    json_body: bool  # the schema declares a request body

    def __str__(self) -> str:
        return "%s %s" % (self.method, self.path)


def routes(live_server) -> list[Route]:  # type: ignore[no-untyped-def]
    """Every operation of the service's OpenAPI schema, with the cap that applies to it."""
    settings = live_server.app.state.settings
    out = []
    for template, operations in live_server.app.openapi()["paths"].items():
        path = template.format(**PATH_VALUES)
        for method, operation in operations.items():
            big = method == "put" and template == "/backups/{device_id}"
            cap = settings.max_backup_bytes if big else settings.max_upload_bytes
            out.append(Route(method.upper(), path, cap, "requestBody" in operation))
    assert len(out) > 30
    return out


def _connect(url: str) -> socket.socket:
    host, port = url.rsplit("/", 1)[1].split(":")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    s.connect((host, int(port)))
    return s


def _head(route: Route, framing: str) -> bytes:
    return ("%s %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n%s\r\n\r\n"
            % (route.method, route.path, framing)).encode()


def _response(s: socket.socket, timeout: float) -> tuple[int, dict[str, str]] | None:
    """The status and headers of the answer, None when none comes within `timeout`."""
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            piece = s.recv(65536)
            if not piece:
                break
            data += piece
    except (TimeoutError, ConnectionResetError):
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return None
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip().lower() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers


def _closed_by_server(s: socket.socket) -> bool:
    """The server closed the connection (a reset counts: it closed with body bytes unread)."""
    s.settimeout(5)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_finding9_declared_oversized_bodies_are_refused_unread(
        live_server) -> None:  # type: ignore[no-untyped-def]
    # request line and headers with Content-Length: cap + 1, no body byte sent: the answer is a
    # 413 with Connection: close, and the server closes instead of waiting for the body
    wrong = []
    for route in routes(live_server):
        with _connect(live_server.url) as s:
            s.sendall(_head(route, "Content-Length: %d" % (route.cap + 1)))
            answer = _response(s, timeout=3)
            if answer is None or answer[0] != 413 or answer[1].get("connection") != "close" \
                    or not _closed_by_server(s):
                wrong.append("%s: %s" % (route, answer and answer[0]))
    assert not wrong, wrong


def test_finding9_chunked_bodies_stop_at_the_cap(live_server) -> None:  # type: ignore[no-untyped-def]
    # a chunked body sent as long as the server reads it (never its last chunk): the answer comes
    # once the cap is passed (413 where the route reads its body; the route's own answer with
    # Connection: close where it does not), the server closes, and it read at most the cap plus
    # what the socket buffers hold
    wrong = []
    chunk = b"%x\r\n" % CHUNK + b"7" * CHUNK + b"\r\n"
    for route in routes(live_server):
        with _connect(live_server.url) as s:
            s.sendall(_head(route, "Transfer-Encoding: chunked"))
            sent = 0
            while sent <= route.cap + SLACK:
                readable, writable, _ = select.select([s], [s], [], 3)
                if readable or not writable:
                    break  # answered, or the server stopped reading
                try:
                    s.sendall(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += CHUNK
            answer = _response(s, timeout=3)
            ok = (answer is not None and answer[1].get("connection") == "close" and sent <= route.cap + SLACK
                  and (answer[0] == 413 or not route.json_body) and _closed_by_server(s))
            if not ok:
                wrong.append("%s: %s after %d bytes" % (route, answer and answer[0], sent))
    assert not wrong, wrong


def _chunks(data: bytes, size: int = 8192) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_finding9_bodies_within_the_caps_pass(live_server) -> None:  # type: ignore[no-untyped-def]
    settings = live_server.app.state.settings
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        dev = TestDevice("cap-dev-1", one_time=100)
        dev.register(client)
        # 100 one-time prekeys (the largest upload, ~9 KB), chunked
        body = dev.upload_body()
        assert len(body) < settings.max_upload_bytes
        headers = {"Content-Type": "application/json", **dev.headers("POST", "/keys", body)}
        r = client.post("/keys", content=_chunks(body), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["one_time_prekeys"] == 100
        # a backup blob of the largest size, chunked: 128 times the default cap, within the backup's
        archive = b"\x00" * (backup.MAX_BLOB - 61)
        blob, auth = backup.seal(archive, "pass phrase 1", FAST)
        assert len(blob) == backup.MAX_BLOB
        body = hashlib.sha256(auth).digest() + blob
        assert settings.max_upload_bytes < len(body) <= settings.max_backup_bytes
        path = "/backups/%s" % dev.device_id
        headers = {"Content-Type": "application/octet-stream", **dev.headers("PUT", path, body)}
        r = client.put(path, content=_chunks(body, 65536), headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["size"] == len(blob)
        # and the same with a declared length
        headers = {"Content-Type": "application/octet-stream", **dev.headers("PUT", path, body)}
        assert client.put(path, content=body, headers=headers).status_code == 200
        r = client.post(path + "/fetch", json={"auth": base64.b64encode(auth).decode()})
        assert r.status_code == 200 and r.content == blob


@pytest.mark.parametrize("path", ["/backups/nobody-1/fetch", "/claims", "/enroll"])
def test_finding9_a_huge_chunked_body_is_refused_unbuffered(
        live_server, path: str) -> None:  # type: ignore[no-untyped-def]
    # 256 MiB offered to an unauthenticated (or operator) route: the client's generator is drawn
    # only while the server reads, so what it handed out bounds what the server read
    total = 256 * 1024 * 1024
    piece = json.dumps({"auth": "A" * 1000}).encode()[:1] + b" " * (64 * 1024 - 1)
    handed = 0

    def body() -> Iterator[bytes]:
        nonlocal handed
        while handed < total:
            handed += len(piece)
            yield piece

    started = time.monotonic()
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        r = client.post(path, content=body(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.headers["connection"] == "close"
    cap = live_server.app.state.settings.max_upload_bytes
    assert handed <= cap + SLACK, "the server read %d bytes of %d" % (handed, total)
    print("%s: 413 after the client handed out %d of %d bytes (%.2f s)" % (
        path, handed, total, time.monotonic() - started))
