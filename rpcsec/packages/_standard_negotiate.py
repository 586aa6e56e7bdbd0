"""Standard mode for the negotiate package: RFC 4178 SPNEGO as MIT, curl and browsers speak it.

The negotiate package's own handshake frames SPNEGO with an offer record and a grant
(``negotiate.py``); a standard peer sends bare NegTokenInit / NegTokenResp tokens. Standard
mode accepts those through MIT's SPNEGO mechanism with the handle's Kerberos half
(``kerberos._standard``): Kerberos inside SPNEGO, and a bare Kerberos token too (RFC 4559
servers such as mod_auth_gssapi accept both). NTLM inside standard SPNEGO needs gss-ntlmssp,
which this package does not enable; the standard NTLM path is the ``ntlm`` package over the
``NTLM`` scheme. Delegated credentials arrive as kerberos-package credentials.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rpcsec.sspi._errors import NoCredentialsError
from rpcsec.sspi._flags import ContextReq
from rpcsec.sspi._package import Mechanism, SecurityPackage, get_package

__all__ = ["standard_client", "standard_server"]

MAGIC = b"RG"  # the negotiate package's frame (negotiate.MAGIC)


def _kerberos_half(credentials: Any) -> Any:
    kerberos = getattr(credentials, "kerberos", None)
    if kerberos is None:
        raise NoCredentialsError(
            "standard SPNEGO needs the Kerberos half of the negotiate credentials"
        )
    return kerberos


def standard_server(
    credentials: Any,
    requested: ContextReq,
    options: dict[str, Any],
    clock: Callable[[], float],
    extended: Callable[[dict[str, Any]], Mechanism],
) -> Mechanism:
    """The hook for ``options["standard"]`` on the negotiate package's AcceptSecurityContext:
    standard SPNEGO / Kerberos initiators, and rpcsec's framed handshake unless ``"only"``."""
    from rpcsec.packages._standard import AutoServer
    from rpcsec.packages.kerberos._standard import StandardServer

    kerberos = _kerberos_half(credentials)
    package: SecurityPackage = get_package("kerberos")
    standard = lambda: StandardServer(package, kerberos, clock=clock)  # noqa: E731
    if options["standard"] == "only":
        return standard()
    rest = {k: v for k, v in options.items() if k != "standard"}
    return AutoServer(lambda: extended(rest), standard, MAGIC)


def standard_client(
    credentials: Any,
    target_name: str | None,
    requested: ContextReq,
    options: dict[str, Any],
    clock: Callable[[], float],
) -> Mechanism:
    """The hook for ``options["standard"]`` on the negotiate package's
    InitializeSecurityContext: a bare SPNEGO NegTokenInit carrying Kerberos."""
    from rpcsec.packages.kerberos._standard import Mech, StandardClient

    return StandardClient(
        _kerberos_half(credentials),
        target_name=target_name,
        requested=requested,
        clock=clock,
        mech=Mech.SPNEGO,
    )
