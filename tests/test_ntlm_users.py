"""The ntlm acceptor's user store (rpcsec/packages/_ntlm_users.py) and the hashed client
credentials: an unknown user costs the same whatever the file's size (no scan of it, no hash)
and the same as a wrong password (the decoy); a known user's NT hash is computed once per
handle on each side (no DES, no MD4 per handshake); a changed file is re-read; names with no
user part are refused (a pyspnego lookup quirk that forged the caller's domain); the store
reads both user-file formats as pyspnego does, and its AUTHENTICATE name parser agrees with
pyspnego's (hypothesis).

Work is counted (calls of pyspnego's hash and lookup functions, loads of the file), never
timed."""

from __future__ import annotations

import os
import pathlib
import stat
import struct

import pytest
import spnego
import spnego._ntlm
import spnego.exceptions
from helpers.pair import handshake
from hypothesis import given, settings
from hypothesis import strategies as st
from spnego._ntlm_raw.crypto import ntowfv1
from spnego._ntlm_raw.messages import Authenticate

from rpcsec.packages import _ntlm_users
from rpcsec.packages._ntlm_users import NtlmUserStore, authenticate_user, user_key
from rpcsec.sspi import (
    ContextReq,
    CredentialUse,
    InvalidTokenError,
    LogonDeniedError,
    NoCredentialsError,
    accept_security_context,
    acquire_credentials_handle,
    initialize_security_context,
)

ALICE = ("RPCSEC\\alice", "Alice-Pa55!")


class Counts:
    """Calls of the functions that cost per user-file line or per hash, on both sides."""

    WATCHED = (
        ("lmowfv1", spnego._ntlm, "lmowfv1"),  # pyspnego's DES (LM hash), client and acceptor
        ("ntowfv1", spnego._ntlm, "ntowfv1"),  # pyspnego's MD4 (NT hash), client and acceptor
        ("scan", spnego._ntlm, "_get_credential"),  # pyspnego reading NTLM_USER_FILE
        ("verify", spnego._ntlm, "compute_response_v2"),  # pyspnego checking an NTLMv2 response
        ("store_md4", _ntlm_users, "ntowfv1"),  # the store's MD4 of a Heimdal password
        ("parse", _ntlm_users, "_parse"),  # the store parsing the whole file
    )

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = {label: 0 for label, _, _ in self.WATCHED}
        self.scanned: set[int] = set()  # how many lines the files pyspnego read had
        for label, module, name in self.WATCHED:
            monkeypatch.setattr(module, name, self._counting(label, getattr(module, name)))

    def _counting(self, label, function):
        def counted(*args, **kwargs):
            self.calls[label] += 1
            if label == "scan":
                self.scanned.add(len(pathlib.Path(args[0]).read_text().splitlines()))
            return function(*args, **kwargs)

        return counted

    def reset(self) -> None:
        self.calls = dict.fromkeys(self.calls, 0)
        self.scanned = set()


def _user_file(path: pathlib.Path, others: int, tail: str = "RPCSEC:alice:Alice-Pa55!") -> str:
    lines = [f"RPCSEC:user{i}:Password-{i}" for i in range(others)]
    path.write_text("\n".join([*lines, tail]) + "\n")
    return str(path)


def _server_creds(user_file: str):
    return acquire_credentials_handle("ntlm", None, CredentialUse.INBOUND, user_file=user_file)


def _client_creds(user: str = ALICE[0], password: str = ALICE[1]):
    return acquire_credentials_handle("ntlm", user, CredentialUse.OUTBOUND, password=password)


def _logon(client_creds, server_creds):
    return handshake(
        initialize_security_context(client_creds, "host@server"),
        accept_security_context(server_creds),
    )


def _authenticate_of(client_creds, server_creds) -> tuple[object, bytes]:
    """A server context that has seen NEGOTIATE, and the client's AUTHENTICATE leg."""
    client = initialize_security_context(client_creds, "host@server")
    server = accept_security_context(server_creds)
    challenge = server.step(client.step().token).token
    return server, client.step(challenge).token


@pytest.mark.parametrize("standard", [False, True], ids=["extended", "standard"])
def test_an_unknown_user_costs_the_same_whatever_the_file_size(
    tmp_path, monkeypatch, standard
) -> None:
    """The DoS lever: pyspnego read and split the whole file on every AUTHENTICATE naming an
    unknown user. Now: no scan of it, no hash, the file parsed once per handle; the message is
    checked against the one-entry decoy instead (as much work as a wrong password)."""
    counts = Counts(monkeypatch)
    mallory = _client_creds("RPCSEC\\mallory", "anything")
    seen = {}
    for size in (5, 5000):
        server_creds = _server_creds(_user_file(tmp_path / f"users-{size}", size))
        legs = []
        for _ in range(3):
            if standard:
                server = accept_security_context(server_creds, options={"standard": "only"})
                hashed = spnego.NTLMHash("RPCSEC\\mallory", nt_hash=ntowfv1("x").hex())
                client = spnego.client(hashed, protocol="ntlm")  # a bare NTLM client
                legs.append((server, client.step(server.step(client.step()).token)))
            else:
                legs.append(_authenticate_of(mallory, server_creds))
        counts.reset()  # the acceptor's AUTHENTICATE steps only
        for server, authenticate in legs:
            with pytest.raises(LogonDeniedError):
                server.step(authenticate)
        seen[size] = dict(counts.calls)
        assert counts.calls["lmowfv1"] == counts.calls["ntowfv1"] == 0  # no DES, no MD4
        assert counts.calls["store_md4"] == 0
        assert counts.calls["scan"] == 3 and counts.scanned == {1}  # the one-line decoy
        assert counts.calls["verify"] == 3  # the response was checked (against the decoy)
        assert counts.calls["parse"] == 0  # parsed once, when the handle was acquired
        assert server_creds.material.store.loads == 1
    assert seen[5] == seen[5000]


def test_a_known_user_is_hashed_once_per_handle_on_each_side(tmp_path, monkeypatch) -> None:
    counts = Counts(monkeypatch)
    server_creds = _server_creds(_user_file(tmp_path / "users", 5000))
    client_creds = _client_creds()
    counts.reset()
    for _ in range(4):
        pair = _logon(client_creds, server_creds)
        assert pair.server.peer.principal == "RPCSEC\\alice"
    assert counts.calls["lmowfv1"] == 0  # no DES on either side
    assert counts.calls["ntowfv1"] == 0  # pyspnego's MD4: never (it gets the hash)
    assert counts.calls["store_md4"] == 1  # alice's line, on her first logon
    assert counts.calls["scan"] == 4  # once per logon, of a one-entry file
    assert counts.calls["parse"] == 0
    assert server_creds.material.store.loads == 1


def test_an_unknown_user_and_a_wrong_password_cost_the_same_work(tmp_path, monkeypatch) -> None:
    """No user enumeration by timing: refusing a name the file lacks runs pyspnego's check of
    the response exactly as refusing a wrong password does (counted, not timed)."""
    counts = Counts(monkeypatch)
    server_creds = _server_creds(_user_file(tmp_path / "users", 50))
    work = {}
    for user, password in [("RPCSEC\\alice", "Wrong-Pa55!"), ("RPCSEC\\mallory", "Wrong-Pa55!")]:
        client_creds = _client_creds(user, password)
        refusals = []
        for _ in range(2):  # the first logon of a user also writes its one-entry file
            server, authenticate = _authenticate_of(client_creds, server_creds)
            counts.reset()  # the acceptor's AUTHENTICATE step only
            with pytest.raises(LogonDeniedError) as refused:
                server.step(authenticate)
            refusals.append(str(refused.value))
        work[user] = (counts.calls["scan"], counts.calls["verify"], counts.scanned)
        assert refusals == ["ntlm logon failed"] * 2
    assert work["RPCSEC\\alice"] == work["RPCSEC\\mallory"] == (1, 1, {1})


def test_the_decoy_cannot_be_logged_on_to(tmp_path) -> None:
    """Even naming the decoy account itself, with any password, is refused: its hash is random
    and kept nowhere but in its private one-entry file."""
    server_creds = _server_creds(_user_file(tmp_path / "users", 1))
    domain, user = server_creds.material.store.decoy
    with pytest.raises(LogonDeniedError):
        _logon(_client_creds(f"{domain}\\{user}", "guess"), server_creds)
    assert "decoy" not in pathlib.Path(tmp_path / "users").read_text()


def test_the_one_entry_file_holds_only_a_hash_private_and_is_removed(tmp_path) -> None:
    server_creds = _server_creds(_user_file(tmp_path / "users", 3))
    store = server_creds.material.store
    path = store.entry_file("RPCSEC", "ALICE")
    assert path is not None
    text = pathlib.Path(path).read_text()
    assert "Alice-Pa55!" not in text
    assert ntowfv1("Alice-Pa55!").hex().upper() in text
    assert text.count("\n") == 1
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    store.close()
    assert not os.path.exists(os.path.dirname(path))


def test_a_changed_user_file_is_reread(tmp_path) -> None:
    users = tmp_path / "users"
    server_creds = _server_creds(_user_file(users, 2))
    store = server_creds.material.store
    _logon(_client_creds(), server_creds)
    with pytest.raises(LogonDeniedError):
        _logon(_client_creds("RPCSEC\\bob", "Bob-Pa55!"), server_creds)
    alice_file = store.entry_file("RPCSEC", "alice")
    # Bob is added: a new size; alice unchanged keeps her file (a handshake may be reading it).
    users.write_text(users.read_text() + "RPCSEC:bob:Bob-Pa55!\n")
    assert _logon(_client_creds("RPCSEC\\bob", "Bob-Pa55!"), server_creds).server.peer
    assert store.loads == 2
    assert store.entry_file("RPCSEC", "alice") == alice_file and os.path.exists(alice_file)
    # Alice's password changes, the file keeps its size: its times tell the store.
    before = os.stat(users)
    users.write_text(users.read_text().replace("Alice-Pa55!", "Alice-Pa66!"))
    os.utime(users, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    with pytest.raises(LogonDeniedError):
        _logon(_client_creds(), server_creds)
    assert store.loads == 3
    assert not os.path.exists(alice_file)  # the old hash is gone from the disk
    assert _logon(_client_creds("RPCSEC\\alice", "Alice-Pa66!"), server_creds).server.peer
    # Bob is removed.
    users.write_text("RPCSEC:alice:Alice-Pa66!\n")
    with pytest.raises(LogonDeniedError):
        _logon(_client_creds("RPCSEC\\bob", "Bob-Pa55!"), server_creds)
    assert store.loads == 4


def test_a_vanished_or_unreadable_user_file_refuses_every_logon(tmp_path) -> None:
    users = tmp_path / "users"
    server_creds = _server_creds(_user_file(users, 1))
    _logon(_client_creds(), server_creds)
    alice_file = server_creds.material.store.entry_file("RPCSEC", "alice")
    text = users.read_text()
    users.unlink()
    with pytest.raises(LogonDeniedError):
        _logon(_client_creds(), server_creds)
    assert not os.path.exists(alice_file)  # no hash left behind for a store that has no file
    users.write_bytes(b"RPCSEC:alice:\xff\xfe\n")  # not UTF-8: pyspnego could not read it either
    with pytest.raises(LogonDeniedError):
        _logon(_client_creds(), server_creds)
    users.write_text(text)
    assert _logon(_client_creds(), server_creds).server.peer.principal == "RPCSEC\\alice"


def test_an_unreadable_user_file_is_no_credentials(tmp_path) -> None:
    users = tmp_path / "users"
    users.write_bytes(b"\xff\xfe:alice:x\n")
    with pytest.raises(NoCredentialsError):
        _server_creds(str(users))


def test_both_formats_and_pyspnego_name_rules(tmp_path) -> None:
    nt = ntowfv1("Carol-Pa55!").hex()
    users = tmp_path / "users"
    users.write_text(
        "# a comment line, ignored\n"
        "RPCSEC:alice:Alice-Pa55!\n"
        "rpcsec:ALICE:shadowed-by-the-first-line\n"
        f"RPCSEC\\carol:1000:{'0' * 32}:{nt}:[U]:LCT-5EB9B791\n"
        f"dave:1001:{'0' * 32}:{ntowfv1('Dave-Pa55!').hex().upper()}:[U]:LCT-5EB9B791\n"
        ":erin@RPCSEC.TEST:Erin-Pa55!\n"
        f"RPCSEC\\frank:1002:{'0' * 32}:NOT-HEX-AT-ALL-XXXXXXXXXXXXXXXXXX:[U]:LCT-0\n"
        "RPCSEC:frank:Frank-Pa55!\n"  # a later line never rescues an unreadable one
        "RPCSEC:gina:with:colons\n"  # 4 fields: not a user line (pyspnego ignores it too)
        f"RPCSEC\\hank:1003:{'0' * 32}:{ntowfv1('Hank-Pa55!').hex()}:[DU         ]:LCT-0\n"
        f"RPCSEC\\ivan:1004:{'0' * 32}:{ntowfv1('Ivan-Pa55!').hex()}:[UL]:LCT-0\n"
    )
    server_creds = _server_creds(str(users))
    ok = [
        ("rpcsec\\Alice", "Alice-Pa55!"),
        ("RPCSEC\\carol", "Carol-Pa55!"),
        ("dave", "Dave-Pa55!"),
        ("erin@RPCSEC.TEST", "Erin-Pa55!"),
    ]
    for user, password in ok:
        assert _logon(_client_creds(user, password), server_creds).server.peer.principal == user
    for user, password in [
        ("RPCSEC\\alice", "shadowed-by-the-first-line"),
        ("RPCSEC\\frank", "Frank-Pa55!"),
        ("RPCSEC\\gina", "with:colons"),
        ("RPCSEC\\hank", "Hank-Pa55!"),  # disabled account (smbpasswd D flag)
        ("RPCSEC\\ivan", "Ivan-Pa55!"),  # locked account (L flag)
        ("OTHER\\dave", "Dave-Pa55!"),
        ("RPCSEC\\erin@RPCSEC.TEST", "Erin-Pa55!"),
    ]:
        with pytest.raises(LogonDeniedError):
            _logon(_client_creds(user, password), server_creds)


@pytest.mark.parametrize("standard", [False, True], ids=["extended", "standard"])
@pytest.mark.parametrize("name", ["\\OTHER\\", "\\RPCSEC\\", "\\\\"])
def test_a_name_with_no_user_part_is_refused(tmp_path, name, standard) -> None:
    """Regression: user name "OTHER\\" (empty domain field) splits to no user; pyspnego's
    lookup then takes the file's FIRST entry and names the caller after it in the message's
    domain, so alice, with her own password, logged on as "OTHER\\alice"."""
    users = tmp_path / "users"
    users.write_text("RPCSEC:alice:Alice-Pa55!\nOTHER:admin:Admin-Pa55!\nOTHER::Blank-Pa55!\n")
    server_creds = _server_creds(str(users))
    for password in ("Alice-Pa55!", "Blank-Pa55!"):
        if standard:  # a bare NTLM client (pyspnego) to the standard acceptor
            server = accept_security_context(server_creds, options={"standard": "only"})
            client = spnego.client(name, password, protocol="ntlm")
            authenticate = client.step(server.step(client.step()).token)
        else:
            server, authenticate = _authenticate_of(_client_creds(name, password), server_creds)
        with pytest.raises(LogonDeniedError):
            server.step(authenticate)


def _negotiate_logon(tmp_path, user: str, password: str, others: int):
    server_creds = acquire_credentials_handle(
        "negotiate",
        None,
        CredentialUse.INBOUND,
        user_file=_user_file(tmp_path / f"negotiate-users-{others}", others),
    )
    client_creds = acquire_credentials_handle(
        "negotiate", user, CredentialUse.OUTBOUND, password=password
    )
    client = initialize_security_context(
        client_creds, "host@server", requested=ContextReq.default() & ~ContextReq.MUTUAL_AUTH
    )
    return lambda: handshake(client, accept_security_context(server_creds))


def test_negotiate_uses_the_ntlm_store_no_scan_no_hash_per_logon(tmp_path, monkeypatch) -> None:
    """negotiate's NTLM half goes through the same store as the ntlm package: its client gives
    pyspnego the NT hash made once per handle, its acceptor points pyspnego at the one-entry
    file of the user the AUTHENTICATE names; an unknown user is checked against the decoy
    (renamed inside the SPNEGO token) and refused, whatever the size of the user file: the
    same work as a wrong password."""
    counts = Counts(monkeypatch)
    logon = _negotiate_logon(tmp_path, *ALICE, others=5000)
    counts.reset()
    pair = logon()
    assert pair.server.peer.principal.lower() == ALICE[0].lower()
    assert counts.calls["lmowfv1"] == counts.calls["ntowfv1"] == counts.calls["parse"] == 0
    assert counts.scanned == {1}  # pyspnego read the one-entry file only
    for others in (5, 5000):
        logon = _negotiate_logon(tmp_path, "RPCSEC\\mallory", "anything", others)
        counts.reset()
        with pytest.raises(LogonDeniedError):
            logon()
        assert counts.calls["parse"] == 0
        assert counts.scanned == {1}  # the one-line decoy, never the real file
        assert counts.calls["verify"] == 2  # the client's response, and the acceptor's check
    wrong = _negotiate_logon(tmp_path, ALICE[0], "not-her-password", others=5000)
    counts.reset()
    with pytest.raises(LogonDeniedError):
        wrong()
    assert counts.calls["verify"] == 2 and counts.scanned == {1}


def test_negotiate_refuses_a_name_with_no_user_part(tmp_path) -> None:
    users = tmp_path / "users"
    users.write_text("RPCSEC:alice:Alice-Pa55!\n")
    server_creds = acquire_credentials_handle(
        "negotiate", None, CredentialUse.INBOUND, user_file=str(users)
    )
    client_creds = acquire_credentials_handle(
        "negotiate", "\\OTHER\\", CredentialUse.OUTBOUND, password="Alice-Pa55!"
    )
    client = initialize_security_context(
        client_creds, "host@server", requested=ContextReq.default() & ~ContextReq.MUTUAL_AUTH
    )
    try:
        pair = handshake(client, accept_security_context(server_creds))
    except LogonDeniedError:
        return
    raise AssertionError(f"logged on as {pair.server.peer.principal!r}")


def test_the_client_never_shows_its_hash() -> None:
    creds = _client_creds()
    material = creds.material
    assert material.nt_hash == ntowfv1(ALICE[1]).hex().upper()
    assert material.nt_hash not in repr(material) + repr(creds)
    assert ALICE[1] not in repr(material) + repr(creds)


def test_a_legacy_lm_client_still_gets_its_password_hashed(monkeypatch) -> None:
    """LM_COMPAT_LEVEL < 2 asks pyspnego for LM responses, which need the LM hash."""
    material = _client_creds().material
    assert isinstance(material.spnego_credential(), spnego.NTLMHash)
    monkeypatch.setenv("LM_COMPAT_LEVEL", "1")
    assert isinstance(material.spnego_credential(), spnego.Password)


# -- the AUTHENTICATE name parser against pyspnego's ------------------------------------------

_names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


def _message(flags: int, fields: dict[int, bytes], trailing: bytes = b"") -> bytes:
    header = bytearray(b"NTLMSSP\x00" + struct.pack("<I", 3) + b"\x00" * 48)
    header += struct.pack("<I", flags)
    payload = bytearray()
    for offset in (12, 20, 28, 36, 44, 52):
        value = fields.get(offset, b"")
        struct.pack_into("<HHI", header, offset, len(value), len(value), 64 + len(payload))
        payload += value
    return bytes(header + payload + trailing)


@settings(max_examples=300, deadline=None)
@given(domain=_names, user=_names, unicode=st.booleans(), trailing=st.binary(max_size=8))
def test_authenticate_names_agree_with_pyspnego(domain, user, unicode, trailing) -> None:
    encoding = "utf-16-le" if unicode else "windows-1252"
    try:
        fields = {28: domain.encode(encoding), 36: user.encode(encoding)}
    except UnicodeEncodeError:
        return
    message = _message(0x1 if unicode else 0x2, fields, trailing)
    theirs = Authenticate.unpack(message)
    assert authenticate_user(message) == (theirs.domain_name or "", theirs.user_name or "")
    assert authenticate_user(message) == (domain, user)


@settings(max_examples=400, deadline=None)
@given(
    header=st.binary(min_size=48, max_size=48),
    flags=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=200),
    raw=st.binary(max_size=120),
)
def test_authenticate_names_of_garbage_raise_only_invalid_token(header, flags, payload, raw):
    """Hostile field descriptors (lengths, offsets anywhere) and bytes that are no message:
    only InvalidTokenError; and whatever is read, pyspnego reads the same."""
    message = b"NTLMSSP\x00\x03\x00\x00\x00" + header + struct.pack("<I", flags) + payload
    for candidate in (message, raw, b"NTLMSSP\x00\x03\x00\x00\x00" + raw):
        try:
            names = authenticate_user(candidate)
        except InvalidTokenError:
            continue
        theirs = Authenticate.unpack(candidate)
        assert names == (theirs.domain_name or "", theirs.user_name or "")


@given(domain=_names, user=_names)
def test_the_lookup_key_follows_pyspnegos_split(domain, user) -> None:
    joined = f"{domain}\\{user}" if domain else user
    theirs_domain, theirs_user = spnego._ntlm.split_username(joined)
    assert user_key(domain, user) == ((theirs_domain or "").upper(), (theirs_user or "").upper())


def test_store_of_a_missing_file_is_no_credentials(tmp_path) -> None:
    with pytest.raises(NoCredentialsError):
        NtlmUserStore(str(tmp_path / "absent"))


def test_logons_in_flight_survive_a_change_that_spares_their_user(tmp_path) -> None:
    """Reloads while other threads log on: an unchanged user's one-entry file stays in place,
    so none of its logons fails; every appended user can log on right after."""
    import threading

    users = tmp_path / "users"
    server_creds = _server_creds(_user_file(users, 2))
    client_creds = _client_creds()
    failures: list[BaseException] = []
    done = threading.Event()

    def alice() -> None:
        while not done.is_set():
            try:
                assert _logon(client_creds, server_creds).server.peer.principal == ALICE[0]
            except BaseException as exc:  # pragma: no cover - the property under test
                failures.append(exc)
                return

    threads = [threading.Thread(target=alice) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for i in range(30):
            with users.open("a") as handle:
                handle.write(f"RPCSEC:new{i}:New-{i}\n")
            _logon(_client_creds(f"RPCSEC\\new{i}", f"New-{i}"), server_creds)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not failures
    assert server_creds.material.store.loads == 31


# -- the user-file parser against pyspnego's own lookup ---------------------------------------

_name_parts = st.text(alphabet="aAbB\\@.é", min_size=0, max_size=4)
_hashes = st.binary(min_size=16, max_size=16).map(lambda raw: raw.hex())


@st.composite
def _user_lines(draw) -> str:
    domain, user = draw(_name_parts), draw(_name_parts)
    if draw(st.booleans()):  # Heimdal
        return f"{domain}:{user}:{draw(st.sampled_from(['pw1', 'pw2', '']))}"
    name = f"{domain}\\{user}" if draw(st.booleans()) else user
    nt = draw(_hashes)
    return f"{name}:1000:{'0' * 32}:{nt if draw(st.booleans()) else nt.upper()}:[U]:LCT-0"


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(_user_lines(), max_size=8),
    domain=_name_parts,
    user=_name_parts.filter(bool),
)
def test_the_store_finds_what_pyspnego_finds(tmp_path_factory, lines, domain, user) -> None:
    """For well-formed files (no disabled account, no unreadable hash: there the store is
    stricter), the store's answer for a name is pyspnego's answer scanning the whole file."""
    path = tmp_path_factory.mktemp("users") / "users"
    path.write_text("\n".join(lines) + "\n")
    joined = f"{domain}\\{user}" if domain else user
    their_domain, their_user = spnego._ntlm.split_username(joined)
    try:
        *_, theirs = spnego._ntlm._get_credential(str(path), their_domain, their_user)
    except spnego.exceptions.SpnegoError:
        theirs = None
    if not their_user:
        theirs = None  # pyspnego takes the first entry for no user: the store refuses
    store = NtlmUserStore(str(path))
    try:
        entry = store.entry_file(domain, user)
        ours = None
        if entry is not None:
            *_, ours = spnego._ntlm._get_credential(entry, their_domain, their_user)
        assert ours == theirs
    finally:
        store.close()


def test_a_store_whose_files_a_tmp_cleaner_removed_remakes_them(tmp_path) -> None:
    """systemd-tmpfiles removes what /tmp has not touched for days: the next logon finds the
    store's files gone and remakes them in a NEW private directory (never the old path, which
    anyone could have made since: whatever is there now is left alone)."""
    import shutil

    server_creds = _server_creds(_user_file(tmp_path / "users", 2))
    store = server_creds.material.store
    _logon(_client_creds(), server_creds)
    old = os.path.dirname(store.entry_file("RPCSEC", "alice"))
    shutil.rmtree(old)
    assert _logon(_client_creds(), server_creds).server.peer.principal == ALICE[0]
    with pytest.raises(LogonDeniedError):
        _logon(_client_creds("RPCSEC\\mallory", "x"), server_creds)
    new = os.path.dirname(store.entry_file("RPCSEC", "alice"))
    assert new != old and stat.S_IMODE(os.stat(new).st_mode) == 0o700
    # Only the placeholder goes: the directory, still ours, is removed with what is left in it.
    os.unlink(store.placeholder)
    assert _logon(_client_creds(), server_creds).server.peer.principal == ALICE[0]
    newer = os.path.dirname(store.entry_file("RPCSEC", "alice"))
    assert newer != new and not os.path.exists(new)
    # A directory no longer ours alone (world-writable now): left as it is, files and all.
    os.unlink(store.placeholder)
    os.chmod(newer, 0o777)
    assert _logon(_client_creds(), server_creds).server.peer.principal == ALICE[0]
    assert os.path.dirname(store.entry_file("RPCSEC", "alice")) not in (old, new, newer)
    assert os.path.exists(os.path.join(newer, "decoy"))
    shutil.rmtree(newer)
    store.close()
