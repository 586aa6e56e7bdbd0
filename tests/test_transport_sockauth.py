"""sockauth: the sans-IO connection paired in memory, and real sockets on 127.0.0.1 port 0.

Every test runs for each available package (ntlm, x509). Hostile peers are played by the
sans-IO ``SockAuthConnection`` driven over a raw socket, so the test can change the bytes it
writes; servers run in threads and are ready when their constructor returns (no sleeps).
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.security import AccessMask, Ace, SecurityDescriptor, access_check, current_token
from rpcsec.sspi import (
    AccessDeniedError,
    BusyError,
    ContextReq,
    Credentials,
    CredentialUse,
    InsufficientAttributesError,
    InvalidTokenError,
    LogonDeniedError,
    MessageAlteredError,
    OutOfSequenceError,
    ProtectionLevel,
    ReplayError,
    SecurityError,
    accept_security_context,
    acquire_credentials_handle,
    initialize_security_context,
)
from rpcsec.transports import (
    CloseReceived,
    ConnectionClosedError,
    ConnectionConfig,
    ConnectionState,
    FrameTooLargeError,
    HandshakeComplete,
    HandshakeTimeoutError,
    MessageReceived,
    SockAuthConnection,
    TruncatedFrameError,
    sockauth,
)
from rpcsec.transports._connection import FrameKind
from rpcsec.transports._framing import FrameDecoder, encode_frame
from rpcsec.transports._requirements import client_requirements, server_requirements

PACKAGES = ["ntlm", "x509"]


@dataclass
class Principals:
    """Client and server credentials of one package, and the names they prove."""

    package: str
    client: Credentials
    server: Credentials
    target: str
    client_name: str
    other_client: Credentials
    other_name: str
    bad_client: Credentials


@pytest.fixture(params=PACKAGES)
def principals(request, tmp_path, ntlm_user_file) -> Principals:
    if request.param == "ntlm":
        return Principals(
            package="ntlm",
            client=_ntlm("RPCSEC\\alice", "Alice-Pa55!"),
            server=acquire_credentials_handle(
                "ntlm", None, CredentialUse.INBOUND, user_file=str(ntlm_user_file)
            ),
            target="host@server",
            client_name="RPCSEC\\alice",
            other_client=_ntlm("RPCSEC\\bob", "Bob-Pa55!"),
            other_name="RPCSEC\\bob",
            bad_client=_ntlm("RPCSEC\\alice", "wrong password"),
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
        other_name=pki.id("bob"),
        bad_client=stranger.credentials("alice"),
    )


def _ntlm(user: str, password: str) -> Credentials:
    return acquire_credentials_handle("ntlm", user, CredentialUse.OUTBOUND, password=password)


# -- helpers ----------------------------------------------------------------------------------


def echo_as_caller(conn: sockauth.AuthSocket) -> None:
    """Reply to each message with the impersonated caller's name and the message."""
    for message in conn:
        token = current_token()
        assert token is not None and token is conn.peer
        conn.send(token.principal.encode() + b"|" + message)


@pytest.fixture
def start_server() -> Iterator[Callable[..., sockauth.Server]]:
    servers: list[sockauth.Server] = []

    def start(credentials: Credentials, handler=echo_as_caller, **kwargs) -> sockauth.Server:
        server = sockauth.Server(("127.0.0.1", 0), credentials, handler, **kwargs)
        servers.append(server)
        server.start(poll_interval=0.01)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)


def client_connection(p: Principals, **kwargs) -> SockAuthConnection:
    protection = kwargs.pop("protection", ProtectionLevel.PRIVACY)
    stream = kwargs.pop("stream", False)
    flags = client_requirements(p.client, protection, stream=stream)
    context = initialize_security_context(p.client, p.target, flags.requested)
    return SockAuthConnection(context, ConnectionConfig(required=flags.required, **kwargs))


def server_connection(p: Principals, protection=ProtectionLevel.INTEGRITY, **kwargs):
    required = server_requirements(protection)
    context = accept_security_context(p.server, required)
    return SockAuthConnection(context, ConnectionConfig(required=required, **kwargs))


def pair(client: SockAuthConnection, server: SockAuthConnection) -> None:
    """Run the handshake in memory, shuttling whatever each side has to send."""
    client.initiate()
    for _ in range(20):
        to_server = client.data_to_send()
        if to_server:
            server.receive_data(to_server)
        to_client = server.data_to_send()
        if to_client:
            client.receive_data(to_client)
        if client.state is ConnectionState.OPEN and server.state is ConnectionState.OPEN:
            return
    raise AssertionError("handshake did not converge")


def raw_handshake(address, conn: SockAuthConnection) -> socket.socket:
    """A sans-IO client driven over a raw socket, so the test controls the bytes it writes."""
    sock = socket.create_connection(address, timeout=5)
    conn.initiate()
    sock.sendall(conn.data_to_send())
    while conn.state is ConnectionState.HANDSHAKE:
        chunk = sock.recv(65536)
        conn.receive_data(chunk)
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
    return sock


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def error_reason(data: bytes) -> str:
    """The reason in the ERROR frame a server sent before closing."""
    decoder = FrameDecoder(1 << 16)
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    assert frames and frames[-1][0] == FrameKind.ERROR, frames
    return frames[-1][1:].decode()


def assert_still_serving(server: sockauth.Server, p: Principals) -> None:
    with sockauth.connect(server.address, p.client, target_name=p.target) as conn:
        conn.send(b"still there?")
        assert conn.recv() == p.client_name.encode() + b"|still there?"


# -- framing ----------------------------------------------------------------------------------


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
)
def test_frames_survive_any_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(p) for p in payloads)
    points = sorted({c for c in cuts if c < len(wire)} | {0, len(wire)})
    decoder = FrameDecoder(300)
    got = []
    for start, end in itertools.pairwise(points):
        decoder.feed(wire[start:end])
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    assert got == payloads
    decoder.end_of_stream()


@given(st.binary(max_size=200))
def test_decoder_raises_only_typed_errors(data: bytes) -> None:
    decoder = FrameDecoder(64)
    decoder.feed(data)
    try:
        while decoder.next_frame() is not None:
            pass
        decoder.end_of_stream()
    except (FrameTooLargeError, TruncatedFrameError):
        pass


def test_oversize_prefix_is_refused_before_any_allocation() -> None:
    decoder = FrameDecoder(1024)
    decoder.feed(b"\xff\xff\xff\xff")  # announces 4 GiB; only 4 bytes are ever held
    with pytest.raises(FrameTooLargeError):
        decoder.next_frame()
    assert decoder.buffered == 4
    with pytest.raises(ValueError):
        encode_frame(b"x" * 11, max_size=10)


# -- sans-IO connection, in memory -------------------------------------------------------------


@pytest.mark.parametrize(
    "protection", [ProtectionLevel.PRIVACY, ProtectionLevel.INTEGRITY], ids=["privacy", "integrity"]
)
def test_in_memory_messages_both_ways(principals: Principals, protection) -> None:
    client = client_connection(principals, protection=protection)
    server = server_connection(principals)
    pair(client, server)
    assert server.context.peer.principal == principals.client_name
    client.send_message(b"secret request")
    wire = client.data_to_send()
    assert (b"secret request" in wire) is (protection is ProtectionLevel.INTEGRITY)
    [event] = server.receive_data(wire)
    assert isinstance(event, MessageReceived) and event.data == b"secret request"
    server.send_message(b"reply")
    [event] = client.receive_data(server.data_to_send())
    assert event == MessageReceived(b"reply", 0)
    client.close()
    assert server.receive_data(client.data_to_send()) == [CloseReceived()]
    assert server.state is ConnectionState.REMOTE_CLOSED
    assert server.receive_data(b"") == []  # EOF after the close is fine


def test_altered_message_is_message_altered(principals: Principals) -> None:
    client, server = client_connection(principals), server_connection(principals)
    pair(client, server)
    client.send_message(b"pay 10 to bob")
    wire = bytearray(client.data_to_send())
    wire[-5] ^= 0x01
    with pytest.raises(MessageAlteredError):
        server.receive_data(bytes(wire))
    assert server.state is ConnectionState.FAILED
    with pytest.raises(Exception, match="failed earlier"):  # sticky
        server.receive_data(b"")


def test_replayed_and_dropped_messages(principals: Principals) -> None:
    client, server = client_connection(principals), server_connection(principals)
    pair(client, server)
    client.send_message(b"one")
    first = client.data_to_send()
    server.receive_data(first)
    with pytest.raises(ReplayError):
        server.receive_data(first)

    client2, server2 = client_connection(principals), server_connection(principals)
    pair(client2, server2)
    client2.send_message(b"one")
    client2.data_to_send()  # lost on the way
    client2.send_message(b"two")
    with pytest.raises(OutOfSequenceError):
        server2.receive_data(client2.data_to_send())


def test_reflected_message_is_rejected(principals: Principals) -> None:
    client, server = client_connection(principals), server_connection(principals)
    pair(client, server)
    client.send_message(b"hello")
    with pytest.raises(MessageAlteredError):  # the direction is bound; keys differ too
        client.receive_data(client.data_to_send())


def test_data_frame_cannot_pose_as_close(principals: Principals) -> None:
    client, server = client_connection(principals), server_connection(principals)
    pair(client, server)
    client.send_message(b"")
    frame = bytearray(client.data_to_send())
    frame[4] = FrameKind.CLOSE  # relabel the DATA frame
    with pytest.raises(MessageAlteredError):
        server.receive_data(bytes(frame))


def test_eof_without_authenticated_close_is_truncation(principals: Principals) -> None:
    client, server = client_connection(principals), server_connection(principals)
    pair(client, server)
    client.send_message(b"partial")
    wire = client.data_to_send()
    assert server.receive_data(wire[:-3]) == []
    with pytest.raises(TruncatedFrameError):
        server.receive_data(b"")
    client2, server2 = client_connection(principals), server_connection(principals)
    pair(client2, server2)
    with pytest.raises(TruncatedFrameError):
        server2.receive_data(b"")


def test_protection_downgrade_fails_the_handshake(principals: Principals) -> None:
    client = client_connection(principals, protection=ProtectionLevel.INTEGRITY)
    server = server_connection(principals, protection=ProtectionLevel.PRIVACY)
    with pytest.raises(InsufficientAttributesError):
        pair(client, server)
    server.send_error(InsufficientAttributesError())
    with pytest.raises(InsufficientAttributesError):
        client.receive_data(server.data_to_send())


def test_stream_records_fed_one_byte_at_a_time(principals: Principals) -> None:
    client = client_connection(principals, stream=True)
    server = server_connection(principals)
    pair(client, server)
    assert client.stream_mode and server.stream_mode
    assert server.context.attributes & ContextReq.STREAM
    client.send_message(b"first record")
    client.send_message(b"second")
    wire = client.data_to_send()
    assert b"first record" not in wire
    events = []
    for i in range(len(wire)):
        # Every partial call is SEC_E_INCOMPLETE_MESSAGE inside: no state may change.
        events += server.receive_data(wire[i : i + 1])
    assert [e.data for e in events] == [b"first record", b"second"]  # type: ignore[union-attr]
    # Both records in one read: the second arrives as the EXTRA buffer of the first.
    client.send_message(b"third")
    client.send_message(b"fourth")
    events = server.receive_data(client.data_to_send())
    assert [e.data for e in events] == [b"third", b"fourth"]  # type: ignore[union-attr]
    client.close()
    assert server.receive_data(client.data_to_send()) == [CloseReceived()]


def test_stream_record_above_the_limit_is_refused(principals: Principals) -> None:
    client = client_connection(principals, stream=True, max_message=4096)
    server = server_connection(principals, max_message=1024)
    pair(client, server)
    client.send_message(b"x" * 4000)
    wire = client.data_to_send()
    with pytest.raises(FrameTooLargeError):
        server.receive_data(wire[:20])  # refused on the header, before the data arrives


def test_stream_record_altered_or_replayed(principals: Principals) -> None:
    client = client_connection(principals, stream=True)
    server = server_connection(principals)
    pair(client, server)
    client.send_message(b"record")
    wire = client.data_to_send()
    server.receive_data(wire)
    with pytest.raises(ReplayError):
        server.receive_data(wire)
    client2 = client_connection(principals, stream=True)
    server2 = server_connection(principals)
    pair(client2, server2)
    client2.send_message(b"record")
    wire = bytearray(client2.data_to_send())
    wire[-1] ^= 0x80
    with pytest.raises(MessageAlteredError):
        server2.receive_data(bytes(wire))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.binary(min_size=1, max_size=200))
def test_garbage_before_and_after_the_handshake_is_a_security_error(
    principals: Principals, garbage: bytes
) -> None:
    server = server_connection(principals)
    try:
        server.receive_data(encode_frame(bytes((FrameKind.TOKEN,)) + garbage))
        server.receive_data(garbage)
    except SecurityError:
        pass


def test_handshake_frames_after_the_handshake_are_rejected(principals: Principals) -> None:
    client, server = client_connection(principals), server_connection(principals)
    pair(client, server)
    with pytest.raises(InvalidTokenError):
        server.receive_data(encode_frame(bytes((FrameKind.TOKEN,)) + b"again"))


# -- real sockets -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["message", "stream"])
def test_messages_both_ways_over_tcp(principals: Principals, start_server, stream: bool) -> None:
    server = start_server(principals.server)
    with sockauth.connect(
        server.address, principals.client, target_name=principals.target, stream=stream
    ) as conn:
        assert conn.stream_mode is stream
        assert conn.attributes & ContextReq.CONFIDENTIALITY
        if principals.package == "x509":  # the server proved who it is
            assert conn.attributes & ContextReq.MUTUAL_AUTH
            assert conn.peer.principal == principals.target
        for message in (b"hello", b"", b"z" * 200_000):
            if stream and not message:
                continue  # a stream has no empty writes
            conn.send(message)
            expected = principals.client_name.encode() + b"|" + message
            got = conn.recv()
            while stream and len(got) < len(expected):
                got += conn.recv()
            assert got == expected


def test_stream_mode_partial_tcp_reads(principals: Principals, start_server) -> None:
    """A sans-IO stream client reading the server's records one byte per recv()."""
    server = start_server(principals.server)
    conn = client_connection(principals, stream=True)
    sock = raw_handshake(server.address, conn)
    with sock:
        conn.send_message(b"ping")
        sock.sendall(conn.data_to_send())
        events: list = []
        while not events:
            events = conn.receive_data(sock.recv(1))
        assert events == [MessageReceived(principals.client_name.encode() + b"|ping", 0)]


def test_handler_runs_as_the_caller_and_access_checks(principals: Principals, start_server) -> None:
    descriptor = SecurityDescriptor.build(
        "owner", [Ace.allow(principals.client_name, AccessMask.READ)]
    )

    def documents(conn: sockauth.AuthSocket) -> None:
        for _ in conn:
            access_check(descriptor, AccessMask.READ)  # uses the impersonation token
            conn.send(b"the document")

    server = start_server(principals.server, documents)
    with sockauth.connect(server.address, principals.client, target_name=principals.target) as c:
        c.send(b"GET")
        assert c.recv() == b"the document"
    with sockauth.connect(
        server.address, principals.other_client, target_name=principals.target
    ) as c:
        c.send(b"GET")
        with pytest.raises(AccessDeniedError):  # the server's reason, typed on this side
            c.recv()


def test_wrong_credentials_are_refused_and_server_keeps_serving(
    principals: Principals, start_server
) -> None:
    server = start_server(principals.server)
    with pytest.raises(SecurityError) as caught:
        sockauth.connect(server.address, principals.bad_client, target_name=principals.target)
    if principals.package == "ntlm":
        assert isinstance(caught.value, LogonDeniedError)
    assert_still_serving(server, principals)


def test_garbage_handshake_token(principals: Principals, start_server) -> None:
    server = start_server(principals.server)
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(encode_frame(bytes((FrameKind.TOKEN,)) + b"\x00garbage" * 10))
        assert error_reason(read_to_eof(sock)) == "invalid-token"
    assert_still_serving(server, principals)


def test_garbage_from_a_fake_server_is_invalid_token(principals: Principals) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def fake_server() -> None:
            peer, _ = listener.accept()
            with peer:
                peer.recv(65536)
                peer.sendall(encode_frame(bytes((FrameKind.TOKEN,)) + b"not a token"))
                read_to_eof(peer)

        thread = threading.Thread(target=fake_server, daemon=True)
        thread.start()
        with pytest.raises(InvalidTokenError):
            sockauth.connect(
                listener.getsockname(), principals.client, target_name=principals.target
            )
        thread.join(5)


def test_oversize_length_prefix_is_refused(principals: Principals, start_server) -> None:
    server = start_server(principals.server)
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"\x7f\xff\xff\xff")  # 2 GiB announced, never sent
        assert error_reason(read_to_eof(sock)) == "invalid-token"
    # and after the handshake, above max_message
    conn = client_connection(principals)
    with raw_handshake(server.address, conn) as sock:
        sock.sendall(b"\x00\x20\x00\x00")  # 2 MiB > the 1 MiB default
        assert error_reason(read_to_eof(sock)) == "invalid-token"
    assert_still_serving(server, principals)


def test_altered_frame_over_tcp(principals: Principals, start_server) -> None:
    server = start_server(principals.server)
    conn = client_connection(principals)
    with raw_handshake(server.address, conn) as sock:
        conn.send_message(b"transfer 10")
        wire = bytearray(conn.data_to_send())
        wire[-1] ^= 0x01
        sock.sendall(wire)
        with pytest.raises(MessageAlteredError):
            conn.receive_data(read_to_eof(sock))  # the server's ERROR frame, typed here
    assert_still_serving(server, principals)


def test_replayed_frame_over_tcp(principals: Principals, start_server) -> None:
    server = start_server(principals.server)
    conn = client_connection(principals)
    with raw_handshake(server.address, conn) as sock:
        conn.send_message(b"transfer 10")
        frame = conn.data_to_send()
        sock.sendall(frame + frame)
        events = []
        with pytest.raises(ReplayError):
            while True:
                events += conn.receive_data(sock.recv(65536))
        assert [e.data for e in events] == [principals.client_name.encode() + b"|transfer 10"]
    assert_still_serving(server, principals)


def test_truncated_frame_over_tcp(principals: Principals, start_server, caplog) -> None:
    server = start_server(principals.server)
    conn = client_connection(principals)
    with raw_handshake(server.address, conn) as sock:
        conn.send_message(b"x" * 100)
        sock.sendall(conn.data_to_send()[:50])
        sock.shutdown(socket.SHUT_WR)
        assert error_reason(read_to_eof(sock)) == "invalid-token"
    assert_still_serving(server, principals)


def test_half_open_handshake_times_out(principals: Principals, start_server) -> None:
    server = start_server(principals.server, handshake_timeout=0.2)
    with socket.create_connection(server.address, timeout=5) as sock:
        assert error_reason(read_to_eof(sock)) == "expired"  # then the server closed
    assert_still_serving(server, principals)


def test_client_handshake_timeout(principals: Principals) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never answers
        with pytest.raises(HandshakeTimeoutError):
            sockauth.connect(
                listener.getsockname(),
                principals.client,
                target_name=principals.target,
                handshake_timeout=0.2,
            )


def test_server_protection_floor(principals: Principals, start_server) -> None:
    server = start_server(principals.server, protection=ProtectionLevel.PRIVACY)
    with pytest.raises(InsufficientAttributesError):
        sockauth.connect(
            server.address,
            principals.client,
            target_name=principals.target,
            protection=ProtectionLevel.INTEGRITY,
        )
    assert_still_serving(server, principals)


def test_busy_server_refuses_extra_connections(principals: Principals, start_server) -> None:
    server = start_server(principals.server, max_connections=1)
    with sockauth.connect(server.address, principals.client, target_name=principals.target) as c:
        c.send(b"hold")
        c.recv()  # the single slot is now taken by a running handler
        with pytest.raises(BusyError):
            sockauth.connect(server.address, principals.client, target_name=principals.target)


def test_authenticated_close_ends_iteration(principals: Principals, start_server) -> None:
    done = threading.Event()
    received: list[bytes] = []

    def collect(conn: sockauth.AuthSocket) -> None:
        received.extend(conn)
        done.set()

    server = start_server(principals.server, collect)
    with sockauth.connect(server.address, principals.client, target_name=principals.target) as c:
        c.send(b"a")
        c.send(b"b")
    assert done.wait(5)
    assert received == [b"a", b"b"]
    with pytest.raises(ConnectionClosedError):
        c.recv()


def test_accept_on_a_listening_socket(principals: Principals) -> None:
    """The seed's AcceptAuthSocket, without the threaded server."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        result: list[object] = []

        def serve_one() -> None:
            with sockauth.accept(listener, principals.server) as conn:
                result.append(conn.peer.principal)
                conn.send(conn.recv()[::-1])

        thread = threading.Thread(target=serve_one, daemon=True)
        thread.start()
        with sockauth.connect(
            listener.getsockname(), principals.client, target_name=principals.target
        ) as conn:
            conn.send(b"olleh")
            assert conn.recv() == b"hello"
        thread.join(5)
    assert result == [principals.client_name]


def test_misuse_raises_type_and_value_errors(principals: Principals) -> None:
    with pytest.raises(TypeError):
        sockauth.AuthSocket.client(object(), principals.client, target_name="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client_requirements(principals.client, ProtectionLevel.NONE)
    with pytest.raises(ValueError):
        client_requirements(principals.client, ProtectionLevel.INTEGRITY, stream=True)
    client, server = client_connection(principals), server_connection(principals)
    with pytest.raises(Exception, match="cannot send"):
        client.send_message(b"too early")
    pair(client, server)
    with pytest.raises(ValueError):
        client.send_message(b"x" * (client.config.max_message + 1))


def test_handshake_complete_event_names_the_peer(principals: Principals) -> None:
    client, server = client_connection(principals), server_connection(principals)
    client.initiate()
    events: list = []
    for _ in range(10):
        if out := client.data_to_send():
            events += server.receive_data(out)
        if out := server.data_to_send():
            events += client.receive_data(out)
    complete = [e for e in events if isinstance(e, HandshakeComplete)]
    assert {e.peer.principal for e in complete} >= {principals.client_name}


def test_close_from_another_thread_ends_a_blocked_recv(principals, start_server) -> None:
    server = start_server(principals.server, lambda conn: list(conn))
    conn = sockauth.connect(server.address, principals.client, target_name=principals.target)
    outcome: list[BaseException] = []
    started = threading.Event()

    def reader() -> None:
        started.set()
        try:
            conn.recv()
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    started.wait(5)
    conn.close()
    thread.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectionClosedError)


@pytest.mark.kerberos
@pytest.mark.parametrize("stream", [False, True], ids=["message", "stream"])
def test_kerberos_changes_only_the_credentials(kerberos_realm, start_server, stream) -> None:
    """Seed: "the only modification is the security package name" -- here, the credentials."""
    client = kerberos_realm.client_credentials("alice")
    server = start_server(kerberos_realm.server_credentials("storage"))
    target = kerberos_realm.hostbased("storage")
    with sockauth.connect(server.address, client, target_name=target, stream=stream) as conn:
        assert conn.attributes & ContextReq.MUTUAL_AUTH  # required: kerberos can give it
        assert conn.peer.principal == kerberos_realm.service_principal("storage")
        conn.send(b"hello")
        assert conn.recv() == kerberos_realm.principal("alice").encode() + b"|hello"
