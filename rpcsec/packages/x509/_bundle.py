"""Identity bundles: one directory a service or client loads, without the authority's key.

``rpcsec authority issue DIR NAME --bundle OUT`` writes three PEM files under the names
spiffe-helper's documented configuration uses (SPIRE's helper that writes a workload's
X509-SVID to disk: ``svid_file_name``, ``svid_key_file_name``, ``svid_bundle_file_name``),
so a directory spiffe-helper keeps up to date with that configuration loads the same way::

    OUT/svid.pem         the SVID's certificate chain: leaf first, then any intermediates
    OUT/svid_key.pem     its private key (PKCS#8 PEM, mode 0600)
    OUT/svid_bundle.pem  the trust bundle: the root certificates peers must chain to

The directory is created 0700. ``acquire_credentials_handle("x509", None, use, bundle=OUT)``
loads it (``_credential.load_credential``); ``root.key`` is never read or copied.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

from ._keys import write_private_file

__all__ = ["BUNDLE_FILES", "BundlePaths", "bundle_paths", "write_bundle"]

BUNDLE_FILES = ("svid.pem", "svid_key.pem", "svid_bundle.pem")


@dataclass(frozen=True, slots=True)
class BundlePaths:
    """Where a bundle's three files are."""

    directory: pathlib.Path
    certificate: pathlib.Path
    key: pathlib.Path
    trust: pathlib.Path


def bundle_paths(directory: str | os.PathLike[str]) -> BundlePaths:
    path = pathlib.Path(directory)
    cert, key, trust = (path / name for name in BUNDLE_FILES)
    return BundlePaths(path, cert, key, trust)


def write_bundle(
    directory: str | os.PathLike[str],
    certificate_pem: bytes,
    key_pem: bytes,
    trust_pem: bytes,
) -> BundlePaths:
    """Write (or replace) a bundle: the key 0600 from creation, the directory 0700.

    Refuses a path that exists and is not a directory (``NotADirectoryError``).
    """
    paths = bundle_paths(directory)
    if paths.directory.exists() and not paths.directory.is_dir():
        raise NotADirectoryError(f"{paths.directory} exists and is not a directory")
    paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(paths.directory, 0o700)
    write_private_file(paths.key, key_pem)
    for target, data in ((paths.certificate, certificate_pem), (paths.trust, trust_pem)):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return paths
