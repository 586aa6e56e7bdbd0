"""Failures the *client* detects, raised as what gRPC users catch (issue 10 item 6).

A response that does not verify (altered, replayed, pasted from another call, truncated)
surfaces as the ``SecurityError`` subclass that names it *and* as a ``grpc.RpcError`` with
``code()``, ``details()`` and ``trailing_metadata()`` (the reason under ``rpcsec-reason``), so
``except grpc.RpcError`` catches it like any failed call and ``except MessageAlteredError``
still works. The status is the one a server would have sent for the same failure
(``_status.status_for``); nothing from the network is copied into it.
"""

from __future__ import annotations

from typing import Any

import grpc

from rpcsec.sspi import ContextExpiredError, SecurityError

from ._status import REASON_KEY, details_for, reason_of, status_for

__all__ = ["ClientDetected", "as_rpc_error", "typed_expiry"]


class ClientDetected(grpc.RpcError):
    """Mixed into a ``SecurityError`` subclass: the ``grpc.Call`` view of the failure."""

    def code(self) -> grpc.StatusCode:
        assert isinstance(self, SecurityError)
        return status_for(self)

    def details(self) -> str:
        assert isinstance(self, SecurityError)
        return details_for(self.reason)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        assert isinstance(self, SecurityError)
        return ((REASON_KEY, self.reason),)

    def initial_metadata(self) -> tuple[Any, ...]:
        return ()


_CLASSES: dict[type[SecurityError], type[SecurityError]] = {}


def typed_expiry(error: BaseException) -> BaseException:
    """A stream the server ended because the context's lifetime ran out (``expired``) as a
    ``ContextExpiredError`` that is also a ``grpc.RpcError``; any other error as it is."""
    if reason_of(error) != "expired":
        return error
    return as_rpc_error(ContextExpiredError("the server ended the stream: the context expired"))


def as_rpc_error(error: SecurityError) -> SecurityError:
    """``error`` as an instance of its class mixed with ``ClientDetected`` (made once per
    class); an error that already is one is returned as it is."""
    if isinstance(error, ClientDetected):
        return error
    base = type(error)
    cls = _CLASSES.get(base)
    if cls is None:
        cls = _CLASSES[base] = type(base.__name__, (base, ClientDetected), {})
        cls.__module__ = base.__module__
        cls.__qualname__ = base.__qualname__
    converted = cls.__new__(cls)
    converted.__dict__.update(error.__dict__)
    converted.args = error.args
    converted.__cause__ = error.__cause__
    converted.__traceback__ = error.__traceback__
    return converted
