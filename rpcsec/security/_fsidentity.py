"""The system's own access check on Linux: a thread's filesystem identity follows impersonation.

The seed: "Windows NT implements the access check on a resource automatically when the server
attempts to open the system resource." Linux keeps credentials per *thread* in the kernel, and
the filesystem identity (fsuid, fsgid, supplementary groups) is what ``open()`` is checked
against. Samba's smbd switches it per thread the same way. With an ``FsIdentityMap`` installed
(``set_fs_identity_map``), every ``impersonate(token)`` on a thread maps the token's principal
to a local account and switches that thread's fsuid, fsgid and groups to it until ``revert()``;
the thread then gets back exactly what it had (the service's identity).

- ``setfsuid``/``setfsgid`` are per thread in glibc; ``setgroups()`` is NOT (glibc broadcasts
  it to every thread, NPTL setxid), so groups are set with the raw ``SYS_setgroups`` syscall.
- ``setfsuid`` returns the *previous* fsuid whether or not it succeeded; success is verified
  with a second call (``setfsuid(-1)`` changes nothing and returns the current value).
- Order: groups and fsgid first, fsuid last (and the reverse when restoring), so no moment runs
  with the caller's uid and the service's groups.
- Unmapped principals, IDENTIFY/ANONYMOUS tokens, and a switch the kernel refused all fail
  closed with ``FsIdentityError`` (PERMISSION_DENIED): the handler never runs as the service.
- An asyncio event-loop thread is shared by every task, so it is never switched (that would
  leak the caller to other tasks); the principal is still checked against the map. Async
  handlers open files as the caller from a worker thread (see docs/audit.md).
- A thread *created* while impersonating inherits the caller's filesystem identity (Linux
  copies a thread's credentials to the threads it creates), without the token: create pools
  before serving, not lazily inside a handler.
"""

from __future__ import annotations

import ctypes
import os
import platform
import pwd
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from rpcsec.sspi._errors import AccessDeniedError
from rpcsec.sspi._flags import ImpersonationLevel

from ._token import AccessToken

__all__ = [
    "FsIdentity",
    "FsIdentityError",
    "FsIdentityMap",
    "get_fs_identity_map",
    "set_fs_identity_map",
]

# SYS_setgroups by machine (the 32-bit gid_t variant everywhere listed).
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159, "arm64": 159, "ppc64le": 81, "s390x": 206}
_MAX_GROUPS = 65536
_CACHE_MAX = 1024


class FsIdentityError(AccessDeniedError):
    """The caller has no local account, may not act on files, or the thread could not take
    its identity: the handler does not run (fail closed)."""


@dataclass(frozen=True, slots=True)
class FsIdentity:
    """A local account's filesystem identity: fsuid, fsgid and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...]


Resolver = Callable[[AccessToken], "str | int | FsIdentity | None"]


class FsIdentityMap:
    """Which local account each principal acts as on files.

    ``FsIdentityMap({"spiffe://demo.rpcsec/user/alice": "alice"})`` (user names, uids, or an
    ``FsIdentity`` for accounts the system's user database does not list, as in containers),
    or a callable ``token -> name | uid | FsIdentity | None``. None / absent: unmapped,
    refused. Account lookups (``pwd``, ``os.getgrouplist``) are cached per account, bounded;
    ``clear_cache()`` after changing accounts. uid 0 and primary gid 0 are refused, and group
    0 is dropped from the supplementary groups: a caller never acts as root.
    """

    def __init__(self, mapping: Mapping[str, str | int | FsIdentity] | Resolver) -> None:
        if callable(mapping):
            self._resolve: Resolver = mapping
        elif isinstance(mapping, Mapping):
            table = dict(mapping)
            for key, value in table.items():
                if not isinstance(key, str) or not isinstance(value, str | int | FsIdentity):
                    raise TypeError(
                        "FsIdentityMap maps principal strings to user names, uids or FsIdentity"
                    )
            self._resolve = lambda token: table.get(token.principal)
        else:
            raise TypeError("FsIdentityMap needs a mapping or a callable")
        self._cache: dict[str | int, FsIdentity] = {}  # user name or uid -> identity
        self._lock = threading.Lock()

    def identity_for(self, token: AccessToken) -> FsIdentity:
        """The local identity ``token`` acts as, or ``FsIdentityError``."""
        if token.impersonation_level < ImpersonationLevel.IMPERSONATE:
            raise FsIdentityError(
                f"{token.principal} is at {token.impersonation_level.name} level: it may not "
                "act on files"
            )
        account = self._resolve(token)
        if account is None or isinstance(account, bool):
            raise FsIdentityError(f"{token.principal} has no local account")
        if isinstance(account, FsIdentity):
            return _checked(account, token.principal)
        cached = self._cache.get(account)
        if cached is not None:
            return cached
        identity = _lookup(account, token.principal)
        with self._lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[account] = identity
        return identity

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()


def _lookup(account: str | int, principal: str) -> FsIdentity:
    try:
        entry = pwd.getpwuid(account) if isinstance(account, int) else pwd.getpwnam(account)
    except (KeyError, OverflowError, ValueError):
        raise FsIdentityError(f"{principal} maps to an account this system does not have") from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return _checked(FsIdentity(entry.pw_uid, entry.pw_gid, groups), principal)


def _checked(identity: FsIdentity, principal: str) -> FsIdentity:
    for value in (identity.uid, identity.gid, *identity.groups):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 0xFFFFFFFF:
            raise FsIdentityError(f"{principal} maps to an invalid uid or gid")
    if identity.uid == 0 or identity.gid == 0:
        raise FsIdentityError(f"{principal} maps to uid or gid 0: a caller never acts as root")
    if len(identity.groups) > _MAX_GROUPS:
        raise FsIdentityError(f"{principal} maps to too many groups")
    groups = tuple(dict.fromkeys(g for g in identity.groups if g != 0))
    return identity if groups == identity.groups else FsIdentity(identity.uid, identity.gid, groups)


_map: FsIdentityMap | None = None


def set_fs_identity_map(mapping: FsIdentityMap | None) -> None:
    """Opt in (or out, with None): from now on ``impersonate()`` switches the thread's
    filesystem identity. Linux only; needs CAP_SETUID and CAP_SETGID (root)."""
    global _map
    if mapping is not None:
        if not isinstance(mapping, FsIdentityMap):
            raise TypeError("set_fs_identity_map needs an FsIdentityMap")
        _ThreadCredentials.get()  # fail now, not on the first call, where this cannot work
        _require_capabilities()
    _map = mapping
    from . import _impersonation

    _impersonation._fs_switch = _switch if mapping is not None else None


def get_fs_identity_map() -> FsIdentityMap | None:
    return _map


_CAP_SETGID, _CAP_SETUID = 6, 7


def _require_capabilities() -> None:
    """CAP_SETUID and CAP_SETGID in this thread's effective set, or ``PermissionError``:
    without them every switch would fail (closed), so opting in is refused at once."""
    with open("/proc/thread-self/status") as status:
        effective = next(
            (int(line.split()[1], 16) for line in status if line.startswith("CapEff:")), 0
        )
    needed = (1 << _CAP_SETUID) | (1 << _CAP_SETGID)
    if effective & needed != needed:
        raise PermissionError(
            "a filesystem identity map needs CAP_SETUID and CAP_SETGID (run the service as "
            "root, or grant them)"
        )


class _ThreadCredentials:
    """The three per-thread syscalls, through ctypes (Python has no setfsuid)."""

    _instance: _ThreadCredentials | None = None

    def __init__(self) -> None:
        if platform.system() != "Linux":
            raise OSError("per-thread filesystem identity needs Linux")
        number = _SYS_SETGROUPS.get(platform.machine())
        if number is None:
            raise OSError(f"SYS_setgroups is not known for {platform.machine()}")
        libc = ctypes.CDLL(None, use_errno=True)
        self._setfsuid = libc.setfsuid
        self._setfsuid.argtypes = [ctypes.c_uint32]
        self._setfsuid.restype = ctypes.c_uint32  # the previous fsuid, as a uid_t
        self._setfsgid = libc.setfsgid
        self._setfsgid.argtypes = [ctypes.c_uint32]
        self._setfsgid.restype = ctypes.c_uint32
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._sys_setgroups = number

    @classmethod
    def get(cls) -> _ThreadCredentials:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def fsuid(self, uid: int) -> int:
        """Set the thread's fsuid; return the previous one. Raises when it did not take."""
        previous = self._setfsuid(uid)
        if self._setfsuid(0xFFFFFFFF) != uid:  # (uid_t)-1: no change, returns the current
            raise OSError("setfsuid was refused")
        return previous

    def fsgid(self, gid: int) -> int:
        previous = self._setfsgid(gid)
        if self._setfsgid(0xFFFFFFFF) != gid:
            raise OSError("setfsgid was refused")
        return previous

    def groups(self, groups: tuple[int, ...]) -> None:
        if len(groups) > _MAX_GROUPS:
            raise OSError("too many supplementary groups")
        array = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
        if self._syscall(self._sys_setgroups, ctypes.c_long(len(groups)), array) != 0:
            raise OSError(ctypes.get_errno(), "setgroups was refused")


def _on_event_loop() -> bool:
    # Without importing asyncio (no I/O modules under rpcsec.security): a loop can only be
    # running on this thread if asyncio was imported.
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and asyncio.events._get_running_loop() is not None


def _switch(token: AccessToken) -> Callable[[], None] | None:
    """Make this thread act on files as ``token``; return what restores it (None: the thread
    was not switched, an event-loop thread). Raises ``FsIdentityError`` (fail closed)."""
    mapping = _map
    if mapping is None:
        return None
    identity = mapping.identity_for(token)
    if _on_event_loop():
        return None
    creds = _ThreadCredentials.get()
    saved_groups = tuple(os.getgroups())  # this thread's own (getgroups is per thread)
    saved_gid = saved_uid = None
    try:
        creds.groups(identity.groups)
        saved_gid = creds.fsgid(identity.gid)
        saved_uid = creds.fsuid(identity.uid)
    except OSError as exc:
        _restore(creds, saved_uid, saved_gid, saved_groups)
        raise FsIdentityError("the thread could not take the caller's identity") from exc
    thread = threading.get_ident()
    frame = (FsIdentity(saved_uid, saved_gid, saved_groups), identity)
    stack = _stack()
    stack.append(frame)

    def restore() -> None:
        if threading.get_ident() != thread:
            raise RuntimeError("a filesystem identity must be reverted on its own thread")
        _restore(creds, saved_uid, saved_gid, saved_groups)
        if frame in stack:  # and any inner switch never reverted: overwritten just now
            del stack[stack.index(frame) :]

    return restore


_local = threading.local()


def _stack() -> list[tuple[FsIdentity, FsIdentity]]:
    """This thread's switches: (what it had before, what it took), outermost first."""
    stack: list[tuple[FsIdentity, FsIdentity]] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


@contextmanager
def as_self() -> Iterator[None]:
    """RevertToSelf for the filesystem: the thread's original identity for the block, then
    the impersonated one again."""
    stack: list[tuple[FsIdentity, FsIdentity]] | None = getattr(_local, "stack", None)
    if not stack:
        yield
        return
    original, current = stack[0][0], stack[-1][1]
    creds = _ThreadCredentials.get()
    _restore(creds, original.uid, original.gid, original.groups)
    try:
        yield
    finally:
        creds.groups(current.groups)
        creds.fsgid(current.gid)
        creds.fsuid(current.uid)


def _restore(
    creds: _ThreadCredentials, uid: int | None, gid: int | None, groups: tuple[int, ...]
) -> None:
    # Reverse order: the uid first, so the caller's uid never runs with the service's groups.
    if uid is not None:
        creds.fsuid(uid)
    if gid is not None:
        creds.fsgid(gid)
    creds.groups(groups)
