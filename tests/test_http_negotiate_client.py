"""rpcsec's HTTP client auth classes (``httpx_auth.NegotiateAuth``, ``requests_auth.NegotiateAuth``)
against servers nobody here wrote: Apache httpd + mod_auth_gssapi, started by the test, and a
plain pyspnego server (``spnego.server``, no rpcsec code on that side).

Mutual authentication is required: the server's final ``WWW-Authenticate`` token must be there
and verify. The pyspnego server is also played dishonest -- it drops the final token, or sends
one that is not the acceptor's -- and the clients must refuse the response.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import threading

import pytest
from helpers import negotiate_peers as peers
from helpers.apache import apache_gssapi

from rpcsec.sspi import InvalidTokenError, SecurityError
from rpcsec.transports import httpx_auth, requests_auth

pytestmark = pytest.mark.kerberos

SERVICE = "HTTP/localhost@KRBTEST.COM"


@pytest.fixture(scope="module")
def apache(kerberos_lab):
    with apache_gssapi(kerberos_lab.main) as url:
        yield url


def _get(client: str, url: str, credentials, **settings):
    if client == "httpx":
        import httpx

        with httpx.Client(timeout=30) as session:
            response = session.get(url, auth=httpx_auth.NegotiateAuth(credentials, **settings))
        return response, response.extensions.get("rpcsec.server")
    import requests

    response = requests.get(
        url, auth=requests_auth.NegotiateAuth(credentials, **settings), timeout=30
    )
    return response, response.rpcsec_server


@pytest.mark.parametrize("package", ["kerberos", "negotiate"])
@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_clients_authenticate_to_apache_mod_auth_gssapi(apache, kerberos_realm, client, package):
    alice = kerberos_realm.client_credentials("alice", package=package)
    response, server = _get(client, apache + "/index.html", alice)
    assert response.status_code == 200
    assert response.text == "hello from apache\n"
    assert response.headers["X-Remote-User"] == "alice@KRBTEST.COM"
    assert server is not None and server.principal == SERVICE  # proven by the AP-REP


def test_apache_without_matching_ticket_is_a_typed_refusal(apache, kerberos_realm):
    """carol of OTHER.TEST has no path to HTTP/localhost@KRBTEST.COM: typed error, no 200."""
    carol = kerberos_realm.lab.other.client_credentials("carol")
    with pytest.raises(SecurityError):
        _get("httpx", apache + "/index.html", carol)


class _PyspnegoHandler(http.server.BaseHTTPRequestHandler):
    """A plain RFC 4559 server on pyspnego's acceptor; ``mode`` picks honest or dishonest."""

    protocol_version = "HTTP/1.1"
    mode = "honest"

    def do_GET(self) -> None:
        import spnego

        header = self.headers.get("Authorization", "")
        if not header.startswith("Negotiate "):
            self._reply(401, [("WWW-Authenticate", "Negotiate")])
            return
        ctx = spnego.server(service="HTTP", protocol="negotiate")
        out = ctx.step(base64.b64decode(header.split(" ", 1)[1]))
        assert ctx.complete
        headers = [("X-Client", str(ctx.client_principal))]
        if self.mode == "honest" and out:
            headers.append(("WWW-Authenticate", "Negotiate " + base64.b64encode(out).decode()))
        elif self.mode == "forged":
            forged = bytearray(out or b"\xa1\x03\x0a\x01\x00")
            forged[-5] ^= 0x01  # inside the AP-REP's encrypted part
            headers.append(("WWW-Authenticate", "Negotiate " + base64.b64encode(forged).decode()))
        self._reply(200, headers, b"hello from pyspnego\n")

    def _reply(self, status, headers, body=b"") -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _pyspnego_server(realm, mode, monkeypatch):
    monkeypatch.setenv("KRB5_KTNAME", peers.http_keytab(realm))  # pyspnego's acceptor keytab
    handler = type("Handler", (_PyspnegoHandler,), {"mode": mode})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_clients_authenticate_to_a_plain_pyspnego_server(kerberos_realm, client, monkeypatch):
    with _pyspnego_server(kerberos_realm, "honest", monkeypatch) as url:
        response, server = _get(client, url, kerberos_realm.client_credentials("alice"))
    assert response.status_code == 200
    assert response.headers["X-Client"] == "alice@KRBTEST.COM"
    assert server.principal == SERVICE


@pytest.mark.parametrize("mode", ["omitted", "forged"])
@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_missing_or_forged_mutual_auth_token_is_refused(kerberos_realm, client, mode, monkeypatch):
    with _pyspnego_server(kerberos_realm, mode, monkeypatch) as url:
        with pytest.raises(InvalidTokenError):
            _get(client, url, kerberos_realm.client_credentials("alice"))


def test_without_mutual_an_omitted_token_is_accepted_but_server_unverified(
    kerberos_realm, monkeypatch
):
    """mutual=False is the caller's explicit choice (with a bare Kerberos token, complete after
    one leg): the response comes back, and the server identity says it was not proven."""
    with _pyspnego_server(kerberos_realm, "omitted", monkeypatch) as url:
        response, server = _get(
            "httpx",
            url,
            kerberos_realm.client_credentials("alice"),
            mutual=False,
            options={"standard": "krb5"},
        )
    assert response.status_code == 200
    assert server.principal.startswith("(unverified) ")


def test_clients_against_rpcsec_server_in_standard_mode(kerberos_realm):
    from rpcsec.transports.httpauth import AuthHTTPRequestHandler, AuthHTTPServer, Response

    class Hello(AuthHTTPRequestHandler):
        def handle_authenticated(self, request):
            return Response(200, request.caller.principal.encode())

    peers.use_realm(kerberos_realm)
    with AuthHTTPServer(("127.0.0.1", 0), Hello, peers.http_credentials(kerberos_realm)) as srv:
        srv.start()
        url = f"http://localhost:{srv.address[1]}/"
        for client in ("httpx", "requests"):
            response, server = _get(client, url, kerberos_realm.client_credentials("alice"))
            assert (response.status_code, response.text) == (200, "alice@KRBTEST.COM")
            assert server.principal == SERVICE


def test_settings_reject_caller_mistakes(kerberos_realm):
    with pytest.raises(TypeError):
        httpx_auth.NegotiateAuth("alice")
    with pytest.raises(ValueError):
        requests_auth.NegotiateAuth(peers.http_credentials(kerberos_realm))  # INBOUND only
    assert os.environ.get("KRB5_CONFIG")


# -- rpcsec's signed-response extension, negotiated only between rpcsec ends -------------


def _tamper(old: bytes, new: bytes):
    """An httpx transport between the client and the network that rewrites response bodies
    after they arrived (a man in the middle on the unprotected response)."""
    import httpx

    class Tamper(httpx.BaseTransport):
        def __init__(self) -> None:
            self._inner = httpx.HTTPTransport()

        def handle_request(self, request):
            response = self._inner.handle_request(request)
            body = response.read().replace(old, new)
            headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
            return httpx.Response(response.status_code, headers=headers, content=body)

        def close(self) -> None:
            self._inner.close()

    return Tamper()


@contextlib.contextmanager
def _rpcsec_server(realm, package="kerberos", creds=None):
    from rpcsec.transports.httpauth import AuthHTTPRequestHandler, AuthHTTPServer, Response

    class Hello(AuthHTTPRequestHandler):
        def handle_authenticated(self, request):
            return Response(200, b"balance of " + request.caller.principal.encode())

    peers.use_realm(realm)
    creds = creds or peers.http_credentials(realm, package=package)
    with AuthHTTPServer(("127.0.0.1", 0), Hello, creds) as srv:
        srv.start()
        yield f"http://localhost:{srv.address[1]}/account?id=7"


@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_signed_response_extension_between_rpcsec_ends(kerberos_realm, client):
    with _rpcsec_server(kerberos_realm) as url:
        response, _ = _get(client, url, kerberos_realm.client_credentials("alice"), verify=True)
    verified = (
        response.extensions["rpcsec.verified"] if client == "httpx" else response.rpcsec_verified
    )
    assert verified is True and response.text == "balance of alice@KRBTEST.COM"


def test_signed_response_detects_an_altered_body(kerberos_realm):
    import httpx

    alice = kerberos_realm.client_credentials("alice")
    with _rpcsec_server(kerberos_realm) as url:
        transport = _tamper(b"alice", b"mallo")
        with httpx.Client(transport=transport, timeout=30) as session:
            with pytest.raises(SecurityError):  # MessageAlteredError: the MIC does not match
                session.get(url, auth=httpx_auth.NegotiateAuth(alice))  # verify=None: present


def test_verify_true_refuses_a_standard_server_without_the_extension(apache, kerberos_realm):
    from rpcsec.sspi import MessageAlteredError

    alice = kerberos_realm.client_credentials("alice")
    response, _ = _get("httpx", apache + "/index.html", alice)  # default: checked if present
    assert response.extensions["rpcsec.verified"] is False
    with pytest.raises(MessageAlteredError):
        _get("httpx", apache + "/index.html", alice, verify=True)


def test_ntlm_clients_over_one_connection_with_signed_response(kerberos_realm, ntlm_user_file):
    from rpcsec.sspi import CredentialUse, acquire_credentials_handle

    server = acquire_credentials_handle(
        "ntlm", None, CredentialUse.INBOUND, user_file=str(ntlm_user_file)
    )
    alice = acquire_credentials_handle(
        "ntlm", "RPCSEC\\alice", CredentialUse.OUTBOUND, password="Alice-Pa55!"
    )
    with _rpcsec_server(kerberos_realm, creds=server) as url:
        for client in ("httpx", "requests"):
            response, peer = _get(client, url, alice, verify=True)
            assert (response.status_code, response.text) == (200, "balance of RPCSEC\\alice")
            assert peer.principal.startswith("(unverified) ")  # NTLM never proves the server


def test_http_get_in_standard_mode_against_apache_and_rpcsec(apache, kerberos_realm):
    """The seed-shaped ``httpauth.http_get`` speaks the standard too: to Apache without the
    signature it cannot give, to an rpcsec server with it."""
    from rpcsec.transports.httpauth import http_get

    alice = kerberos_realm.client_credentials("alice")
    standard = {"standard": "spnego"}
    result = http_get(apache + "/index.html", alice, options=standard, verify=False)
    assert (result.status, result.body) == (200, b"hello from apache\n")
    assert result.server.principal == SERVICE and not result.verified
    with _rpcsec_server(kerberos_realm) as url:
        result = http_get(url, alice, options=standard)
    assert result.verified and result.body == b"balance of alice@KRBTEST.COM"


@pytest.mark.parametrize("client", ["httpx", "requests"])
def test_clients_delegate_when_asked(kerberos_realm, client):
    """``delegate=True`` forwards alice's TGT (as ``curl --delegation always``): the server's
    handler gets credentials that authenticate onward as alice; without it, none."""
    from rpcsec.transports.httpauth import AuthHTTPRequestHandler, AuthHTTPServer, Response

    class WhoAmI(AuthHTTPRequestHandler):
        def handle_authenticated(self, request):
            return Response(200, peers.whoami())

    peers.use_realm(kerberos_realm)
    alice = kerberos_realm.client_credentials("alice")
    with AuthHTTPServer(("127.0.0.1", 0), WhoAmI, peers.http_credentials(kerberos_realm)) as srv:
        srv.start()
        url = f"http://localhost:{srv.address[1]}/"
        delegated, _ = _get(client, url, alice, delegate=True)
        plain, _ = _get(client, url, alice)
    assert delegated.text == "alice@KRBTEST.COM|DELEGATE|alice@KRBTEST.COM\n"
    assert plain.text == "alice@KRBTEST.COM|IMPERSONATE|-\n"
