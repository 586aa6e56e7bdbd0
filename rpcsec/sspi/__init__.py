"""The SSPI-shaped core of rpcsec. Sans-IO: bytes in, bytes out; no sockets anywhere."""

from ._flags import (
    QOP,
    ContextReq,
    CredentialUse,
    ImpersonationLevel,
    PackageCapability,
    ProtectionLevel,
)
from ._status import SecStatus
from ._errors import *  # noqa: F403
from ._errors import __all__ as _errors_all
from ._buffers import BufferType, SecBuffer
from ._replay import DEFAULT_WINDOW, ReceiveOrder, ReplayWindow, SequenceCounter
from ._protection import AeadProtector, MessageProtector, hkdf_expand_label
from ._package import (
    Mechanism,
    MechanismResult,
    PackageInfo,
    SecurityPackage,
    enumerate_security_packages,
    get_package,
    query_security_package_info,
    register_package,
)
from ._credentials import Credentials, acquire_credentials_handle
from ._target import ANY_SERVER, AnyServer, check_service_name, check_target_name
from ._attributes import (
    ContextAttribute,
    ContextFlags,
    Lifespan,
    MessageInfo,
    Names,
    SessionKey,
    Sizes,
    StreamSizes,
)
from ._context import (
    ClientContext,
    ContextState,
    SecurityContext,
    ServerContext,
    StepResult,
    accept_security_context,
    import_security_context,
    initialize_security_context,
)

__all__ = [
    "ANY_SERVER",
    "QOP",
    "AeadProtector",
    "AnyServer",
    "BufferType",
    "ClientContext",
    "ContextAttribute",
    "ContextFlags",
    "ContextReq",
    "ContextState",
    "CredentialUse",
    "Credentials",
    "DEFAULT_WINDOW",
    "ImpersonationLevel",
    "Lifespan",
    "Mechanism",
    "MechanismResult",
    "MessageInfo",
    "MessageProtector",
    "Names",
    "PackageCapability",
    "PackageInfo",
    "ProtectionLevel",
    "ReceiveOrder",
    "ReplayWindow",
    "SecBuffer",
    "SecStatus",
    "SecurityContext",
    "SecurityPackage",
    "SequenceCounter",
    "ServerContext",
    "SessionKey",
    "Sizes",
    "StepResult",
    "StreamSizes",
    "accept_security_context",
    "acquire_credentials_handle",
    "check_service_name",
    "check_target_name",
    "enumerate_security_packages",
    "get_package",
    "hkdf_expand_label",
    "import_security_context",
    "initialize_security_context",
    "query_security_package_info",
    "register_package",
    *_errors_all,
]

from ._negotiation import ContextGrant, ContextOffer, decide_grant, granted_from_capabilities

__all__ += ["ContextGrant", "ContextOffer", "decide_grant", "granted_from_capabilities"]
