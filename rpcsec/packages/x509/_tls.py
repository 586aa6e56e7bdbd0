"""One TLS 1.3 connection driven through OpenSSL memory BIOs: TLS records in, records out.

The x509 package's handshake tokens *are* TLS records (as in pyspnego's CredSSP, which also
drives TLS through memory BIOs). No socket exists: ``feed`` writes the peer's token into the
read BIO, ``take_output`` drains the write BIO into the next token. Every OpenSSL error is
caught here and becomes a typed ``SecurityError`` (``raise ... from``), so nothing native
escapes the package.

After the handshake, the package's own messages (offer, grant, proxy chain) travel as TLS
application data, each framed as ``length:u32 | body`` so a message split across records, or
a truncated one, is detected.
"""

from __future__ import annotations

import datetime
import math
import struct
import time
import weakref
from collections.abc import Callable

from cryptography import x509
from OpenSSL import SSL, crypto

from rpcsec.sspi._errors import (
    CertificateExpiredError,
    CertificateWrongUsageError,
    InvalidTokenError,
    SecurityError,
    UntrustedRootError,
)

from ._keys import PrivateKey

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "MAX_CLOCK_SKEW",
    "MAX_MESSAGE",
    "TlsChannel",
    "build_ssl_context",
    "check_clock_skew",
    "within_validity",
]

DEFAULT_CLOCK_SKEW = 300.0
"""Seconds of clock difference tolerated at notBefore and notAfter: Kerberos' default
clockskew (MIT krb5.conf, RFC 4120 §1.6 "5 minutes")."""
MAX_CLOCK_SKEW = 86400.0

MAX_MESSAGE = 48 * 1024
_FRAME = struct.Struct(">I")
_RECORD = struct.Struct(">BHH")  # TLSPlaintext / TLSCiphertext header, RFC 8446 §5.1
_CONTENT_TYPES = frozenset({20, 21, 22, 23})  # change_cipher_spec, alert, handshake, data
_RECORD_VERSIONS = frozenset({0x0301, 0x0303})  # legacy_record_version values TLS 1.3 sends
_MAX_RECORD = (1 << 14) + 256
_READ_CHUNK = 1 << 16
# X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED (openssl/x509_vfy.h)
_VALIDITY_ERRORS = frozenset({9, 10})
# X509_V_ERR_INVALID_PURPOSE: OpenSSL checks extendedKeyUsage for the TLS role itself
# (ssl_server on the client, ssl_client on the server) when the certificate has one.
_PURPOSE_ERRORS = frozenset({26})


def check_clock_skew(value: object) -> float:
    """A caller's ``clock_skew`` option: seconds, 0 to one day (``ValueError``/``TypeError``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("clock_skew must be a number of seconds")
    if not math.isfinite(value) or not 0 <= value <= MAX_CLOCK_SKEW:
        raise ValueError(f"clock_skew must be from 0 to {MAX_CLOCK_SKEW:.0f} seconds")
    return float(value)


def within_validity(cert: x509.Certificate, now: float, skew: float) -> bool:
    """notBefore - skew <= now < notAfter + skew (RFC 5280 §4.1.2.5 with Kerberos' slack)."""
    start = cert.not_valid_before_utc.timestamp()
    end = cert.not_valid_after_utc.timestamp()
    return start - skew <= now < end + skew


def _verify_callback(
    connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    """Keep OpenSSL's verdict, and remember why it failed so we can raise the right error.

    The one verdict overridden: "not yet valid" / "expired" for a certificate whose validity,
    widened by the channel's clock skew, holds at the channel's time (OpenSSL has no skew of
    its own). Every other check (signature, chain, purpose) keeps OpenSSL's answer.
    """
    if not ok:
        ref = connection.get_app_data()
        channel = ref() if isinstance(ref, weakref.ref) else None
        if isinstance(channel, TlsChannel):
            if errno in _VALIDITY_ERRORS and channel.tolerates(cert):
                return True
            channel.verify_errors.append(errno)
    return bool(ok)


def build_ssl_context(
    certificate: x509.Certificate,
    key: PrivateKey,
    chain: tuple[x509.Certificate, ...],
    anchors: tuple[x509.Certificate, ...],
    *,
    verify_time: float | None = None,
) -> SSL.Context:
    """A TLS 1.3-only OpenSSL context that proves ``certificate`` and requires the peer's.

    Both roles use the same context shape: mutual authentication is mandatory
    (VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT), no session tickets or caching (every context
    is a fresh full handshake), and peer chains must lead to ``anchors``. With
    ``verify_time`` OpenSSL checks validity at that instant instead of the system time
    (the package's injectable clock).
    """
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.use_certificate(certificate)
    for extra in chain:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(key)
    ctx.check_privatekey()
    store = ctx.get_cert_store()
    assert store is not None
    for anchor in anchors:
        store.add_cert(crypto.X509.from_cryptography(anchor))
    if verify_time is not None:
        store.set_time(datetime.datetime.fromtimestamp(verify_time, tz=datetime.UTC))
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_callback)
    ctx.set_verify_depth(8)
    return ctx


class TlsChannel:
    """A TLS connection with memory BIOs on both sides (no socket)."""

    __slots__ = ("__weakref__", "_clock", "_conn", "_inbox", "_skew", "verify_errors")

    def __init__(
        self,
        context: SSL.Context,
        *,
        server: bool,
        clock: Callable[[], float] = time.time,
        skew: float = DEFAULT_CLOCK_SKEW,
    ) -> None:
        self._clock = clock
        self._skew = skew
        self._conn = SSL.Connection(context, None)
        self._conn.set_app_data(weakref.ref(self))  # no cycle through OpenSSL's callback
        if server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self.verify_errors: list[int] = []
        self._inbox = bytearray()

    def tolerates(self, cert: crypto.X509) -> bool:
        """Whether ``cert`` is valid at this channel's time, give or take the clock skew."""
        try:
            return within_validity(cert.to_cryptography(), self._clock(), self._skew)
        except ValueError:
            return False

    def _fail(self, exc: Exception) -> SecurityError:
        """The typed error for an OpenSSL failure (certificate verdicts first)."""
        if self.verify_errors:
            if any(errno in _VALIDITY_ERRORS for errno in self.verify_errors):
                return CertificateExpiredError("peer certificate is outside its validity period")
            if any(errno in _PURPOSE_ERRORS for errno in self.verify_errors):
                return CertificateWrongUsageError("peer certificate is not for this TLS role")
            return UntrustedRootError("peer certificate chain is not trusted")
        return InvalidTokenError("TLS record rejected")

    def feed(self, token: bytes) -> None:
        """Hand the peer's token to OpenSSL. A token must be whole TLS records: a truncated
        or padded one is refused here, before OpenSSL would quietly wait for the rest."""
        _check_records(token)
        try:
            self._conn.bio_write(token)
        except SSL.Error as exc:
            raise self._fail(exc) from exc

    def handshake(self) -> bool:
        """Advance the handshake with what was fed; True once it is complete."""
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise self._fail(exc) from exc
        return True

    def take_output(self) -> bytes:
        """Everything OpenSSL has written since the last call (the next token, maybe empty)."""
        chunks = []
        while True:
            try:
                chunks.append(self._conn.bio_read(_READ_CHUNK))
            except SSL.WantReadError:
                return b"".join(chunks)
            except SSL.Error as exc:
                raise self._fail(exc) from exc

    def send(self, message: bytes) -> None:
        """Write one framed application message (call ``take_output`` to get the records)."""
        if len(message) > MAX_MESSAGE:
            raise ValueError("message too large for one handshake leg")
        data = _FRAME.pack(len(message)) + message
        try:
            written = self._conn.send(data)
        except SSL.Error as exc:
            raise self._fail(exc) from exc
        if written != len(data):  # memory BIOs never accept partially; be sure
            raise InvalidTokenError("TLS write was incomplete")

    def _pull(self) -> bool:
        try:
            data = self._conn.recv(_READ_CHUNK)
        except SSL.WantReadError:
            return False
        except SSL.ZeroReturnError as exc:
            raise InvalidTokenError("peer closed the TLS connection") from exc
        except SSL.Error as exc:
            raise self._fail(exc) from exc
        if not data:
            return False
        self._inbox.extend(data)
        if len(self._inbox) > _FRAME.size + MAX_MESSAGE:
            raise InvalidTokenError("peer sent too much application data")
        return True

    def receive(self) -> bytes:
        """One framed application message from what was fed; InvalidTokenError if truncated."""
        while True:
            if len(self._inbox) >= _FRAME.size:
                (size,) = _FRAME.unpack_from(self._inbox)
                if size > MAX_MESSAGE:
                    raise InvalidTokenError("peer message is too large")
                end = _FRAME.size + size
                if len(self._inbox) >= end:
                    message = bytes(self._inbox[_FRAME.size : end])
                    del self._inbox[:end]
                    return message
            if not self._pull():
                raise InvalidTokenError("peer message is truncated")

    def expect_end(self) -> None:
        """The token must hold nothing after the message just read."""
        if self._inbox or self._pull():
            raise InvalidTokenError("unexpected data after the handshake message")

    def exporter(self, label: bytes, length: int) -> bytes:
        """TLS 1.3 exporter (RFC 8446 §7.5) with an empty context."""
        try:
            return self._conn.export_keying_material(label, length, b"")
        except SSL.Error as exc:
            raise InvalidTokenError("TLS exporter unavailable") from exc

    def verified_chain(self) -> list[x509.Certificate]:
        """The peer's chain as OpenSSL verified it: leaf first, trust anchor last."""
        chain = self._conn.get_verified_chain(as_cryptography=True)
        if not chain:
            raise UntrustedRootError("peer presented no verified certificate")
        return list(chain)

    def __repr__(self) -> str:
        return "<TlsChannel>"


def _check_records(token: bytes) -> None:
    """``token`` must split exactly into TLS records (RFC 8446 §5.1 framing only)."""
    if not token:
        raise InvalidTokenError("empty handshake token")
    offset, size = 0, len(token)
    while offset < size:
        if offset + _RECORD.size > size:
            raise InvalidTokenError("TLS record header is truncated")
        content_type, version, length = _RECORD.unpack_from(token, offset)
        if (
            content_type not in _CONTENT_TYPES
            or version not in _RECORD_VERSIONS
            or length > _MAX_RECORD
        ):
            raise InvalidTokenError("handshake token is not a TLS record")
        offset += _RECORD.size + length
        if offset > size:
            raise InvalidTokenError("TLS record is truncated")
