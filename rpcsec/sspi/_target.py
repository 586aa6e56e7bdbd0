"""Target names: whom a client context must authenticate (InitializeSecurityContext's
pszTargetName), checked for syntax when the context -- or a channel -- is made.

Each package says what its target names look like (``SecurityPackage.check_target_name``):
x509 takes a SPIFFE ID, the GSS-based packages a service name (``service@host``, RFC 2743
§4.1 GSS_C_NT_HOSTBASED_SERVICE, or a Kerberos SPN ``service/host[@REALM]``). A package that
can prove the server's identity (MUTUAL_AUTH) needs a target: with none, the client would
accept whichever server of the realm or trust domain answers. ``ANY_SERVER`` is the explicit,
dangerous opt-out for packages that support it (x509 only).

Malformed names are the caller's mistake: ``TypeError`` / ``ValueError`` at once, not a
security error from the first leg.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._credentials import Credentials

__all__ = ["ANY_SERVER", "AnyServer", "check_service_name", "check_target_name"]

MAX_TARGET_NAME = 1024


class AnyServer(str):
    """The type of ``ANY_SERVER`` (a ``str`` so package signatures stay ``str | None``)."""

    __slots__ = ()

    def __new__(cls) -> AnyServer:
        return super().__new__(cls, "<any server>")

    def __repr__(self) -> str:
        return "ANY_SERVER"


ANY_SERVER = AnyServer()
"""Accept any server the trust anchors vouch for, whoever it is.

WARNING: dangerous. Any identity of the trust domain that holds a server certificate can then
answer as the service you meant to call and read what you send. Give the server's name
instead (x509: ``spiffe://TRUST-DOMAIN/svc/NAME``); use this only for tools whose job is to
talk to whatever service is there (health probes, discovery), never to send secrets.
"""


def _forbidden(ch: str) -> bool:
    return ord(ch) < 0x21 or ord(ch) == 0x7F


def check_service_name(target_name: object) -> str:
    """A GSS service name: hostbased ``service@host`` or SPN ``service/host[@REALM]``.

    Raises ``TypeError`` (not a string) or ``ValueError`` (anything else wrong).
    """
    if not isinstance(target_name, str):
        raise TypeError("target_name must be a string such as 'service@host'")
    if not target_name or len(target_name) > MAX_TARGET_NAME:
        raise ValueError("target_name must be 1 to 1024 characters")
    if any(_forbidden(ch) for ch in target_name):
        raise ValueError("target_name may not contain spaces or control characters")
    if "/" in target_name:
        spn, _, realm = target_name.partition("@")
        parts = spn.split("/")
        if any(not part for part in parts) or (("@" in target_name) and not realm):
            raise ValueError(f"not a service principal 'service/host[@REALM]': {target_name!r}")
        if "@" in realm or "/" in realm:
            raise ValueError(f"not a service principal 'service/host[@REALM]': {target_name!r}")
        return target_name
    service, sep, host = target_name.partition("@")
    if not sep or not service or not host or "@" in host:
        raise ValueError(
            f"target_name must be 'service@host' or 'service/host@REALM', not {target_name!r}"
        )
    return target_name


def check_target_name(credentials: Credentials, target_name: str | None) -> None:
    """Check ``target_name`` for the package of ``credentials`` (``secure_channel`` and
    ``initialize_security_context`` call this before anything is sent).

    Raises ``TypeError`` / ``ValueError`` when the name is malformed, missing where the
    package authenticates the server, or ``ANY_SERVER`` where the package cannot honour it.
    """
    credentials.package.check_target_name(target_name)
