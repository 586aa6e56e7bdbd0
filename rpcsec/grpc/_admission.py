"""Who a handshake is from, for the per-client handshake limit: the client *host*.

``context.peer()`` is ``ipv4:IP:PORT``; keying on it counts every TCP connection as its own
client, so one host with 64 connections gets 64 times the allowance (issue 9: a flood from 64
connections kept a legitimate client from binding for 28 s). The limit keys on the host alone.

Behind an L7 proxy every client arrives from the proxy's address. Only when the direct peer
is one of the configured ``trusted_proxies`` (addresses or networks) does the server look at
what the proxy says about the client: Envoy's ``x-envoy-external-address``, else the
right-most address of ``x-forwarded-for`` that is not itself a trusted proxy (RFC 7239 §7.4's
rule for ``Forwarded``; the left part is whatever the client claimed). Anything malformed, or a
peer that is not a trusted proxy, counts against the direct peer's host: a client cannot
escape its limit by sending the header itself. Unsigned, so used for admission only -- never
for identity or authorization. No I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["AdmissionKey", "peer_host"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAX_HEADER = 1024  # a forwarded header longer than this is not looked at


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``)."""
    if peer.startswith("ipv4:"):
        return peer[5:].rsplit(":", 1)[0]
    if peer.startswith("ipv6:"):
        rest = peer[5:]
        if rest.startswith("[") and "]" in rest:
            return rest[1 : rest.index("]")]
        return rest.rsplit(":", 1)[0]
    return peer  # unix sockets and the like: the whole string


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class AdmissionKey:
    """Computes the handshake limiter's key for a call (sans-IO: peer string + metadata)."""

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        if isinstance(trusted_proxies, str):
            raise TypeError("trusted_proxies must be a list of addresses or networks")
        networks: list[_Network] = []
        for item in trusted_proxies:
            if not isinstance(item, str):
                raise TypeError("trusted_proxies must be a list of addresses or networks")
            networks.append(ipaddress.ip_network(item, strict=False))
        self._networks = tuple(networks)

    def _trusted(self, address: Any) -> bool:
        return address is not None and any(address in net for net in self._networks)

    def __call__(self, peer: str, metadata: Sequence[Any] | None = ()) -> str:
        host = peer_host(peer)
        if not self._networks or not self._trusted(_address(host)):
            return host
        external = forwarded = None
        for item in metadata or ():
            key, value = item[0], item[1]
            if not isinstance(value, str) or len(value) > _MAX_HEADER:
                continue
            if key == "x-envoy-external-address":
                external = value
            elif key == "x-forwarded-for":
                forwarded = value if forwarded is None else f"{forwarded},{value}"
        if external is not None:
            address = _address(external)
            if address is not None:
                return str(address)
        if forwarded is not None:
            for part in reversed(forwarded.split(",")):
                address = _address(part)
                if address is None:
                    break  # malformed: stop trusting the chain here
                if not self._trusted(address):
                    return str(address)
        return host
