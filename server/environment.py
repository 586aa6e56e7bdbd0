"""The demo environment file: who exists, with which credentials, for every package.

``rpcsec demo`` writes it (``demo-env.json``); services and the client read it, so switching
the package is a name change and nothing else (seed, "SDK Examples"). Shape::

    {"packages": {"x509": {"principals": {"alice": {"principal": "...", "options": {...}}},
                           "services": {"storage": {"target_name": "...", "options": {...}}}},
                  "ntlm": {...}},
     "addresses": {"documents": "127.0.0.1:PORT", "storage": "127.0.0.1:PORT"}}
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass
from typing import Any

from rpcsec.sspi import Credentials, CredentialUse, acquire_credentials_handle

__all__ = ["DEFAULT_ENV", "DemoEnvironment"]

DEFAULT_ENV = pathlib.Path(os.environ.get("RPCSEC_DEMO_ENV", "demo-env.json"))


@dataclass(frozen=True)
class DemoEnvironment:
    path: pathlib.Path
    data: dict[str, Any]

    @classmethod
    def load(cls, path: pathlib.Path | str | None = None) -> DemoEnvironment:
        env_path = pathlib.Path(path) if path else DEFAULT_ENV
        try:
            return cls(env_path, json.loads(env_path.read_text()))
        except FileNotFoundError:
            raise SystemExit(
                f"no demo environment at {env_path}: run `rpcsec demo` (or `make demo`) first, "
                "or pass --env"
            ) from None

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2))
        self.path.chmod(0o600)  # it names password and key files

    def _package(self, package: str) -> dict[str, Any]:
        try:
            return self.data["packages"][package]
        except KeyError:
            raise SystemExit(f"the demo environment has no {package!r} identities") from None

    def principal(self, package: str, name: str) -> str:
        """The package's own name for a demo user or service (ACLs are written with it)."""
        entry = self._package(package)
        return (entry["principals"].get(name) or entry["services"][name])["principal"]

    def target_name(self, package: str, service: str) -> str:
        return self._package(package)["services"][service]["target_name"]

    def user_credentials(self, package: str, user: str) -> Credentials:
        entry = self._package(package)["principals"].get(user)
        if entry is None:
            raise SystemExit(f"unknown demo user {user!r} for package {package!r}")
        return acquire_credentials_handle(
            package, entry["principal"], CredentialUse.OUTBOUND, **entry["options"]
        )

    def service_credentials(self, package: str, service: str, **overrides: Any) -> Credentials:
        """The service's own credentials; ``overrides`` replace package options (e.g. the
        x509 ``trust`` bundle)."""
        entry = self._package(package)["services"].get(service)
        if entry is None:
            raise SystemExit(f"unknown demo identity {service!r} for package {package!r}")
        options = {**entry["options"], **overrides}
        return acquire_credentials_handle(
            package, entry.get("principal"), CredentialUse.BOTH, **options
        )

    def apply_process_env(self, package: str) -> None:
        """Set what the package's native libraries read from the environment (Kerberos:
        KRB5_CONFIG) before any credentials are acquired."""
        os.environ.update(self._package(package).get("process_env", {}))

    def address(self, service: str) -> str:
        return self.data["addresses"][service]
