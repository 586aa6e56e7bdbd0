"""The NTLM acceptor's user store: the user file parsed once per credentials handle.

pyspnego's acceptor finds a user's NT hash by reading ``NTLM_USER_FILE`` on every
AUTHENTICATE, splitting line after line up to the user's -- the whole file for a user it does
not know, which any unauthenticated client can name (measured: 0.2 µs a line, 1.2 ms for 5 000
lines) -- then hashes a ``DOMAIN:USER:PASSWORD`` line's password on every logon: the LM hash
(pure-Python DES, ~0.7 ms, never used by NTLMv2) and the NT hash (pure-Python MD4). Its only
seam is that environment variable and a file, so this store:

* parses the file once (and again only when its identity, size or times change) into a dict
  keyed the way pyspnego compares names (``DOMAIN\\USER``, each part ``str.upper()``ed, the
  first line for a name wins), in both formats pyspnego reads (Heimdal, smbpasswd);
* answers an unknown user from the dict alone: no scan, no hash;
* for a known user hands pyspnego a one-entry file in smbpasswd format (the NT hash only, so
  pyspnego computes no hash at all; 0600 in a private 0700 directory), written on the user's
  first logon and replaced atomically; a reload keeps the files of unchanged users (a
  handshake may be reading one), so only a handshake racing a change of its own user's entry
  can fail -- closed.

pyspnego still does the whole NTLM protocol; only how it finds the hash changes. The name a
lookup uses comes from the AUTHENTICATE message (MS-NLMP §2.2.1.3) read the way pyspnego reads
it; were they ever to disagree, pyspnego would not find its user in the one-entry file and the
logon fails (never another user's). Like a Windows server, which looks the user's NT hash up
in its account database (MS-NLMP §3.2.5.1.2) instead of re-reading a file per logon.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import stat
import struct
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spnego._ntlm_raw.crypto import ntowfv1  # pyspnego's MD4 (OpenSSL 3 has none by default)

from rpcsec.sspi._errors import InvalidTokenError, NoCredentialsError

__all__ = ["NtlmUserStore", "authenticate_user", "user_key", "with_names"]

log = logging.getLogger(__name__)

_SIGNATURE = b"NTLMSSP\x00"
_AUTHENTICATE = 3
_UNICODE = 0x00000001  # NTLMSSP_NEGOTIATE_UNICODE (MS-NLMP §2.2.2.5)
_FIELDS = struct.Struct("<HHI")  # Len, MaxLen, BufferOffset (MS-NLMP §2.2.1.3)
_OEM = "windows-1252"  # pyspnego's OEM encoding
_MAX_MESSAGE = 64 * 1024
_HEX = frozenset("0123456789abcdefABCDEF")
_DISABLED = frozenset("DL")  # smbpasswd account flags: disabled, auto-locked


def user_key(domain: str, user: str) -> tuple[str, str]:
    """The store's key for the name pyspnego's acceptor looks up: it joins the message's
    domain and user as ``DOMAIN\\user``, splits that at the first backslash, and compares each
    part ``str.upper()``ed."""
    joined = f"{domain}\\{user}" if domain else user
    left, sep, right = joined.partition("\\")
    domain, user = (left, right) if sep else ("", left)
    return domain.upper(), user.upper()


def authenticate_user(message: bytes) -> tuple[str, str]:
    """(domain, user) from an NTLM AUTHENTICATE message, as pyspnego decodes them: UTF-16LE when
    the message's NegotiateFlags have NTLMSSP_NEGOTIATE_UNICODE, else OEM (windows-1252).

    Raises:
        InvalidTokenError: not an AUTHENTICATE message, a field outside the message, or a name
            that does not decode.
    """
    if not isinstance(message, bytes | bytearray) or not 64 <= len(message) <= _MAX_MESSAGE:
        raise InvalidTokenError("NTLM AUTHENTICATE message has the wrong size")
    if message[:8] != _SIGNATURE or struct.unpack_from("<I", message, 8)[0] != _AUTHENTICATE:
        raise InvalidTokenError("not an NTLM AUTHENTICATE message")
    (flags,) = struct.unpack_from("<I", message, 60)
    encoding = "utf-16-le" if flags & _UNICODE else _OEM
    names = []
    for offset in (28, 36):  # DomainNameFields, UserNameFields
        length, _, start = _FIELDS.unpack_from(message, offset)
        if not length:
            names.append("")
            continue
        if start + length > len(message):
            raise InvalidTokenError("NTLM AUTHENTICATE field lies outside the message")
        try:
            names.append(bytes(message[start : start + length]).decode(encoding))
        except UnicodeDecodeError as exc:
            raise InvalidTokenError("NTLM AUTHENTICATE name does not decode") from exc
    return names[0], names[1]


def with_names(message: bytes, domain: str, user: str) -> bytes:
    """A copy of an AUTHENTICATE message (checked by ``authenticate_user``) naming ``domain``
    and ``user`` instead: both appended after the payload, the field descriptors pointed at
    them (MS-NLMP §2.2.1.3); everything else as received."""
    (flags,) = struct.unpack_from("<I", message, 60)
    encoding = "utf-16-le" if flags & _UNICODE else _OEM
    names = [domain.encode(encoding), user.encode(encoding)]
    copy = bytearray(message)
    for offset, name in zip((28, 36), names, strict=True):
        _FIELDS.pack_into(copy, offset, len(name), len(name), len(copy))
        copy += name
    return bytes(copy)


@dataclass(slots=True)
class _Entry:
    """One user of the file: its names as written, and its password (Heimdal) or NT hash
    (smbpasswd); ``refused`` when the line for this name could not be read (fail closed: a
    later line for the same name does not win)."""

    domain: str
    user: str
    password: str | None = None
    nt_hash: bytes | None = None
    refused: bool = False


def _parse(text: str) -> dict[tuple[str, str], _Entry]:
    """The user file in pyspnego's two formats (``_get_credential``): ``DOMAIN:USER:PASSWORD``
    (3 fields) and smbpasswd ``NAME:UID:LM_HASH:NT_HASH:FLAGS:LCT`` (6 fields, NAME
    ``DOMAIN\\user`` or ``user``); any other line is ignored, as pyspnego ignores it. Unlike
    pyspnego, an smbpasswd account whose flags say disabled (D) or locked (L) is refused, as
    Samba refuses it (smbpasswd(5))."""
    entries: dict[tuple[str, str], _Entry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split(":")
        if len(fields) == 3:
            key = (fields[0].upper(), fields[1].upper())
            if key not in entries:
                entries[key] = _Entry(fields[0], fields[1], password=fields[2])
        elif len(fields) == 6:
            domain, sep, user = fields[0].partition("\\")
            if not sep:
                domain, user = "", domain
            key = (domain.upper(), user.upper())
            if key in entries:
                continue
            entry = entries[key] = _Entry(domain, user)
            nt_hash = fields[3]
            if len(nt_hash) == 32 and _HEX.issuperset(nt_hash):
                entry.nt_hash = bytes.fromhex(nt_hash)
            else:
                entry.refused = True
                log.warning("ntlm user file line %d: the NT hash is not 32 hex digits", number)
            if _DISABLED & set(fields[4].strip("[]").upper()):
                entry.refused = True
    return entries


class NtlmUserStore:
    """The user file behind one INBOUND ntlm credentials handle (AcquireCredentialsHandle's
    view of the server's account database), re-read when the file changes.

    Raises:
        NoCredentialsError: (when made) the file cannot be read or is not UTF-8.
    """

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        self.loads = 0
        """How many times the file was parsed (tests: once per change, never per logon)."""
        self._lock = threading.Lock()
        self._identity: tuple[int, ...] | None = None
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._files: dict[tuple[str, str], tuple[str, str]] = {}  # key -> (line, path)
        self.decoy = ("RPCSEC-DECOY", "decoy-" + secrets.token_hex(8))
        """The (domain, user) of an account nobody can log on to (its NT hash random, in this
        process and its one-entry file only): an unknown user's AUTHENTICATE is checked against
        it, so refusing one costs what refusing a wrong password does (no user enumeration by
        timing)."""
        self._decoy = _Entry(*self.decoy, nt_hash=secrets.token_bytes(16))
        self._directory = ""
        self._finalizer: weakref.finalize[Any, NtlmUserStore] | None = None
        self._placeholder = self._decoy_file = ""
        try:
            self._make_directory()
        except OSError as exc:
            raise NoCredentialsError("ntlm user store needs a private temporary directory") from exc
        try:
            self._reload_if_changed()
        except (OSError, UnicodeDecodeError) as exc:
            self.close()
            raise NoCredentialsError("ntlm user file cannot be read") from exc

    @property
    def placeholder(self) -> str:
        """An empty user file: what pyspnego's acceptor is pointed at outside AUTHENTICATE (it
        only checks that NTLM_USER_FILE names a file)."""
        with self._lock:
            return self._intact()[0]

    @property
    def decoy_file(self) -> str:
        """The decoy account's one-entry file."""
        with self._lock:
            return self._intact()[1]

    def entry_file(self, domain: str, user: str) -> str | None:
        """A one-entry user file for the user an AUTHENTICATE names, or None when the store has
        no such user: one ``stat`` of the user file and a dict lookup (the file is parsed again
        only when it changed)."""
        key = user_key(domain, user)
        if not key[1]:
            # No user part ("OTHER\\" as the user name): pyspnego would take the file's
            # first entry and name the caller after it in the message's domain.
            return None
        with self._lock:
            self._intact()
            try:
                self._reload_if_changed()
            except (OSError, UnicodeDecodeError):
                log.warning("ntlm user file %s cannot be read: refusing every logon", self.path)
                self._identity, self._entries = None, {}
                self._drop_files(lambda key, line: True)
            entry = self._entries.get(key)
            if entry is None or entry.refused:
                return None
            line = _line(entry)
            known = self._files.get(key)
            if known is not None and known[0] == line and os.path.isfile(known[1]):
                return known[1]
            path = self._write(hashlib.sha256(line.encode()).hexdigest()[:32], line)
            self._files[key] = (line, path)
            return path

    def close(self) -> None:
        """Remove the one-entry files (also done when the store is collected)."""
        if self._finalizer is not None:
            self._finalizer()

    def _intact(self) -> tuple[str, str]:
        """The placeholder and decoy files, in a new directory when something removed them (a
        /tmp cleaner such as systemd-tmpfiles, after days without a logon).

        Raises:
            NoCredentialsError: no private directory can be made.
        """
        if not (os.path.isfile(self._placeholder) and os.path.isfile(self._decoy_file)):
            log.warning("ntlm user store: its files in %s were removed; remade", self._directory)
            try:
                self._make_directory()
            except OSError as exc:
                raise NoCredentialsError("ntlm user store lost its private directory") from exc
        return self._placeholder, self._decoy_file

    def _make_directory(self) -> None:
        """A fresh private directory (mkdtemp: a new random name, 0700, never a path that was
        ours and could be someone else's now) with the placeholder and the decoy in it."""
        directory = tempfile.mkdtemp(prefix="rpcsec-ntlm-")
        retired, old = self._finalizer, self._directory
        self._directory, self._files = directory, {}
        self._finalizer = weakref.finalize(self, _remove, directory, os.getpid())
        if retired is not None:
            if _is_ours(old):
                retired()
            else:
                retired.detach()
        self._placeholder = self._write("empty", "")
        self._decoy_file = self._write("decoy", _line(self._decoy))

    def _reload_if_changed(self) -> None:
        status = os.stat(self.path)
        identity = (
            status.st_dev,
            status.st_ino,
            status.st_size,
            status.st_mtime_ns,
            status.st_ctime_ns,
        )
        if identity == self._identity:
            return
        with open(self.path, "rb") as handle:
            text = handle.read().decode()
        entries = _parse(text)
        self._identity, self._entries = identity, entries
        self.loads += 1
        # A user whose entry did not change keeps its file (a handshake may be reading it);
        # the others' files go now.
        self._drop_files(lambda key, line: _changed(entries.get(key), line))

    def _drop_files(self, condition: Callable[[tuple[str, str], str], bool]) -> None:
        for key, (line, path) in list(self._files.items()):
            if condition(key, line):
                del self._files[key]
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def _write(self, name: str, text: str) -> str:
        path = os.path.join(self._directory, name)
        temporary = path + ".tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        with os.fdopen(os.open(temporary, flags, 0o600), "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)  # readers see the old file or the whole new one
        return path


def _line(entry: _Entry) -> str:
    """The entry as one smbpasswd line pyspnego parses without hashing (the LM hash zeroed:
    the acceptor takes NTLMv2 responses only, which use the NT hash alone)."""
    if entry.nt_hash is None:
        entry.nt_hash = ntowfv1(entry.password or "")  # once per entry, on its first logon
    name = f"{entry.domain}\\{entry.user}" if entry.domain else entry.user
    return f"{name}:0:{'0' * 32}:{entry.nt_hash.hex().upper()}:[U]:LCT-00000000\n"


def _changed(entry: _Entry | None, line: str) -> bool:
    return entry is None or entry.refused or _line(entry) != line


def _is_ours(directory: str) -> bool:
    try:
        status = os.lstat(directory)
    except OSError:
        return False
    return (
        stat.S_ISDIR(status.st_mode)
        and status.st_uid == os.geteuid()
        and not status.st_mode & 0o077
    )


def _remove(directory: str, pid: int) -> None:
    if os.getpid() == pid:  # a forked child must not remove its parent's files
        shutil.rmtree(directory, ignore_errors=True)
