"""The provider interface every security package implements, and the package registry.

Modelled on pyspnego's ``ContextProxy``: one interface, many mechanisms. A package is a
factory (``SecurityPackage``) for credentials and for per-context ``Mechanism`` objects; the
core (``SecurityContext``) owns state, flags, ordering, expiry and the message API, so each
package only authenticates and hands over a ``MessageProtector``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ._errors import NoCredentialsError, UnsupportedFunctionError
from ._flags import ContextReq, CredentialUse, ImpersonationLevel, PackageCapability

if TYPE_CHECKING:
    from rpcsec.security._token import AccessToken

    from ._credentials import Credentials
    from ._protection import MessageProtector

__all__ = [
    "Mechanism",
    "PackageInfo",
    "SecurityPackage",
    "enumerate_security_packages",
    "get_package",
    "query_security_package_info",
    "register_package",
]


@dataclass(frozen=True, slots=True)
class PackageInfo:
    """SecPkgInfo: what QuerySecurityPackageInfo returns."""

    name: str
    comment: str
    capabilities: PackageCapability
    max_token: int
    available: bool = True
    unavailable_reason: str = ""


@dataclass(frozen=True, slots=True)
class MechanismResult:
    """What a mechanism knows once its handshake completed."""

    granted: ContextReq
    impersonation_level: ImpersonationLevel
    protector: MessageProtector
    peer: AccessToken
    """Server side: the client. Client side: the server (the identity it proved)."""
    expires_at: float | None
    peer_native_name: str = ""
    session_key: bytes = field(default=b"", repr=False)


class Mechanism(ABC):
    """One side of one context's handshake (the package-private half of a CtxtHandle).

    ``step`` takes the peer's token (``None`` on the client's first call) and returns the
    token to send (or ``None``). It raises ``SecurityError`` subclasses for anything the peer
    did wrong and never lets a native error escape. ``result`` is set once complete.
    """

    complete: bool = False
    result: MechanismResult | None = None

    @abstractmethod
    def step(self, token: bytes | None) -> bytes | None: ...


class SecurityPackage(ABC):
    """A security package: a name, its capabilities, credentials, and context mechanisms."""

    name: ClassVar[str]
    comment: ClassVar[str] = ""
    capabilities: ClassVar[PackageCapability] = PackageCapability.NONE
    max_token: ClassVar[int] = 65536

    def availability(self) -> tuple[bool, str]:
        """Whether the package's backend can be used here, and if not, why (import guards)."""
        return True, ""

    def info(self) -> PackageInfo:
        available, reason = self.availability()
        return PackageInfo(
            name=self.name,
            comment=self.comment,
            capabilities=self.capabilities,
            max_token=self.max_token,
            available=available,
            unavailable_reason=reason,
        )

    @abstractmethod
    def acquire_credentials(
        self, principal: str | None, use: CredentialUse, options: dict[str, Any]
    ) -> Any:
        """Package-specific credential material for AcquireCredentialsHandle."""

    @abstractmethod
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
        """The client half of InitializeSecurityContext."""

    @abstractmethod
    def server_mechanism(
        self,
        credentials: Any,
        *,
        requested: ContextReq,
        options: dict[str, Any],
        clock: Callable[[], float],
    ) -> Mechanism:
        """The server half of AcceptSecurityContext."""

    def import_protector(self, outbound: bytes, inbound: bytes, datagram: bool) -> MessageProtector:
        """Rebuild a protector from exported secrets (ImportSecurityContext)."""
        raise UnsupportedFunctionError(f"package {self.name!r} cannot import contexts")

    def check_target_name(self, target_name: str | None) -> None:
        """Syntax of a client's target name (``TypeError``/``ValueError``); see ``_target``.

        Default: a GSS service name (``service@host`` or ``service/host[@REALM]``), required
        when the package can prove the server (MUTUAL_AUTH), optional otherwise; never
        ``ANY_SERVER``. Packages with other names (x509: SPIFFE IDs) override this.
        """
        from ._target import AnyServer, check_service_name

        if target_name is None:
            if self.capabilities & PackageCapability.MUTUAL_AUTH:
                raise ValueError(
                    f"{self.name} clients need target_name: the service to authenticate, "
                    "e.g. 'service@host'"
                )
            return
        if isinstance(target_name, AnyServer):
            raise ValueError(f"{self.name} cannot authenticate 'any server': name the service")
        check_service_name(target_name)

    def export_delegation(self, credentials: Credentials) -> bytes:
        """Delegated OUTBOUND credentials (an AccessToken's ``delegated_credentials``) as bytes,
        so a context exported or sealed into a ticket keeps its delegation (the delegation half
        of ExportSecurityContext). WARNING: the bytes act as the client; seal them."""
        raise UnsupportedFunctionError(f"package {self.name!r} cannot export delegation")

    def import_delegation(self, blob: bytes, owner: Credentials | None = None) -> Credentials:
        """The credentials ``export_delegation`` wrote; ``SecurityError`` if malformed.

        ``owner`` is the importing service's own credentials (ImportSecurityContext's): a
        package whose delegation is proven with the delegate's identity (x509) takes that
        identity from them rather than from the blob."""
        raise UnsupportedFunctionError(f"package {self.name!r} cannot import delegation")


class _UnavailablePackage(SecurityPackage):
    """Stands in for a package whose backend failed to import (an optional extra)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name  # type: ignore[misc]
        self._reason = reason

    def availability(self) -> tuple[bool, str]:
        return False, self._reason

    def acquire_credentials(
        self, principal: str | None, use: CredentialUse, options: dict[str, Any]
    ) -> Any:
        raise NoCredentialsError(f"security package {self.name!r} is not available: {self._reason}")

    def client_mechanism(self, credentials: Any, **kwargs: Any) -> Mechanism:  # type: ignore[override]
        raise NoCredentialsError(f"security package {self.name!r} is not available")

    def server_mechanism(self, credentials: Any, **kwargs: Any) -> Mechanism:  # type: ignore[override]
        raise NoCredentialsError(f"security package {self.name!r} is not available")


_registry: dict[str, SecurityPackage | Callable[[], SecurityPackage]] = {}
_registry_lock = threading.Lock()


def _resolve(name: str) -> SecurityPackage | None:
    """The registered package, instantiating a lazy factory once (caller holds the lock)."""
    entry = _registry.get(name)
    if entry is None or isinstance(entry, SecurityPackage):
        return entry
    try:
        package = entry()
    except ImportError as exc:
        package = _UnavailablePackage(name, f"missing dependency: {exc.name or exc}")
    _registry[name] = package
    return package


def register_package(name: str, package: SecurityPackage | Callable[[], SecurityPackage]) -> None:
    """Add a package (or a factory that imports it lazily) under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError("package name must be a non-empty string")
    with _registry_lock:
        _registry[name.lower()] = package


def get_package(name: str) -> SecurityPackage:
    """The package named ``name``; ``NoCredentialsError`` if unknown or unavailable here."""
    if not isinstance(name, str):
        raise TypeError("package name must be a string")
    _load_builtin_packages()
    with _registry_lock:
        entry = _resolve(name.lower())
    if entry is None:
        raise NoCredentialsError(f"no security package named {name!r}")
    available, reason = entry.availability()
    if not available:
        raise NoCredentialsError(f"security package {name!r} is not available here: {reason}")
    return entry


def enumerate_security_packages() -> list[PackageInfo]:
    """EnumerateSecurityPackages: every known package, available or not, with its info."""
    _load_builtin_packages()
    with _registry_lock:
        names = list(_registry)
    infos = []
    for name in names:
        with _registry_lock:
            entry = _resolve(name)
        if entry is not None:
            infos.append(entry.info())
    return infos


def query_security_package_info(name: str) -> PackageInfo:
    """QuerySecurityPackageInfo for one package (available or not)."""
    _load_builtin_packages()
    if not isinstance(name, str):
        raise TypeError("package name must be a string")
    with _registry_lock:
        entry = _resolve(name.lower())
    if entry is None:
        raise NoCredentialsError(f"no security package named {name!r}")
    return entry.info()


_builtins_loaded = False


def _load_builtin_packages() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    import rpcsec.packages  # noqa: F401  (registers x509, ntlm, kerberos, negotiate)
