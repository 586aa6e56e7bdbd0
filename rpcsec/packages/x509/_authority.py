"""The local certificate authority behind ``rpcsec authority init`` / ``issue``.

An Ed25519 root (``root.crt`` is the trust bundle, ``root.key`` is 0600) that issues SPIFFE
X509-SVIDs: users get ``spiffe://TD/user/NAME``, services ``spiffe://TD/svc/NAME``, groups go in
our groups extension (see ``_extensions``). Layout of an authority directory::

    authority.json        {"version": 1, "trust_domain": "..."}
    root.crt  root.key    the trust anchor and its key (0600)
    user/NAME.crt .key    user identities (keys 0600)
    svc/NAME.crt  .key    service identities (keys 0600)

The root carries its trust domain's own SPIFFE ID as a URI SAN (allowed by X509-SVID §3), so
verifiers only accept SVIDs of that trust domain under it. Any other PKI that issues SVIDs
works as well; this is the zero-setup default.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from ._bundle import BundlePaths, write_bundle
from ._extensions import SERVICE_USAGE, SIGNING_ONLY, USER_USAGE, groups_extension
from ._keys import write_private_file
from ._spiffe import parse_spiffe_id, validate_name, validate_trust_domain

__all__ = ["Authority", "IssuedIdentity", "KINDS"]

_MANIFEST = "authority.json"
_ROOT_CERT = "root.crt"
_ROOT_KEY = "root.key"
KINDS = ("user", "svc")
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate small clock skew between peers


def _utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True, slots=True)
class IssuedIdentity:
    """Where an issued identity's files are, and the SPIFFE ID it proves."""

    spiffe_id: str
    kind: str
    name: str
    certificate_path: pathlib.Path
    key_path: pathlib.Path


class Authority:
    """A local Ed25519 certificate authority for one SPIFFE trust domain.

    Make one with ``Authority.init(directory, trust_domain)``, reopen it with
    ``Authority.open(directory)``. The root key is read only when issuing.
    """

    def __init__(self, directory: pathlib.Path, trust_domain: str, certificate: x509.Certificate):
        self.directory = directory
        self.trust_domain = trust_domain
        self.certificate = certificate

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        directory: str | os.PathLike[str],
        trust_domain: str,
        *,
        days: float = 3650,
        clock: Callable[[], float] = time.time,
    ) -> Authority:
        """Create the root in ``directory`` (created if missing). Refuses to overwrite one."""
        validate_trust_domain(trust_domain)
        if days <= 0:
            raise ValueError("days must be positive")
        path = pathlib.Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        if (path / _ROOT_KEY).exists() or (path / _MANIFEST).exists():
            raise FileExistsError(f"an authority already exists in {path}")
        key = ed25519.Ed25519PrivateKey.generate()
        now = _utc(clock())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                x509.NameAttribute(NameOID.COMMON_NAME, "rpcsec authority"),
            ]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
                ),
                critical=False,
            )
            .sign(key, None)
        )
        write_private_file(path / _ROOT_KEY, _key_pem(key))
        (path / _ROOT_CERT).write_bytes(_pem(cert))
        manifest = {"version": 1, "trust_domain": trust_domain}
        (path / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return cls(path, trust_domain, cert)

    @classmethod
    def open(cls, directory: str | os.PathLike[str]) -> Authority:
        """An existing authority; ``FileNotFoundError`` if ``directory`` holds none."""
        path = pathlib.Path(directory)
        try:
            manifest = json.loads((path / _MANIFEST).read_text())
            cert = x509.load_pem_x509_certificate((path / _ROOT_CERT).read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(f"no authority in {path}") from None
        except (ValueError, TypeError) as exc:
            raise ValueError(f"authority in {path} is damaged") from exc
        if not isinstance(manifest, dict) or manifest.get("version") != 1:
            raise ValueError(f"authority in {path} has an unknown format")
        return cls(path, validate_trust_domain(manifest["trust_domain"]), cert)

    # -- names ----------------------------------------------------------------------------

    @property
    def trust_bundle_path(self) -> pathlib.Path:
        return self.directory / _ROOT_CERT

    def spiffe_id(self, name: str, *, service: bool = False) -> str:
        validate_name(name)
        return f"spiffe://{self.trust_domain}/{'svc' if service else 'user'}/{name}"

    def _paths(self, kind: str, name: str) -> IssuedIdentity:
        folder = self.directory / kind
        return IssuedIdentity(
            spiffe_id=f"spiffe://{self.trust_domain}/{kind}/{name}",
            kind=kind,
            name=name,
            certificate_path=folder / f"{name}.crt",
            key_path=folder / f"{name}.key",
        )

    def locate(self, name: str) -> IssuedIdentity:
        """An issued identity by ``NAME``, ``user/NAME``, ``svc/NAME`` or full SPIFFE ID.

        A bare name must be unambiguous (issued as a user or as a service, not both).
        Raises ``LookupError`` if nothing matches.
        """
        if not isinstance(name, str):
            raise TypeError("name must be a string")
        candidates: list[tuple[str, str]]
        if name.startswith("spiffe://"):
            sid = parse_spiffe_id(name)
            parts = sid.path.strip("/").split("/")
            if sid.trust_domain != self.trust_domain or len(parts) != 2 or parts[0] not in KINDS:
                raise LookupError(f"{name} was not issued by this authority")
            candidates = [(parts[0], parts[1])]
        elif "/" in name:
            kind, _, bare = name.partition("/")
            if kind not in KINDS:
                raise LookupError(f"unknown identity kind in {name!r} (use user/ or svc/)")
            candidates = [(kind, validate_name(bare))]
        else:
            candidates = [(kind, validate_name(name)) for kind in KINDS]
        found = [
            self._paths(kind, bare)
            for kind, bare in candidates
            if (self.directory / kind / f"{bare}.crt").exists()
        ]
        if not found:
            raise LookupError(f"no identity {name!r} in this authority")
        if len(found) > 1:
            raise LookupError(f"{name!r} is both a user and a service: say user/ or svc/")
        return found[0]

    # -- issuing --------------------------------------------------------------------------

    def _root_key(self) -> ed25519.Ed25519PrivateKey:
        key = serialization.load_pem_private_key(
            (self.directory / _ROOT_KEY).read_bytes(), password=None
        )
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("authority root key is not Ed25519")
        return key

    def issue(
        self,
        name: str,
        *,
        service: bool = False,
        groups: Iterable[str] = (),
        days: float = 365,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        clock: Callable[[], float] = time.time,
    ) -> IssuedIdentity:
        """Issue (or re-issue) a leaf SVID and write its certificate and 0600 key.

        ``not_before``/``not_after`` override ``days`` (tests issue already-expired
        certificates this way). The leaf never outlives the root. A service gets the
        serverAuth and clientAuth key purposes; a user clientAuth only, so no user of the
        authority can answer as a service (clients check serverAuth).
        """
        validate_name(name)
        group_list = list(groups)
        if days <= 0:
            raise ValueError("days must be positive")
        now = _utc(clock())
        start = not_before if not_before is not None else now - _BACKDATE
        end = not_after if not_after is not None else now + datetime.timedelta(days=days)
        end = min(end, self.certificate.not_valid_after_utc)
        if end <= start:
            raise ValueError("certificate would end before it starts")
        kind = "svc" if service else "user"
        identity = self._paths(kind, name)
        root_key = self._root_key()
        key = ed25519.Ed25519PrivateKey.generate()
        public = key.public_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.trust_domain),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                SIGNING_ONLY,
                critical=True,
            )
            .add_extension(SERVICE_USAGE if service else USER_USAGE, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.spiffe_id)]),
                critical=False,
            )
        )
        if group_list:
            builder = builder.add_extension(groups_extension(group_list), critical=False)
        cert = builder.sign(root_key, None)
        identity.certificate_path.parent.mkdir(exist_ok=True)
        write_private_file(identity.key_path, _key_pem(key))
        identity.certificate_path.write_bytes(_pem(cert))
        return identity

    # -- bundles ----------------------------------------------------------------------------

    def write_bundle(
        self, name: str | IssuedIdentity, directory: str | os.PathLike[str]
    ) -> BundlePaths:
        """Write an issued identity as a self-contained bundle (see ``_bundle``): its
        certificate, its key (0600) and this authority's trust bundle, never ``root.key``.
        Services and clients load it with ``bundle=directory``."""
        identity = name if isinstance(name, IssuedIdentity) else self.locate(name)
        return write_bundle(
            directory,
            identity.certificate_path.read_bytes(),
            identity.key_path.read_bytes(),
            self.trust_bundle_path.read_bytes(),
        )

    def __repr__(self) -> str:
        return f"Authority(trust_domain={self.trust_domain!r}, directory={str(self.directory)!r})"
