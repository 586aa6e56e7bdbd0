"""The contract between rpcsec's negotiate package and pyspnego's internals (issue 10 item 13).

``rpcsec/packages/negotiate.py`` reaches into pyspnego where its public API falls short
(``_SpnegoHooks``). pyproject bounds pyspnego to the tested minor series; these tests check each
hook *by behaviour* and name it in the failure, so an upgrade that changes one fails loudly
here instead of silently, e.g., authenticating with the default ccache.
"""

from __future__ import annotations

import importlib.metadata
import inspect

import pytest

from rpcsec.packages.negotiate import _SpnegoHooks


def hook_broken(hook: str, what: str) -> str:
    version = importlib.metadata.version("pyspnego")
    return (
        f"pyspnego hook {hook} broke on pyspnego {version}: {what}. Update "
        "rpcsec/packages/negotiate.py (_SpnegoHooks) and the bound in pyproject.toml."
    )


def test_installed_pyspnego_is_the_tested_series() -> None:
    assert _SpnegoHooks.version_problem() is None, _SpnegoHooks.version_problem()


def test_the_pyproject_bound_names_the_tested_series() -> None:
    requires = importlib.metadata.requires("rpcsec") or []
    spec = next(r for r in requires if r.startswith("pyspnego"))
    major, minor = _SpnegoHooks.TESTED_SERIES
    assert f"<{major}.{minor + 1}" in spec, f"pyspnego must be bounded to {major}.{minor}.x: {spec}"


def test_version_problem_names_the_hooks_on_another_series(monkeypatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.13.0")
    problem = _SpnegoHooks.version_problem()
    assert problem is not None and "_gssapi_credential" in problem and "0.12" in problem
    from rpcsec.packages.negotiate import NegotiatePackage

    available, reason = NegotiatePackage().availability()
    assert not available and reason == problem  # fail closed, with the reason


def test_hook_spnego_parser_types_and_fields() -> None:
    """_SpnegoHooks.parse / without_optimistic_token / is_ntlm_authenticate."""
    try:
        from spnego._spnego import NegTokenInit, NegTokenResp, unpack_token
    except ImportError as exc:
        pytest.fail(hook_broken("_SpnegoHooks.parse", f"spnego._spnego moved ({exc})"))
    krb = "1.2.840.113554.1.2.2"
    init = NegTokenInit([krb], mech_token=b"tok", mech_list_mic=b"mic")
    parsed = unpack_token(init.pack())
    assert isinstance(parsed, NegTokenInit), hook_broken("parse", "NegTokenInit round trip")
    for name in ("mech_types", "mech_token", "req_flags", "mech_list_mic"):
        assert hasattr(parsed, name), hook_broken("parse", f"NegTokenInit.{name} is gone")
    assert [str(m) for m in parsed.mech_types] == [krb]
    assert parsed.mech_token == b"tok" and parsed.mech_list_mic == b"mic"
    resp = unpack_token(NegTokenResp(supported_mech=krb, response_token=b"r").pack())
    assert isinstance(resp, NegTokenResp), hook_broken("parse", "NegTokenResp round trip")
    for name in ("supported_mech", "response_token", "mech_list_mic", "neg_state"):
        assert hasattr(resp, name), hook_broken("parse", f"NegTokenResp.{name} is gone")
    assert str(resp.supported_mech) == krb and resp.response_token == b"r"
    stripped = unpack_token(_SpnegoHooks.without_optimistic_token(init.pack()))
    assert stripped.mech_token is None, hook_broken("without_optimistic_token", "kept it")
    from rpcsec.sspi import InvalidTokenError

    with pytest.raises(InvalidTokenError):
        _SpnegoHooks.parse(b"\x60\x03\x06\x01\x00", initial=True)


def test_hook_gssmech_values() -> None:
    from spnego._context import GSSMech

    assert GSSMech.kerberos.value == "1.2.840.113554.1.2.2", hook_broken("GSSMech", "kerberos")
    assert GSSMech.ntlm.value == "1.3.6.1.4.1.311.2.2.10", hook_broken("GSSMech", "ntlm")


def test_hook_negotiate_contexts_is_honoured(ntlm_user_file) -> None:
    """_SpnegoHooks.negotiate: ``_negotiate_contexts`` decides which mechanisms are offered."""
    import spnego
    from spnego._context import GSSMech
    from spnego._spnego import unpack_token

    ntlm = spnego.client("RPCSEC\\alice", "Alice-Pa55!", hostname="h", protocol="ntlm")
    negotiate = _SpnegoHooks.negotiate("initiate", {GSSMech.ntlm: ntlm}, hostname="h")
    token = unpack_token(negotiate.step())
    offered = [str(m) for m in token.mech_types]
    assert offered == [GSSMech.ntlm.value], hook_broken(
        "_SpnegoHooks.negotiate", f"_negotiate_contexts ignored: offered {offered}"
    )


def test_hooks_accept_their_private_keywords() -> None:
    """The private keywords are read from **kwargs in pyspnego's proxies."""
    from spnego._gss import GSSAPIProxy
    from spnego._negotiate import NegotiateProxy

    assert "_gssapi_credential" in inspect.getsource(GSSAPIProxy.__init__), hook_broken(
        "_SpnegoHooks.kerberos", "GSSAPIProxy no longer reads _gssapi_credential"
    )
    assert "_negotiate_contexts" in inspect.getsource(NegotiateProxy.__init__), hook_broken(
        "_SpnegoHooks.negotiate", "NegotiateProxy no longer reads _negotiate_contexts"
    )
    assert callable(getattr(GSSAPIProxy, "available_protocols", None)), hook_broken(
        "_SpnegoHooks.kerberos_supported", "GSSAPIProxy.available_protocols is gone"
    )


@pytest.mark.kerberos
def test_hook_gssapi_credential_is_honoured(kerberos_realm) -> None:
    """_SpnegoHooks.kerberos: the AP-REQ is made with *our* credential, not the default ccache
    (which is empty in the lab), and ``_context`` is python-gssapi's SecurityContext."""
    import gssapi

    from rpcsec.sspi import CredentialUse, acquire_credentials_handle

    creds = acquire_credentials_handle(
        "negotiate",
        kerberos_realm.principal("bob"),
        CredentialUse.OUTBOUND,
        ccache=kerberos_realm.ccache("bob"),
    )
    proxy = _SpnegoHooks.kerberos(
        "localhost", "storage", "initiate", creds.material.kerberos.initiator
    )
    try:
        token = proxy.step()
    except Exception as exc:
        pytest.fail(hook_broken("_SpnegoHooks.kerberos", f"no AP-REQ with our credential: {exc}"))
    assert token and token.startswith(b"\x60"), hook_broken("_SpnegoHooks.kerberos", "no AP-REQ")
    context = _SpnegoHooks.gss_context(proxy)
    assert isinstance(context, gssapi.SecurityContext), hook_broken(
        "_SpnegoHooks.gss_context", "the proxy's _context is not a gssapi.SecurityContext"
    )
    acceptor = kerberos_realm.server_credentials("storage").material.acceptor
    accepted = gssapi.raw.accept_sec_context(token, acceptor_creds=acceptor)
    client = str(gssapi.Name(accepted.initiator_name))
    assert client == "bob@KRBTEST.COM", hook_broken(
        "_SpnegoHooks.kerberos", f"_gssapi_credential ignored ({client} authenticated)"
    )


@pytest.mark.kerberos
def test_hook_deferred_error_is_kept_by_python_gssapi(kerberos_realm) -> None:
    """_SpnegoHooks.deferred_error reads python-gssapi's ``_last_err`` (__DEFER_STEP_ERRORS__)."""
    import gssapi

    assert getattr(gssapi.SecurityContext, "__DEFER_STEP_ERRORS__", False), hook_broken(
        "_SpnegoHooks.deferred_error", "python-gssapi no longer defers step errors"
    )
    creds = kerberos_realm.server_credentials("storage", package="negotiate")
    proxy = _SpnegoHooks.kerberos("unspecified", "host", "accept", creds.material.kerberos.acceptor)
    with pytest.raises(Exception):  # noqa: B017 - whatever pyspnego raises; the cause is kept
        proxy.step(b"\x60\x0d\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x01\x00")
    error = _SpnegoHooks.deferred_error(proxy)
    assert error is None or isinstance(error, gssapi.raw.GSSError), hook_broken(
        "_SpnegoHooks.deferred_error", f"_last_err holds {type(error).__name__}"
    )
