"""The service-wide ticket key ring: which keys seal and open context tickets.

RFC 5077 §4 names each ticket key (``key_name``) so a server can keep several; RFC 8446
§4.6.1 bounds a ticket's lifetime to 7 days. Here: the newest key seals, every key still in
the ring opens, and a key older than ``max_age`` no longer seals (so a ticket never outlives
its key by more than ``max_age``: seal refuses ``expires_at`` beyond ``now + max_age``).

A ring lives in one of three places:

* in memory (``generate``): one process, one fresh key; it rotates itself every
  ``rotate_after`` (1 day) and drops a key once every ticket it sealed has expired;
* a directory shared by replicas (``create`` / ``rotate`` / ``load``, and the ``rpcsec keyring``
  command): one file per key, ``<unix-ms>-<hexname>.key`` holding 32 random bytes, created
  0600 inside a 0700 directory, written atomically (temporary file, fsync, ``os.replace``) so a
  replica listing the directory never reads half a key;
* secrets handed in by a secrets manager (``from_secrets``), newest first.

The key name is derived from the secret (HKDF, see ``TicketKey``), so every replica names a key
the same way whichever way it got it; a directory ring checks the file name against it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import math
import os
import pathlib
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rpcsec.sspi import InternalSecurityError, InvalidHandleError

from ._ticket import SECRET_SIZE, OpenedTicket, TicketKey, parse_key_name

__all__ = [
    "DEFAULT_KEEP",
    "DEFAULT_MAX_AGE",
    "DEFAULT_ROTATE_AFTER",
    "KeyFileInfo",
    "KeyRingError",
    "KeyRingPermissionError",
    "TicketKeyRing",
]

_LOG = logging.getLogger("rpcsec.session")

DEFAULT_MAX_AGE = 7 * 24 * 3600.0
"""A key seals for at most this long (RFC 8446 §4.6.1: ticket lifetime at most 7 days)."""
DEFAULT_ROTATE_AFTER = 24 * 3600.0
"""An in-memory ring makes a new sealing key this often."""
DEFAULT_KEEP = 3
REFRESH_INTERVAL = 1.0
"""A directory ring looks at its directory at most this often on the normal path."""
FULL_READ_INTERVAL = 30.0
"""...and reads its files at least this often, changed or not."""

_KEY_FILE = re.compile(r"^(?P<ms>[0-9]{1,16})-(?P<name>[0-9a-f]{32})\.key$")
_TEMP_PREFIX = ".tmp-"
_LOCK_FILE = ".lock"
Clock = Callable[[], float]


class KeyRingError(ValueError):
    """A ring cannot be created, loaded or rotated: what is wrong is in the message (never a
    secret). A ``ValueError`` so the command line reports it as a user error."""


class KeyRingPermissionError(KeyRingError):
    """A key file or the ring directory is open to group or other users: refused, because
    anyone who reads a ticket key can forge every context of the service."""


@dataclass(frozen=True, slots=True)
class KeyFileInfo:
    """What ``rpcsec keyring show`` prints: never the secret."""

    name: bytes
    created_at: float
    path: pathlib.Path | None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """An immutable view of the ring, swapped in one assignment (readers never lock)."""

    keys: tuple[TicketKey, ...]  # newest first
    by_name: dict[bytes, TicketKey]
    files: dict[bytes, str]  # key name -> file name, for a directory ring
    dir_stat: tuple[int, int, int] | None
    settled: bool = True
    """False when the directory changed within ``_SETTLE_NS`` of being read: a change in the
    same kernel clock tick would not move its timestamps, so an equal ``stat`` proves
    nothing and the next miss reads the files again."""


def _snapshot(
    keys: Iterable[TicketKey],
    files: dict[bytes, str] | None = None,
    dir_stat: tuple[int, int, int] | None = None,
) -> _Snapshot:
    ordered = tuple(sorted(keys, key=lambda k: (k.created_at, k.name), reverse=True))
    by_name = {key.name: key for key in ordered}
    if len(by_name) != len(ordered):
        raise KeyRingError("two keys of the ring have the same secret")
    return _Snapshot(ordered, by_name, files or {}, dir_stat)


def _check_private(mode: int, what: str) -> None:
    if mode & 0o077:
        raise KeyRingPermissionError(
            f"{what} is accessible by group or other (mode {stat.S_IMODE(mode):04o}); "
            "ticket keys must be private to the service (0600 or 0400 files)"
        )


def _check_directory(mode: int, what: str) -> None:
    """A directory others can write to lets them plant a key (and forge every ticket); one
    they can merely list shows key names, which every ticket carries anyway (so a read-only
    secret volume, 0755, is accepted; ``create`` still makes 0700)."""
    if mode & 0o022:
        raise KeyRingPermissionError(
            f"{what} is writable by group or other (mode {stat.S_IMODE(mode):04o}); "
            "anyone who can add a key file can forge tickets"
        )


_SETTLE_NS = 100_000_000  # 100 ms: well above a kernel tick (1-10 ms)


def _settled(dir_stat: tuple[int, int, int]) -> bool:
    return time.time_ns() - max(dir_stat[1], dir_stat[2]) > _SETTLE_NS


def _dir_stat(directory: pathlib.Path) -> tuple[int, int, int]:
    st = os.stat(directory)
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _list_key_files(directory: pathlib.Path) -> list[str]:
    return sorted(
        entry
        for entry in os.listdir(directory)
        if entry.endswith(".key") and not entry.startswith(_TEMP_PREFIX)
    )


def _read_key_file(directory: pathlib.Path, filename: str) -> TicketKey:
    match = _KEY_FILE.match(filename)
    if match is None:
        raise KeyRingError(f"{filename}: not a ticket key file name (<unix-ms>-<hexname>.key)")
    path = directory / filename
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO never blocks us
    try:
        st = os.fstat(fd)  # the file we read, not whatever the name points at later
        if not stat.S_ISREG(st.st_mode):
            raise KeyRingError(f"{filename}: not a regular file")
        _check_private(st.st_mode, f"key file {filename}")
        if st.st_size != SECRET_SIZE:
            raise KeyRingError(f"{filename}: a key file holds exactly {SECRET_SIZE} bytes")
        secret = os.read(fd, SECRET_SIZE + 1)
    finally:
        os.close(fd)
    if len(secret) != SECRET_SIZE:
        raise KeyRingError(f"{filename}: a key file holds exactly {SECRET_SIZE} bytes")
    key = TicketKey(secret, int(match["ms"]) / 1000)
    if key.name.hex() != match["name"]:
        raise KeyRingError(f"{filename}: the file name does not match the key it holds")
    return key


def _read_directory(directory: pathlib.Path) -> _Snapshot:
    """Read every key file. A file retired between the listing and the read is a concurrent
    rotation: list again (a few times) rather than fail."""
    if not directory.is_dir():
        raise KeyRingError(f"{directory}: no such key ring directory")
    _check_directory(os.stat(directory).st_mode, f"key ring directory {directory}")
    for _attempt in range(5):
        before = _dir_stat(directory)
        names = _list_key_files(directory)
        try:
            keys = [_read_key_file(directory, name) for name in names]
        except FileNotFoundError:
            continue
        if not keys:
            raise KeyRingError(f"{directory}: the key ring is empty (run 'rpcsec keyring create')")
        snap = _snapshot(keys, {k.name: n for k, n in zip(keys, names, strict=True)}, before)
        return dataclasses.replace(snap, settled=_settled(before))
    raise KeyRingError(f"{directory}: keys kept changing while being read")


def _write_key_file(directory: pathlib.Path, created_ms: int) -> TicketKey:
    """A new key file, atomically: the final name appears only once the 32 bytes are on disk.
    Created 0600 by ``os.open`` (never chmod after writing: no window where it is readable)."""
    secret = os.urandom(SECRET_SIZE)
    key = TicketKey(secret, created_ms / 1000)
    final = directory / f"{created_ms:013d}-{key.name.hex()}.key"
    temp = directory / f"{_TEMP_PREFIX}{os.urandom(8).hex()}.key"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temp, flags, 0o600)
    try:
        try:
            view = memoryview(secret)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(directory)
    return key


def _remove_stale_temporaries(directory: pathlib.Path) -> None:
    """Temporary files a crashed rotation left. Called under the lock, which every writer
    holds while it writes, so none of them is being written now."""
    for entry in os.listdir(directory):
        if entry.startswith(_TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / entry)


def _fsync_directory(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(directory: pathlib.Path):
    """Serialise create/rotate between processes (two operators rotating at once)."""
    if not directory.is_dir():
        raise KeyRingError(f"{directory}: no such key ring directory")
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _secrets_snapshot(secrets: list[bytes], now: float, known: dict[bytes, float]) -> _Snapshot:
    """Keys from secrets listed newest first: a secret already held keeps its age; new ones
    count from ``now``, each a millisecond older than the one before so the order holds."""
    if isinstance(secrets, bytes | str) or not isinstance(secrets, list | tuple) or not secrets:
        raise ValueError("the ring takes a non-empty list of 32-byte secrets, newest first")
    keys = []
    newer = math.inf
    for index, secret in enumerate(secrets):
        key = TicketKey(secret, now - index * 1e-3)
        created = min(known.get(key.name, key.created_at), newer - 1e-3)
        keys.append(TicketKey(secret, created) if created != key.created_at else key)
        newer = created
    return _snapshot(keys)


def _check_positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{what} must be a positive number of seconds")
    return float(value)


class TicketKeyRing:
    """Service-wide ticket keys (RFC 5077 §4 key_name; lifetime/rotation after RFC 8446 §4.6.1).

    Thread-safe: ``seal``/``open`` read an immutable snapshot; refreshes swap it whole.
    """

    def __init__(
        self,
        snapshot: _Snapshot,
        *,
        directory: pathlib.Path | None = None,
        clock: Clock = time.time,
        max_age: float = DEFAULT_MAX_AGE,
        rotate_after: float | None = None,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> None:
        """Use the class methods; this is their common part."""
        self._snap = snapshot
        self._directory = directory
        self._clock = clock
        self._max_age = _check_positive(max_age, "max_age")
        self._rotate_after = rotate_after
        self._from_secrets = False
        if isinstance(refresh_interval, bool) or not isinstance(refresh_interval, int | float):
            raise ValueError("refresh_interval must be a number of seconds")
        self._refresh_interval = max(0.0, float(refresh_interval))
        self._lock = threading.Lock()
        # When ``refresh`` next looks at the directory (``time.monotonic``); never for a ring
        # in memory. Public so a server's per-call path compares it inline (no call per call).
        self.next_poll = (
            math.inf if directory is None else time.monotonic() + self._refresh_interval
        )
        self._last_read = time.monotonic()

    # -- construction --------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        *,
        clock: Clock = time.time,
        max_age: float = DEFAULT_MAX_AGE,
        rotate_after: float = DEFAULT_ROTATE_AFTER,
    ) -> TicketKeyRing:
        """An in-memory ring with one fresh key: the single-process default. It makes a new
        sealing key every ``rotate_after`` seconds and forgets a key once no ticket it sealed
        can still be valid (``rotate_after + max_age`` after its creation)."""
        rotate_after = _check_positive(rotate_after, "rotate_after")
        if rotate_after > max_age:
            raise ValueError("rotate_after cannot exceed max_age")
        key = TicketKey(os.urandom(SECRET_SIZE), clock())
        return cls(_snapshot([key]), clock=clock, max_age=max_age, rotate_after=rotate_after)

    @classmethod
    def from_secrets(
        cls,
        secrets: list[bytes],
        *,
        clock: Clock = time.time,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> TicketKeyRing:
        """A ring from 32-byte secrets a secrets manager holds, newest first. Their ages are
        unknown, so they count from now: hand in a new newest secret (``update_secrets``)
        within ``max_age`` or sealing stops."""
        ring = cls(_secrets_snapshot(secrets, clock(), {}), clock=clock, max_age=max_age)
        ring._from_secrets = True
        return ring

    def update_secrets(self, secrets: list[bytes]) -> None:
        """Replace the secrets of a ``from_secrets`` ring (newest first), e.g. when the secrets
        manager rotated: secrets already held keep their age, new ones count from now. Safe
        while other threads seal and open."""
        if not self._from_secrets:
            raise TypeError("update_secrets is for rings made by from_secrets")
        with self._lock:
            known = {key.name: key.created_at for key in self._snap.keys}
            self._snap = _secrets_snapshot(secrets, self._clock(), known)

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> TicketKeyRing:
        """Make the ring directory (0700) and its first key file (0600). Refuses a directory
        that already holds keys (``KeyRingError``): re-creating would cut off every replica."""
        path = pathlib.Path(directory)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # an existing empty directory may have been made 0755
        with _locked(path):
            if _list_key_files(path):
                raise KeyRingError(f"{path}: a key ring already exists here (use 'rotate')")
            _write_key_file(path, int(clock() * 1000))
        return cls.load(path, clock=clock, max_age=max_age)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        max_age: float = DEFAULT_MAX_AGE,
        refresh_interval: float = REFRESH_INTERVAL,
    ) -> TicketKeyRing:
        """Read a ring directory. Refuses (``KeyRingError``) key files readable or writable by
        group/other or a directory they can write (``KeyRingPermissionError``), files of the
        wrong size or name, and an empty ring. Key files may be symlinks (Kubernetes secret
        volumes); what is checked is the file read (``fstat`` of the open descriptor). The ring
        re-reads the directory when it changes (see ``refresh``)."""
        path = pathlib.Path(directory)
        return cls(
            _read_directory(path),
            directory=path,
            clock=clock,
            max_age=max_age,
            refresh_interval=refresh_interval,
        )

    @classmethod
    def rotate(
        cls,
        directory: str | os.PathLike[str],
        *,
        keep: int = DEFAULT_KEEP,
        clock: Clock = time.time,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> TicketKeyRing:
        """Add a new newest key, then retire (delete) the oldest keys beyond ``keep``.

        The new key is written atomically before anything is deleted, so a replica reading
        concurrently sees the old ring or the new one, never half a key. Tickets sealed under a
        retired key are refused (``context-unknown``) and their clients re-bind."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError("keep must be a positive integer")
        path = pathlib.Path(directory)
        with _locked(path):
            _remove_stale_temporaries(path)
            current = _read_directory(path)
            newest_ms = round(current.keys[0].created_at * 1000)
            _write_key_file(path, max(int(clock() * 1000), newest_ms + 1))
            after = _read_directory(path)
            for key in after.keys[keep:]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path / after.files[key.name])
            _fsync_directory(path)
        return cls.load(path, clock=clock, max_age=max_age)

    @staticmethod
    def describe(directory: str | os.PathLike[str]) -> list[KeyFileInfo]:
        """The keys of a ring directory, newest first: names and creation times, no secrets."""
        path = pathlib.Path(directory)
        snap = _read_directory(path)
        return [KeyFileInfo(k.name, k.created_at, path / snap.files[k.name]) for k in snap.keys]

    # -- use -----------------------------------------------------------------------------

    @property
    def key_names(self) -> tuple[bytes, ...]:
        """The ring's key names, newest first (16 bytes each), for audit and tests."""
        return tuple(key.name for key in self._snap.keys)

    @property
    def max_ticket_lifetime(self) -> float:
        """The longest ``expires_at - now`` that ``seal`` accepts (``max_age``)."""
        return self._max_age

    @property
    def directory(self) -> pathlib.Path | None:
        return self._directory

    def seal(
        self,
        state: bytes,
        *,
        ticket_id: bytes,
        expires_at: float,
        issued_at: float | None = None,
    ) -> bytes:
        """Seal ``state`` under the newest key (RFC 5077 §4 layout with AES-256-GCM).

        ``issued_at`` defaults to the ring's clock. Raises ``ValueError`` for caller mistakes
        (ticket_id not 16 bytes, ``expires_at`` in the past or beyond ``max_ticket_lifetime``,
        state larger than the ticket bound) and ``InternalSecurityError`` when no key of the
        ring is young enough to seal (a directory ring nobody rotated for ``max_age``)."""
        self._poll()
        now = self._clock()
        if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
            raise ValueError("expires_at must be a number of seconds since the epoch")
        if expires_at <= now:
            raise ValueError("expires_at is not in the future")
        if expires_at > now + self._max_age:
            raise ValueError(
                f"a ticket lives at most max_age ({self._max_age:.0f} s, RFC 8446 §4.6.1)"
            )
        key = self._sealing_key(now)
        return key.seal(
            state,
            ticket_id=ticket_id,
            issued_at=now if issued_at is None else issued_at,
            expires_at=expires_at,
        )

    def open(self, ticket: bytes) -> OpenedTicket:
        """Open a ticket sealed by any key still in the ring (AcceptSecurityContext's check of
        a handle, done by decryption instead of a table lookup).

        An unknown key name makes a directory ring look at its directory once before refusing,
        so a replica that has not yet seen a rotation still opens the newest key's tickets.

        Raises:
            InvalidHandleError: (``context-unknown``) malformed, wrong size or version,
                unknown or retired key, altered anywhere, truncated.
            ContextExpiredError: (``expired``) authentic but past its ``expires_at``.
        """
        name = parse_key_name(ticket)
        self._poll()
        key = self._snap.by_name.get(name)
        if key is None:
            self._refresh_on_miss()
            # Look again whatever it returned: another thread may have re-read the directory
            # while this one waited for the lock (then this refresh saw nothing new).
            key = self._snap.by_name.get(name)
        if key is None:
            raise InvalidHandleError("ticket names a key this ring does not hold")
        return key.open(ticket, self._clock())

    def refresh(self) -> bool:
        """Re-read a directory ring if it changed; True if the set of keys changed.

        Cheap: at most one ``stat`` of the directory per ``refresh_interval`` (1 s); the
        files are read only when the directory changed, and in any case every
        ``FULL_READ_INTERVAL`` (30 s: a directory's timestamps are as coarse as the kernel's
        clock tick, so two changes within one tick can look like one). A ring that cannot be
        re-read (half retired, permissions broken) keeps its last good keys and logs why. An
        in-memory ring returns False (it rotates itself in ``seal``)."""
        now = time.monotonic()
        if self._directory is None or now < self.next_poll:
            return False
        self.next_poll = now + self._refresh_interval
        unsure = not self._snap.settled or now - self._last_read >= FULL_READ_INTERVAL
        return self._reload(force=unsure)

    # -- internals -----------------------------------------------------------------------

    def _poll(self) -> None:
        if self._directory is not None and time.monotonic() >= self.next_poll:
            self.refresh()

    def _refresh_on_miss(self) -> bool:
        """On an unknown key name: one ``stat`` (cheaper than the AES-GCM a well-formed ticket
        costs, so bogus names cannot make refusals expensive). The files are read if the
        directory changed, or it changed just before the last read (``_Snapshot.settled``),
        or the last look is older than ``refresh_interval``: so a flood of unknown names
        costs at most one read of the directory per interval, plus reads during the 100 ms
        after a rotation."""
        if self._directory is None:
            return False
        try:
            current = _dir_stat(self._directory)
        except OSError:
            return False
        now = time.monotonic()
        stale = now >= self.next_poll
        snap = self._snap
        if current == snap.dir_stat and snap.settled and not stale:
            return False
        self.next_poll = now + self._refresh_interval
        return self._reload(force=stale or not snap.settled)

    def _reload(self, *, force: bool) -> bool:
        directory = self._directory
        if directory is None:
            return False
        with self._lock:
            old = self._snap
            try:
                if not force and _dir_stat(directory) == old.dir_stat:
                    return False
                new = _read_directory(directory)
            except Exception as exc:  # open() raises only its two typed errors, whatever this is
                _LOG.warning(
                    "ticket key ring %s not re-read, keeping the last keys: %s", directory, exc
                )
                return False
            self._snap = new
            self._last_read = time.monotonic()
            changed = new.by_name.keys() != old.by_name.keys()
        if changed:
            _LOG.info("ticket key ring %s: %d keys", directory, len(new.keys))
        return changed

    def _sealing_key(self, now: float) -> TicketKey:
        snap = self._snap
        newest = snap.keys[0]
        if self._rotate_after is not None and now - newest.created_at >= self._rotate_after:
            return self._rotate_in_memory(now)
        if now - newest.created_at >= self._max_age:
            raise InternalSecurityError(
                "the newest ticket key is older than max_age: rotate the key ring "
                "('rpcsec keyring rotate DIR')"
            )
        return newest

    def _rotate_in_memory(self, now: float) -> TicketKey:
        assert self._rotate_after is not None
        with self._lock:
            snap = self._snap
            if now - snap.keys[0].created_at < self._rotate_after:
                return snap.keys[0]  # another thread rotated first
            fresh = TicketKey(os.urandom(SECRET_SIZE), now)
            horizon = self._rotate_after + self._max_age
            kept = [key for key in snap.keys if now - key.created_at < horizon]
            self._snap = _snapshot([fresh, *kept])
        return fresh
