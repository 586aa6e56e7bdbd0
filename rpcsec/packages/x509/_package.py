"""``X509Package``: the embedded default security package (SPIFFE X509-SVIDs over TLS 1.3)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rpcsec.sspi._credentials import Credentials
from rpcsec.sspi._errors import UnsupportedFunctionError
from rpcsec.sspi._flags import ContextReq, CredentialUse, ImpersonationLevel, PackageCapability
from rpcsec.sspi._package import Mechanism, SecurityPackage
from rpcsec.sspi._protection import AeadProtector, MessageProtector
from rpcsec.sspi._target import AnyServer

from ._credential import X509Credential, load_credential
from ._delegation import export_x509_delegation, import_x509_delegation
from ._mechanism import _NO_TARGET, X509ClientMechanism, X509ServerMechanism
from ._spiffe import parse_spiffe_id

__all__ = ["X509Package"]


class X509Package(SecurityPackage):
    """Mutual TLS 1.3 with SPIFFE X509-SVIDs; delegation by RFC 3820 proxy certificates.

    Credential options (AcquireCredentialsHandle): ``cert``, ``key``, ``trust`` (paths or PEM
    bytes; ``cert`` may hold intermediates after the leaf), or ``authority_dir`` + ``name``
    for an identity from ``rpcsec authority``. Client context options: ``delegate_to`` (the
    SPIFFE IDs a delegate may call as you), ``delegation_depth`` (how many more times it may
    delegate, default 1), ``proxy_lifetime`` (seconds, default 3600). Server context
    options: ``accept_delegation`` (default True). Both sides: ``clock_skew`` (seconds of
    certificate-validity slack, default 300).

    Target names are the server's SPIFFE ID, required; ``rpcsec.ANY_SERVER`` accepts any
    server of the trust domain (dangerous: see its docstring). Servers must hold the
    serverAuth key purpose, clients clientAuth.
    """

    name: ClassVar[str] = "x509"
    comment: ClassVar[str] = "X.509 SPIFFE identities over TLS 1.3, RFC 3820 proxy delegation"
    capabilities: ClassVar[PackageCapability] = (
        PackageCapability.INTEGRITY
        | PackageCapability.PRIVACY
        | PackageCapability.CONNECTION
        | PackageCapability.DATAGRAM
        | PackageCapability.STREAM
        | PackageCapability.MUTUAL_AUTH
        | PackageCapability.IMPERSONATION
        | PackageCapability.DELEGATION
    )
    max_token: ClassVar[int] = 65536

    def acquire_credentials(
        self, principal: str | None, use: CredentialUse, options: dict[str, Any]
    ) -> X509Credential:
        if principal is not None and not isinstance(principal, str):
            raise TypeError("principal must be a SPIFFE ID string or None")
        return load_credential(principal, options)

    def client_mechanism(
        self,
        credentials: Any,
        *,
        target_name: str | None,
        requested: ContextReq,
        impersonation: ImpersonationLevel,
        options: dict[str, Any],
        clock: Callable[[], float],
    ) -> Mechanism:
        return X509ClientMechanism(
            self,
            credentials,
            target_name=target_name,
            requested=requested,
            impersonation=impersonation,
            options=options,
            clock=clock,
        )

    def server_mechanism(
        self,
        credentials: Any,
        *,
        requested: ContextReq,
        options: dict[str, Any],
        clock: Callable[[], float],
    ) -> Mechanism:
        return X509ServerMechanism(
            self, credentials, requested=requested, options=options, clock=clock
        )

    def check_target_name(self, target_name: str | None) -> None:
        """A SPIFFE ID (``spiffe://TRUST-DOMAIN/svc/NAME``), or ``ANY_SERVER``; never None:
        without a name, any identity of the trust domain with a server certificate would do."""
        if target_name is None:
            raise ValueError(_NO_TARGET)
        if not isinstance(target_name, AnyServer):
            parse_spiffe_id(target_name)

    def import_protector(self, outbound: bytes, inbound: bytes, datagram: bool) -> MessageProtector:
        return AeadProtector(outbound, inbound, datagram=datagram)

    def export_delegation(self, credentials: Credentials) -> bytes:
        """The proxy chain and this context's fresh proxy key (``_delegation``), never the
        service's own key. WARNING: the bytes act as the caller; only a sealed ticket holds
        them. ``UnsupportedFunctionError`` for a chain too large for a ticket."""
        material = credentials.material
        if credentials.package is not self or not isinstance(material, X509Credential):
            raise ValueError("these are not x509 credentials")
        try:
            return export_x509_delegation(material)
        except OverflowError as exc:
            raise UnsupportedFunctionError(str(exc)) from exc

    def import_delegation(self, blob: bytes, owner: Credentials | None = None) -> Credentials:
        """OUTBOUND credentials acting as the chain's principal, proven by ``owner``'s identity
        (the importing service's credentials): the chain is verified again against its trust
        anchors and must have been delegated to it."""
        if owner is None or owner.package is not self:
            raise ValueError("x509 delegation is imported with the service's x509 credentials")
        material = import_x509_delegation(blob, owner.material)
        return Credentials(
            package=self,
            principal=material.principal,
            use=CredentialUse.OUTBOUND,
            material=material,
        )
