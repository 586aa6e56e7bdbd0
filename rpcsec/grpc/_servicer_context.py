"""The servicer context a protected handler sees (ServerCall's face towards the application).

* Request metadata: ``invocation_metadata()`` returns only the entries the call's opening
  signature covers (``_metadata``); ``unverified_metadata(context)`` the rest.
* Outcome: ``set_code`` / ``set_details`` / ``set_trailing_metadata`` / ``send_initial_metadata``
  / ``abort`` are recorded as they pass through, and when the handler ends (or aborts) the
  binding signs them into ``rpcsec-status-bin`` (``_call_status``), so the client can tell the
  server's status and metadata from a proxy's or an attacker's.

``abort_with_status`` and statuses from exceptions the handler lets escape are not signed (the
client sees them as unverified).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._call_status import STATUS_KEY, app_keys, code_number, status_aad, status_token
from ._metadata import split
from ._wire import OUTCOME_OK

__all__ = ["AioVerifiedContext", "VerifiedContext", "unverified_metadata"]

_NO_KEYS: frozenset[str] = frozenset()


class VerifiedContext:
    """A synchronous handler's servicer context; see the module docstring."""

    __slots__ = (
        "_call",
        "_code",
        "_context",
        "_details",
        "_initial",
        "_initial_keys",
        "_split",
        "_trailing",
        "_trailing_keys",
    )

    def __init__(self, context: Any, call: Any) -> None:
        self._context = context
        self._call = call  # a ServerCall: .metadata, .declared, .protection, .prefix, .call_seq
        self._split: tuple[tuple[Any, ...], tuple[Any, ...]] | None = None
        self._code: Any = None
        self._details = ""
        self._initial: tuple[Any, ...] = ()
        self._initial_keys = _NO_KEYS
        self._trailing: tuple[Any, ...] = ()
        self._trailing_keys = _NO_KEYS

    def _entries(self) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        entries = self._split
        if entries is None:
            entries = self._split = split(self._call.metadata, self._call.declared)
        return entries

    def invocation_metadata(self) -> tuple[Any, ...]:
        """The verified application metadata, in the order received."""
        return self._entries()[0]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._context, name)

    # -- the outcome, recorded to be signed -------------------------------------------------

    def set_code(self, code: Any) -> None:
        self._code = code
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._details = details or ""
        self._context.set_details(details)

    def set_trailing_metadata(self, trailing_metadata: Sequence[Any]) -> None:
        metadata = tuple(trailing_metadata or ())
        self._trailing_keys = app_keys(metadata)
        self._trailing = metadata
        self._context.set_trailing_metadata(metadata)

    def _record_initial(self, initial_metadata: Sequence[Any]) -> tuple[Any, ...]:
        metadata = tuple(initial_metadata or ())
        self._initial_keys = app_keys(metadata)
        self._initial = metadata
        return metadata

    def send_initial_metadata(self, initial_metadata: Sequence[Any]) -> None:
        self._context.send_initial_metadata(self._record_initial(initial_metadata))

    def _status_entry(self, code: Any, details: str) -> tuple[str, bytes]:
        call = self._call
        number = code_number(code)
        aad = status_aad(
            call.prefix,
            call.call_seq,
            number,
            details if number else "",  # gRPC never sends an OK call's details
            self._initial,
            self._initial_keys,
            self._trailing,
            self._trailing_keys,
        )
        mic = call.protection.sign_status(aad, call.call_seq)
        return STATUS_KEY, status_token(self._initial_keys, self._trailing_keys, mic)

    def seal_status(self) -> None:
        """The handler ended: sign its status, details and metadata into the trailers."""
        entry = self._status_entry(self._code, self._details)
        self._context.set_trailing_metadata((*self._trailing, entry))

    def folds(self) -> bool:
        """Nothing to sign apart: the handler ended OK and set no metadata (the outcome then
        rides in the response token or end marker, ``OUTCOME_OK``)."""
        code = self._code  # (an OK call's details never reach the client: gRPC drops them)
        return (
            (code is None or code_number(code) == 0)
            and not self._initial_keys
            and not self._trailing_keys
        )

    def seal_response(self, payload: bytes) -> bytes:
        """The handler returned ``payload``: its single response token, with the outcome
        folded in (no trailer) when ``folds()``, else the outcome signed into the trailer."""
        call = self._call
        if self.folds():
            return call.seal_response(payload, OUTCOME_OK)
        self.seal_status()
        return call.seal_response(payload)

    def end_stream(self, outbound: Any) -> bytes:
        """The handler's response stream ended: its end marker, with the outcome folded in
        when ``folds()``, else the outcome signed into the trailer."""
        if self.folds():
            return outbound.end(OUTCOME_OK)
        self.seal_status()
        return outbound.end()

    def abort(self, code: Any, details: str = "") -> None:
        self._context.set_trailing_metadata((*self._trailing, self._status_entry(code, details)))
        self._context.abort(code, details)


class AioVerifiedContext(VerifiedContext):
    """An async handler's servicer context (``send_initial_metadata`` and ``abort`` are
    coroutines on ``grpc.aio``)."""

    __slots__ = ()

    async def send_initial_metadata(self, initial_metadata: Sequence[Any]) -> None:  # type: ignore[override]
        await self._context.send_initial_metadata(self._record_initial(initial_metadata))

    async def abort(  # type: ignore[override]
        self, code: Any, details: str = "", trailing_metadata: Sequence[Any] = ()
    ) -> None:
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
            self._trailing_keys = app_keys(self._trailing)
        entry = self._status_entry(code, details)
        await self._context.abort(code, details, (*self._trailing, entry))


def unverified_metadata(context: Any) -> tuple[Any, ...]:
    """The request metadata of the current call that no signature covers: what proxies
    (``x-forwarded-for``, ``x-request-id``, ``x-envoy-*``), gRPC itself (``user-agent``) or
    anyone on the path added. Never trust it for a security decision.

    Raises ``TypeError`` for a context that is not an rpcsec handler's."""
    if not isinstance(context, VerifiedContext):
        raise TypeError("not the servicer context of a call rpcsec verified")
    return context._entries()[1]
