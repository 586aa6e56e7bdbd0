"""Standard mode of the kerberos package against plain python-gssapi peers, in memory.

The peer is MIT's GSS-API driven directly through python-gssapi (no rpcsec code on that side):
a bare Kerberos or SPNEGO initiator against rpcsec's acceptor, and rpcsec's standard initiator
against a bare acceptor. Then the per-message tokens (RFC 4121) cross both ways.
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.kerberos

try:
    import gssapi
except ImportError:  # pragma: no cover - the kerberos extra; never skipped under CI=true
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("python-gssapi is not installed", allow_module_level=True)

from rpcsec.packages._standard import standard_messages  # noqa: E402
from rpcsec.packages.kerberos._handshake import UNNAMED_DELEGATE  # noqa: E402
from rpcsec.packages.kerberos._standard import UNVERIFIED_PREFIX  # noqa: E402
from rpcsec.sspi import (  # noqa: E402
    ContextReq,
    ImpersonationLevel,
    InvalidTokenError,
    SecurityError,
    UnsupportedFunctionError,
    accept_security_context,
    initialize_security_context,
)

KRB5 = gssapi.OID.from_int_seq("1.2.840.113554.1.2.2")
SPNEGO = gssapi.OID.from_int_seq("1.3.6.1.5.5.2")
FLAGS = gssapi.RequirementFlag


def _plain_initiator(realm, mech, *, flags=None, user="alice"):
    creds = gssapi.Credentials(usage="initiate", store={"ccache": realm.ccache(user)})
    name = gssapi.Name("storage@localhost", gssapi.NameType.hostbased_service)
    return gssapi.SecurityContext(
        name=name,
        creds=creds,
        mech=mech,
        usage="initiate",
        flags=flags
        if flags is not None
        else FLAGS.mutual_authentication | FLAGS.replay_detection | FLAGS.integrity,
    )


def _drive(initiator, server):
    token = initiator.step()
    while True:
        result = server.step(token)
        if result.token is None and server.complete:
            break
        token = initiator.step(result.token)
        if server.complete:
            break
    if not initiator.complete:
        assert result.token is not None
        assert initiator.step(result.token) is None
    return initiator


@pytest.mark.parametrize("mech", [KRB5, SPNEGO], ids=["krb5", "spnego"])
def test_plain_gssapi_initiator_to_rpcsec_acceptor(kerberos_realm, mech):
    server = accept_security_context(
        kerberos_realm.server_credentials("storage"), options={"standard": "only"}
    )
    initiator = _drive(_plain_initiator(kerberos_realm, mech), server)
    assert initiator.complete and server.complete
    caller = server.peer
    assert caller.principal == "alice@KRBTEST.COM"
    assert caller.impersonation_level is ImpersonationLevel.IMPERSONATE
    assert caller.delegated_credentials is None
    granted = server.attributes
    assert granted & ContextReq.MUTUAL_AUTH and granted & ContextReq.REPLAY_DETECT
    assert not granted & ContextReq.DELEGATE
    # RFC 4121 tokens both ways, with GSS's own checks
    messages = standard_messages(server)
    data, encrypted = messages.gss_unwrap(initiator.wrap(b"to the server", True).message)
    assert (data, encrypted) == (b"to the server", True)
    mic = messages.gss_get_mic(b"to the client")
    initiator.verify_signature(b"to the client", mic)
    with pytest.raises(UnsupportedFunctionError):  # not the core's format on a standard context
        server.sign(b"x")


def test_first_message_tokens_carry_sequence_zero_for_sequence_checking_peers(kerberos_realm):
    """Regression (gss-client -seq saw a gap): establishing a standard context must not spend
    GSS sequence numbers, so a peer with GSS_C_SEQUENCE_FLAG accepts the first MIC."""
    flags = FLAGS.mutual_authentication | FLAGS.out_of_sequence_detection | FLAGS.integrity
    server = accept_security_context(
        kerberos_realm.server_credentials("storage"), options={"standard": "only"}
    )
    initiator = _drive(_plain_initiator(kerberos_realm, KRB5, flags=flags), server)
    messages = standard_messages(server)
    for text in (b"one", b"two"):
        initiator.verify_signature(text, messages.gss_get_mic(text))


def test_delegating_plain_initiator_gives_delegated_credentials(kerberos_realm):
    flags = FLAGS.mutual_authentication | FLAGS.delegate_to_peer | FLAGS.integrity
    server = accept_security_context(
        kerberos_realm.server_credentials("storage"), options={"standard": "only"}
    )
    _drive(_plain_initiator(kerberos_realm, SPNEGO, flags=flags), server)
    caller = server.peer
    assert caller.impersonation_level is ImpersonationLevel.DELEGATE
    # a standard client cannot state a chain: the forwarded TGT is recorded as a delegate
    assert caller.delegated_credentials is not None
    onward = initialize_security_context(
        caller.delegated_credentials, "documents@localhost", options={"standard": "krb5"}
    )
    assert onward.step().token  # the delegated TGT gets a ticket for the next hop
    assert caller.delegation_chain in ((), (UNNAMED_DELEGATE,))


def test_rpcsec_standard_initiator_to_plain_acceptor(kerberos_realm):
    acceptor_creds = gssapi.Credentials(
        usage="accept", store={"keytab": kerberos_realm.keytab("storage")}
    )
    acceptor = gssapi.SecurityContext(creds=acceptor_creds, usage="accept")
    client = initialize_security_context(
        kerberos_realm.client_credentials("alice"),
        "storage@localhost",
        ContextReq.MUTUAL_AUTH | ContextReq.INTEGRITY | ContextReq.CONFIDENTIALITY,
        options={"standard": "spnego"},
    )
    token = client.step().token
    while not acceptor.complete or not client.complete:
        reply = acceptor.step(token)
        if client.complete:
            break
        result = client.step(reply)
        token = result.token
        if token is None:
            break
    assert client.complete and acceptor.complete
    assert str(acceptor.initiator_name) == "alice@KRBTEST.COM"
    assert client.peer.principal == "storage/localhost@KRBTEST.COM"
    messages = standard_messages(client)
    unwrapped = acceptor.unwrap(messages.gss_wrap(b"sealed", encrypt=True))
    assert unwrapped.message == b"sealed" and unwrapped.encrypted
    messages.gss_verify_mic(b"signed", acceptor.get_signature(b"signed"))
    with pytest.raises(SecurityError):
        messages.gss_verify_mic(b"signed!", acceptor.get_signature(b"signed"))


def test_no_mutual_auth_reports_server_as_unverified(kerberos_realm):
    acceptor_creds = gssapi.Credentials(
        usage="accept", store={"keytab": kerberos_realm.keytab("storage")}
    )
    acceptor = gssapi.SecurityContext(creds=acceptor_creds, usage="accept")
    client = initialize_security_context(
        kerberos_realm.client_credentials("alice"),
        "storage@localhost",
        ContextReq.INTEGRITY,
        options={"standard": "krb5"},
    )
    result = client.step()
    assert result.complete  # one leg: no AP-REP without mutual authentication
    acceptor.step(result.token)
    assert client.peer.principal == UNVERIFIED_PREFIX + "storage@localhost"
    assert client.peer.impersonation_level is ImpersonationLevel.IDENTIFY


def test_mutual_auth_required_but_missing_fails(kerberos_realm):
    """A client that asked for MUTUAL_AUTH refuses an acceptor reply that does not prove it
    (here: the server's reply is withheld and a forged one is sent)."""
    client = initialize_security_context(
        kerberos_realm.client_credentials("alice"),
        "storage@localhost",
        ContextReq.MUTUAL_AUTH | ContextReq.INTEGRITY,
        options={"standard": "krb5"},
    )
    client.step()
    forged = bytes.fromhex("6f0e300ca003020105a103020f0f0000")[:14]  # not even a GSS token
    with pytest.raises(InvalidTokenError):
        client.step(forged)


def test_extended_and_standard_both_accepted_when_standard_is_true(kerberos_realm):
    creds = kerberos_realm.server_credentials("storage")
    # rpcsec's extended client
    server = accept_security_context(creds, ContextReq.INTEGRITY, options={"standard": True})
    client = initialize_security_context(
        kerberos_realm.client_credentials("alice"), "storage@localhost", ContextReq.INTEGRITY
    )
    reply = server.step(client.step().token)
    client.step(reply.token)
    assert client.complete and server.complete
    assert standard_messages(server) is None  # the extended mode's own message format
    # a plain GSS client on another context of the same server
    server2 = accept_security_context(creds, options={"standard": True})
    _drive(_plain_initiator(kerberos_realm, KRB5), server2)
    assert standard_messages(server2) is not None


# -- the negotiate package's standard mode against pyspnego peers ------------------------


def test_pyspnego_negotiate_client_to_rpcsec_negotiate_server(kerberos_realm, monkeypatch):
    import spnego

    monkeypatch.setenv("KRB5CCNAME", kerberos_realm.ccache("alice"))
    client = spnego.client(hostname="localhost", service="storage", protocol="negotiate")
    server = accept_security_context(
        kerberos_realm.server_credentials("storage", package="negotiate"),
        options={"standard": True},
    )
    token = client.step()
    while not server.complete:
        result = server.step(token)
        if result.token:
            token = client.step(result.token)
    assert client.complete
    assert server.peer.principal == "alice@KRBTEST.COM"
    messages = standard_messages(server)
    assert messages.gss_unwrap(client.wrap(b"via pyspnego").data) == (b"via pyspnego", True)


def test_rpcsec_negotiate_client_to_pyspnego_server(kerberos_realm, monkeypatch):
    import spnego

    monkeypatch.setenv("KRB5_KTNAME", kerberos_realm.keytab("storage"))
    server = spnego.server(protocol="negotiate")
    client = initialize_security_context(
        kerberos_realm.client_credentials("alice", package="negotiate"),
        "storage@localhost",
        ContextReq.MUTUAL_AUTH | ContextReq.INTEGRITY,
        options={"standard": True},
    )
    result = client.step()
    while True:
        reply = server.step(result.token)
        if client.complete or reply is None:
            break
        result = client.step(reply)
        if result.token is None:
            break
    assert client.complete and server.complete
    assert server.client_principal == "alice@KRBTEST.COM"
    assert client.peer.principal == "storage/localhost@KRBTEST.COM"
    assert server.unwrap(standard_messages(client).gss_wrap(b"x", encrypt=True)).data == b"x"
