"""The kernel's own access check: a handler's open() is checked as the caller's local account.

Two local users are created for the test (useradd; the test runs as root, as CI does) with a
0600 file each. Through real gRPC servers (sync, and aio running sync handlers in its pool), a
handler reading user A's file succeeds as A and gets PermissionError as B; every thread of the
process has the service's fsuid/fsgid/groups again after each call (read from
/proc/self/task/*/status), also after a handler exception and across a generator's steps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import platform
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import echo_pb2
import echo_pb2_grpc
import grpc
import pytest
from helpers.echo import EchoServicer
from hypothesis import given, settings
from hypothesis import strategies as st

import rpcsec
from rpcsec.grpc import SecurityInterceptor, reason_of, secure_channel
from rpcsec.grpc import aio as rpcsec_aio
from rpcsec.security import (
    CallerSteps,
    FsIdentityError,
    FsIdentityMap,
    get_fs_identity_map,
    set_fs_identity_map,
)
from rpcsec.sspi import ImpersonationLevel


def _require_root() -> None:
    message = None
    if platform.system() != "Linux":
        message = "per-thread filesystem identity is Linux only"
    elif os.geteuid() != 0:
        message = "needs root (setfsuid, useradd)"
    elif shutil.which("useradd") is None:
        message = "needs useradd (Debian passwd)"
    if message is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the kernel access check must be tested in CI: {message}")
        pytest.skip(message)


def _status(path: str = "/proc/thread-self/status") -> dict[str, list[int]]:
    """Uid/Gid lines (real, effective, saved, fs), Groups and CapEff of a thread."""
    out: dict[str, list[int]] = {}
    with open(path) as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                out[key] = [int(v) for v in value.split()]
            elif key == "CapEff":  # fs capabilities come back with fsuid 0
                out[key] = [int(value, 16)]
    return out


def _every_thread_is_the_service(service: dict[str, list[int]]) -> None:
    for task in pathlib.Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            assert _status(str(task / "status")) == service, f"thread {task.name}"


class LocalUsers:
    def __init__(self) -> None:
        suffix = secrets.token_hex(3)
        self.names = {"a": f"rpcsec-a-{suffix}", "b": f"rpcsec-b-{suffix}"}
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="rpcsec-fs-"))
        self.dir.chmod(0o711)  # traversable by the users, not listable
        self.files: dict[str, pathlib.Path] = {}

    def create(self) -> None:
        for key, name in self.names.items():
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--user-group", "-s",
                 "/usr/sbin/nologin", name],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
            entry = pwd.getpwnam(name)
            path = self.dir / f"{key}.txt"
            path.write_text(f"only {key} may read this")
            os.chown(path, entry.pw_uid, entry.pw_gid)
            path.chmod(0o600)
            self.files[key] = path

    def uid(self, key: str) -> int:
        return pwd.getpwnam(self.names[key]).pw_uid

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        for name in self.names.values():
            subprocess.run(["userdel", name], check=False, capture_output=True, timeout=60)


@pytest.fixture
def users():
    _require_root()
    local = LocalUsers()
    try:
        local.create()
        yield local
    finally:
        local.remove()


@pytest.fixture
def fs_map(users, x509_setup):
    """alice acts on files as user a, bob as user b; the map is removed afterwards."""
    principal = x509_setup.principal
    mapping = FsIdentityMap(
        {principal("alice"): users.names["a"], principal("bob"): users.names["b"]}
    )
    set_fs_identity_map(mapping)
    yield mapping
    set_fs_identity_map(None)


class Files(EchoServicer):
    """Say(path) reads the file as whoever the handler runs as; Repeat reads it per step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int]] = []  # (fsuid, thread) inside the handler
        self._lock = threading.Lock()

    def _read(self, path: str) -> str:
        with self._lock:
            self.seen.append((_status()["Uid"][3], threading.get_ident()))
        try:
            return pathlib.Path(path).read_text()
        except PermissionError:
            return "PermissionError"

    def Say(self, request, context):
        self.counter.hit()
        if request.text.startswith("raise:"):
            self._read(request.text[len("raise:") :])
            raise RuntimeError("the handler failed after opening the file")
        return echo_pb2.EchoResponse(text=self._read(request.text))

    def Repeat(self, request, context):
        self.counter.hit()
        for index in range(request.repeat):
            yield echo_pb2.EchoResponse(text=self._read(request.text), index=index)

    def Collect(self, request_iterator, context):
        self.counter.hit()
        return echo_pb2.EchoResponse(text="|".join(self._read(r.text) for r in request_iterator))

    def Chat(self, request_iterator, context):
        self.counter.hit()
        for index, request in enumerate(request_iterator):
            yield echo_pb2.EchoResponse(text=self._read(request.text), index=index)


def test_sync_server_handler_is_checked_by_the_kernel_as_the_caller(
    users, fs_map, x509_setup, serve
):
    setup = x509_setup
    service = _status()
    files = Files()
    address = serve([SecurityInterceptor(setup.server())], [files], max_workers=4)
    file_a = str(users.files["a"])
    with open(file_a) as f:  # the service itself (root) reads it: the check is the caller's
        assert f.read() == "only a may read this"
    for caller, expected, uid in (
        ("alice", "only a may read this", users.uid("a")),
        ("bob", "PermissionError", users.uid("b")),
    ):
        with secure_channel(address, setup.client(caller), **setup.channel_options()) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            assert stub.Say(echo_pb2.EchoRequest(text=file_a)).text == expected
            assert files.seen[-1][0] == uid
            _every_thread_is_the_service(service)
            # The handler fails after opening: the thread is still given back.
            with pytest.raises(grpc.RpcError) as info:
                stub.Say(echo_pb2.EchoRequest(text=f"raise:{file_a}"))
            assert info.value.code() is grpc.StatusCode.UNKNOWN
            _every_thread_is_the_service(service)
            # A generator: each step is the caller.
            texts = [r.text for r in stub.Repeat(echo_pb2.EchoRequest(text=file_a, repeat=3))]
            assert texts == [expected] * 3
            assert [s[0] for s in files.seen[-3:]] == [uid] * 3
            _every_thread_is_the_service(service)
            # Request streams: one handler (Collect) and one generator per message (Chat).
            two = [echo_pb2.EchoRequest(text=file_a)] * 2
            assert stub.Collect(iter(two)).text == f"{expected}|{expected}"
            assert [r.text for r in stub.Chat(iter(two))] == [expected] * 2
            assert [s[0] for s in files.seen[-4:]] == [uid] * 4
            _every_thread_is_the_service(service)
    bob_reads_b = secure_channel(address, setup.client("bob"), **setup.channel_options())
    with bob_reads_b as channel:
        reply = echo_pb2_grpc.EchoStub(channel).Say(
            echo_pb2.EchoRequest(text=str(users.files["b"]))
        )
    assert reply.text == "only b may read this"
    _every_thread_is_the_service(service)


def test_unmapped_principal_fails_closed(users, x509_setup, serve):
    setup = x509_setup
    set_fs_identity_map(FsIdentityMap({setup.principal("alice"): users.names["a"]}))
    try:
        files = Files()
        address = serve([SecurityInterceptor(setup.server())], [files])
        with secure_channel(address, setup.client("bob"), **setup.channel_options()) as channel:
            stub = echo_pb2_grpc.EchoStub(channel)
            for call in (
                lambda: stub.Say(echo_pb2.EchoRequest(text=str(users.files["a"]))),
                lambda: list(stub.Repeat(echo_pb2.EchoRequest(text="x", repeat=2))),
            ):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
                assert reason_of(info.value) == "access-denied"
        assert files.calls == 0  # never ran, in particular never as root
    finally:
        set_fs_identity_map(None)


async def test_aio_server_sync_handlers_in_its_pool(users, fs_map, x509_setup, aio_serve):
    setup = x509_setup
    service = _status()
    pool = futures.ThreadPoolExecutor(max_workers=4)
    files = Files()
    address = await aio_serve(
        [rpcsec_aio.SecurityInterceptor(setup.server())], [files], migration_thread_pool=pool
    )
    file_a = str(users.files["a"])
    try:
        for caller, expected, uid in (
            ("alice", "only a may read this", users.uid("a")),
            ("bob", "PermissionError", users.uid("b")),
        ):
            async with rpcsec_aio.secure_channel(
                address, setup.client(caller), **setup.channel_options()
            ) as channel:
                stub = echo_pb2_grpc.EchoStub(channel)
                assert (await stub.Say(echo_pb2.EchoRequest(text=file_a))).text == expected
                assert files.seen[-1][0] == uid
                _every_thread_is_the_service(service)
                steps = stub.Repeat(echo_pb2.EchoRequest(text=file_a, repeat=4))
                assert [r.text async for r in steps] == [expected] * 4
                assert [s[0] for s in files.seen[-4:]] == [uid] * 4
                _every_thread_is_the_service(service)
        # The pool threads that ran the handlers are the service again.
        for _ in range(4):
            assert pool.submit(_status).result() == service
    finally:
        pool.shutdown()


def test_generator_steps_resumed_on_other_threads(users, fs_map, x509_setup):
    token = rpcsec.AccessToken(x509_setup.principal("alice"), "x509")
    service = _status()

    def gen():
        for _ in range(4):
            yield (_status()["Uid"][3], threading.get_ident(), rpcsec.current_token())

    steps = CallerSteps(token)
    iterator = steps.run(lambda: iter(gen()))
    threads = [futures.ThreadPoolExecutor(max_workers=1) for _ in range(4)]
    try:
        results = [pool.submit(steps.run, next, iterator).result() for pool in threads]
        assert {r[0] for r in results} == {users.uid("a")}
        assert len({r[1] for r in results}) == 4  # four different threads
        assert all(r[2] is token for r in results)
        for pool in threads:
            assert pool.submit(_status).result() == service
    finally:
        for pool in threads:
            pool.shutdown()


def test_nesting_revert_to_self_and_exceptions(users, fs_map, x509_setup):
    alice = rpcsec.AccessToken(x509_setup.principal("alice"), "x509")
    bob = rpcsec.AccessToken(x509_setup.principal("bob"), "x509")
    service = _status()
    with rpcsec.impersonate(alice):
        assert _status()["Uid"][3] == users.uid("a")
        assert pathlib.Path(users.files["a"]).read_text() == "only a may read this"
        with rpcsec.impersonate(bob):
            assert _status()["Uid"][3] == users.uid("b")
            with pytest.raises(PermissionError):
                pathlib.Path(users.files["a"]).read_text()
        assert _status()["Uid"][3] == users.uid("a")
        with rpcsec.revert_to_self():
            assert _status() == service  # RevertToSelf: the service reads anything again
            assert pathlib.Path(users.files["b"]).read_text() == "only b may read this"
        assert _status()["Uid"][3] == users.uid("a")
        assert _status()["Gid"][3] == pwd.getpwnam(users.names["a"]).pw_gid
        assert pwd.getpwnam(users.names["b"]).pw_gid not in _status()["Groups"]
    assert _status() == service
    with pytest.raises(ZeroDivisionError), rpcsec.impersonate(alice):
        _ = 1 / 0
    assert _status() == service


def test_identify_anonymous_and_root_mappings_are_refused(users, x509_setup):
    alice = x509_setup.principal("alice")
    wheel = f"rpcsec-r-{secrets.token_hex(3)}"  # an account whose primary group is root's
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "-g", "0", wheel],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    mapping = {alice: users.names["a"], "root-please": "root", "wheel": wheel, "gone": 4000000}
    set_fs_identity_map(FsIdentityMap(mapping))
    service = _status()
    try:
        for token in (
            rpcsec.AccessToken(alice, "x509", ImpersonationLevel.IDENTIFY),
            rpcsec.AccessToken.anonymous(),
            rpcsec.AccessToken("root-please", "x509"),
            rpcsec.AccessToken("wheel", "x509"),
            rpcsec.AccessToken("gone", "x509"),  # a uid with no account
            rpcsec.AccessToken("nobody-mapped", "x509"),
        ):
            with pytest.raises(FsIdentityError) as info:
                rpcsec.impersonate(token)
            assert info.value.reason == "access-denied"
            assert rpcsec.current_token() is None
            assert _status() == service
    finally:
        set_fs_identity_map(None)
        subprocess.run(["userdel", wheel], check=False, capture_output=True, timeout=60)


def test_a_callable_map_and_uids(users):
    _require_root()
    uid_b = users.uid("b")
    mapping = FsIdentityMap(lambda token: uid_b if token.principal.endswith("/bob") else None)
    identity = mapping.identity_for(rpcsec.AccessToken("spiffe://x/user/bob", "x509"))
    assert identity.uid == uid_b and identity.gid == pwd.getpwnam(users.names["b"]).pw_gid
    assert identity.gid in identity.groups
    with pytest.raises(FsIdentityError):
        mapping.identity_for(rpcsec.AccessToken("spiffe://x/user/carol", "x509"))


def test_map_arguments_are_checked():
    with pytest.raises(TypeError):
        FsIdentityMap(["alice"])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        FsIdentityMap({"alice": 1.5})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        set_fs_identity_map({"alice": "alice"})  # type: ignore[arg-type]
    assert get_fs_identity_map() is None


def test_no_map_means_no_switch():
    # The default: impersonation never touches the thread's credentials.
    before = _status()
    with rpcsec.impersonate(rpcsec.AccessToken("alice", "x509")):
        assert _status() == before


async def test_async_code_reads_as_the_caller_from_a_worker_thread(users, fs_map, x509_setup):
    # The event loop's thread is shared by every task: never switched. A worker thread is.
    import asyncio

    service = _status()
    file_a = users.files["a"]

    def read_as_caller() -> str:
        with rpcsec.impersonate(rpcsec.current_token()):
            try:
                return file_a.read_text()
            except PermissionError:
                return "PermissionError"

    for who, expected in (("alice", "only a may read this"), ("bob", "PermissionError")):
        with rpcsec.impersonate(rpcsec.AccessToken(x509_setup.principal(who), "x509")):
            assert _status() == service  # the loop thread is still the service
            assert await asyncio.to_thread(read_as_caller) == expected
    _every_thread_is_the_service(service)
    with pytest.raises(FsIdentityError):  # unmapped: refused on the loop thread too
        rpcsec.impersonate(rpcsec.AccessToken("nobody-mapped", "x509"))


def test_a_forgotten_inner_revert_is_undone_by_the_outer_one(users, fs_map, x509_setup):
    alice = rpcsec.AccessToken(x509_setup.principal("alice"), "x509")
    bob = rpcsec.AccessToken(x509_setup.principal("bob"), "x509")
    service = _status()
    with rpcsec.impersonate(alice):
        rpcsec.impersonate(bob)  # never reverted (a handler bug)
        assert _status()["Uid"][3] == users.uid("b")
    assert _status() == service
    with rpcsec.revert_to_self():  # nothing left on this thread's stack
        assert _status() == service


def test_revert_on_another_thread_is_refused_and_can_be_retried(users, fs_map, x509_setup):
    alice = rpcsec.AccessToken(x509_setup.principal("alice"), "x509")
    service = _status()
    scope = rpcsec.impersonate(alice)
    with futures.ThreadPoolExecutor(max_workers=1) as other:
        with pytest.raises(RuntimeError):
            other.submit(scope.revert).result()
    assert _status()["Uid"][3] == users.uid("a")  # still switched, and still revertible here
    scope.revert()
    assert _status() == service


def test_socket_binding_handlers_are_checked_as_the_caller_too(users, fs_map, x509_setup):
    # sockauth runs its handler inside ``with impersonate(peer)``: the same kernel check.
    from rpcsec.sspi import CredentialUse, SecurityError
    from rpcsec.transports import sockauth

    setup = x509_setup
    service = _status()

    def handler(conn) -> None:
        path = conn.recv().decode()
        try:
            conn.send(pathlib.Path(path).read_bytes())
        except PermissionError:
            conn.send(b"PermissionError")

    server = sockauth.Server(
        ("127.0.0.1", 0), setup.pki.credentials("storage", CredentialUse.INBOUND), handler
    )
    server.start(poll_interval=0.01)
    try:
        for who, expected in (("alice", b"only a may read this"), ("bob", b"PermissionError")):
            with sockauth.connect(
                server.address, setup.client(who), target_name=setup.target("storage")
            ) as conn:
                conn.send(str(users.files["a"]).encode())
                assert conn.recv() == expected
        set_fs_identity_map(FsIdentityMap({setup.principal("bob"): users.names["b"]}))
        with sockauth.connect(
            server.address, setup.client("alice"), target_name=setup.target("storage")
        ) as conn:  # alice is unmapped now: her connection is refused, nothing is read
            conn.send(str(users.files["a"]).encode())
            with pytest.raises(SecurityError) as info:
                conn.recv()
            assert info.value.reason == "access-denied"  # the server's signed refusal
    finally:
        server.__exit__(None, None, None)
    _every_thread_is_the_service(service)


def test_identities_the_user_database_does_not_list(users):
    # Containers often run with numeric ids only: an FsIdentity is used as given (checked).
    from rpcsec.security import FsIdentity

    _require_root()
    uid = 4000000 + secrets.randbelow(100000)
    path = users.dir / "numeric.txt"
    path.write_text("numeric owner")
    os.chown(path, uid, uid)
    path.chmod(0o600)
    set_fs_identity_map(
        FsIdentityMap(
            {
                "carol": FsIdentity(uid, uid, (0, uid, uid)),
                "root": FsIdentity(0, uid, ()),
                "wheel": FsIdentity(uid, 0, ()),
                "bad": FsIdentity(uid, -1, ()),
            }
        )
    )
    service = _status()
    try:
        with rpcsec.impersonate(rpcsec.AccessToken("carol", "x509")):
            assert path.read_text() == "numeric owner"
            assert _status()["Groups"] == [uid]  # group 0 dropped, duplicates folded
            with pytest.raises(PermissionError):
                users.files["a"].read_text()
        for name in ("root", "wheel", "bad"):
            with pytest.raises(FsIdentityError):
                rpcsec.impersonate(rpcsec.AccessToken(name, "x509"))
        assert _status() == service
    finally:
        set_fs_identity_map(None)


def test_a_failing_audit_handler_leaves_the_thread_as_it_was(users, fs_map, x509_setup):
    class Broken(logging.Filter):
        def filter(self, record):
            raise RuntimeError("log filter failed")

    audit = logging.getLogger("rpcsec.audit")
    broken = Broken()
    audit.addFilter(broken)
    audit.setLevel(logging.DEBUG)
    service = _status()
    try:
        with pytest.raises(RuntimeError):
            rpcsec.impersonate(rpcsec.AccessToken(x509_setup.principal("alice"), "x509"))
        assert _status() == service
        assert rpcsec.current_token() is None
    finally:
        audit.removeFilter(broken)
        audit.setLevel(logging.NOTSET)


def test_run_as_switches_for_the_call_only_and_always_gives_the_thread_back(
    users, fs_map, x509_setup
):
    """``run_as`` (the sync server's one-frame impersonation): the function runs switched to
    the caller with the caller's token current; after it returns, raises, or the audit log
    fails before it runs (then it never runs), the thread is the process again."""
    from rpcsec.security._impersonation import run_as

    service = _status()
    token = rpcsec.AccessToken(x509_setup.principal("alice"), "x509")
    inside, current = run_as(token, lambda: (_status(), rpcsec.current_token()))
    assert inside["Uid"][3] == users.uid("a") and current is token
    assert _status() == service and rpcsec.current_token() is None

    def fails():
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run_as(token, fails)
    assert _status() == service and rpcsec.current_token() is None

    class Broken(logging.Filter):
        def filter(self, record):
            raise RuntimeError("log filter failed")

    audit = logging.getLogger("rpcsec.audit")
    broken = Broken()
    audit.addFilter(broken)
    audit.setLevel(logging.DEBUG)
    ran = []
    try:
        with pytest.raises(RuntimeError):
            run_as(token, ran.append, 1)
        assert ran == [] and _status() == service and rpcsec.current_token() is None
    finally:
        audit.removeFilter(broken)
        audit.setLevel(logging.NOTSET)


class Slow(EchoServicer):
    """Repeat: the second step blocks (switched to the caller) until the test releases it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.started = threading.Event()
        self.release = threading.Event()
        self.done = threading.Event()
        self.thread: int | None = None

    def Repeat(self, request, context):
        yield echo_pb2.EchoResponse(text="first")
        self.thread = threading.get_native_id()
        self.started.set()
        try:
            self.release.wait(30)
            text = pathlib.Path(self.path).read_text()
        finally:
            self.done.set()
        yield echo_pb2.EchoResponse(text=text)


def test_a_call_cancelled_mid_step_gives_the_thread_back(users, fs_map, x509_setup, serve):
    setup = x509_setup
    service = _status()
    slow = Slow(str(users.files["a"]))
    address = serve([SecurityInterceptor(setup.server())], [slow])
    with secure_channel(address, setup.client("alice"), **setup.channel_options()) as channel:
        responses = echo_pb2_grpc.EchoStub(channel).Repeat(echo_pb2.EchoRequest(text="x"))
        assert next(responses).text == "first"
        assert slow.started.wait(10)
        status_file = f"/proc/self/task/{slow.thread}/status"
        assert _status(status_file)["Uid"][3] == users.uid("a")  # mid-step: the caller
        responses.cancel()
        slow.release.set()
        assert slow.done.wait(10)
    # The step ends right after ``done``: wait (bounded) for that thread's identity to return.
    deadline = time.monotonic() + 10
    while _status(status_file)["Uid"][3] != 0:
        assert time.monotonic() < deadline, "the cancelled call's thread kept the caller's fsuid"
        time.sleep(0.001)
    assert _status(status_file) == service
    _every_thread_is_the_service(service)


def test_opting_in_without_the_capabilities_is_refused_at_once(users):
    # In a child process that gave up root: set_fs_identity_map refuses, nothing is switched.
    _require_root()
    code = (
        "import os, rpcsec\n"
        "from rpcsec.security import FsIdentityMap, set_fs_identity_map, get_fs_identity_map\n"
        f"os.setgid({users.uid('b')}); os.setgroups([]); os.setuid({users.uid('b')})\n"
        "try:\n"
        f"    set_fs_identity_map(FsIdentityMap({{'alice': {users.names['a']!r}}}))\n"
        "except PermissionError as e:\n"
        "    assert get_fs_identity_map() is None\n"
        "    print('refused:', e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "refused: a filesystem identity map needs CAP_SETUID" in result.stdout


@settings(max_examples=300, deadline=None)
@given(
    uid=st.integers(min_value=-(2**40), max_value=2**40),
    gid=st.integers(min_value=-(2**40), max_value=2**40),
    groups=st.lists(st.integers(min_value=-5, max_value=2**33), max_size=8),
)
def test_any_explicit_identity_is_checked_or_refused(uid, gid, groups):
    # No root needed: the check runs before any syscall, and never yields root or a bad id.
    from rpcsec.security import FsIdentity

    mapping = FsIdentityMap(lambda token: FsIdentity(uid, gid, tuple(groups)))
    token = rpcsec.AccessToken("anyone", "x509")
    try:
        identity = mapping.identity_for(token)
    except FsIdentityError as exc:
        assert exc.reason == "access-denied"
        return
    assert 0 < identity.uid < 2**32 - 1 and 0 < identity.gid < 2**32 - 1
    assert all(0 < g < 2**32 - 1 for g in identity.groups)
    assert len(set(identity.groups)) == len(identity.groups)
