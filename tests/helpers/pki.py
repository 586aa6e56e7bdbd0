"""A throw-away x509 authority for tests: ``make_authority(tmp_path)``.

Issues users alice (groups staff, editors) and bob (group staff) and services documents and
storage, then hands out ``rpcsec.sspi.Credentials`` for them::

    pki = make_authority(tmp_path)
    alice = pki.credentials("alice")                      # OUTBOUND
    docs = pki.credentials("documents", CredentialUse.INBOUND)
    ctx = initialize_security_context(alice, pki.id("documents"))
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from rpcsec.packages.x509 import Authority as _Authority
from rpcsec.sspi import Credentials, CredentialUse, acquire_credentials_handle

__all__ = ["GROUPS", "SERVICES", "USERS", "Authority", "make_authority"]

USERS = ("alice", "bob")
SERVICES = ("documents", "storage")
GROUPS = {"alice": ("staff", "editors"), "bob": ("staff",)}


@dataclass
class Authority:
    """A temporary authority directory with the standard test identities issued."""

    path: pathlib.Path
    trust_domain: str
    ca: _Authority = field(repr=False)

    def id(self, name: str) -> str:
        """The SPIFFE ID of a test identity (``alice`` -> ``spiffe://TD/user/alice``)."""
        return self.ca.locate(name).spiffe_id

    def credentials(
        self, name: str, use: CredentialUse = CredentialUse.OUTBOUND, **options: object
    ) -> Credentials:
        """``acquire_credentials_handle("x509", ...)`` for an identity of this authority."""
        return acquire_credentials_handle(
            "x509", None, use, authority_dir=str(self.path), name=name, **options
        )

    def issue(self, name: str, **kwargs: object) -> str:
        """Issue one more identity (see ``rpcsec.packages.x509.Authority.issue``)."""
        return self.ca.issue(name, **kwargs).spiffe_id  # type: ignore[arg-type]

    @property
    def trust_bundle(self) -> pathlib.Path:
        return self.ca.trust_bundle_path


def make_authority(tmp_path: pathlib.Path, trust_domain: str = "rpcsec.test") -> Authority:
    """Create an authority under ``tmp_path`` with alice, bob, documents and storage."""
    directory = pathlib.Path(tmp_path) / f"authority-{trust_domain}"
    ca = _Authority.init(directory, trust_domain)
    for user in USERS:
        ca.issue(user, groups=GROUPS.get(user, ()))
    for service in SERVICES:
        ca.issue(service, service=True)
    return Authority(directory, trust_domain, ca)
