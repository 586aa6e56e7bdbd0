"""Shared fixtures. Servers start on 127.0.0.1 port 0; nothing waits by sleeping."""

from __future__ import annotations

import pathlib

import pytest
from hypothesis import settings

# Wall-clock deadlines measure the machine's load, not the property: a 2-core CI runner under
# the suite's own servers made a 0.02 ms example take 277 ms. Examples still run; none times out.
settings.register_profile("rpcsec", deadline=None)
settings.load_profile("rpcsec")


@pytest.fixture
def ntlm_user_file(tmp_path: pathlib.Path) -> pathlib.Path:
    """A pyspnego / gss-ntlmssp user file with alice and bob in domain RPCSEC."""
    path = tmp_path / "ntlm-users"
    path.write_text("RPCSEC:alice:Alice-Pa55!\nRPCSEC:bob:Bob-Pa55!\n")
    return path


# -- Kerberos (tests/kdc.py): one real MIT KDC lab per test session --------------------------


@pytest.fixture(scope="session")
def kerberos_lab(tmp_path_factory: pytest.TempPathFactory):
    """Real KDCs on loopback: KRBTEST.COM (alice, bob; documents, storage, archive),
    OTHER.TEST (carol) and PAST.TEST (dave, KDC clock two hours behind). Skips without the
    Debian packages and python-gssapi; fails instead when CI=true. See tests/kdc.py."""
    import kdc

    kdc.require_kerberos()
    lab = kdc.start_lab(tmp_path_factory.mktemp("krb5"))
    yield lab
    lab.stop()


@pytest.fixture(scope="session")
def kerberos_realm(kerberos_lab):
    """The main realm, KRBTEST.COM: ``client_credentials("alice")``,
    ``server_credentials("storage")``, ``hostbased("storage")`` -> "storage@localhost"."""
    return kerberos_lab.main


# -- gRPC binding (tests/helpers/grpc_setup.py): package setups and real servers on port 0 ----


def _package_setup(name: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest):
    from helpers import grpc_setup

    if name == "ntlm":
        return grpc_setup.ntlm_setup(tmp_path)
    if name == "x509":
        return grpc_setup.x509_setup(tmp_path)
    return grpc_setup.kerberos_setup(request.getfixturevalue("kerberos_realm"))


@pytest.fixture(params=["ntlm", "x509"])
def package_setup(request: pytest.FixtureRequest, tmp_path: pathlib.Path):
    """The same binding test over each security package (see helpers/grpc_setup.py)."""
    return _package_setup(request.param, tmp_path, request)


@pytest.fixture(params=["ntlm", "x509", pytest.param("kerberos", marks=pytest.mark.kerberos)])
def any_package_setup(request: pytest.FixtureRequest, tmp_path: pathlib.Path):
    """``package_setup`` plus kerberos against the real KDC lab (skips without one)."""
    return _package_setup(request.param, tmp_path, request)


@pytest.fixture
def ntlm_setup(tmp_path: pathlib.Path):
    from helpers import grpc_setup

    return grpc_setup.ntlm_setup(tmp_path)


@pytest.fixture
def x509_setup(tmp_path: pathlib.Path):
    from helpers import grpc_setup

    return grpc_setup.x509_setup(tmp_path)


@pytest.fixture
def server_style() -> str:
    """How ``serve`` / ``aio_serve`` install a leading ``SecurityInterceptor``: "interceptor"
    (``grpc.server(interceptors=[...])``) or "registered" (``secure_server``'s way: handlers
    protected when registered). A module runs its tests both ways by overriding this fixture
    with ``params=grpc_setup.SERVER_STYLES``."""
    return "interceptor"


@pytest.fixture
def serve(server_style):
    """``serve(interceptors, servicers, max_workers=16) -> address``: a real ``grpc.server``
    on 127.0.0.1 port 0, stopped at teardown."""
    from helpers import grpc_setup

    servers = []

    def start(interceptors, servicers, **kwargs):
        kwargs.setdefault("style", server_style)
        server, address = grpc_setup.serve_sync(interceptors, servicers, **kwargs)
        servers.append(server)
        return address

    yield start
    for server in servers:
        server.stop(None).wait()


@pytest.fixture
async def aio_serve(server_style):
    """``await aio_serve(interceptors, servicers) -> address``: a real ``grpc.aio.server``."""
    from helpers import grpc_setup

    servers = []

    async def start(interceptors, servicers, **kwargs):
        kwargs.setdefault("style", server_style)
        server, address = await grpc_setup.serve_aio(interceptors, servicers, **kwargs)
        servers.append(server)
        return address

    yield start
    for server in servers:
        await server.stop(None)
