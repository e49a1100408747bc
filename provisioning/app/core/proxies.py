"""The client's address behind reverse proxies (docs/provisioning.md, "Replicas"): X-Forwarded-For
is believed only when the TCP peer is a trusted proxy (E2EE_PROV_TRUSTED_PROXIES), and then read
from the right: each trusted proxy appends the address it saw, so the rightmost entry that is not
a trusted proxy is the client; what a client wrote itself sits left of it and is never used.
Rate limits keyed on the address (enrollment, operators' bundle fetches) use this one function.
"""
from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["TrustedProxies"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, networks: tuple[_Network, ...] = ()) -> None:
        self.networks = networks

    @classmethod
    def parse(cls, spec: str) -> TrustedProxies:
        """From E2EE_PROV_TRUSTED_PROXIES: addresses or CIDR networks, comma-separated; ValueError
        names the position of an entry that is neither."""
        networks = []
        for i, part in enumerate(p.strip() for p in spec.split(",")):
            if not part:
                continue
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError("E2EE_PROV_TRUSTED_PROXIES entry %d is not an address or network" % (i + 1)) from None
        return cls(tuple(networks))

    def trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def client_address(self, request: Request) -> str:
        """The TCP peer, or when it is a trusted proxy the rightmost X-Forwarded-For entry that is
        not one (an entry that is no address ends the walk: the last trusted hop is the client)."""
        peer = request.client.host if request.client else "?"
        if not self.networks or not self.trusted(peer):
            return peer
        hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",")]
        client = peer
        for hop in reversed(hops):
            if not self.trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return client
            client = hop
        return client
