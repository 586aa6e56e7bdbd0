"""The ticket key ring: files, permissions, rotation, replicas, lifetimes, and the CLI.

Real files in a temporary directory; two ring objects on one directory stand for two replicas.
"""

from __future__ import annotations

import os
import pathlib
import stat
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpcsec.cli import main
from rpcsec.session import (
    KeyRingError,
    KeyRingPermissionError,
    TicketKeyRing,
)
from rpcsec.sspi import InternalSecurityError, InvalidHandleError

NOW = 1_800_000_000.0
DAY = 86400.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _key_files(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(directory.glob("*.key"))


def _seal(ring: TicketKeyRing, clock: Clock | None = None, state: bytes = b"state") -> bytes:
    now = clock() if clock is not None else NOW
    return ring.seal(state, ticket_id=os.urandom(16), expires_at=now + 3600)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ring_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "ring"


# -- create / load: files and permissions ---------------------------------------------------


def test_create_makes_a_private_directory_and_key_file(ring_dir, clock) -> None:
    ring = TicketKeyRing.create(ring_dir, clock=clock)
    assert stat.S_IMODE(ring_dir.stat().st_mode) == 0o700
    (key_file,) = _key_files(ring_dir)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.stat().st_size == 32
    assert key_file.name == f"{int(NOW * 1000):013d}-{ring.key_names[0].hex()}.key"
    assert ring.open(_seal(ring)).state == b"state"
    assert not list(ring_dir.glob(".tmp-*"))  # no temporary file left behind


def test_key_files_are_created_private_even_under_a_permissive_umask(ring_dir, clock) -> None:
    old = os.umask(0)
    try:
        TicketKeyRing.create(ring_dir, clock=clock)
        TicketKeyRing.rotate(ring_dir, clock=clock)
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in _key_files(ring_dir)} == {0o600}
    assert stat.S_IMODE(ring_dir.stat().st_mode) == 0o700


def test_create_refuses_an_existing_ring(ring_dir, clock) -> None:
    TicketKeyRing.create(ring_dir, clock=clock)
    before = _key_files(ring_dir)
    with pytest.raises(KeyRingError):
        TicketKeyRing.create(ring_dir, clock=clock)
    assert _key_files(ring_dir) == before


def test_create_tightens_an_existing_empty_directory(ring_dir, clock) -> None:
    ring_dir.mkdir(mode=0o777)
    os.chmod(ring_dir, 0o777)
    TicketKeyRing.create(ring_dir, clock=clock)
    assert stat.S_IMODE(ring_dir.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_load_refuses_a_key_file_readable_by_others(ring_dir, clock, mode) -> None:
    TicketKeyRing.create(ring_dir, clock=clock)
    os.chmod(_key_files(ring_dir)[0], mode)
    with pytest.raises(KeyRingPermissionError):
        TicketKeyRing.load(ring_dir, clock=clock)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777, 0o1777])
def test_load_refuses_a_directory_others_can_write(ring_dir, clock, mode) -> None:
    # Whoever can add a file could plant a key of their own and forge every ticket.
    TicketKeyRing.create(ring_dir, clock=clock)
    os.chmod(ring_dir, mode)
    with pytest.raises(KeyRingPermissionError, match="writable"):
        TicketKeyRing.load(ring_dir, clock=clock)


def test_load_accepts_a_read_only_secret_volume_of_symlinks(tmp_path, clock) -> None:
    # Kubernetes secret volumes: a 0755 directory, key names as symlinks into ..data/.
    source = tmp_path / "source"
    ring = TicketKeyRing.create(source, clock=clock)
    volume = tmp_path / "volume"
    (volume / "..data").mkdir(parents=True)
    for key_file in _key_files(source):
        (volume / "..data" / key_file.name).write_bytes(key_file.read_bytes())
        os.chmod(volume / "..data" / key_file.name, 0o400)
        (volume / key_file.name).symlink_to(pathlib.Path("..data") / key_file.name)
    os.chmod(volume, 0o755)
    mounted = TicketKeyRing.load(volume, clock=clock)
    assert mounted.key_names == ring.key_names
    assert mounted.open(_seal(ring, clock)).state == b"state"
    os.chmod(volume / "..data" / _key_files(source)[0].name, 0o444)  # world-readable target
    with pytest.raises(KeyRingPermissionError):
        TicketKeyRing.load(volume, clock=clock)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_load_refuses_bad_sizes(ring_dir, clock, size) -> None:
    TicketKeyRing.create(ring_dir, clock=clock)
    (key_file,) = _key_files(ring_dir)
    key_file.write_bytes(os.urandom(size))
    with pytest.raises(KeyRingError, match="exactly 32 bytes"):
        TicketKeyRing.load(ring_dir, clock=clock)


def test_load_refuses_a_file_whose_name_does_not_match_its_key(ring_dir, clock) -> None:
    TicketKeyRing.create(ring_dir, clock=clock)
    (key_file,) = _key_files(ring_dir)
    key_file.write_bytes(os.urandom(32))  # a different secret under the old name
    with pytest.raises(KeyRingError, match="does not match"):
        TicketKeyRing.load(ring_dir, clock=clock)


def test_load_refuses_an_empty_or_missing_ring_and_odd_names(ring_dir, clock) -> None:
    with pytest.raises(KeyRingError):
        TicketKeyRing.load(ring_dir, clock=clock)
    ring_dir.mkdir(mode=0o700)
    with pytest.raises(KeyRingError, match="empty"):
        TicketKeyRing.load(ring_dir, clock=clock)
    TicketKeyRing.create(ring_dir, clock=clock)
    odd = ring_dir / "backup.key"
    fd = os.open(odd, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(32))
    os.close(fd)
    with pytest.raises(KeyRingError, match="not a ticket key file name"):
        TicketKeyRing.load(ring_dir, clock=clock)


def test_secrets_never_appear_in_errors_or_repr(ring_dir, clock) -> None:
    ring = TicketKeyRing.create(ring_dir, clock=clock)
    (key_file,) = _key_files(ring_dir)
    secret = key_file.read_bytes()
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyRingPermissionError) as info:
        TicketKeyRing.load(ring_dir, clock=clock)
    assert secret.hex() not in str(info.value)
    assert secret.hex() not in repr(ring._snap.keys)


# -- rotation --------------------------------------------------------------------------------


def test_ticket_of_an_old_key_opens_while_kept_and_is_refused_once_retired(ring_dir, clock) -> None:
    ring = TicketKeyRing.create(ring_dir, clock=clock)
    old_ticket = _seal(ring, clock)
    for step in range(2):  # keep=3: the first key is still in the ring after two rotations
        clock.now += 60
        ring = TicketKeyRing.rotate(ring_dir, keep=3, clock=clock)
        assert ring.open(old_ticket).state == b"state", step
    assert len(ring.key_names) == 3
    clock.now += 60
    ring = TicketKeyRing.rotate(ring_dir, keep=3, clock=clock)
    assert len(_key_files(ring_dir)) == 3
    with pytest.raises(InvalidHandleError) as info:
        ring.open(old_ticket)
    assert info.value.reason == "context-unknown"


def test_newest_key_seals_after_rotation(ring_dir, clock) -> None:
    TicketKeyRing.create(ring_dir, clock=clock)
    clock.now += 1
    ring = TicketKeyRing.rotate(ring_dir, clock=clock)
    assert ring.open(_seal(ring, clock)).key_name == ring.key_names[0]
    assert ring.key_names[0].hex() in _key_files(ring_dir)[-1].name  # newest file sorts last


def test_rotate_cleans_up_after_a_crashed_rotation_and_ignores_its_leftovers(
    ring_dir, clock
) -> None:
    ring = TicketKeyRing.create(ring_dir, clock=clock)
    leftover = ring_dir / ".tmp-0123456789abcdef.key"  # a rotation killed before os.replace
    fd = os.open(leftover, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"half")
    os.close(fd)
    assert TicketKeyRing.load(ring_dir, clock=clock).key_names == ring.key_names
    TicketKeyRing.rotate(ring_dir, clock=clock)
    assert not leftover.exists()


def test_a_fifo_named_like_a_key_is_refused_without_blocking(ring_dir, clock) -> None:
    TicketKeyRing.create(ring_dir, clock=clock)
    os.mkfifo(ring_dir / f"{int(NOW * 1000) + 1:013d}-{'ab' * 16}.key", 0o600)
    with pytest.raises(KeyRingError, match="not a regular file"):
        TicketKeyRing.load(ring_dir, clock=clock)


def test_rotate_keep_bounds_and_validation(ring_dir, clock) -> None:
    TicketKeyRing.create(ring_dir, clock=clock)
    for _ in range(5):
        ring = TicketKeyRing.rotate(ring_dir, keep=2, clock=clock)  # same ms: still ordered
    assert len(ring.key_names) == 2 and len(_key_files(ring_dir)) == 2
    for keep in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            TicketKeyRing.rotate(ring_dir, keep=keep, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(KeyRingError):
        TicketKeyRing.rotate(ring_dir.parent / "nowhere", clock=clock)


def test_replica_opens_tickets_of_another_including_right_after_an_unseen_rotation(
    ring_dir, clock
) -> None:
    first = TicketKeyRing.create(ring_dir, clock=clock)
    replica = TicketKeyRing.load(ring_dir, clock=clock)  # default 1 s refresh interval
    assert replica.open(_seal(first, clock)).state == b"state"
    rotated = TicketKeyRing.rotate(ring_dir, clock=clock)  # the replica has not looked since
    fresh = _seal(rotated, clock, b"newest")
    assert replica.key_names != rotated.key_names
    assert replica.open(fresh).state == b"newest"  # one refresh on the unknown key name
    assert replica.key_names == rotated.key_names


def test_a_replica_in_another_process_opens_tickets_sealed_after_a_rotation(ring_dir) -> None:
    """A real second process holds the ring; this one rotates and seals under the new key;
    the other process opens it without being told (its refresh on the unknown key name)."""
    TicketKeyRing.create(ring_dir)
    program = (
        "import sys\n"
        "from rpcsec.session import TicketKeyRing\n"
        "ring = TicketKeyRing.load(sys.argv[1])\n"
        "print('READY', flush=True)\n"
        "for line in sys.stdin:\n"
        "    print(ring.open(bytes.fromhex(line.strip())).state.decode(), flush=True)\n"
    )
    replica = subprocess.Popen(
        [sys.executable, "-c", program, str(ring_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert replica.stdout is not None and replica.stdin is not None
        assert replica.stdout.readline().strip() == "READY"
        ring = TicketKeyRing.rotate(ring_dir)
        ticket = ring.seal(
            b"from-replica-one", ticket_id=os.urandom(16), expires_at=time.time() + 60
        )
        replica.stdin.write(ticket.hex() + "\n")
        replica.stdin.flush()
        assert replica.stdout.readline().strip() == "from-replica-one"
    finally:
        replica.kill()
        replica.wait()


def test_replica_picks_up_a_rotation_for_sealing_and_a_retirement(ring_dir, clock) -> None:
    TicketKeyRing.create(ring_dir, clock=clock)
    replica = TicketKeyRing.load(ring_dir, clock=clock, refresh_interval=0)
    old = _seal(replica, clock)
    TicketKeyRing.rotate(ring_dir, keep=1, clock=clock)  # retire the only old key
    sealed = _seal(replica, clock)  # refresh before sealing: the new key seals
    assert sealed[1:17] != old[1:17]
    with pytest.raises(InvalidHandleError):
        replica.open(old)


def test_refresh_is_rate_limited_and_reports_changes(ring_dir, clock) -> None:
    ring = TicketKeyRing.load(TicketKeyRing.create(ring_dir, clock=clock).directory, clock=clock)
    TicketKeyRing.rotate(ring_dir, clock=clock)
    assert ring.refresh() is False  # inside the 1 s interval: not even a stat
    eager = TicketKeyRing.load(ring_dir, clock=clock, refresh_interval=0)
    assert eager.refresh() is False  # nothing changed since it loaded
    TicketKeyRing.rotate(ring_dir, clock=clock)
    assert eager.refresh() is True
    assert TicketKeyRing.generate(clock=clock).refresh() is False


def test_open_uses_keys_another_thread_loaded_during_its_refresh(ring_dir, clock) -> None:
    # Regression (found by the rotation-under-traffic test): open() looked again only when its
    # own refresh reported a change; when another thread had re-read the directory while this
    # one waited for the lock, the refresh saw nothing new and the ticket was refused.
    TicketKeyRing.create(ring_dir, clock=clock)
    replica = TicketKeyRing.load(ring_dir, clock=clock)
    rotated = TicketKeyRing.rotate(ring_dir, clock=clock)

    def concurrent_refresh() -> bool:
        replica._reload(force=True)  # "the other thread" loads the new key...
        return False  # ...so this thread's own refresh finds nothing changed

    replica._refresh_on_miss = concurrent_refresh  # type: ignore[method-assign]
    assert replica.open(_seal(rotated, clock, b"raced")).state == b"raced"


def test_a_rotation_the_directory_timestamps_hide_is_still_found(ring_dir, clock) -> None:
    # Two changes inside one kernel clock tick leave the directory's mtime/ctime unchanged:
    # simulate a replica whose last read already carries the post-rotation timestamps.
    import dataclasses

    from rpcsec.session._keyring import _dir_stat

    TicketKeyRing.create(ring_dir, clock=clock)
    replica = TicketKeyRing.load(ring_dir, clock=clock, refresh_interval=0)
    rotated = TicketKeyRing.rotate(ring_dir, clock=clock)
    replica._snap = dataclasses.replace(replica._snap, dir_stat=_dir_stat(ring_dir))
    assert replica.open(_seal(rotated, clock, b"hidden")).state == b"hidden"


def test_a_broken_directory_keeps_the_last_good_keys(ring_dir, clock, caplog) -> None:
    ring = TicketKeyRing.create(ring_dir, clock=clock)
    replica = TicketKeyRing.load(ring_dir, clock=clock, refresh_interval=0)
    ticket = _seal(ring, clock)
    TicketKeyRing.rotate(ring_dir, clock=clock)
    os.chmod(_key_files(ring_dir)[-1], 0o644)  # an operator mistake on the new key
    assert replica.refresh() is False
    assert replica.open(ticket).state == b"state"
    assert "not re-read" in caplog.text
    assert replica.key_names == ring.key_names


def test_rotation_never_shows_readers_half_a_key(ring_dir, clock) -> None:
    TicketKeyRing.create(ring_dir, clock=clock)
    stop = threading.Event()
    failures: list[BaseException] = []

    def rotate() -> None:
        try:
            for _ in range(60):
                TicketKeyRing.rotate(ring_dir, keep=2)
        finally:
            stop.set()

    def read() -> None:
        while not stop.is_set():
            try:
                ring = TicketKeyRing.load(ring_dir)
                ring.open(_seal(ring, Clock(ring._clock())))
            except BaseException as exc:
                failures.append(exc)
                return

    threads = [threading.Thread(target=rotate), *(threading.Thread(target=read) for _ in range(2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(_key_files(ring_dir)) == 2


def test_rotation_under_traffic_drops_no_live_ticket(ring_dir) -> None:
    """Two replicas seal and open each other's tickets while an operator rotates (keep=3)
    faster than any real schedule: every ticket opens on the other replica."""
    TicketKeyRing.create(ring_dir)
    replicas = [TicketKeyRing.load(ring_dir, refresh_interval=0.02) for _ in range(2)]
    stop = threading.Event()
    failures: list[BaseException] = []
    opened = [0]
    rotations = [0]

    def rotate() -> None:
        while not stop.wait(0.15):  # a pace, not a wait for readiness
            TicketKeyRing.rotate(ring_dir, keep=3)
            rotations[0] += 1

    def traffic(sealer: TicketKeyRing, opener: TicketKeyRing) -> None:
        while not stop.is_set():
            ticket = sealer.seal(b"live", ticket_id=os.urandom(16), expires_at=time.time() + 60)
            try:
                assert opener.open(ticket).state == b"live"
                opened[0] += 1
            except BaseException as exc:
                failures.append(exc)
                return

    threads = [
        threading.Thread(target=rotate),
        threading.Thread(target=traffic, args=(replicas[0], replicas[1])),
        threading.Thread(target=traffic, args=(replicas[1], replicas[0])),
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while rotations[0] < 6 and not failures and time.monotonic() < deadline:
        stop.wait(0.05)
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []
    assert rotations[0] >= 6 and opened[0] > 100


def test_two_operators_rotating_at_once_are_serialised(ring_dir, clock) -> None:
    TicketKeyRing.create(ring_dir, clock=clock)
    errors: list[BaseException] = []

    def rotate() -> None:
        try:
            for _ in range(15):
                TicketKeyRing.rotate(ring_dir, keep=3, clock=clock)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rotate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    files = _key_files(ring_dir)
    assert len(files) == 3
    stamps = [int(f.name.split("-")[0]) for f in files]
    assert stamps == sorted(set(stamps))  # 46 keys made at one clock instant, all ordered
    assert stamps[-1] == int(NOW * 1000) + 45


@pytest.fixture(scope="module")
def shared_ring_dir(tmp_path_factory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("shared") / "ring"
    TicketKeyRing.create(directory)
    return directory


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rest=st.binary(max_size=200), known=st.booleans(), eager=st.booleans())
def test_directory_ring_refuses_arbitrary_tickets_only_with_the_typed_error(
    shared_ring_dir, rest: bytes, known: bool, eager: bool
) -> None:
    # Through the miss path (unknown key name: a stat, maybe a re-read) and the AEAD path.
    ring = TicketKeyRing.load(shared_ring_dir, refresh_interval=0 if eager else 1.0)
    name = ring.key_names[0] if known else os.urandom(16)
    with pytest.raises(InvalidHandleError):
        ring.open(bytes([1]) + name + rest)


# -- lifetimes -------------------------------------------------------------------------------


def test_a_key_older_than_max_age_no_longer_seals(ring_dir, clock) -> None:
    ring = TicketKeyRing.create(ring_dir, clock=clock, max_age=DAY)
    ticket = _seal(ring, clock)
    clock.now += DAY
    with pytest.raises(InternalSecurityError, match="rotate"):
        _seal(ring, clock)
    clock.now = NOW + 1800
    assert ring.open(ticket).state == b"state"  # it still opens what it sealed
    clock.now = NOW + DAY
    ring = TicketKeyRing.rotate(ring_dir, clock=clock, max_age=DAY)
    assert ring.open(_seal(ring, clock)).state == b"state"


def test_in_memory_ring_rotates_itself_and_drops_dead_keys(clock) -> None:
    ring = TicketKeyRing.generate(clock=clock, max_age=2 * DAY, rotate_after=DAY)
    first_key = ring.key_names[0]
    ticket = _seal(ring, clock)
    clock.now += DAY
    second = _seal(ring, clock)
    assert second[1:17] != first_key and ring.key_names[1] == first_key
    clock.now = NOW + 1800
    assert ring.open(ticket).state == b"state"
    clock.now = NOW + 3 * DAY  # rotate_after + max_age: nothing first_key sealed can live
    _seal(ring, clock)
    assert first_key not in ring.key_names
    with pytest.raises(ValueError):
        TicketKeyRing.generate(max_age=DAY, rotate_after=2 * DAY)


def test_from_secrets_rings_interoperate_and_order_newest_first(clock) -> None:
    new, old = os.urandom(32), os.urandom(32)
    a = TicketKeyRing.from_secrets([new, old], clock=clock)
    b = TicketKeyRing.from_secrets([new, old], clock=clock)
    assert a.key_names == b.key_names
    assert b.open(_seal(a, clock)).key_name == a.key_names[0]
    only_old = TicketKeyRing.from_secrets([old], clock=clock)
    assert a.open(_seal(only_old, clock)).key_name == a.key_names[1]
    for bad in ([], [b"short"], b"x" * 32):
        with pytest.raises(ValueError):
            TicketKeyRing.from_secrets(bad, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(KeyRingError):
        TicketKeyRing.from_secrets([new, new], clock=clock)


def test_secrets_ring_rotates_in_place_when_the_manager_hands_in_a_new_secret(clock) -> None:
    first, second = os.urandom(32), os.urandom(32)
    ring = TicketKeyRing.from_secrets([first], clock=clock, max_age=DAY)
    old_ticket = _seal(ring, clock)
    clock.now += DAY  # the only key is now too old to seal
    with pytest.raises(InternalSecurityError):
        _seal(ring, clock)
    ring.update_secrets([second, first])
    new_ticket = _seal(ring, clock)
    assert new_ticket[1:17] == ring.key_names[0] != old_ticket[1:17]
    clock.now = NOW + 1800
    assert ring.open(old_ticket).state == b"state"  # the old key still opens
    ring.update_secrets([second])  # retired
    with pytest.raises(InvalidHandleError):
        ring.open(old_ticket)
    assert ring.open(new_ticket).state == b"state"
    with pytest.raises(ValueError):
        ring.update_secrets([])
    with pytest.raises(TypeError):
        TicketKeyRing.generate(clock=clock).update_secrets([first])


def test_a_directory_key_and_the_same_secret_handed_in_agree(ring_dir, clock) -> None:
    ring = TicketKeyRing.create(ring_dir, clock=clock)
    (key_file,) = _key_files(ring_dir)
    handed_in = TicketKeyRing.from_secrets([key_file.read_bytes()], clock=clock)
    assert handed_in.key_names == ring.key_names
    assert handed_in.open(_seal(ring, clock)).state == b"state"


# -- the command line ------------------------------------------------------------------------


def test_cli_create_rotate_show(ring_dir, capsys) -> None:
    assert main(["keyring", "create", str(ring_dir)]) == 0
    assert main(["keyring", "rotate", str(ring_dir), "--keep", "2"]) == 0
    assert main(["keyring", "rotate", str(ring_dir), "--keep", "2"]) == 0
    capsys.readouterr()
    assert main(["keyring", "show", str(ring_dir)]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 2 and "seals+opens" in lines[0] and "opens" in lines[1]
    for key_file in _key_files(ring_dir):
        assert key_file.name.split("-")[1][:-4] in out
        assert key_file.read_bytes().hex() not in out  # never the secret
    assert main(["keyring", "create", str(ring_dir)]) == 1  # refuses an existing ring
    assert "already exists" in capsys.readouterr().err


def test_cli_show_says_when_the_ring_is_too_old_to_seal(ring_dir, capsys) -> None:
    TicketKeyRing.create(ring_dir, clock=Clock(time.time() - 8 * DAY))  # the CLI uses real time
    capsys.readouterr()
    assert main(["keyring", "show", str(ring_dir)]) == 0
    assert "too old to seal" in capsys.readouterr().out


def test_cli_reports_a_refused_ring_as_a_user_error(ring_dir, capsys) -> None:
    assert main(["keyring", "create", str(ring_dir)]) == 0
    os.chmod(_key_files(ring_dir)[0], 0o644)
    assert main(["keyring", "show", str(ring_dir)]) == 1
    assert "group or other" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["keyring", "rotate", str(ring_dir), "--keep", "many"])
    assert info.value.code == 2


def test_cli_as_a_process(ring_dir) -> None:
    run = [sys.executable, "-m", "rpcsec", "keyring"]
    subprocess.run([*run, "create", str(ring_dir)], check=True, capture_output=True)
    shown = subprocess.run([*run, "show", str(ring_dir)], check=True, capture_output=True)
    (key_file,) = _key_files(ring_dir)
    assert key_file.name.split("-")[1][:-4].encode() in shown.stdout
