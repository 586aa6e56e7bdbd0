"""Flags and levels shared by every security package.

Mirrors the ISC_REQ_* / ASC_REQ_* context requirements, SECURITY_IMPERSONATION_LEVEL,
SECPKG_CRED_* credential use, SECPKG_FLAG_* package capabilities and the QOP argument of
MakeSignature / EncryptMessage.
"""

from __future__ import annotations

import enum

__all__ = [
    "NOT_IMPLEMENTED",
    "ContextReq",
    "CredentialUse",
    "ImpersonationLevel",
    "PackageCapability",
    "ProtectionLevel",
    "QOP",
]


class ContextReq(enum.IntFlag):
    """Context requirements (ISC_REQ_* / ASC_REQ_*) and, separately, granted attributes.

    The same type describes what a caller *asks for* (``requested``) and what the package
    *granted* (``attributes``); the caller compares the two (seed: "The caller is responsible
    for determining whether the final context attributes are acceptable").
    """

    NONE = 0
    DELEGATE = 0x1
    MUTUAL_AUTH = 0x2
    REPLAY_DETECT = 0x4
    SEQUENCE_DETECT = 0x8
    CONFIDENTIALITY = 0x10
    USE_SESSION_KEY = 0x20
    USE_SUPPLIED_CREDS = 0x80
    USE_DCE_STYLE = 0x200
    DATAGRAM = 0x400
    CONNECTION = 0x800
    EXTENDED_ERROR = 0x4000
    STREAM = 0x8000
    INTEGRITY = 0x10000
    IDENTIFY = 0x20000
    ANONYMOUS = 0x40000  # GSS_C_ANON_FLAG: the client is the anonymous token to the server

    @classmethod
    def default(cls) -> ContextReq:
        """What an authenticated RPC binding asks for unless told otherwise."""
        return cls.MUTUAL_AUTH | cls.REPLAY_DETECT | cls.INTEGRITY | cls.CONNECTION

    def normalized(self) -> ContextReq:
        """REPLAY_DETECT and SEQUENCE_DETECT imply INTEGRITY (seed, "Context Requirements")."""
        value = self
        if value & (ContextReq.REPLAY_DETECT | ContextReq.SEQUENCE_DETECT):
            value |= ContextReq.INTEGRITY
        return value


NOT_IMPLEMENTED = (
    ContextReq.USE_SESSION_KEY
    | ContextReq.USE_SUPPLIED_CREDS
    | ContextReq.USE_DCE_STYLE
    | ContextReq.EXTENDED_ERROR
)
"""Context requirements no rpcsec package implements: asking for one raises ``ValueError``
(it would otherwise be dropped silently or, worse, granted without any behaviour).
USE_SESSION_KEY is Kerberos user-to-user, USE_DCE_STYLE the DCE three-leg style,
EXTENDED_ERROR error tokens sent to the peer; USE_SUPPLIED_CREDS has no meaning of its own
here, since a context only ever uses the credentials handle it is given."""


class ImpersonationLevel(enum.IntEnum):
    """SECURITY_IMPERSONATION_LEVEL: how far the server may act as the client."""

    ANONYMOUS = 0
    IDENTIFY = 1
    IMPERSONATE = 2
    DELEGATE = 3


class CredentialUse(enum.IntFlag):
    """SECPKG_CRED_INBOUND / OUTBOUND / BOTH for AcquireCredentialsHandle."""

    INBOUND = 1
    OUTBOUND = 2
    BOTH = 3


class PackageCapability(enum.IntFlag):
    """SECPKG_FLAG_*: what a security package can do (QuerySecurityPackageInfo)."""

    NONE = 0
    INTEGRITY = 0x1
    PRIVACY = 0x2
    CONNECTION = 0x10
    DATAGRAM = 0x40
    STREAM = 0x400
    MUTUAL_AUTH = 0x10000
    IMPERSONATION = 0x100
    DELEGATION = 0x20000
    ANONYMOUS = 0x40000


class QOP(enum.IntFlag):
    """Quality of protection for the message calls.

    ``DEFAULT`` seals with encrypt_message and signs with make_signature;
    ``WRAP_NO_ENCRYPT`` (SECQOP_WRAP_NO_ENCRYPT) makes encrypt_message integrity-only: the
    payload travels in the clear inside a wrap token and is still authenticated.
    """

    DEFAULT = 0
    WRAP_NO_ENCRYPT = 0x80000001


class ProtectionLevel(enum.IntEnum):
    """RPC_C_AUTHN_LEVEL_*: what every call on a binding gets."""

    NONE = 0
    INTEGRITY = 5  # RPC_C_AUTHN_LEVEL_PKT_INTEGRITY
    PRIVACY = 6  # RPC_C_AUTHN_LEVEL_PKT_PRIVACY
