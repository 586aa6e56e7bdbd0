"""ImpersonateSecurityContext / RevertSecurityContext on ``contextvars``.

A context variable follows the logical flow of control: each thread and each asyncio task
sees its own value, and a task inherits the value current when it was created. That is the
Python equivalent of a thread's impersonation token.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

from ._token import AccessToken

__all__ = ["ImpersonationScope", "current_token", "impersonate", "revert_to_self"]

_current: contextvars.ContextVar[AccessToken | None] = contextvars.ContextVar(
    "rpcsec_impersonation", default=None
)


def current_token() -> AccessToken | None:
    """The token being impersonated here, or None when running as the process itself."""
    return _current.get()


class ImpersonationScope:
    """The handle ``impersonate`` returns: ``revert()`` ends it (RevertSecurityContext)."""

    __slots__ = ("_reset", "token")

    def __init__(self, token: AccessToken, reset: contextvars.Token[AccessToken | None]):
        self.token = token
        self._reset: contextvars.Token[AccessToken | None] | None = reset

    def revert(self) -> None:
        """Return to whatever identity was current before ``impersonate`` (idempotent)."""
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
    if not isinstance(token, AccessToken):
        raise TypeError("impersonate() needs an AccessToken")
    return ImpersonationScope(token, _current.set(token))


@contextmanager
def revert_to_self() -> Iterator[None]:
    """Temporarily run as the process itself inside an impersonation scope (RevertToSelf)."""
    reset = _current.set(None)
    try:
        yield
    finally:
        _current.reset(reset)
