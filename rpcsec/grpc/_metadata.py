"""Application request metadata bound into the call's opening signature (sans-IO).

gRPC metadata travels in clear HTTP/2 headers that any proxy may add to (Envoy's
``x-forwarded-for``, ``x-request-id``, ``x-envoy-*``) and any man in the middle may rewrite. The
entries the *client application* sets are covered by the token that opens the call (``_wire``:
OPEN_AAD / CALL_AAD), so no extra signature is made:

* The client declares which keys it set, in ``rpcsec-metadata-bin``: the sorted distinct
  keys joined by ``,`` (a gRPC key is ``[0-9a-z_.-]+``, so the join is unambiguous).
* Both ends append the canonical encoding of every entry under a declared key to the opening
  token's AAD, after the method::

      APP_METADATA = count:u16 | ( len(key):u16 | key | len(value):u32 | value )*

  with the (key, value) pairs sorted bytewise, keys lower-case ASCII (HTTP/2 requires it,
  RFC 9113 §8.2.1), text values UTF-8 and binary (``-bin``) values their raw bytes. This is
  the canonicalisation of AWS SigV4's canonical headers (lower-cased names, sorted) with
  length prefixes instead of separators, so no value can imitate a boundary. Sorting makes
  the encoding independent of the order a proxy forwards headers in; an entry added under a
  declared key, removed, or changed, or a declaration added, dropped or rewritten, changes
  the AAD and the call is refused (``message-altered``) before any handler runs.
* A call without application metadata sends no declaration and appends nothing (the AAD of
  today's calls, zero cost); APP_METADATA always has count >= 1, so the two cannot collide.

On the server, entries under declared keys are the *verified* metadata handlers see through
``context.invocation_metadata()``; every other entry (a proxy's, gRPC's own ``user-agent``, an
attacker's) is kept apart, readable with ``rpcsec.grpc.unverified_metadata(context)``.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from rpcsec.sspi import InvalidTokenError

from ._wire import CALL_KEY, CONTEXT_KEY

__all__ = [
    "METADATA_KEY",
    "MAX_DECLARED_KEYS",
    "RESERVED_PREFIXES",
    "client_metadata",
    "declared_keys",
    "encode",
    "server_part",
    "split",
]

METADATA_KEY = "rpcsec-metadata-bin"
MAX_DECLARED_KEYS = 64
# Keys the application may not set: rpcsec's own, gRPC's reserved ones, HTTP/2 pseudo-headers.
RESERVED_PREFIXES = ("rpcsec-", "grpc-", ":")
_KEY = re.compile(rb"[0-9a-z_.\-]{1,255}")
_KEY_LEN = struct.Struct(">H")
_VALUE_LEN = struct.Struct(">I")
_SEPARATOR = b","


def _value_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError("metadata values must be str or bytes")


def encode(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """APP_METADATA of ``pairs`` (already lower-case keys and byte values)."""
    ordered = sorted(pairs)
    parts = [_KEY_LEN.pack(len(ordered))]
    for key, value in ordered:
        parts.append(_KEY_LEN.pack(len(key)))
        parts.append(key)
        parts.append(_VALUE_LEN.pack(len(value)))
        parts.append(value)
    return b"".join(parts)


def client_metadata(metadata: Sequence[Any] | None) -> tuple[tuple[tuple[str, bytes], ...], bytes]:
    """The declaration entry to send and APP_METADATA to sign, for the application's
    ``metadata`` of one call; ``((), b"")`` when it set none.

    Raises ``ValueError`` for a key the application may not set (rpcsec's, gRPC's) or one
    gRPC would reject, ``TypeError`` for a value that is neither str nor bytes."""
    if not metadata:
        return (), b""
    pairs: list[tuple[bytes, bytes]] = []
    keys: set[bytes] = set()
    for item in metadata:
        key, value = item[0], item[1]
        if not isinstance(key, str):
            raise TypeError("metadata keys must be str")
        if key.startswith(RESERVED_PREFIXES):
            raise ValueError(f"metadata key {key!r} is reserved")
        raw = key.encode("ascii", "replace")
        if not _KEY.fullmatch(raw):
            raise ValueError(f"metadata key {key!r} is not a lower-case gRPC key")
        keys.add(raw)
        pairs.append((raw, _value_bytes(value)))
    if len(keys) > MAX_DECLARED_KEYS:
        raise ValueError(f"at most {MAX_DECLARED_KEYS} distinct metadata keys per call")
    declaration = _SEPARATOR.join(sorted(keys))
    return ((METADATA_KEY, declaration),), encode(pairs)


def declared_keys(declaration: Any) -> frozenset[str]:
    """The keys a peer's ``rpcsec-metadata-bin`` declares (hostile input: validated)."""
    if not isinstance(declaration, bytes) or not declaration:
        raise InvalidTokenError("call carries a malformed metadata declaration")
    names = declaration.split(_SEPARATOR)
    if len(names) > MAX_DECLARED_KEYS:
        raise InvalidTokenError("call carries a malformed metadata declaration")
    keys: set[str] = set()
    for name in names:
        if not _KEY.fullmatch(name):
            raise InvalidTokenError("call carries a malformed metadata declaration")
        key = name.decode("ascii")
        if key.startswith(RESERVED_PREFIXES) or key in keys:
            raise InvalidTokenError("call carries a malformed metadata declaration")
        keys.add(key)
    return frozenset(keys)


def server_part(metadata: Sequence[Any] | None, declared: frozenset[str]) -> bytes:
    """APP_METADATA the server recomputes from the entries it received under ``declared``."""
    pairs = [
        (item[0].encode("ascii"), _value_bytes(item[1]))
        for item in metadata or ()
        if item[0] in declared
    ]
    return encode(pairs)


def split(
    metadata: Sequence[Any] | None, declared: frozenset[str]
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(verified, unverified) entries of a verified call, in the order received; rpcsec's own
    entries are in neither."""
    verified: list[Any] = []
    unverified: list[Any] = []
    for item in metadata or ():
        key = item[0]
        if key in declared:
            verified.append(item)
        elif key not in _OWN:
            unverified.append(item)
    return tuple(verified), tuple(unverified)


_OWN = frozenset({CONTEXT_KEY, CALL_KEY, METADATA_KEY})
