"""Child process for the crash tests: feed crafted peer tokens to a real Kerberos context.

A native crash (SIGSEGV in libkrb5) must fail a test, not kill pytest, so the tests run this
module in a subprocess: ``python -m helpers.gss_probe MODE`` with a JSON request on stdin::

    {"ccache": ..., "keytab": ..., "rcache": ..., "target": "storage@localhost",
     "service": "storage/localhost@KRBTEST.COM", "user": "alice@KRBTEST.COM",
     "tokens": ["hex", ...]}

It establishes one context pair per request (kerberos or negotiate), then hands every token
to the path MODE names and prints one JSON line: the error class name per token ("ok" when
the token was accepted). Every outcome must be a ``SecurityError``; anything else is printed
as ``!TypeName`` so the parent can fail on it.

Modes: ``unwrap`` / ``verify`` (the public message API of the server context, header
included), ``gss-unseal`` / ``gss-verify`` / ``gss-record`` (``GssProtector`` straight, which
standard-GSS modes still use), ``accept`` (a server's first handshake leg, raw AP-REQ in the
frame), ``init`` (a client's second leg, raw AP-REP in the frame), ``negotiate-accept`` and
``negotiate-init`` (SPNEGO tokens in the first and second legs). ``sockauth-server`` instead
runs a kerberos sockauth echo server (request on one line; ``READY port``; ends with stdin).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _credentials(request: dict[str, Any], package: str) -> tuple[Any, Any]:
    from rpcsec.sspi import CredentialUse, acquire_credentials_handle

    client = acquire_credentials_handle(
        package, request["user"], CredentialUse.OUTBOUND, ccache=request["ccache"]
    )
    server = acquire_credentials_handle(
        package,
        request["service"],
        CredentialUse.INBOUND,
        keytab=request["keytab"],
        rcache=request["rcache"],
    )
    return client, server


def _pair(request: dict[str, Any], package: str = "kerberos") -> tuple[Any, Any]:
    from rpcsec.sspi import ContextReq, accept_security_context, initialize_security_context

    client_creds, server_creds = _credentials(request, package)
    req = ContextReq.default() | ContextReq.CONFIDENTIALITY
    client = initialize_security_context(client_creds, request["target"], req)
    server = accept_security_context(server_creds)
    token = client.step(None).token
    while token:
        token = server.step(token).token
        if token:
            token = client.step(token).token
    return client, server


def _run(mode: str, request: dict[str, Any]) -> list[str]:
    from rpcsec.packages.kerberos._records import encode_frame
    from rpcsec.sspi import SecurityError, accept_security_context, initialize_security_context

    tokens = [bytes.fromhex(t) for t in request["tokens"]]
    calls: list[Any] = []
    if mode in ("unwrap", "verify"):
        _, server = _pair(request)
        if mode == "unwrap":
            calls = [lambda t: server.unwrap(t)]
        else:
            calls = [lambda t: server.verify(b"data", t)]
    elif mode.startswith("gss-"):
        from rpcsec.packages.kerberos._native import KRB5_MECH, gss
        from rpcsec.packages.kerberos._protector import GssProtector, session_key

        client_creds, server_creds = _credentials(request, "kerberos")
        from rpcsec.packages.kerberos._names import service_name

        flags = gss.RequirementFlag
        init = gss.init_sec_context(
            service_name(request["target"]),
            creds=client_creds.material.initiator,
            mech=KRB5_MECH,
            flags=int(flags.mutual_authentication | flags.integrity | flags.confidentiality),
        )
        accepted = gss.accept_sec_context(init.token, acceptor_creds=server_creds.material.acceptor)
        protector = GssProtector(accepted.context, session_key(accepted.context)[1])
        if mode == "gss-unseal":
            calls = [lambda t: protector.unseal(0, b"aad", t)]
        elif mode == "gss-verify":
            calls = [lambda t: protector.verify(0, b"aad", b"data", t)]
        else:
            calls = [lambda t: protector.unwrap_record(t)]
    elif mode == "accept":
        _, server_creds = _credentials(request, "kerberos")
        from rpcsec.packages.kerberos._handshake import MAGIC
        from rpcsec.packages.kerberos._records import OfferRecord
        from rpcsec.sspi import ContextReq, ImpersonationLevel
        from rpcsec.sspi._negotiation import ContextOffer

        record = OfferRecord(ContextOffer(ContextReq.default(), ImpersonationLevel.IMPERSONATE))

        def accept(t: bytes) -> None:
            accept_security_context(server_creds).step(encode_frame(MAGIC, 1, t, record.encode()))

        calls = [accept]
    elif mode == "init":
        client_creds, _ = _credentials(request, "kerberos")
        from rpcsec.packages.kerberos._handshake import MAGIC
        from rpcsec.sspi import ContextReq

        def init(t: bytes) -> None:
            ctx = initialize_security_context(
                client_creds, request["target"], ContextReq.default() | ContextReq.MUTUAL_AUTH
            )
            ctx.step(None)
            ctx.step(encode_frame(MAGIC, 2, t, b""))

        calls = [init]
    elif mode == "negotiate-accept":
        _, server_creds = _credentials(request, "negotiate")
        from rpcsec.packages.kerberos._records import OfferRecord
        from rpcsec.packages.negotiate import MAGIC as NEGOTIATE_MAGIC
        from rpcsec.sspi import ContextReq, ImpersonationLevel
        from rpcsec.sspi._negotiation import ContextOffer

        record = OfferRecord(ContextOffer(ContextReq.default(), ImpersonationLevel.IMPERSONATE))

        def negotiate(t: bytes) -> None:
            accept_security_context(server_creds).step(
                encode_frame(NEGOTIATE_MAGIC, 1, t, record.encode())
            )

        calls = [negotiate]
    elif mode == "negotiate-init":
        client_creds, _ = _credentials(request, "negotiate")
        from rpcsec.packages.negotiate import MAGIC as NEGOTIATE_MAGIC
        from rpcsec.sspi import ContextReq

        def negotiate_init(t: bytes) -> None:
            ctx = initialize_security_context(
                client_creds, request["target"], ContextReq.default() | ContextReq.MUTUAL_AUTH
            )
            ctx.step(None)
            ctx.step(encode_frame(NEGOTIATE_MAGIC, 2, t, b""))

        calls = [negotiate_init]
    else:
        raise SystemExit(f"unknown mode {mode}")
    outcomes = []
    for token in tokens:
        try:
            calls[0](token)
        except SecurityError as exc:
            outcomes.append(type(exc).__name__)
        except Exception as exc:  # the parent fails on these
            outcomes.append(f"!{type(exc).__name__}: {exc}")
        else:
            outcomes.append("ok")
    return outcomes


def _serve(request: dict[str, Any]) -> None:
    """``sockauth-server``: a kerberos sockauth echo server; prints ``READY port``, serves
    until stdin closes (the parent's end of the pipe)."""
    from rpcsec.sspi import CredentialUse, acquire_credentials_handle
    from rpcsec.transports import sockauth

    creds = acquire_credentials_handle(
        "kerberos",
        request["service"],
        CredentialUse.INBOUND,
        keytab=request["keytab"],
        rcache=request["rcache"],
    )

    def echo(conn: Any) -> None:
        for message in conn:
            conn.send(message)

    with sockauth.Server(("127.0.0.1", 0), creds, echo) as server:
        server.start()
        print(f"READY {server.address[1]}", flush=True)
        sys.stdin.read()


def main() -> None:
    mode = sys.argv[1]
    if mode == "sockauth-server":
        _serve(json.loads(sys.stdin.readline()))
        return
    request = json.load(sys.stdin)
    print(json.dumps(_run(mode, request)), flush=True)


if __name__ == "__main__":
    main()
