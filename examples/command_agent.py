"""A microservice agent: it receives commands from the devices of its fleet, runs them and sends
each answer back to the command's sender, end-to-end encrypted. A command is acknowledged once
its answer is in the outbox (on disk, resent until the sender's receipt), so a crash never loses
a command or its answer.

    e2ee client init --dir ~/agent --device-id agent-1 --fleet plant-north --claim TOKEN
    python examples/command_agent.py --dir ~/agent

Commands (UTF-8 text): "ping" -> "pong"; "echo TEXT" -> "TEXT"; "sum A B ..." -> the sum;
"time" -> the agent's Unix time; anything else -> "error: unknown command ...". Stops at Ctrl-C
or SIGTERM.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from typing import Any

from e2ee_host import Client, Message

log = logging.getLogger("command_agent")


def answer(command: str) -> str:
    """The answer to one command line."""
    name, _, rest = command.strip().partition(" ")
    if name == "ping":
        return "pong"
    if name == "echo":
        return rest
    if name == "time":
        return str(int(time.time()))
    if name == "sum":
        try:
            return str(sum(float(x) for x in rest.split()))
        except ValueError:
            return "error: sum takes numbers"
    return "error: unknown command %r" % name[:32]


def handle(client: Client, msg: Message) -> None:
    """Answers one command (group messages are not commands: acknowledged, not answered)."""
    if msg.group is None:
        try:
            reply = answer(msg.data.decode())
        except UnicodeDecodeError:
            reply = "error: commands are UTF-8 text"
        out = client.send(msg.sender, reply.encode())
        log.info("command %d from %s answered (message %d, %s)", msg.id, msg.sender, out.id, out.status)
    msg.ack()  # after the answer is in the outbox


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="the agent's install (e2ee client init)")
    p.add_argument("--broker", help="HOST:PORT instead of the address the service gave")
    p.add_argument("--tls-ca", help="connect to the broker over TLS, trusting this CA file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with Client.open(args.dir, args.broker, args.tls_ca) as client:
        print("agent %s: ready" % client.device_id, flush=True)
        try:
            for msg in client.receive():
                handle(client, msg)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
