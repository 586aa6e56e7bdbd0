"""rpcsec: authenticated RPC for Python, in the model of SSPI and authenticated RPC / DCOM.

``import rpcsec`` is light: the core (``rpcsec.sspi``) and identities (``rpcsec.security``)
are re-exported here; the gRPC binding is ``rpcsec.grpc`` (imported on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

from rpcsec._settings import (
    SecuritySettings,
    current_security_settings,
    effective_settings,
    initialize_security,
    uninitialize_security,
)
from rpcsec.security import *  # noqa: F403
from rpcsec.security import __all__ as _security_all
from rpcsec.sspi import *  # noqa: F403
from rpcsec.sspi import __all__ as _sspi_all

__version__ = "0.1.0"

__all__ = [
    *_sspi_all,
    *_security_all,
    "SecuritySettings",
    "__version__",
    "current_security_settings",
    "effective_settings",
    "initialize_security",
    "uninitialize_security",
]
# ``rpcsec.grpc`` and ``rpcsec.transports`` load lazily through __getattr__ below.


def __getattr__(name: str) -> Any:
    if name in ("grpc", "transports"):
        return importlib.import_module(f"rpcsec.{name}")
    raise AttributeError(f"module 'rpcsec' has no attribute {name!r}")
