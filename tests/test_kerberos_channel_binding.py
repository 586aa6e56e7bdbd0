"""An AP-REQ made without channel bindings is refused (issue 10 item 10).

MIT accepts an AP-REQ whose authenticator carries no bindings checksum even when the acceptor
supplies bindings (RFC 4121 §4.1.1.2 leaves that to the application); it only reports whether
they matched with GSS_C_CHANNEL_BOUND_FLAG (krb5 1.20+). rpcsec's bindings always carry
security -- the offer record (requested flags, impersonation level, delegation chain) and any
TLS exporter value -- so the acceptor requires the flag. Otherwise a genuine AP-REQ the client
made elsewhere (say, for HTTP Negotiate, which binds nothing) could be replayed to an rpcsec
server within the authenticator's lifetime under an offer the client never made.
"""

from __future__ import annotations

import pytest
from helpers.pair import handshake

from rpcsec.sspi import (
    BadBindingsError,
    ContextReq,
    ImpersonationLevel,
    accept_security_context,
    initialize_security_context,
)

pytestmark = pytest.mark.kerberos


def _unbound_ap_req(realm, *, mech_flags: int = 0) -> bytes:
    """A genuine AP-REQ for storage, made by MIT with no channel bindings at all."""
    from rpcsec.packages.kerberos._names import service_name
    from rpcsec.packages.kerberos._native import KRB5_MECH, gss
    from rpcsec.sspi import CredentialUse, acquire_credentials_handle

    alice = acquire_credentials_handle(
        "kerberos", realm.principal("alice"), CredentialUse.OUTBOUND, ccache=realm.ccache("alice")
    )
    flags = gss.RequirementFlag
    result = gss.init_sec_context(
        service_name(realm.hostbased("storage")),
        creds=alice.material.initiator,
        mech=KRB5_MECH,
        flags=int(flags.mutual_authentication | flags.integrity | flags.confidentiality)
        | mech_flags,
    )
    return bytes(result.token)


def _offer(level=ImpersonationLevel.IMPERSONATE) -> bytes:
    from rpcsec.packages.kerberos._records import OfferRecord
    from rpcsec.sspi._negotiation import ContextOffer

    return OfferRecord(ContextOffer(ContextReq.default(), level)).encode()


def test_an_ap_req_without_bindings_is_refused(kerberos_realm) -> None:
    from rpcsec.packages.kerberos._handshake import LEG_INITIATE, MAGIC
    from rpcsec.packages.kerberos._records import encode_frame

    token = encode_frame(MAGIC, LEG_INITIATE, _unbound_ap_req(kerberos_realm), _offer())
    server = accept_security_context(kerberos_realm.server_credentials("storage"))
    with pytest.raises(BadBindingsError):
        server.step(token)
    assert server.state.value == "failed"  # sticky: nothing more from this context


def test_an_unbound_ap_req_is_refused_with_external_bindings_too(kerberos_realm) -> None:
    from rpcsec.packages.kerberos._handshake import LEG_INITIATE, MAGIC
    from rpcsec.packages.kerberos._records import encode_frame

    token = encode_frame(MAGIC, LEG_INITIATE, _unbound_ap_req(kerberos_realm), _offer())
    server = accept_security_context(
        kerberos_realm.server_credentials("storage"), options={"channel_bindings": b"tls:abc"}
    )
    with pytest.raises(BadBindingsError):
        server.step(token)


def test_bound_handshakes_still_work_and_report_the_binding(kerberos_realm) -> None:
    client = initialize_security_context(
        kerberos_realm.client_credentials("alice"),
        kerberos_realm.hostbased("storage"),
        options={"channel_bindings": b"tls:abc"},
    )
    server = accept_security_context(
        kerberos_realm.server_credentials("storage"), options={"channel_bindings": b"tls:abc"}
    )
    handshake(client, server)
    assert server.peer.principal == "alice@KRBTEST.COM"


def test_negotiate_refuses_an_unbound_kerberos_token(kerberos_realm) -> None:
    """The same AP-REQ inside a SPNEGO NegTokenInit to a negotiate acceptor."""
    from spnego._spnego import NegTokenInit

    from rpcsec.packages.kerberos._records import encode_frame
    from rpcsec.packages.negotiate import MAGIC

    neg = NegTokenInit(["1.2.840.113554.1.2.2"], mech_token=_unbound_ap_req(kerberos_realm)).pack()
    server = accept_security_context(
        kerberos_realm.server_credentials("storage", package="negotiate")
    )
    with pytest.raises(BadBindingsError):
        server.step(encode_frame(MAGIC, 1, bytes(neg), _offer()))


def test_negotiate_ntlm_without_bindings_is_refused(ntlm_user_file) -> None:
    """The NTLM half of negotiate: an AUTHENTICATE without MsvAvChannelBindings is refused too
    (pyspnego's acceptor enforces it when bindings are supplied, MS-NLMP §3.2.5.1.2)."""
    import spnego
    from spnego._context import GSSMech

    from rpcsec.packages.kerberos._records import decode_frame, encode_frame
    from rpcsec.packages.negotiate import MAGIC, _SpnegoHooks
    from rpcsec.sspi import CredentialUse, acquire_credentials_handle

    creds = acquire_credentials_handle(
        "negotiate", None, CredentialUse.INBOUND, user_file=str(ntlm_user_file)
    )
    server = accept_security_context(creds)
    ntlm = spnego.client("RPCSEC\\alice", "Alice-Pa55!", hostname="localhost", protocol="ntlm")
    unbound = _SpnegoHooks.negotiate("initiate", {GSSMech.ntlm: ntlm}, hostname="localhost")
    reply = server.step(encode_frame(MAGIC, 1, unbound.step(), _offer())).token
    challenge = decode_frame(MAGIC, reply, 2).first
    with pytest.raises(BadBindingsError):
        server.step(encode_frame(MAGIC, 3, unbound.step(challenge)))
