"""The built-in security packages, registered lazily so optional backends load on demand."""

from __future__ import annotations

from rpcsec.sspi._package import SecurityPackage, register_package

__all__: list[str] = []


def _x509() -> SecurityPackage:
    from rpcsec.packages.x509 import X509Package

    return X509Package()


def _ntlm() -> SecurityPackage:
    from rpcsec.packages.ntlm import NtlmPackage

    return NtlmPackage()


def _kerberos() -> SecurityPackage:
    from rpcsec.packages.kerberos import KerberosPackage

    return KerberosPackage()


def _negotiate() -> SecurityPackage:
    from rpcsec.packages.negotiate import NegotiatePackage

    return NegotiatePackage()


register_package("x509", _x509)
register_package("ntlm", _ntlm)
register_package("kerberos", _kerberos)
register_package("negotiate", _negotiate)
