"""Standard mode of the ntlm package against plain pyspnego NTLM peers, in memory, and
``curl --ntlm`` (MS-NTHT: NEGOTIATE / CHALLENGE / AUTHENTICATE on one keep-alive connection)
against the rpcsec HTTP server; bad input for the message checks (hypothesis)."""

from __future__ import annotations

import os
import subprocess

import pytest
import spnego
from helpers.negotiate_peers import require_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.packages._standard import standard_messages
from rpcsec.packages._standard_ntlm import (
    AUTHENTICATE,
    CHALLENGE,
    NEGOTIATE,
    NTLM_SIGNATURE,
    check_ntlm_message,
)
from rpcsec.security import current_token
from rpcsec.sspi import (
    ContextReq,
    CredentialUse,
    ImpersonationLevel,
    InvalidTokenError,
    LogonDeniedError,
    SecurityError,
    UnsupportedFunctionError,
    accept_security_context,
    acquire_credentials_handle,
    initialize_security_context,
)
from rpcsec.transports.httpauth import AuthHTTPRequestHandler, AuthHTTPServer, Response


@pytest.fixture
def server_creds(ntlm_user_file):
    return acquire_credentials_handle(
        "ntlm", None, CredentialUse.INBOUND, user_file=str(ntlm_user_file)
    )


def _pyspnego_client(password="Alice-Pa55!"):
    return spnego.client("RPCSEC\\alice", password, protocol="ntlm")


def test_pyspnego_client_to_rpcsec_server(server_creds):
    client = _pyspnego_client()
    server = accept_security_context(server_creds, options={"standard": "only"})
    challenge = server.step(client.step()).token
    result = server.step(client.step(challenge))
    assert result.complete and result.token is None  # NTLM ends with the client's message
    caller = server.peer
    assert caller.principal == "RPCSEC\\alice"
    assert caller.impersonation_level is ImpersonationLevel.IMPERSONATE
    assert not server.attributes & (ContextReq.MUTUAL_AUTH | ContextReq.DELEGATE)
    assert server.attributes & ContextReq.INTEGRITY
    messages = standard_messages(server)
    data, encrypted = messages.gss_unwrap(client.wrap(b"sealed by pyspnego").data)
    assert (data, encrypted) == (b"sealed by pyspnego", True)
    assert client.unwrap(messages.gss_wrap(b"back", encrypt=True)).data == b"back"
    with pytest.raises(UnsupportedFunctionError):
        server.sign(b"the core's own format is not offered on standard NTLM")


def test_wrong_password_is_logon_denied(server_creds):
    client = _pyspnego_client("wrong")
    server = accept_security_context(server_creds, options={"standard": "only"})
    challenge = server.step(client.step()).token
    with pytest.raises(LogonDeniedError):
        server.step(client.step(challenge))


def test_rpcsec_standard_client_to_pyspnego_server(ntlm_user_file, monkeypatch):
    monkeypatch.setenv("NTLM_USER_FILE", str(ntlm_user_file))
    server = spnego.server(protocol="ntlm")
    alice = acquire_credentials_handle(
        "ntlm", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="Alice-Pa55!"
    )
    client = initialize_security_context(
        alice, "HTTP@localhost", ContextReq.INTEGRITY, options={"standard": True}
    )
    challenge = server.step(client.step().token)
    result = client.step(challenge)
    assert result.complete
    server.step(result.token)
    assert server.complete and server.client_principal == "RPCSEC\\alice"
    assert client.peer.principal == "(unverified) HTTP@localhost"
    messages = standard_messages(client)
    assert server.unwrap(messages.gss_wrap(b"hi", encrypt=True)).data == b"hi"
    messages.gss_verify_mic(b"signed", server.sign(b"signed"))
    with pytest.raises(SecurityError):
        messages.gss_verify_mic(b"signed?", server.sign(b"signed"))


def test_standard_ntlm_client_refuses_mutual_auth_or_delegation():
    alice = acquire_credentials_handle(
        "ntlm", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="Alice-Pa55!"
    )
    client = initialize_security_context(
        alice, "HTTP@localhost", ContextReq.MUTUAL_AUTH, options={"standard": True}
    )
    with pytest.raises(UnsupportedFunctionError):
        client.step()


def test_extended_ntlm_clients_still_work_when_standard_is_on(server_creds):
    alice = acquire_credentials_handle(
        "ntlm", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="Alice-Pa55!"
    )
    client = initialize_security_context(alice, "storage@localhost", ContextReq.INTEGRITY)
    server = accept_security_context(server_creds, ContextReq.INTEGRITY, options={"standard": True})
    token = client.step().token
    while not (client.complete and server.complete):
        reply = server.step(token)
        if reply.token is None:
            break
        step = client.step(reply.token)
        token = step.token
        if token is None:
            break
    assert server.peer.principal == "RPCSEC\\alice"
    assert standard_messages(server) is None  # extended: the core's AEAD messages
    assert client.unwrap(server.wrap(b"x", encrypt=False)) == b"x"


class WhoAmI(AuthHTTPRequestHandler):
    def handle_authenticated(self, request):
        token = current_token()
        return Response(200, f"{token.principal}|{token.impersonation_level.name}".encode())


def _curl_ntlm(url, user):
    tool = require_tool("curl")
    return subprocess.run(
        [tool, "-sS", "--ntlm", "-u", user, "-w", "\n%{http_code}|%{num_connects}", url],
        capture_output=True,
        timeout=60,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )


def test_curl_ntlm_on_one_keep_alive_connection(server_creds):
    with AuthHTTPServer(("127.0.0.1", 0), WhoAmI, server_creds) as server:
        server.start()
        proc = _curl_ntlm(server.url + "/whoami", "RPCSEC\\alice:Alice-Pa55!")
    assert proc.returncode == 0, proc.stderr
    body, _, tail = proc.stdout.decode().rpartition("\n")
    assert body == "RPCSEC\\alice|IMPERSONATE"
    assert tail == "200|1"  # three requests, one TCP connection (MS-NTHT §3.2.5)


def test_curl_ntlm_wrong_password_is_401(server_creds):
    with AuthHTTPServer(("127.0.0.1", 0), WhoAmI, server_creds) as server:
        server.start()
        proc = _curl_ntlm(server.url + "/whoami", "RPCSEC\\alice:nope")
    assert proc.stdout.decode().rpartition("\n")[2].startswith("401")


# -- bad input for the message check ----------------------------------------------------


def _message(kind: int, size: int = 64) -> bytes:
    return NTLM_SIGNATURE + kind.to_bytes(4, "little") + b"\x00" * (size - 12)


@pytest.mark.parametrize("kind", [NEGOTIATE, CHALLENGE, AUTHENTICATE])
def test_message_check_accepts_only_the_expected_type(kind):
    check_ntlm_message(_message(kind), kind)
    for other in {NEGOTIATE, CHALLENGE, AUTHENTICATE} - {kind}:
        with pytest.raises(InvalidTokenError):
            check_ntlm_message(_message(other), kind)


@given(st.binary(max_size=120), st.sampled_from([NEGOTIATE, CHALLENGE, AUTHENTICATE]))
def test_message_check_raises_only_invalid_token(data, kind):
    try:
        check_ntlm_message(data, kind)
    except InvalidTokenError:
        return
    assert data.startswith(NTLM_SIGNATURE) and data[8] == kind


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60)
@given(st.sampled_from([NEGOTIATE, AUTHENTICATE]), st.binary(min_size=1, max_size=200))
def test_hostile_tokens_fail_the_standard_acceptor_typed(server_creds, kind, data):
    """Garbage after a valid signature and type, as the first or the last message: a typed
    refusal (or a CHALLENGE for a NEGOTIATE pyspnego can read), never another exception."""
    server = accept_security_context(server_creds, options={"standard": "only"})
    hostile = NTLM_SIGNATURE + kind.to_bytes(4, "little") + data
    try:
        if kind == AUTHENTICATE:
            server.step(_pyspnego_client().step())
        server.step(hostile)
    except SecurityError:
        return
    assert kind == NEGOTIATE and not server.complete
