"""Credentials handles (AcquireCredentialsHandle / FreeCredentialsHandle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._export import ImportLedger
from ._flags import CredentialUse
from ._package import SecurityPackage, get_package

__all__ = ["Credentials", "acquire_credentials_handle"]


@dataclass(frozen=True, slots=True, eq=False)
class Credentials:
    """A credentials handle: the package, the principal it speaks for, and opaque material.

    The material (keys, passwords, tickets) is package-private and never printed; the options
    it was acquired with are not kept (they may hold passwords or inline PEM keys).
    ``import_ledger`` remembers which exported contexts were imported with this handle (each
    opens once per handle: see ``import_security_context``).
    """

    package: SecurityPackage
    principal: str | None
    use: CredentialUse
    material: Any = field(repr=False)
    import_ledger: ImportLedger = field(default_factory=ImportLedger, repr=False, compare=False)

    @property
    def package_name(self) -> str:
        return self.package.name

    def __repr__(self) -> str:
        return (
            f"Credentials(package={self.package.name!r}, principal={self.principal!r}, "
            f"use={self.use.name})"
        )


def acquire_credentials_handle(
    package: str,
    principal: str | None = None,
    use: CredentialUse = CredentialUse.OUTBOUND,
    **options: Any,
) -> Credentials:
    """AcquireCredentialsHandle: load the credentials ``package`` will use for ``principal``.

    Options are package-specific (x509: ``cert``, ``key``, ``trust``; ntlm: ``password``,
    ``user_file``; kerberos: ``keytab``, ``ccache``). Raises ``NoCredentialsError`` when the
    package is unknown, unavailable, or finds nothing usable.
    """
    if not isinstance(use, CredentialUse):
        raise TypeError("use must be a CredentialUse")
    pkg = get_package(package)
    material = pkg.acquire_credentials(principal, use, dict(options))
    # A package may resolve the principal itself (x509: the certificate's SPIFFE ID).
    resolved = getattr(material, "principal", principal)
    return Credentials(package=pkg, principal=resolved, use=use, material=material)
