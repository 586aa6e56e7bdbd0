"""The rpcsec HTTP server (``httpauth.AuthHTTPServer``) against standard RFC 4559 clients.

curl --negotiate (and --delegation always), requests-gssapi, httpx-gssapi and requests-kerberos
authenticate with their own GSS stacks; the handler runs as the caller
(``current_token()``), and a delegating client's credentials reach the handler and work for
an onward hop. requests-gssapi / httpx-gssapi / requests-kerberos run with mutual
authentication REQUIRED, so they also check the server's final ``WWW-Authenticate`` token.
"""

from __future__ import annotations

import contextlib
import http.client

import pytest
from helpers import negotiate_peers as peers

from rpcsec.security import AccessMask, Ace, SecurityDescriptor, access_check
from rpcsec.transports.httpauth import AuthHTTPRequestHandler, AuthHTTPServer, Request, Response

pytestmark = pytest.mark.kerberos


SECRET = SecurityDescriptor.build(
    "owner", [Ace.allow("alice@KRBTEST.COM", AccessMask.READ)]
)  # fmt: skip


class WhoAmI(AuthHTTPRequestHandler):
    def handle_authenticated(self, request: Request) -> Response:
        if request.path == "/secret":
            access_check(SECRET, AccessMask.READ)  # as the caller: alice only
            return Response(200, b"the secret\n")
        return Response(200, peers.whoami())


@pytest.fixture(params=["kerberos", "negotiate"])
def server_url(request, kerberos_realm):
    peers.use_realm(kerberos_realm)
    creds = peers.http_credentials(kerberos_realm, package=request.param)
    with AuthHTTPServer(("127.0.0.1", 0), WhoAmI, creds) as server:
        server.start()
        yield f"http://localhost:{server.address[1]}/whoami"


def test_curl_negotiate(server_url, kerberos_realm):
    body, status = peers.curl_body_status(server_url, kerberos_realm)
    assert status == 200
    assert body == "alice@KRBTEST.COM|IMPERSONATE|-"


def test_curl_delegation_always_gives_the_handler_working_credentials(server_url, kerberos_realm):
    body, status = peers.curl_body_status(server_url, kerberos_realm, "--delegation", "always")
    assert status == 200
    # the handler authenticated to storage as alice with what curl forwarded
    assert body == "alice@KRBTEST.COM|DELEGATE|alice@KRBTEST.COM"


def test_requests_gssapi_with_required_mutual_auth(server_url, kerberos_realm):
    response = peers.requests_gssapi_get(server_url, kerberos_realm)
    assert response.status_code == 200
    assert response.text == "alice@KRBTEST.COM|IMPERSONATE|-\n"
    assert response.headers["WWW-Authenticate"].startswith("Negotiate ")
    assert "X-Rpcsec-Principal" not in response.headers  # no extension for a standard client


def test_requests_gssapi_delegating(server_url, kerberos_realm):
    response = peers.requests_gssapi_get(server_url, kerberos_realm, delegate=True)
    assert response.text == "alice@KRBTEST.COM|DELEGATE|alice@KRBTEST.COM\n"


def test_httpx_gssapi_with_required_mutual_auth(server_url, kerberos_realm):
    response = peers.httpx_gssapi_get(server_url, kerberos_realm)
    assert response.status_code == 200
    assert response.text == "alice@KRBTEST.COM|IMPERSONATE|-\n"


def test_requests_kerberos_with_required_mutual_auth(server_url, kerberos_realm, monkeypatch):
    response = peers.requests_kerberos_get(server_url, kerberos_realm, monkeypatch)
    assert response.status_code == 200
    assert response.text == "alice@KRBTEST.COM|IMPERSONATE|-\n"


def test_curl_without_ticket_gets_401(server_url, kerberos_realm, tmp_path):
    env = dict(kerberos_realm.lab.env, KRB5CCNAME=f"FILE:{tmp_path / 'empty'}")
    import subprocess

    proc = subprocess.run(
        ["curl", "-s", "--negotiate", "-u", ":", "-o", "/dev/null", "-w", "%{http_code}",
         server_url],
        env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.stdout == b"401"


def test_replayed_standard_token_is_refused(server_url, kerberos_realm):
    """An Authorization header captured from a real client does not authenticate twice
    (the acceptor's replay cache, RFC 4120 §3.2.3)."""
    import gssapi

    creds = gssapi.Credentials(usage="initiate", store={"ccache": kerberos_realm.ccache("alice")})
    ctx = gssapi.SecurityContext(
        name=gssapi.Name("HTTP@localhost", gssapi.NameType.hostbased_service),
        creds=creds,
        usage="initiate",
        mech=gssapi.OID.from_int_seq("1.3.6.1.5.5.2"),
    )
    header = "Negotiate " + __import__("base64").b64encode(ctx.step()).decode()
    port = int(server_url.split(":")[2].split("/")[0])
    statuses = []
    for _ in range(2):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        with contextlib.closing(conn):
            conn.request("GET", "/whoami", headers={"Authorization": header})
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    assert statuses == [200, 401]


def test_access_check_in_the_handler_runs_as_the_standard_caller(server_url, kerberos_realm):
    secret = server_url.replace("/whoami", "/secret")
    assert peers.curl_body_status(secret, kerberos_realm) == ("the secret", 200)
    proc = peers.curl(secret, kerberos_realm, user="bob")
    assert proc.stdout.decode().rpartition("\n")[2] == "403"  # bob is authenticated, not allowed


def test_http_front_calls_a_grpc_service_as_the_user(kerberos_realm, serve):
    """curl --delegation always -> rpcsec HTTP front -> gRPC storage *as alice*: the front's
    handler opens a secure channel without credentials (cloaking picks the credentials curl
    delegated), and storage sees alice via the HTTP service. Without delegation the onward
    call is refused and the front answers 403 with the reason."""
    import echo_pb2
    import echo_pb2_grpc
    from helpers.echo import EchoServicer

    from rpcsec.grpc import SecurityInterceptor, secure_channel
    from rpcsec.security import current_token
    from rpcsec.sspi import ProtectionLevel

    class Storage(EchoServicer):
        def Say(self, request, context):
            token = current_token()
            return echo_pb2.EchoResponse(
                text=",".join(token.delegation_chain), principal=token.principal
            )

    interceptor = SecurityInterceptor(kerberos_realm.server_credentials("storage"))
    storage = serve([interceptor], [Storage()])

    class Front(AuthHTTPRequestHandler):
        def handle_authenticated(self, request: Request) -> Response:
            with secure_channel(
                storage, None, target_name="storage@localhost", protection=ProtectionLevel.PRIVACY
            ) as channel:
                reply = echo_pb2_grpc.EchoStub(channel).Say(echo_pb2.EchoRequest(text="hi"))
            return Response(200, f"{reply.principal}|{reply.text}".encode())

    peers.use_realm(kerberos_realm)
    with AuthHTTPServer(("127.0.0.1", 0), Front, peers.http_credentials(kerberos_realm)) as front:
        front.start()
        url = f"http://localhost:{front.address[1]}/report"
        body, status = peers.curl_body_status(url, kerberos_realm, "--delegation", "always")
        assert (status, body) == (200, "alice@KRBTEST.COM|HTTP/localhost@KRBTEST.COM")
        body, status = peers.curl_body_status(url, kerberos_realm)  # no delegation
        assert status == 403


def test_standard_off_refuses_standard_clients_but_serves_rpcsec_ones(kerberos_realm):
    """A server that must have rpcsec's extended guarantees turns standard mode off: curl is
    refused, rpcsec's own client (signed responses) still works."""
    from rpcsec.transports.httpauth import http_get

    peers.use_realm(kerberos_realm)
    creds = peers.http_credentials(kerberos_realm)
    with AuthHTTPServer(("127.0.0.1", 0), WhoAmI, creds, standard=False) as server:
        server.start()
        url = f"http://localhost:{server.address[1]}/whoami"
        assert peers.curl_body_status(url, kerberos_realm)[1] == 401
        result = http_get(url, kerberos_realm.client_credentials("alice"))
    assert result.status == 200 and result.verified
    assert result.body == b"alice@KRBTEST.COM|IMPERSONATE|-\n"
