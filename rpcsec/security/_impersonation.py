"""ImpersonateSecurityContext / RevertSecurityContext on ``contextvars``.

A context variable follows the logical flow of control: each thread and each asyncio task
sees its own value, and a task inherits the value current when it was created. That is the
Python equivalent of a thread's impersonation token.

With an ``FsIdentityMap`` installed (``set_fs_identity_map``), impersonating also switches the
OS thread's filesystem identity (``_fsidentity``); without one, ``_fs_switch`` is None and
costs one check. Every impersonation is an audit event (``_audit``).
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from . import _audit
from ._token import AccessToken

__all__ = [
    "CallerSteps",
    "ImpersonationScope",
    "current_token",
    "impersonate",
    "revert_to_self",
    "run_as",
    "run_as_async",
]

_T = TypeVar("_T")

# Set by ``set_fs_identity_map``: switches this thread's filesystem identity to a token's and
# returns what restores it (or None when it did not switch); raises to refuse the token.
_fs_switch: Callable[[AccessToken], Callable[[], None] | None] | None = None

_modules = sys.modules
_current: contextvars.ContextVar[AccessToken | None] = contextvars.ContextVar(
    "rpcsec_impersonation", default=None
)


def current_token() -> AccessToken | None:
    """The token being impersonated here, or None when running as the process itself."""
    return _current.get()


class ImpersonationScope:
    """The handle ``impersonate`` returns: ``revert()`` ends it (RevertSecurityContext)."""

    __slots__ = ("_reset", "_restore", "token")

    def __init__(
        self,
        token: AccessToken,
        reset: contextvars.Token[AccessToken | None],
        restore: Callable[[], None] | None = None,
    ):
        self.token = token
        self._reset: contextvars.Token[AccessToken | None] | None = reset
        self._restore = restore

    def revert(self) -> None:
        """Return to whatever identity was current before ``impersonate`` (idempotent)."""
        restore = self._restore
        if restore is not None:
            restore()  # raises on another thread: kept, so the right thread can still revert
            self._restore = None
        if self._reset is not None:
            _current.reset(self._reset)
            self._reset = None

    def __enter__(self) -> AccessToken:
        return self.token

    def __exit__(self, *exc: object) -> None:
        self.revert()


def impersonate(token: AccessToken) -> ImpersonationScope:
    """Run as ``token`` until ``revert()`` (or the end of a ``with`` block).

    Any token may be impersonated, as SSPI allows at IDENTIFY level; what the token may *do*
    is decided by ``access_check`` (IDENTIFY and ANONYMOUS tokens fail it) and by onward
    calls (which need DELEGATE).
    """
    restore = _enter(token)
    return ImpersonationScope(token, _current.set(token), restore)


def _enter(token: AccessToken) -> Callable[[], None] | None:
    """ImpersonateSecurityContext's checks and side effects before the token is current: the
    token's type, the thread's filesystem identity (may refuse: before anything else), the
    audit event; returns what gives the thread back."""
    if not isinstance(token, AccessToken):
        raise TypeError("impersonate() needs an AccessToken")
    switch = _fs_switch
    restore = switch(token) if switch is not None else None
    try:
        _audit.impersonation(token)
    except BaseException:  # a failing log filter must not leave the thread switched
        if restore is not None:
            restore()
        raise
    return restore


def run_as(token: AccessToken, fn: Callable[..., _T], *args: Any) -> _T:
    """``with impersonate(token): return fn(*args)`` in one frame and no scope object: the
    bindings' per-call form (ImpersonateSecurityContext, the handler, RevertSecurityContext).
    The same checks, filesystem switch and audit event as ``impersonate`` (``_enter``; for an
    ``AccessToken`` without a filesystem identity map, inlined: the audit event only when a
    record or a span could take it, ``_audit``'s two gates)."""
    if _fs_switch is None and token.__class__ is AccessToken:
        restore = None
        if (
            _audit.LOG.isEnabledFor(_audit.IMPERSONATION_LEVEL)
            or _audit.recorders_loaded
            or len(_modules) != _audit.modules_seen
        ):
            _audit.impersonation(token)
    else:
        restore = _enter(token)
    reset = _current.set(token)
    try:
        return fn(*args)
    finally:
        try:
            if restore is not None:
                restore()
        finally:
            _current.reset(reset)


async def run_as_async(token: AccessToken, fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """``run_as`` for a coroutine function, awaited in the current task (an asyncio server's
    handler): ``with impersonate(token): return await fn(*args)`` without a scope object."""
    if _fs_switch is None and token.__class__ is AccessToken:
        restore = None
        if (
            _audit.LOG.isEnabledFor(_audit.IMPERSONATION_LEVEL)
            or _audit.recorders_loaded
            or len(_modules) != _audit.modules_seen
        ):
            _audit.impersonation(token)
    else:
        restore = _enter(token)
    reset = _current.set(token)
    try:
        return await fn(*args)
    finally:
        try:
            if restore is not None:
                restore()
        finally:
            _current.reset(reset)


class CallerSteps:
    """Run a handler's generator step by step as the caller (one impersonation, many steps).

    Each step runs in one context that holds ``token`` (so ``current_token()`` is the caller in
    every step), and, with an ``FsIdentityMap``, on a thread switched to the caller's
    filesystem identity for that step only: a generator resumed on another thread (an aio
    server's pool) is the caller there too, and no thread keeps the identity between steps.
    """

    __slots__ = ("_context", "token")

    def __init__(self, token: AccessToken) -> None:
        if not isinstance(token, AccessToken):
            raise TypeError("CallerSteps needs an AccessToken")
        self.token = token
        self._context = contextvars.copy_context()
        self._context.run(_current.set, token)
        _audit.impersonation(token)

    def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` as the caller, in this call's context, on the current thread."""
        if _fs_switch is None:
            return self._context.run(fn, *args)
        return self._context.run(_as_caller, self.token, fn, args)


def _as_caller(token: AccessToken, fn: Callable[..., _T], args: tuple[Any, ...]) -> _T:
    switch = _fs_switch
    restore = switch(token) if switch is not None else None
    try:
        return fn(*args)
    finally:
        if restore is not None:
            restore()


@contextmanager
def revert_to_self() -> Iterator[None]:
    """Temporarily run as the process itself inside an impersonation scope (RevertToSelf).
    The thread's filesystem identity is the process's for the block as well."""
    from ._fsidentity import as_self

    reset = _current.set(None)
    try:
        with as_self():
            yield
    finally:
        _current.reset(reset)
