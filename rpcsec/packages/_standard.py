"""What every package's standard mode has in common: the bare per-message calls.

A context established in standard mode (``options={"standard": ...}``, see
``kerberos._standard`` and ``_standard_negotiate``) talks to a peer that knows nothing of
rpcsec, so its messages are the mechanism's own tokens (RFC 2743 §2.3: GSS_Wrap, GSS_Unwrap,
GSS_GetMIC, GSS_VerifyMIC), not the core's header-carrying format. ``standard_messages``
returns those calls for a standard context and None for one in rpcsec's extended mode, which
is also how a binding tells the two modes apart.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from rpcsec.sspi._errors import InvalidTokenError
from rpcsec.sspi._package import Mechanism

__all__ = ["AutoServer", "StandardMessages", "is_standard", "standard_messages"]


class StandardMessages(ABC):
    """The RFC 2743 per-message calls of a standard-mode context (mechanism tokens)."""

    @abstractmethod
    def gss_wrap(self, data: bytes, *, encrypt: bool) -> bytes:
        """GSS_Wrap: one token holding ``data`` (encrypted when ``encrypt``)."""

    @abstractmethod
    def gss_unwrap(self, token: bytes) -> tuple[bytes, bool]:
        """GSS_Unwrap: (data, whether it was encrypted); ``SecurityError`` if it fails."""

    @abstractmethod
    def gss_get_mic(self, data: bytes) -> bytes:
        """GSS_GetMIC over ``data``."""

    @abstractmethod
    def gss_verify_mic(self, data: bytes, mic: bytes) -> None:
        """GSS_VerifyMIC; ``SecurityError`` if ``mic`` is not the peer's over ``data``."""


def standard_messages(context: Any) -> StandardMessages | None:
    """The bare message calls of an established standard-mode context, else None."""
    if not getattr(context, "complete", False):
        return None
    protector = getattr(context, "_protector", None)
    return protector if isinstance(protector, StandardMessages) else None


def is_standard(context: Any) -> bool:
    """Whether an established context speaks the standard protocol (no rpcsec extensions)."""
    return standard_messages(context) is not None


class AutoServer(Mechanism):
    """Either mode, chosen by the client's first token: rpcsec's frame (``RK``) selects the
    extended handshake (``extended()``), a bare GSS token the standard one. The extended mode
    is never entered from a standard token nor the other way round, so each keeps its own
    guarantees; a server that must have the extended ones leaves ``standard`` off."""

    def __init__(
        self,
        extended: Callable[[], Mechanism],
        standard: Callable[[], Mechanism],
        magic: bytes,
    ) -> None:
        self._extended = extended
        self._standard = standard
        self._magic = magic
        self._inner: Mechanism | None = None

    def step(self, token: bytes | None) -> bytes | None:
        if self._inner is None:
            if token is None:
                raise InvalidTokenError("server needs the client's token")
            rpcsec_frame = token.startswith(self._magic)
            self._inner = self._extended() if rpcsec_frame else self._standard()
        out = self._inner.step(token)
        self.complete = self._inner.complete
        self.result = self._inner.result
        return out
