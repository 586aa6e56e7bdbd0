"""The server's signed outcome of a call: status code, details, response metadata (sans-IO).

A gRPC status, its details and the response metadata travel in clear HTTP/2 headers and
trailers: a man in the middle can turn OK into NOT_FOUND, rewrite details, or inject
``x-admin: true`` into the trailers. When a handler finishes (returns, or aborts through its
servicer context) the server signs what the handler set, with the call's response keys
(``_responses``: the ticket's per-call keys, record index ``STATUS_INDEX``; or the context's
own MIC for a process-local handle), into one trailer::

    rpcsec-status-bin : len(I):u16 | I | len(T):u16 | T | MIC
      I, T: the initial / trailing metadata keys the handler set, sorted, joined by ","
    MIC over STATUS_AAD = "rpcsec status v1" 0x00 | MSG_AAD prefix (handle | method)
                          | call_seq:u64 | code:u8 | len(details):u32 | details
                          | APP_METADATA(initial under I) | APP_METADATA(trailing under T)

APP_METADATA is ``_metadata``'s canonical encoding (sorted, length-prefixed pairs; here
always with its count, 0 included). The client recomputes STATUS_AAD from what it received:
a status, details or declared entry that differs raises ``MessageAlteredError`` (also a
``grpc.RpcError``); entries under undeclared keys (a proxy's, an attacker's) are kept apart.
No ``rpcsec-status-bin`` at all -- a proxy's own error, an rpcsec refusal, a handler that raised
-- is an *unverified* status: the client reports it as such and never as the server's.

The common case is folded into the response token instead (``_wire.OUTCOME_OK``): when a
unary handler ends OK with empty details and sets no initial or trailing metadata, the server
sends no ``rpcsec-status-bin``; the response message is sealed over its usual AAD followed by
``OUTCOME_OK`` (a stream: its end marker, the same way). The client, for a call that ended OK
without the trailer, opens the response *with* the suffix -- the token itself then proves "OK,
no details, no metadata" -- and with a trailer opens it *without* the suffix and checks the
trailer as above (``open_unary_outcome``). So a trailer stripped from a call that set
metadata, or one added to a folded response, makes the response fail to open
(``MessageAlteredError``), and an OK turned into an error status is only ever an unverified
error. One AEAD operation per response, not two, and no trailer bytes.

A call that hands the application the response message and nothing else (the sync plain
call of a unary or request-streaming method, ``_client``) opens the response with the suffix
*first* and, when it opens, reads neither status nor trailers: the token alone proves the
server's "OK, nothing else", and nothing else reaches the application. Only when it does not
open is the outcome judged as above.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from rpcsec.sspi import InvalidTokenError, MessageAlteredError

from ._calls import FIRST_RESPONSE
from ._metadata import RESERVED_PREFIXES, declared_keys, encode
from ._wire import OUTCOME_OK

__all__ = [
    "STATUS_INDEX",
    "STATUS_KEY",
    "CallStatus",
    "app_keys",
    "code_number",
    "open_status",
    "open_stream_outcome",
    "open_unary_outcome",
    "parse_status",
    "status_aad",
    "status_token",
]

STATUS_KEY = "rpcsec-status-bin"
STATUS_INDEX = b"\xff\xff\xff\xfe"  # never a message's index, nor the not-run statement's
_LABEL = b"rpcsec status v1\x00"
_U16 = struct.Struct(">H")
_CODE_DETAILS = struct.Struct(">BI")
_MAX_TOKEN = 64 * 1024
_NO_PAIRS = _U16.pack(0)
_OK = grpc.StatusCode.OK
_CODE_NUMBERS: dict[Any, int] = {code: int(code.value[0]) for code in grpc.StatusCode}


@dataclass(frozen=True)
class CallStatus:
    """What a client knows of a call's outcome. ``verified``: the server signed this very
    call's status, details and the metadata in ``initial_metadata`` / ``trailing_metadata``;
    ``unverified_*`` hold every other entry received (never the server's word)."""

    verified: bool
    code: Any
    details: str
    initial_metadata: tuple[Any, ...] = ()
    trailing_metadata: tuple[Any, ...] = ()
    unverified_initial_metadata: tuple[Any, ...] = ()
    unverified_trailing_metadata: tuple[Any, ...] = ()


def _value(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def app_keys(metadata: Sequence[Any] | None) -> frozenset[str]:
    """The keys of response metadata a handler set; ``ValueError`` for a reserved one."""
    keys = set()
    for item in metadata or ():
        key = item[0]
        if not isinstance(key, str) or key.startswith(RESERVED_PREFIXES):
            raise ValueError(f"metadata key {key!r} is reserved")
        keys.add(key)
    return frozenset(keys)


def _pairs(metadata: Sequence[Any] | None, keys: frozenset[str]) -> bytes:
    if not keys:
        return _NO_PAIRS
    return encode(
        [(item[0].encode("ascii"), _value(item[1])) for item in metadata or () if item[0] in keys]
    )


def status_aad(
    prefix: bytes,
    call_seq: bytes,
    code: int,
    details: str,
    initial: Sequence[Any] | None,
    initial_keys: frozenset[str],
    trailing: Sequence[Any] | None,
    trailing_keys: frozenset[str],
) -> bytes:
    """STATUS_AAD; ``prefix`` is the call's MSG_AAD prefix (``MethodKeys.prefix``)."""
    raw = details.encode("utf-8")
    return b"".join(
        (
            _LABEL,
            prefix,
            call_seq,
            _CODE_DETAILS.pack(code, len(raw)),
            raw,
            _pairs(initial, initial_keys),
            _pairs(trailing, trailing_keys),
        )
    )


def _declaration(keys: frozenset[str]) -> bytes:
    raw = ",".join(sorted(keys)).encode("ascii")
    return _U16.pack(len(raw)) + raw


def status_token(initial_keys: frozenset[str], trailing_keys: frozenset[str], mic: bytes) -> bytes:
    """The ``rpcsec-status-bin`` value."""
    return _declaration(initial_keys) + _declaration(trailing_keys) + mic


def _keys(raw: bytes) -> frozenset[str]:
    return declared_keys(raw) if raw else frozenset()


def parse_status(token: Any) -> tuple[frozenset[str], frozenset[str], bytes]:
    """(initial keys, trailing keys, MIC) of a peer's ``rpcsec-status-bin`` (hostile input)."""
    if not isinstance(token, bytes) or len(token) < 4 or len(token) > _MAX_TOKEN:
        raise InvalidTokenError("status signature is malformed")
    (first,) = _U16.unpack_from(token, 0)
    end = 2 + first
    if end + 2 > len(token):
        raise InvalidTokenError("status signature is malformed")
    (second,) = _U16.unpack_from(token, end)
    tail = end + 2 + second
    if tail >= len(token):
        raise InvalidTokenError("status signature is malformed")
    return _keys(token[2:end]), _keys(token[end + 2 : tail]), token[tail:]


def code_number(code: Any) -> int:
    """A status code's number (``grpc.StatusCode`` or an int; None is OK)."""
    if code is None:
        return 0
    number = _CODE_NUMBERS.get(code)
    if number is not None:  # no enum descriptor per call
        return number
    value = getattr(code, "value", None)
    if isinstance(value, tuple):  # grpc.StatusCode
        return int(value[0])
    return int(code)


def has_status(trailing: Sequence[Any]) -> bool:
    """Whether the server sent ``rpcsec-status-bin`` (else the outcome is folded, or none)."""
    for item in trailing:  # noqa: SIM110 - a loop: no generator frame per call
        if item[0] == STATUS_KEY:
            return True
    return False


def open_unary_outcome(
    protection: Any,
    prefix: bytes,
    call_seq: bytes,
    response: bytes,
    encrypt: bool,
    code: Any,
    details: str | None,
    initial: Sequence[Any] | None,
    trailing: Sequence[Any] | None,
    open_ok: Callable[[bytes, bytes], bytes | None] | None = None,
) -> tuple[bytes, CallStatus]:
    """The client's opening of a finished single-response call that returned a message:
    (payload, outcome). Without a trailer the outcome must be folded into the response
    (``OUTCOME_OK``); with one, the response is opened as it is and the trailer checked.
    ``open_ok``: the method's prepared open with the suffix (``PreparedMethod``), tried
    first; when it says no, ``protection.open`` raises the typed error. Raises what
    ``protection.open`` / ``open_status`` raise."""
    trailing = tuple(trailing or ())
    if has_status(trailing):
        data = protection.open(prefix, call_seq, FIRST_RESPONSE, response, encrypt)
        return data, open_status(protection, prefix, call_seq, code, details, initial, trailing)
    opened = None if open_ok is None else open_ok(call_seq, response)
    if opened is not None:
        data = opened
    else:
        data = protection.open(prefix, call_seq, FIRST_RESPONSE, response, encrypt, OUTCOME_OK)
    if (code is not _OK and code_number(code) != 0) or details:
        # The server sealed "OK, no details"; a status that says otherwise was changed.
        raise MessageAlteredError("call outcome differs from what the server sealed")
    return data, CallStatus(True, code, "", (), (), tuple(initial or ()), trailing)


def open_stream_outcome(
    protection: Any,
    prefix: bytes,
    call_seq: bytes,
    inbound: Any,
    code: Any,
    details: str | None,
    initial: Sequence[Any] | None,
    trailing: Sequence[Any] | None,
) -> CallStatus:
    """The outcome of a finished response stream (``inbound``: its ``OutcomeInbound``): with
    a trailer, the kept end marker is checked as it is and the trailer as for any call;
    without one, the end marker must carry ``OUTCOME_OK``. A stream not read to its end
    marker can only be judged by its trailer (``open_status``)."""
    trailing = tuple(trailing or ())
    if not inbound.ended:
        return open_status(protection, prefix, call_seq, code, details, initial, trailing)
    if has_status(trailing):
        inbound.check_end_marker(b"")
        return open_status(protection, prefix, call_seq, code, details, initial, trailing)
    inbound.check_end_marker(OUTCOME_OK)
    if code_number(code) != 0 or details:
        raise MessageAlteredError("call outcome differs from what the server sealed")
    return CallStatus(True, code, "", (), (), tuple(initial or ()), trailing)


def open_status(
    protection: Any,
    prefix: bytes,
    call_seq: bytes,
    code: Any,
    details: str | None,
    initial: Sequence[Any] | None,
    trailing: Sequence[Any] | None,
) -> CallStatus:
    """The client's view of a finished call's outcome (``protection``: the binding's
    ``CallProtection``). Raises ``MessageAlteredError`` when the server's signature is there
    but what arrived differs from what it signed, ``InvalidTokenError`` when it is malformed;
    returns an unverified ``CallStatus`` when there is none."""
    initial = tuple(initial or ())
    trailing = tuple(trailing or ())
    details = details or ""
    tokens = [item[1] for item in trailing if item[0] == STATUS_KEY]
    if not tokens:
        return CallStatus(False, code, details, (), (), initial, trailing)
    if len(tokens) > 1:
        raise InvalidTokenError("status signature is malformed")
    initial_keys, trailing_keys, mic = parse_status(tokens[0])
    aad = status_aad(
        prefix,
        call_seq,
        code_number(code),
        details,
        initial,
        initial_keys,
        trailing,
        trailing_keys,
    )
    protection.check_status(aad, call_seq, mic)
    if not initial_keys and not trailing_keys:  # the common case: the handler set none
        others = tuple(item for item in trailing if item[0] != STATUS_KEY)
        return CallStatus(True, code, details, (), (), initial, others)
    signed_initial = tuple(item for item in initial if item[0] in initial_keys)
    signed_trailing = tuple(item for item in trailing if item[0] in trailing_keys)
    return CallStatus(
        True,
        code,
        details,
        signed_initial,
        signed_trailing,
        tuple(item for item in initial if item[0] not in initial_keys),
        tuple(item for item in trailing if item[0] not in trailing_keys and item[0] != STATUS_KEY),
    )
