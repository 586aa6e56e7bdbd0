"""The ASGI middleware under uvicorn (Starlette app) and the WSGI middleware under waitress,
against curl, requests-gssapi, httpx-gssapi and requests-kerberos (real servers, real ports).

Both run the application as the caller: an async endpoint, a sync endpoint that Starlette runs
in its thread pool, and a streaming WSGI body all see ``current_token()``; a delegating client's
credentials work for an onward hop. Refusals never reach the application.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import threading

import pytest
from helpers import negotiate_peers as peers

from rpcsec.security import current_token
from rpcsec.transports import asgi, wsgi

pytestmark = pytest.mark.kerberos

REACHED: list[str] = []


def _starlette_app():
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def whoami(request: Request) -> PlainTextResponse:
        REACHED.append("asgi")
        assert request.scope[asgi.CALLER_SCOPE_KEY] == current_token()
        return PlainTextResponse(peers.whoami().decode())

    def whoami_sync(request: Request) -> PlainTextResponse:  # runs in Starlette's thread pool
        REACHED.append("asgi-sync")
        return PlainTextResponse(peers.whoami().decode())

    return Starlette(routes=[Route("/whoami", whoami), Route("/sync", whoami_sync)])


def _wsgi_app(environ, start_response):
    REACHED.append("wsgi")
    assert environ[wsgi.CALLER_ENVIRON_KEY] == current_token()
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body():  # iterated by waitress after the call returned: still as the caller
        yield peers.whoami()

    return body()


@contextlib.contextmanager
def _uvicorn(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # accepting from here on: no wait for uvicorn's startup
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextlib.contextmanager
def _waitress(app):
    import waitress

    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    stop = threading.Event()

    def run() -> None:  # waitress's own loop, one poll at a time so that it can be stopped
        while not stop.is_set():
            server.asyncore.loop(timeout=0.2, map=server._map, count=1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()  # the socket listens since create_server
    try:
        yield server.effective_port
    finally:
        stop.set()
        thread.join(30)
        server.close()


@pytest.fixture(params=["asgi", "asgi-sync", "wsgi"])
def app_url(request, kerberos_realm):
    peers.use_realm(kerberos_realm)
    creds = peers.http_credentials(kerberos_realm)
    if request.param.startswith("asgi"):
        path = "/whoami" if request.param == "asgi" else "/sync"
        with _uvicorn(asgi.NegotiateMiddleware(_starlette_app(), creds)) as port:
            yield f"http://localhost:{port}{path}"
    else:
        with _waitress(wsgi.NegotiateMiddleware(_wsgi_app, creds)) as port:
            yield f"http://localhost:{port}/whoami"


def test_curl_negotiate(app_url, kerberos_realm):
    assert peers.curl_body_status(app_url, kerberos_realm) == (
        "alice@KRBTEST.COM|IMPERSONATE|-",
        200,
    )


def test_curl_delegation_always(app_url, kerberos_realm):
    body, status = peers.curl_body_status(app_url, kerberos_realm, "--delegation", "always")
    assert (body, status) == ("alice@KRBTEST.COM|DELEGATE|alice@KRBTEST.COM", 200)


def test_requests_gssapi_mutual(app_url, kerberos_realm):
    response = peers.requests_gssapi_get(app_url, kerberos_realm)
    assert (response.status_code, response.text) == (200, "alice@KRBTEST.COM|IMPERSONATE|-\n")


def test_httpx_gssapi_mutual(app_url, kerberos_realm):
    response = peers.httpx_gssapi_get(app_url, kerberos_realm)
    assert (response.status_code, response.text) == (200, "alice@KRBTEST.COM|IMPERSONATE|-\n")


def test_requests_kerberos_mutual(app_url, kerberos_realm, monkeypatch):
    response = peers.requests_kerberos_get(app_url, kerberos_realm, monkeypatch)
    assert (response.status_code, response.text) == (200, "alice@KRBTEST.COM|IMPERSONATE|-\n")


def _raw(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    with contextlib.closing(conn):
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic YWxpY2U6cGFzcw==",
        "Negotiate",
        "Negotiate !!!not-base64",
        "Negotiate " + base64.b64encode(b"\x60\x03\x06\x01\x00").decode(),  # bad OID
        "Negotiate " + base64.b64encode(b"\x60\x80" + b"\x00" * 40).decode(),  # indefinite
        "Negotiate " + base64.b64encode(b"RK\x01" + b"\x00" * 30).decode(),  # rpcsec junk
        "Negotiate " + base64.b64encode(b"NTLMSSP\x00\x01\x00\x00\x00").decode(),
    ],
)
def test_refusals_never_reach_the_application(app_url, authorization):
    port = int(app_url.split(":")[2].split("/")[0])
    path = "/" + app_url.split("/", 3)[3]
    REACHED.clear()
    headers = {} if authorization is None else {"Authorization": authorization}
    status, response_headers = _raw(port, path, headers)
    assert status in (400, 401)
    if status == 401:
        assert response_headers["www-authenticate"] == "Negotiate"
    assert REACHED == []
