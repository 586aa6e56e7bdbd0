"""The ``kerberos`` security package: Kerberos V5 through python-gssapi against MIT krb5.

Mutual authentication (AP-REP), delegation by forwarded TGT, and per-message protection by
the core's AES-256-GCM keyed from the GSS session key (as SMB 3 does, MS-SMB2 §3.1.4.2), so
contexts export and import like every other package's. python-gssapi is optional (the
``kerberos`` extra); without it the package is listed by ``enumerate_security_packages()`` as
unavailable, with the reason.

Credentials::

    acquire_credentials_handle("kerberos", "alice@KRBTEST.COM", OUTBOUND, ccache="FILE:/tmp/cc")
    acquire_credentials_handle("kerberos", "storage/localhost@KRBTEST.COM", INBOUND,
                               keytab="/etc/storage.keytab", rcache="file2:/var/tmp/storage.rc")

Targets are ``service@host`` (hostbased) or ``service/host@REALM``. Context options:
``channel_bindings`` (bytes, e.g. a TLS exporter value) bound into the AP-REQ with the offer.
"""

from ._credentials import KerberosCredentials
from ._package import KerberosPackage

__all__ = ["KerberosCredentials", "KerberosPackage"]
