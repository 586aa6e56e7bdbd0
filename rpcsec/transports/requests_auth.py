"""``requests`` auth for HTTP Negotiate over any rpcsec package (RFC 4559; MS-NTHT for ntlm).

::

    requests.get("http://web.example/doc", auth=NegotiateAuth(alice))

As requests-gssapi does, a response hook answers each 401 challenge by resending the request on
the same connection; with ``mutual=True`` (default) a final response whose mutual-auth token is
missing or does not verify raises ``InvalidTokenError``, and a refusal raises the typed
``SecurityError``. The server's proven identity is in ``response.rpcsec_server``, and
``response.rpcsec_verified`` says whether rpcsec's signed-response extension verified it. Needs the
``http`` extra (requests).
"""

from __future__ import annotations

from typing import Any

import requests
import requests.auth

from rpcsec.sspi import Credentials

from ._httpclient import ClientFlow, NegotiateSettings
from ._httpexchange import SIGNATURE_HEADER

__all__ = ["NegotiateAuth"]


class NegotiateAuth(requests.auth.AuthBase):
    """Negotiate authentication for requests."""

    def __init__(self, credentials: Credentials, **settings: Any) -> None:
        self.settings = NegotiateSettings(credentials, **settings)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        flow = self.settings.flow(str(request.url))
        request.headers.update(flow.request_headers())
        header = flow.first()
        if header is not None:
            request.headers["Authorization"] = header
        request.register_hook("response", _Hook(flow))
        return request


class _Hook:
    def __init__(self, flow: ClientFlow) -> None:
        self._flow = flow

    def __call__(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        flow = self._flow
        try:
            while True:
                values = response.raw.headers.getlist("www-authenticate") if response.raw else []
                header = flow.next(response.status_code, values)
                if header is None:
                    break
                response.content  # noqa: B018 - drain the body so the connection is reused
                response.close()
                request = response.request.copy()
                request.headers["Authorization"] = header
                follow = response.connection.send(request, **kwargs)
                follow.history.append(response)
                follow.request = request
                response = follow
            response.rpcsec_server = flow.server  # type: ignore[attr-defined]
            response.rpcsec_verified = flow.finish(  # type: ignore[attr-defined]
                str(response.request.method),
                str(response.request.path_url),
                response.status_code,
                response.content,
                response.headers.get(SIGNATURE_HEADER),
            )
            return response
        finally:
            flow.close()
