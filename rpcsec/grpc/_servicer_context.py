"""The servicer context a protected handler sees: the ``ServerCall`` itself, facing the application.

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
from ._server_core import ServerCall
from ._wire import OUTCOME_OK

__all__ = ["AioVerifiedContext", "VerifiedContext", "unverified_metadata"]

_NO_KEYS: frozenset[str] = frozenset()


class _Outcome:
    """What the handler set of its outcome (made on its first ``set_*``; most calls set
    nothing, and their outcome folds into the response token)."""

    __slots__ = ("code", "details", "initial", "initial_keys", "trailing", "trailing_keys")

    def __init__(self) -> None:
        self.code: Any = None
        self.details = ""
        self.initial: tuple[Any, ...] = ()
        self.initial_keys = _NO_KEYS
        self.trailing: tuple[Any, ...] = ()
        self.trailing_keys = _NO_KEYS

    def folds(self) -> bool:
        code = self.code  # (an OK call's details never reach the client: gRPC drops them)
        return (
            (code is None or code_number(code) == 0)
            and not self.initial_keys
            and not self.trailing_keys
        )


_NOTHING_SET = _Outcome()  # read-only stand-in for a handler that set nothing


class VerifiedContext(ServerCall):
    """A synchronous handler's servicer context; see the module docstring. It is the call
    itself (``ServerCall``: one object per call, made by the server core)."""

    __slots__ = ()

    def _set(self) -> _Outcome:
        outcome = self._outcome
        if outcome is None:
            outcome = self._outcome = _Outcome()
        return outcome  # type: ignore[no-any-return]

    def invocation_metadata(self) -> tuple[Any, ...]:
        """The verified application metadata, in the order received."""
        return self.split_metadata()[0]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._context, name)

    # -- the outcome, recorded to be signed -------------------------------------------------

    def set_code(self, code: Any) -> None:
        self._set().code = code
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._set().details = details or ""
        self._context.set_details(details)

    def set_trailing_metadata(self, trailing_metadata: Sequence[Any]) -> None:
        metadata = tuple(trailing_metadata or ())
        outcome = self._set()
        outcome.trailing_keys = app_keys(metadata)
        outcome.trailing = metadata
        self._context.set_trailing_metadata(metadata)

    def _record_initial(self, initial_metadata: Sequence[Any]) -> tuple[Any, ...]:
        metadata = tuple(initial_metadata or ())
        outcome = self._set()
        outcome.initial_keys = app_keys(metadata)
        outcome.initial = metadata
        return metadata

    def send_initial_metadata(self, initial_metadata: Sequence[Any]) -> None:
        self._context.send_initial_metadata(self._record_initial(initial_metadata))

    def _status_entry(self, code: Any, details: str) -> tuple[str, bytes]:
        outcome = self._outcome or _NOTHING_SET
        number = code_number(code)
        aad = status_aad(
            self._state.prefix,
            self._call_seq,
            number,
            details if number else "",  # gRPC never sends an OK call's details
            outcome.initial,
            outcome.initial_keys,
            outcome.trailing,
            outcome.trailing_keys,
        )
        mic = self._entry.protection.sign_status(aad, self._call_seq)
        return STATUS_KEY, status_token(outcome.initial_keys, outcome.trailing_keys, mic)

    def seal_status(self) -> None:
        """The handler ended: sign its status, details and metadata into the trailers."""
        outcome = self._outcome or _NOTHING_SET
        entry = self._status_entry(outcome.code, outcome.details)
        self._context.set_trailing_metadata((*outcome.trailing, entry))

    def folds(self) -> bool:
        """Nothing to sign apart: the handler ended OK and set no metadata (the outcome then
        rides in the response token or end marker, ``OUTCOME_OK``)."""
        outcome = self._outcome
        return outcome is None or outcome.folds()

    def respond(self, payload: bytes) -> bytes:
        """The handler returned ``payload``: its single response token, with the outcome
        folded in (no trailer) when ``folds()``, else the outcome signed into the trailer.
        (The sync unary behavior tests ``_outcome is None`` itself and seals at once.)"""
        outcome = self._outcome
        if outcome is None or outcome.folds():
            return self.seal_response(payload, OUTCOME_OK)
        self.seal_status()
        return self.seal_response(payload)

    def end_stream(self, outbound: Any) -> bytes:
        """The handler's response stream ended: its end marker, with the outcome folded in
        when ``folds()``, else the outcome signed into the trailer."""
        if self.folds():
            return outbound.end(OUTCOME_OK)  # type: ignore[no-any-return]
        self.seal_status()
        return outbound.end()  # type: ignore[no-any-return]

    def abort(self, code: Any, details: str = "") -> None:
        outcome = self._outcome or _NOTHING_SET
        self._context.set_trailing_metadata((*outcome.trailing, self._status_entry(code, details)))
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
            outcome = self._set()
            outcome.trailing = tuple(trailing_metadata)
            outcome.trailing_keys = app_keys(outcome.trailing)
        entry = self._status_entry(code, details)
        trailing = (self._outcome or _NOTHING_SET).trailing
        await self._context.abort(code, details, (*trailing, entry))


def unverified_metadata(context: Any) -> tuple[Any, ...]:
    """The request metadata of the current call that no signature covers: what proxies
    (``x-forwarded-for``, ``x-request-id``, ``x-envoy-*``), gRPC itself (``user-agent``) or
    anyone on the path added. Never trust it for a security decision.

    Raises ``TypeError`` for a context that is not an rpcsec handler's."""
    if not isinstance(context, VerifiedContext):
        raise TypeError("not the servicer context of a call rpcsec verified")
    return context.split_metadata()[1]
