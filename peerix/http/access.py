"""Who may ask what over HTTP.

The substituter routes reach into the peer network on the caller's behalf, so they answer only
clients from `trusted networks` (loopback by default): a host never becomes an open proxy into
the network. Anyone may use `/store/`, the host's own store as a binary cache, within the serving
policy.
"""

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

LOOPBACK = ("127.0.0.0/8", "::1/128")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


class ClientAccess:
    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        self.allowed = lru_cache(maxsize=4096)(self._allowed)

    def _allowed(self, host: str | None) -> bool:
        if host is None:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)
