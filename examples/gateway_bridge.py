"""A gateway that bridges sensor messages to a local service: every message its install receives
(pairwise or from a group) is POSTed as JSON to a local HTTP endpoint, and acknowledged only once
the endpoint answered 2xx. While the endpoint is down the messages stay in the install's inbox
(retried with backoff, and after a restart of the gateway): nothing received is lost.

    e2ee client init --dir ~/gw1 --device-id gw-1 --fleet plant-north --claim TOKEN
    python examples/gateway_bridge.py --dir ~/gw1 --post http://127.0.0.1:9000/readings

Each POST body: {"from": "sensor-3", "group": null, "id": 17, "received_at": 1767225600,
"text": "21.5 C"} ("hex" instead of "text" for bytes that are not UTF-8). The endpoint should
treat "id" with "from" as an idempotency key: a crash between its answer and the acknowledgement
hands the same message over again. Stops at Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import httpx

from e2ee_host import Client, Message

log = logging.getLogger("gateway_bridge")
MAX_BACKOFF = 30.0  # seconds between attempts while the endpoint fails


def body(msg: Message) -> dict[str, Any]:
    """The JSON the local service gets for one message."""
    out: dict[str, Any] = {"from": msg.sender, "group": msg.group, "id": msg.id, "received_at": msg.received_at}
    try:
        out["text"] = msg.data.decode()
    except UnicodeDecodeError:
        out["hex"] = msg.data.hex()
    return out


def forward(http: httpx.Client, url: str, msg: Message) -> bool:
    """POSTs one message; True when the endpoint took it (2xx)."""
    try:
        r = http.post(url, json=body(msg))
    except httpx.HTTPError as e:
        log.warning("message %d not forwarded: %s", msg.id, type(e).__name__)
        return False
    if not r.is_success:
        log.warning("message %d not forwarded: HTTP %d", msg.id, r.status_code)
    return r.is_success


def run(client: Client, url: str) -> None:
    """Forwards messages until interrupted; a message is acknowledged only after its POST."""
    backoff = 0.5
    with httpx.Client(timeout=10) as http:
        for msg in client.receive():
            while not forward(http, url, msg):  # in order: the next one waits for this one
                client.pump(backoff)  # receipts and resends go on meanwhile
                backoff = min(backoff * 2, MAX_BACKOFF)
            backoff = 0.5
            msg.ack()
            log.info("forwarded message %d from %s", msg.id, msg.sender)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="the gateway's install (e2ee client init)")
    p.add_argument("--post", required=True, help="the local endpoint each message is POSTed to")
    p.add_argument("--broker", help="HOST:PORT instead of the address the service gave")
    p.add_argument("--tls-ca", help="connect to the broker over TLS, trusting this CA file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with Client.open(args.dir, args.broker, args.tls_ca) as client:
        print("gateway %s: forwarding to %s" % (client.device_id, args.post), flush=True)
        try:
            run(client, args.post)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
