"""Which context attributes a binding asks for, and which it insists were granted.

SSPI leaves the check of the granted attributes to the caller (seed, "Context Requirements":
"The caller is responsible for determining whether the final context attributes are
acceptable"). The bindings make that decision once, here: the protection level needs
INTEGRITY (and CONFIDENTIALITY for privacy), an ordered transport adds SEQUENCE_DETECT, and
MUTUAL_AUTH is required whenever the package is able to prove the server's identity, so a
package that can give it cannot be talked out of it; ntlm, which cannot, still works.
"""

from __future__ import annotations

from dataclasses import dataclass

from rpcsec.sspi import ContextReq, Credentials, PackageCapability, ProtectionLevel

__all__ = ["ClientRequirements", "client_requirements", "server_requirements"]


@dataclass(frozen=True, slots=True)
class ClientRequirements:
    """What InitializeSecurityContext is asked for, and what ``ctx.require`` then checks."""

    requested: ContextReq
    required: ContextReq


def _protection_flags(protection: ProtectionLevel, *, ordered: bool) -> ContextReq:
    if not isinstance(protection, ProtectionLevel):
        raise TypeError("protection must be a ProtectionLevel")
    if protection is ProtectionLevel.NONE:
        raise ValueError("the transports always protect messages: use INTEGRITY or PRIVACY")
    flags = ContextReq.INTEGRITY | ContextReq.REPLAY_DETECT
    if ordered:
        flags |= ContextReq.SEQUENCE_DETECT
    if protection is ProtectionLevel.PRIVACY:
        flags |= ContextReq.CONFIDENTIALITY
    return flags


def client_requirements(
    credentials: Credentials,
    protection: ProtectionLevel,
    requirements: ContextReq | None = None,
    *,
    ordered: bool = True,
    stream: bool = False,
) -> ClientRequirements:
    """The flags a client binding requests and requires.

    ``requirements`` (if given) is added to both: the caller may insist on more than the
    defaults (e.g. MUTUAL_AUTH with any package, DELEGATE) but never on less than the
    protection level needs.
    """
    if not isinstance(credentials, Credentials):
        raise TypeError("credentials must come from acquire_credentials_handle()")
    if requirements is not None and not isinstance(requirements, ContextReq):
        raise TypeError("requirements must be ContextReq flags")
    needed = _protection_flags(protection, ordered=ordered)
    if stream:
        if protection is not ProtectionLevel.PRIVACY:
            raise ValueError("stream contexts encrypt every record: use ProtectionLevel.PRIVACY")
        needed |= ContextReq.STREAM
    required = needed
    if credentials.package.capabilities & PackageCapability.MUTUAL_AUTH:
        required |= ContextReq.MUTUAL_AUTH
    if requirements is not None:
        required |= requirements
    requested = required | ContextReq.MUTUAL_AUTH
    if not stream:
        requested |= ContextReq.CONNECTION
    return ClientRequirements(requested=requested.normalized(), required=required.normalized())


def server_requirements(protection: ProtectionLevel, *, ordered: bool = True) -> ContextReq:
    """What AcceptSecurityContext insists on: the handshake fails if the client did not
    offer it (``decide_grant``), so a client cannot downgrade a server's protection level."""
    return _protection_flags(protection, ordered=ordered)
