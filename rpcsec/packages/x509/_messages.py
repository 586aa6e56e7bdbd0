"""The three messages the x509 package sends inside the TLS channel after the handshake.

They travel as TLS application data, so TLS 1.3 authenticates and encrypts them; these
codecs only frame them. Integers are big-endian; every parser rejects trailing bytes::

    ClientFinish = "XC" 1 | ContextOffer | nprincipal:u8 | nproxy:u8
                   | (len:u16 | DER) * (nprincipal + nproxy) | poplen:u8 | pop
    ServerGrant  = "XG" 1 | ContextGrant | keylen:u8 | delegation public key (raw Ed25519)
    ProxyIssued  = "XD" 1 | len:u16 | DER of the new proxy certificate

``nprincipal``/``nproxy`` are zero unless the client presents delegated credentials: then
they carry the principal's leaf (and intermediates) and the proxy chain, and ``pop`` is the
proof of possession of the last proxy's key over this connection's exporter value.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from rpcsec.sspi._errors import InvalidTokenError
from rpcsec.sspi._negotiation import OFFER_SIZE, ContextGrant, ContextOffer

from ._proxy import MAX_PRINCIPAL_CHAIN, MAX_PROXIES

__all__ = ["ClientFinish", "ProxyIssued", "ServerGrant"]

_CLIENT = b"XC\x01"
_GRANT = b"XG\x01"
_PROXY = b"XD\x01"
_U16 = struct.Struct(">H")


class _Reader:
    """Bounded reads over one message; running out raises InvalidTokenError."""

    __slots__ = ("_data", "_offset")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise InvalidTokenError("handshake message is truncated")
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def certificate(self) -> x509.Certificate:
        der = self.take(self.u16())
        try:
            return x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise InvalidTokenError("handshake message holds a malformed certificate") from exc

    def end(self) -> None:
        if self._offset != len(self._data):
            raise InvalidTokenError("handshake message has trailing bytes")


def _der(cert: x509.Certificate) -> bytes:
    der = cert.public_bytes(Encoding.DER)
    return _U16.pack(len(der)) + der


def _magic(reader: _Reader, magic: bytes) -> None:
    if reader.take(len(magic)) != magic:
        raise InvalidTokenError("unexpected handshake message")


@dataclass(frozen=True, slots=True)
class ClientFinish:
    """The client's last handshake message: its offer, and any delegated chain it presents."""

    offer: ContextOffer
    principal_chain: tuple[x509.Certificate, ...] = field(default=(), repr=False)
    proxies: tuple[x509.Certificate, ...] = field(default=(), repr=False)
    possession: bytes = field(default=b"", repr=False)

    def encode(self) -> bytes:
        certs = (*self.principal_chain, *self.proxies)
        return b"".join(
            (
                _CLIENT,
                self.offer.encode(),
                bytes((len(self.principal_chain), len(self.proxies))),
                *(_der(c) for c in certs),
                bytes((len(self.possession),)),
                self.possession,
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> ClientFinish:
        reader = _Reader(data)
        _magic(reader, _CLIENT)
        offer = ContextOffer.decode(reader.take(OFFER_SIZE))
        n_principal, n_proxies = reader.u8(), reader.u8()
        if n_principal > MAX_PRINCIPAL_CHAIN or n_proxies > MAX_PROXIES:
            raise InvalidTokenError("delegated chain is too long")
        if bool(n_principal) != bool(n_proxies):
            raise InvalidTokenError("delegated chain is incomplete")
        principal = tuple(reader.certificate() for _ in range(n_principal))
        proxies = tuple(reader.certificate() for _ in range(n_proxies))
        possession = reader.take(reader.u8())
        reader.end()
        if bool(possession) != bool(proxies):
            raise InvalidTokenError("proof of possession missing or unexpected")
        return cls(offer, principal, proxies, possession)


@dataclass(frozen=True, slots=True)
class ServerGrant:
    """The server's answer, and the public half of its fresh delegation key if it took one."""

    grant: ContextGrant
    delegation_key: bytes = b""

    def encode(self) -> bytes:
        key = self.delegation_key
        return _GRANT + self.grant.encode() + bytes((len(key),)) + key

    @classmethod
    def decode(cls, data: bytes) -> ServerGrant:
        reader = _Reader(data)
        _magic(reader, _GRANT)
        grant = ContextGrant.decode(reader.take(OFFER_SIZE))
        key = reader.take(reader.u8())
        reader.end()
        return cls(grant, key)


@dataclass(frozen=True, slots=True)
class ProxyIssued:
    """The client's delegation leg: the proxy certificate it signed for the server's key."""

    proxy: x509.Certificate = field(repr=False)

    def encode(self) -> bytes:
        return _PROXY + _der(self.proxy)

    @classmethod
    def decode(cls, data: bytes) -> ProxyIssued:
        reader = _Reader(data)
        _magic(reader, _PROXY)
        proxy = reader.certificate()
        reader.end()
        return cls(proxy)
