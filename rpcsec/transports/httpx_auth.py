"""``httpx.Auth`` for HTTP Negotiate over any rpcsec package (RFC 4559; MS-NTHT for ntlm).

::

    auth = NegotiateAuth(alice)            # kerberos / negotiate: standard SPNEGO tokens
    httpx.get("http://web.example/doc", auth=auth)

The flow follows the server's 401 challenges on the same client (httpx keeps the connection),
and with ``mutual=True`` (default) refuses a final response whose mutual-auth token is missing
or does not verify (``InvalidTokenError``); a refusal by the server raises the typed
``SecurityError``. The server's proven identity is in ``response.extensions["rpcsec.server"]``;
``response.extensions["rpcsec.verified"]`` says whether rpcsec's signed-response extension
verified the response (``verify=True`` requires it; see ``NegotiateSettings``).
Needs the ``http`` extra (httpx).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import httpx

from rpcsec.sspi import Credentials

from ._httpclient import NegotiateSettings
from ._httpexchange import SIGNATURE_HEADER

__all__ = ["NegotiateAuth"]


class NegotiateAuth(httpx.Auth):
    """Negotiate authentication for httpx (sync and async clients: the flow does no I/O)."""

    requires_response_body = True  # the signed-response extension covers the body

    def __init__(self, credentials: Credentials, **settings: Any) -> None:
        self.settings = NegotiateSettings(credentials, **settings)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self.settings.flow(str(request.url))
        try:
            request.headers.update(flow.request_headers())
            header = flow.first()
            if header is not None:
                request.headers["Authorization"] = header
            response = yield request
            while True:
                header = flow.next(
                    response.status_code, response.headers.get_list("www-authenticate")
                )
                if header is None:
                    break
                request.headers["Authorization"] = header
                response = yield request
            if flow.server is not None:
                response.extensions["rpcsec.server"] = flow.server
            response.extensions["rpcsec.verified"] = flow.finish(
                request.method,
                request.url.raw_path.decode("ascii"),
                response.status_code,
                response.content,
                response.headers.get(SIGNATURE_HEADER),
            )
        finally:
            flow.close()
