"""The binding's per-call wire format: metadata keys and what each signature covers.

Every call names its context in the request metadata::

    rpcsec-context-bin : the context handle the server returned from Negotiate

The handle is either a sealed ticket (``rpcsec.session``, RFC 5077 §4 layout, at least
``MIN_TICKET_SIZE`` bytes) that any replica holding the service's key ring opens, or -- for a
package whose contexts cannot be exported -- a random 16-byte process-local handle. The size
tells them apart, and decides how responses are protected: with a ticket, every response token
is sealed with per-call keys (``_responses``: record number = call_seq || index, never the
context's own send counter, which every replica would share); with a process-local handle, by
the context itself (``ctx.wrap``) as below.

and is *opened* by exactly one token the context made, whose sequence number (bytes 1..9 of a
core token, see ``rpcsec.sspi._context``) becomes the *call sequence*. The server's replay
window accepts each sequence number once, so an opening token is never accepted twice.

* A call with a single request message (unary and server-streaming) is opened by that message
  itself, one core wrap token (``ctx.wrap``: sealed for PRIVACY, signed for INTEGRITY; the
  token's kind is the call's protection level) binding::

      OPEN_AAD = "rpcsec open v1" 0x00 | handle | len(method):u16 | method

* A request-streaming call may carry any number of messages, none at all included, so it is
  opened by a call header in the metadata instead::

      rpcsec-call-bin : level:u8 | MIC token = ctx.sign(b"", aad=CALL_AAD)
      CALL_AAD = "rpcsec call v1" 0x00 | handle | level:u8 | len(method):u16 | method

Both opening AADs end with the application's request metadata when the client set any
(``_metadata``: the keys declared in ``rpcsec-metadata-bin``, then ``APP_METADATA``, the sorted
length-prefixed (key, value) pairs under them), so a proxy or attacker that rewrites, adds
under a declared key, or drops an entry the application set makes the opening token fail::

    rpcsec-metadata-bin : key ("," key)*          (sorted, distinct, lower-case; absent: none)
    OPEN_AAD | APP_METADATA,  CALL_AAD | APP_METADATA

Entries under undeclared keys are not covered; the server hands them to handlers apart
(``rpcsec.grpc.unverified_metadata``), never in ``context.invocation_metadata()``.

Every other message -- each message of a request stream, every response -- is one wrap token
at the call's level binding::

    MSG_AAD = "rpcsec msg v1" 0x00 | handle | len(method):u16 | method
              | call_seq:u64 | direction:u8 | index:u32

so a message cut from one call, method, direction or stream position and pasted into another
does not verify (DESIGN §5). A *stream* direction ends with an end-of-stream marker, a MIC token
(``ctx.sign(b"", aad=MSG_AAD with direction | END and index = message count)``) whose kind byte
differs from every wrap token's, so truncating a stream is detected as well. Unary directions
carry exactly one message and need no marker.

A call refused *before any handler code ran* because its context is stale (``expired``, or
idle and about to be forgotten: ``context-unknown``), while the server still holds the
context's keys, carries a signed statement that this very call did not run::

    rpcsec-not-run-bin : MIC token = ctx.sign(b"", aad=NOT_RUN_AAD)
    NOT_RUN_AAD = "rpcsec not-run v1" 0x00 | handle | len(method):u16 | method | call_seq:u64

The server forgets the context as it signs, so no later call with that sequence number is
ever accepted by it. Only such a verified statement lets a client send a non-idempotent call
again (see ``rpcsec.grpc._recovery``); the bare ``rpcsec-reason`` trailer never does.

A handler's outcome (status code, details, the initial and trailing metadata it set) is
signed with the call's response keys into ``rpcsec-status-bin`` (``_call_status``: the layout
of STATUS_AAD) -- except in the common case, a handler that ended OK with empty details and
set no metadata: its unary response token (or its stream's end marker) is then sealed over
``MSG_AAD | OUTCOME_OK`` and no trailer is sent, so that call pays no separate signature.
Not signed: rpcsec's own refusals (``rpcsec-reason``; only ``rpcsec-not-run-bin``
is), statuses from exceptions a handler let escape, and anything a proxy adds. An attacker on
the path can always turn a call into a failure, and the client then learns it is an
unverified one; what it cannot do is make a client accept a response, status or metadata, or
a server run a handler, that the peer did not send for that very call.
"""

from __future__ import annotations

import struct

from rpcsec.session import MAX_TICKET_SIZE
from rpcsec.session._ticket import MIN_TICKET_SIZE
from rpcsec.sspi import ProtectionLevel

__all__ = [
    "CALL_KEY",
    "CONTEXT_KEY",
    "END",
    "END_MARKER_KIND",
    "HANDLE_SIZE",
    "LEVEL_BYTES",
    "NEGOTIATE_METHOD",
    "NOT_RUN_KEY",
    "OUTCOME_OK",
    "RELEASE_METHOD",
    "REQUEST",
    "RESPONSE",
    "SEALED_KIND",
    "SEQ_SLICE",
    "SERVICE",
    "SIGNED_KIND",
    "call_prefix",
    "is_ticket",
    "level_from_byte",
    "message_prefix",
    "method_part",
    "not_run_prefix",
    "open_aad",
    "position",
]

CONTEXT_KEY = "rpcsec-context-bin"
CALL_KEY = "rpcsec-call-bin"
NOT_RUN_KEY = "rpcsec-not-run-bin"
HANDLE_SIZE = 16

SERVICE = "rpcsec.v1.SecurityHandshake"
NEGOTIATE_METHOD = f"/{SERVICE}/Negotiate"
RELEASE_METHOD = f"/{SERVICE}/Release"

REQUEST = 0x01
RESPONSE = 0x02
END = 0x80

# The core's token kinds (rpcsec.sspi._context): MIC, sealed wrap, signed-only wrap.
END_MARKER_KIND = 0x4D
SEALED_KIND = 0x57
SIGNED_KIND = 0x53
# Where a core token carries its sequence number (kind:u8 | seq:u64 | ...).
SEQ_SLICE = slice(1, 9)
# Appended to the AAD of a unary response (or a stream's end marker) whose handler ended OK
# with empty details and set no response metadata: the outcome folded into the token, in
# place of an ``rpcsec-status-bin`` trailer (``_call_status``). MSG_AAD has a fixed-size tail
# after the method, so an AAD with the suffix is never one without it.
OUTCOME_OK = b"rpcsec outcome ok v1\x00"

_CALL_LABEL = b"rpcsec call v1\x00"
_OPEN_LABEL = b"rpcsec open v1\x00"
_MSG_LABEL = b"rpcsec msg v1\x00"
_NOT_RUN_LABEL = b"rpcsec not-run v1\x00"
_POSITION = struct.Struct(">BI")

LEVEL_BYTES: dict[ProtectionLevel, bytes] = {
    ProtectionLevel.INTEGRITY: bytes((int(ProtectionLevel.INTEGRITY),)),
    ProtectionLevel.PRIVACY: bytes((int(ProtectionLevel.PRIVACY),)),
}
_LEVELS = {value[0]: level for level, value in LEVEL_BYTES.items()}


def method_part(method: str) -> bytes:
    """The length-prefixed method path every signature of a call covers."""
    raw = method.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("method path is too long")
    return len(raw).to_bytes(2, "big") + raw


def call_prefix(handle: bytes) -> bytes:
    """CALL_AAD up to the level byte."""
    return _CALL_LABEL + handle


def open_aad(handle: bytes, method: bytes) -> bytes:
    """OPEN_AAD; ``method`` is ``method_part(path)``."""
    return _OPEN_LABEL + handle + method


def message_prefix(handle: bytes, method: bytes) -> bytes:
    """MSG_AAD up to the call sequence; ``method`` is ``method_part(path)``."""
    return _MSG_LABEL + handle + method


def not_run_prefix(handle: bytes, method: bytes) -> bytes:
    """NOT_RUN_AAD up to the call sequence; ``method`` is ``method_part(path)``."""
    return _NOT_RUN_LABEL + handle + method


def position(direction: int, index: int) -> bytes:
    """The direction:u8 | index:u32 tail of MSG_AAD."""
    return _POSITION.pack(direction, index)


def is_ticket(handle: bytes) -> bool:
    """A sealed-ticket handle (``_tickets``), as opposed to a process-local one of
    ``HANDLE_SIZE`` bytes: both ends tell them apart by size alone."""
    return MIN_TICKET_SIZE <= len(handle) <= MAX_TICKET_SIZE


def level_from_byte(value: int) -> ProtectionLevel | None:
    return _LEVELS.get(value)
