"""What the service asks of the MQTT broker (docs/provisioning.md, "MQTT credentials"): create a
device's broker client with its password and per-device role at enrollment, disable it (and
disconnect a live session) at revocation. The Mosquitto dynamic-security implementation lives in
e2ee_host.broker; create_app(broker=None) runs without a broker and issues no MQTT credentials.
"""
from __future__ import annotations

from typing import Protocol

__all__ = ["BrokerAdmin", "BrokerError"]


class BrokerError(Exception):
    """The broker refused or did not answer a control command."""


class BrokerAdmin(Protocol):
    def provision_device(self, fleet: str, device_id: str, password: str) -> None:
        """Creates (or resets) the device's client with this password and its role."""

    def revoke_device(self, device_id: str) -> None:
        """Disables the device's client: refused from now on, a live session is disconnected."""

    def publish_revocation_list(self, fleet: str, data: bytes) -> None:
        """Publishes the signed revocation list, retained, on the fleet's topic."""

    def provision_claim(self, fleet: str, claim_id: int, token: str) -> None:
        """Creates the claim's broker credential (username claim:<id>, the token as password) that
        may only use its own enroll topics (zero-touch enrollment, api/channel.py)."""

    def remove_claim(self, fleet: str, claim_id: int) -> None:
        """Deletes the claim's credential (a live connection is ended); one that does not exist
        is no error."""
