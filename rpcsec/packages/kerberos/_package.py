"""KerberosPackage: the SecurityPackage that ties the kerberos modules together."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rpcsec.sspi._credentials import Credentials
from rpcsec.sspi._errors import NoCredentialsError
from rpcsec.sspi._flags import ContextReq, CredentialUse, ImpersonationLevel
from rpcsec.sspi._package import Mechanism, SecurityPackage
from rpcsec.sspi._protection import AeadProtector, MessageProtector

from ._credentials import KerberosCredentials, acquire
from ._delegation import export_kerberos_credentials, import_kerberos_credentials
from ._handshake import CAPABILITIES, KerberosClient, KerberosServer
from ._native import gssapi_unavailable_reason
from ._standard import standard_client, standard_server

__all__ = ["KerberosPackage"]


def _material(credentials: Any) -> KerberosCredentials:
    if not isinstance(credentials, KerberosCredentials):
        raise NoCredentialsError("these are not kerberos credentials")
    return credentials


class KerberosPackage(SecurityPackage):
    """MIT Kerberos V5 through python-gssapi: mutual authentication and delegation."""

    name = "kerberos"
    comment = "Kerberos V5 (RFC 4120/4121) through python-gssapi and MIT krb5"
    capabilities = CAPABILITIES
    max_token = 48000

    def availability(self) -> tuple[bool, str]:
        reason = gssapi_unavailable_reason()
        return (reason is None, reason or "")

    def acquire_credentials(
        self, principal: str | None, use: CredentialUse, options: dict[str, Any]
    ) -> KerberosCredentials:
        return acquire(principal, use, options)

    def client_mechanism(
        self,
        credentials: Any,
        *,
        target_name: str | None,
        requested: ContextReq,
        impersonation: ImpersonationLevel,
        options: dict[str, Any],
        clock: Callable[[], float] = time.time,
    ) -> Mechanism:
        if options.get("standard"):  # bare GSS tokens for a standard peer (_standard.py)
            return standard_client(self, credentials, target_name, requested, options, clock)
        return KerberosClient(
            _material(credentials),
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
        clock: Callable[[], float] = time.time,
    ) -> Mechanism:
        if options.get("standard"):  # also accept standard peers (_standard.py)
            return standard_server(self, credentials, requested, options, clock)
        return KerberosServer(
            self, _material(credentials), requested=requested, options=options, clock=clock
        )

    def import_protector(self, outbound: bytes, inbound: bytes, datagram: bool) -> MessageProtector:
        """ImportSecurityContext: the direction secrets were derived from the GSS session key
        when the context was established, so no GSS context is needed to go on."""
        return AeadProtector(outbound, inbound, datagram=datagram)

    def export_delegation(self, credentials: Credentials) -> bytes:
        """The forwarded TGT of delegated credentials (gss_export_cred), with the chain."""
        if credentials.package is not self:
            raise ValueError("these are not kerberos credentials")
        return export_kerberos_credentials(_material(credentials.material))

    def import_delegation(self, blob: bytes, owner: Credentials | None = None) -> Credentials:
        """OUTBOUND credentials from ``export_delegation`` (gss_import_cred, after checks)."""
        material, _ = import_kerberos_credentials(blob)
        return Credentials(
            package=self,
            principal=material.principal,
            use=CredentialUse.OUTBOUND,
            material=material,
        )
