"""httpauth: the RFC 4559-shaped exchange over real HTTP servers on 127.0.0.1 port 0.

Every exchange test runs for ntlm (four tokens: two 401 legs, then the 200 carries the
server's final token) and x509 (TLS 1.3 records as tokens). The header grammar has
hypothesis tests; hostile clients are played with plain ``http.client``.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import pytest
from helpers.pair import handshake
from hypothesis import given
from hypothesis import strategies as st

from rpcsec.security import (
    EVERYONE,
    AccessMask,
    Ace,
    SecurityDescriptor,
    access_check,
    current_token,
)
from rpcsec.sspi import (
    BusyError,
    ContextReq,
    Credentials,
    CredentialUse,
    InvalidTokenError,
    LogonDeniedError,
    MessageAlteredError,
    SecurityError,
    UnsupportedFunctionError,
    accept_security_context,
    acquire_credentials_handle,
    initialize_security_context,
)
from rpcsec.transports import MalformedHeaderError
from rpcsec.transports._authheader import (
    decode_token,
    encode_token,
    format_challenge,
    parse_authorization,
    parse_challenges,
    scheme_for,
)
from rpcsec.transports._httpexchange import ClientExchange, response_aad
from rpcsec.transports.httpauth import (
    PRINCIPAL_HEADER,
    SIGNATURE_HEADER,
    AuthHTTPRequestHandler,
    AuthHTTPServer,
    Request,
    Response,
    http_get,
    http_request,
)

PACKAGES = ["ntlm", "x509"]


@dataclass
class Principals:
    package: str
    client: Credentials
    server: Credentials
    target: str
    client_name: str
    other_client: Credentials
    bad_client: Credentials


@pytest.fixture(params=PACKAGES)
def principals(request, tmp_path, ntlm_user_file) -> Principals:
    if request.param == "ntlm":

        def ntlm(user: str, password: str) -> Credentials:
            return acquire_credentials_handle("ntlm", user, password=password)

        return Principals(
            package="ntlm",
            client=ntlm("RPCSEC\\alice", "Alice-Pa55!"),
            server=acquire_credentials_handle(
                "ntlm", None, CredentialUse.INBOUND, user_file=str(ntlm_user_file)
            ),
            target="HTTP@127.0.0.1",
            client_name="RPCSEC\\alice",
            other_client=ntlm("RPCSEC\\bob", "Bob-Pa55!"),
            bad_client=ntlm("RPCSEC\\alice", "not her password"),
        )
    from helpers.pki import make_authority

    pki = make_authority(tmp_path)
    stranger = make_authority(tmp_path, trust_domain="elsewhere.test")
    return Principals(
        package="x509",
        client=pki.credentials("alice"),
        server=pki.credentials("documents", CredentialUse.INBOUND),
        target=pki.id("documents"),
        client_name=pki.id("alice"),
        other_client=pki.credentials("bob"),
        bad_client=stranger.credentials("alice"),
    )


class Documents(AuthHTTPRequestHandler):
    """Serves a document only if the caller passes its access check (run as the caller)."""

    documents: ClassVar[dict[str, tuple[SecurityDescriptor, bytes]]] = {}
    connections = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def handle_authenticated(self, request: Request) -> Response:
        token = current_token()
        assert token is not None and token.principal == request.caller.principal
        if request.method == "POST":
            return Response(200, b"echo:" + request.body)
        entry = self.documents.get(request.path)
        if entry is None:
            return Response(404, b"no such document\n")
        descriptor, body = entry
        access_check(descriptor, AccessMask.READ)
        return Response(200, body, content_type="text/html")


@pytest.fixture
def start_http(principals: Principals) -> Iterator[Callable[..., AuthHTTPServer]]:
    servers: list[AuthHTTPServer] = []

    def start(handler: type[AuthHTTPRequestHandler] | None = None, **kwargs) -> AuthHTTPServer:
        if handler is None:
            handler = type("Docs", (Documents,), {"connections": 0})
            handler.documents = {
                "/public": (
                    SecurityDescriptor.build("owner", [Ace.allow(EVERYONE, AccessMask.READ)]),
                    b"<p>public</p>",
                ),
                "/alice": (
                    SecurityDescriptor.build(
                        "owner", [Ace.allow(principals.client_name, AccessMask.READ)]
                    ),
                    b"<p>for alice</p>",
                ),
            }
        server = AuthHTTPServer(("127.0.0.1", 0), handler, principals.server, **kwargs)
        servers.append(server)
        server.start(poll_interval=0.01)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def get(p: Principals, server: AuthHTTPServer, path: str, credentials=None, **kwargs):
    return http_get(server.url + path, credentials or p.client, target_name=p.target, **kwargs)


def raw(server: AuthHTTPServer, headers: dict[str, str] | None = None, path: str = "/public"):
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response, body


def assert_still_serving(p: Principals, server: AuthHTTPServer) -> None:
    result = get(p, server, "/public")
    assert result.status == 200 and result.verified


# -- the exchange -------------------------------------------------------------------------------


def test_401_challenge_then_200_with_identity(principals: Principals, start_http) -> None:
    server = start_http()
    scheme = scheme_for(principals.package)
    response, _ = raw(server)
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == scheme

    result = get(principals, server, "/alice")
    assert result.status == 200
    assert result.body == b"<p>for alice</p>"
    assert result.principal == principals.client_name
    assert result.verified
    assert result.server is not None
    if principals.package == "x509":  # mutual authentication: the server proved its name
        assert result.server.principal == principals.target
    # one connection for the raw request, one for the whole exchange of http_get
    assert server.RequestHandlerClass.connections == 2  # type: ignore[attr-defined]


def test_multi_leg_exchange_stays_on_one_connection(principals: Principals, start_http) -> None:
    """Drive the exchange by hand to see each leg: 401 challenge, 401 continuations, 200."""
    server = start_http()
    scheme = scheme_for(principals.package)
    context = initialize_security_context(
        principals.client, principals.target, ContextReq.default()
    )
    exchange = ClientExchange(context, required=ContextReq.INTEGRITY)
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    statuses = []
    authorization = None
    while True:
        conn.request(
            "GET", "/public", headers={"Authorization": authorization} if authorization else {}
        )
        response = conn.getresponse()
        body = response.read()
        statuses.append(response.status)
        authenticate = response.msg.get_all("WWW-Authenticate") or []
        authorization = exchange.on_response(response.status, authenticate)
        if authorization is None:
            break
        assert authorization.startswith(scheme + " ")
    conn.close()
    assert statuses[0] == 401 and statuses[-1] == 200
    if principals.package == "ntlm":
        assert statuses == [401, 401, 200]  # NEGOTIATE -> CHALLENGE, AUTHENTICATE -> grant
    assert exchange.authenticated and body == b"<p>public</p>"
    assert server.RequestHandlerClass.connections == 1  # type: ignore[attr-defined]
    exchange.verify_response(
        "GET",
        "/public",
        200,
        response.getheader(PRINCIPAL_HEADER),
        body,
        response.getheader(SIGNATURE_HEADER),
    )


def test_access_check_runs_as_the_caller(principals: Principals, start_http) -> None:
    server = start_http()
    denied = get(principals, server, "/alice", principals.other_client)
    assert denied.status == 403 and denied.verified  # a signed refusal
    assert denied.principal != principals.client_name
    assert get(principals, server, "/missing").status == 404


def test_post_body_reaches_the_handler(principals: Principals, start_http) -> None:
    server = start_http(max_body=1000)
    result = http_request(
        "POST",
        server.url + "/echo",
        principals.client,
        body=b"payload",
        target_name=principals.target,
    )
    assert result.body == b"echo:payload" and result.verified
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    conn.request("POST", "/echo", body=b"x" * 2000)
    assert conn.getresponse().status == 413
    conn.close()


def test_preemptive_authorization_skips_the_first_challenge(principals, start_http) -> None:
    server = start_http()
    result = get(principals, server, "/public", preemptive=True)
    assert result.status == 200 and result.verified


# -- hostile input --------------------------------------------------------------------------------


def test_wrong_password_is_refused_and_server_keeps_serving(principals, start_http) -> None:
    server = start_http()
    with pytest.raises(SecurityError) as caught:
        get(principals, server, "/public", principals.bad_client)
    if principals.package == "ntlm":
        assert isinstance(caught.value, LogonDeniedError)
    assert_still_serving(principals, server)


@pytest.mark.parametrize(
    "value",
    ["{scheme} !!!not-base64!!!", "{scheme} abc", "{scheme}", "{scheme} a b", "{scheme}\x7f"],
)
def test_malformed_authorization_is_400_without_traceback(
    principals, start_http, caplog, capsys, value: str
) -> None:
    server = start_http()
    response, _ = raw(
        server, {"Authorization": value.format(scheme=scheme_for(principals.package))}
    )
    assert response.status in (400, 401)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert "Traceback" not in capsys.readouterr().err
    assert_still_serving(principals, server)


def test_garbage_token_is_401_invalid_token(principals, start_http, caplog, capsys) -> None:
    server = start_http()
    scheme = scheme_for(principals.package)
    response, _ = raw(server, {"Authorization": f"{scheme} AAAAAAAAAAAA"})
    assert response.status == 401
    assert response.getheader("X-Rpcsec-Reason") == "invalid-token"
    assert response.getheader("WWW-Authenticate") == scheme  # a fresh challenge
    assert "Traceback" not in capsys.readouterr().err
    assert_still_serving(principals, server)


def test_two_authorization_headers_and_other_schemes(principals, start_http) -> None:
    server = start_http()
    scheme = scheme_for(principals.package)
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    conn.putrequest("GET", "/public")
    conn.putheader("Authorization", f"{scheme} AAAA")
    conn.putheader("Authorization", f"{scheme} BBBB")
    conn.endheaders()
    assert conn.getresponse().status == 400
    conn.close()
    response, _ = raw(server, {"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert response.status == 401 and response.getheader("WWW-Authenticate") == scheme


def test_continuation_leg_on_a_new_connection_is_refused(principals, start_http) -> None:
    """Legs are bound to their connection: a second leg sent elsewhere starts nothing."""
    server = start_http()
    scheme = scheme_for(principals.package)
    context = initialize_security_context(principals.client, principals.target)
    first = context.step(None).token
    assert first is not None
    conn = http.client.HTTPConnection(*server.address, timeout=5)
    conn.request("GET", "/public", headers={"Authorization": format_challenge(scheme, first)})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 401
    [challenge] = parse_challenges(response.msg.get_all("WWW-Authenticate"))
    assert challenge.token68 is not None
    second = context.step(decode_token(challenge.token68)).token
    assert second is not None
    response, _ = raw(server, {"Authorization": format_challenge(scheme, second)})
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == scheme


def test_altered_response_is_detected(principals: Principals, start_http) -> None:
    class Tampering(Documents):
        """Changes the body after it was signed, as a man in the middle would."""

        def _send(self, status, body, content_type, headers, *, close=False):  # type: ignore[override]
            if body.startswith(b"<p>"):
                body = body.replace(b"public", b"PUBLIC")
            super()._send(status, body, content_type, headers, close=close)

    Tampering.documents = {
        "/public": (
            SecurityDescriptor.build("owner", [Ace.allow(EVERYONE, AccessMask.READ)]),
            b"<p>public</p>",
        )
    }
    server = start_http(Tampering)
    with pytest.raises(MessageAlteredError):
        get(principals, server, "/public")
    assert get(principals, server, "/public", verify=False).body == b"<p>PUBLIC</p>"


def test_response_signature_binds_status_identity_and_request(principals: Principals) -> None:
    """The signed fields, checked without a server: change any one and verification fails."""

    def fresh() -> tuple[ClientExchange, str]:
        client = initialize_security_context(principals.client, principals.target)
        server = accept_security_context(principals.server)
        handshake(client, server)
        exchange = ClientExchange(client, required=ContextReq.NONE)
        exchange.authenticated = True
        signature = server.sign(b"body", aad=response_aad("GET", "/doc", 200, "alice"))
        return exchange, encode_token(signature)

    exchange, signature = fresh()
    exchange.verify_response("GET", "/doc", 200, "alice", b"body", signature)
    for change in (
        {"method": "POST"},
        {"target": "/other"},
        {"status": 203},
        {"principal": "mallory"},
        {"body": b"bodY"},
        {"signature": None},
        {"signature": "%%%"},
        {"signature": signature[:-8] + "AAAAAAA="},
    ):
        exchange, signature = fresh()
        args = {
            "method": "GET",
            "target": "/doc",
            "status": 200,
            "principal": "alice",
            "body": b"body",
            "signature": signature,
        }
        args.update(change)
        with pytest.raises(MessageAlteredError):
            exchange.verify_response(
                args["method"],
                args["target"],
                args["status"],
                args["principal"],
                args["body"],
                args["signature"],
            )


def test_unsigned_response_is_refused_unless_verification_is_off(principals, start_http) -> None:
    server = start_http(sign_responses=False)
    with pytest.raises(MessageAlteredError):
        get(principals, server, "/public")
    result = get(principals, server, "/public", verify=False)
    assert result.status == 200 and not result.verified
    assert result.principal == principals.client_name


# -- the client against servers that do not play along ------------------------------------------


def _plain_server(reply: Callable[[http.server.BaseHTTPRequestHandler], None]):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            reply(self)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    return server


@pytest.mark.parametrize(
    ("status", "authenticate", "error"),
    [
        (200, None, MessageAlteredError),  # no authentication at all: cannot be trusted
        (401, 'Basic realm="x"', UnsupportedFunctionError),
        (401, "{scheme} %%%", MalformedHeaderError),
        (401, "{scheme} AAAAAAAA", InvalidTokenError),  # a continuation nobody started
        (200, "{scheme} AAAAAAAA", InvalidTokenError),
        (401, "{scheme}, {scheme}", MalformedHeaderError),
    ],
)
def test_client_refuses_servers_that_do_not_authenticate(
    principals, status: int, authenticate: str | None, error: type[Exception]
) -> None:
    scheme = scheme_for(principals.package)

    def reply(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        if authenticate is not None:
            handler.send_header("WWW-Authenticate", authenticate.format(scheme=scheme))
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"ok")

    server = _plain_server(reply)
    try:
        with pytest.raises(error):
            http_get(
                f"http://127.0.0.1:{server.server_address[1]}/",
                principals.client,
                target_name=principals.target,
                preemptive=status == 200 and authenticate is not None,
            )
    finally:
        server.shutdown()
        server.server_close()


# -- the header grammar ---------------------------------------------------------------------------

_TOKEN_BYTES = st.binary(min_size=1, max_size=64)


@given(token=_TOKEN_BYTES, scheme=st.sampled_from(["Negotiate", "NTLM", "Rpcsec-X509"]))
def test_challenge_round_trip(token: bytes, scheme: str) -> None:
    value = format_challenge(scheme, token) + ', Basic realm="a, b", ' + scheme
    challenges = parse_challenges([value])
    assert [c.scheme for c in challenges] == [scheme, "Basic", scheme]
    assert challenges[0].token68 is not None
    assert decode_token(challenges[0].token68) == token
    assert challenges[1].params == (("realm", "a, b"),)
    assert challenges[2].token68 is None
    credentials = parse_authorization(format_challenge(scheme, token))
    assert credentials.matches(scheme.lower()) and credentials.token() == token


@given(st.text(max_size=120))
def test_header_parsers_raise_only_malformed_header(text: str) -> None:
    for parse in (lambda: parse_challenges([text]), lambda: parse_authorization(text).token()):
        with contextlib.suppress(MalformedHeaderError):
            parse()


def test_scheme_names() -> None:
    assert scheme_for("ntlm") == "NTLM"
    assert scheme_for("negotiate") == scheme_for("kerberos") == "Negotiate"
    assert scheme_for("x509") == "Rpcsec-X509"
    with pytest.raises(MalformedHeaderError):
        decode_token("A" * 70_000)


def test_busy_server_answers_503(principals, start_http) -> None:
    server = start_http(max_connections=1)
    holder = http.client.HTTPConnection(*server.address, timeout=5)
    holder.request("GET", "/public")
    holder.getresponse().read()  # the only slot is held by this keep-alive connection
    try:
        with pytest.raises(BusyError):
            get(principals, server, "/public")
    finally:
        holder.close()


@pytest.mark.kerberos
def test_kerberos_uses_the_negotiate_scheme(kerberos_realm) -> None:
    client = kerberos_realm.client_credentials("alice")
    server = AuthHTTPServer(
        ("127.0.0.1", 0), Documents, kerberos_realm.server_credentials("storage")
    )
    with server:
        server.start(poll_interval=0.01)
        response, _ = raw(server)
        assert response.getheader("WWW-Authenticate") == "Negotiate"
        result = http_get(
            server.url + "/nothing", client, target_name=kerberos_realm.hostbased("storage")
        )
    assert result.status == 404 and result.verified
    assert result.principal == kerberos_realm.principal("alice")
    assert result.server is not None
    assert result.server.principal == kerberos_realm.service_principal("storage")
