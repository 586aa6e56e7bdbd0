"""The HTTP authentication header grammar (RFC 7235 §2.1, §4.1-4.2) for Negotiate-style schemes.

Negotiate (RFC 4559) and NTLM over HTTP (MS-NTHT) carry one base64 token per header as a
``token68``: ``WWW-Authenticate: Negotiate <token>`` / ``Authorization: Negotiate <token>``.
This module parses and formats those headers and nothing else; parsing never raises anything
but ``MalformedHeaderError`` and never decodes more than ``MAX_TOKEN_CHARS``.

Scheme names: ``Negotiate`` for the negotiate and kerberos packages (RFC 4559), ``NTLM`` for
ntlm (MS-NTHT), and ``Rpcsec-<package>`` otherwise, e.g. ``Rpcsec-X509`` for x509, whose tokens
are TLS 1.3 records and not SPNEGO. The tokens are always the rpcsec packages' own tokens (the
ntlm package adds its authenticated offer and grant to the NTLM messages), so the scheme names
give the RFC 4559 shape, not interoperability with browsers' NTLM or Negotiate.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ._errors import MalformedHeaderError

__all__ = [
    "MAX_TOKEN_CHARS",
    "AuthCredentials",
    "Challenge",
    "decode_token",
    "encode_token",
    "format_authorization",
    "format_challenge",
    "parse_authorization",
    "parse_challenges",
    "scheme_for",
]

MAX_TOKEN_CHARS = 64 * 1024
_MAX_CHALLENGES = 32
_SCHEMES = {"negotiate": "Negotiate", "kerberos": "Negotiate", "ntlm": "NTLM"}

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68_ONLY = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# A token68 as a challenge's whole content: followed only by optional spaces, then "," or end.
_TOKEN68_ITEM = re.compile(r"([A-Za-z0-9\-._~+/]+=*)[ \t]*(?=,|$)")
_PARAM = re.compile(
    r"""([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*=[ \t]*"""
    r"""([!#$%&'*+\-.^_`|~0-9A-Za-z]+|"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t -~])*")"""
)
_OWS = re.compile(r"[ \t]*")
_SEP = re.compile(r"[ \t,]*")


def scheme_for(package: str) -> str:
    """The HTTP authentication scheme that carries ``package``'s tokens."""
    if not isinstance(package, str) or not package:
        raise ValueError("package name must be a non-empty string")
    name = package.lower()
    return _SCHEMES.get(name) or "Rpcsec-" + name.upper()


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: a scheme and its token68 (if any)."""

    scheme: str
    token68: str | None = None
    params: tuple[tuple[str, str], ...] = ()

    def matches(self, scheme: str) -> bool:
        return self.scheme.lower() == scheme.lower()


@dataclass(frozen=True, slots=True)
class AuthCredentials:
    """An ``Authorization`` header: the scheme and the rest (a token68 for our schemes)."""

    scheme: str
    rest: str

    def matches(self, scheme: str) -> bool:
        return self.scheme.lower() == scheme.lower()

    def token(self) -> bytes:
        """The decoded token. Raises ``MalformedHeaderError`` unless ``rest`` is one token68."""
        if not self.rest:
            raise MalformedHeaderError("authorization header carries no token")
        return decode_token(self.rest)


def encode_token(token: bytes) -> str:
    return base64.b64encode(token).decode("ascii")


def decode_token(token68: str) -> bytes:
    """Strict base64 of a token68 (RFC 4648 §4 alphabet, padding required)."""
    if len(token68) > MAX_TOKEN_CHARS:
        raise MalformedHeaderError("authentication token is too long")
    if not _TOKEN68_ONLY.fullmatch(token68):
        raise MalformedHeaderError("authentication token is not a token68")
    try:
        return base64.b64decode(token68, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedHeaderError("authentication token is not valid base64") from None


def format_challenge(scheme: str, token: bytes | None = None) -> str:
    """``WWW-Authenticate`` value: ``Scheme`` or ``Scheme <base64 token>``."""
    _check_scheme(scheme)
    return scheme if not token else f"{scheme} {encode_token(token)}"


def format_authorization(scheme: str, token: bytes) -> str:
    """``Authorization`` value: ``Scheme <base64 token>``."""
    _check_scheme(scheme)
    if not token:
        raise ValueError("an authorization header needs a token")
    return f"{scheme} {encode_token(token)}"


def _check_scheme(scheme: str) -> None:
    if not isinstance(scheme, str) or not _TOKEN.fullmatch(scheme):
        raise ValueError("scheme must be an HTTP token")


def parse_authorization(value: str) -> AuthCredentials:
    """``credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`` (RFC 7235 §2.1)."""
    if not isinstance(value, str):
        raise MalformedHeaderError("authorization header is not text")
    value = value.strip(" \t")
    match = _TOKEN.match(value)
    if match is None:
        raise MalformedHeaderError("authorization header has no scheme")
    rest = value[match.end() :]
    if rest and rest[0] not in " \t":
        raise MalformedHeaderError("authorization scheme is not followed by a space")
    return AuthCredentials(scheme=match.group(), rest=rest.strip(" \t"))


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in one or more ``WWW-Authenticate`` header values (RFC 7235 §4.1).

    ``challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]``, comma-separated.
    """
    challenges: list[Challenge] = []
    for value in values:
        if not isinstance(value, str):
            raise MalformedHeaderError("authenticate header is not text")
        _parse_value(value, challenges)
        if len(challenges) > _MAX_CHALLENGES:
            raise MalformedHeaderError("too many authentication challenges")
    return challenges


def _parse_value(value: str, out: list[Challenge]) -> None:
    pos = _SEP.match(value, 0).end()  # type: ignore[union-attr]
    end = len(value)
    while pos < end:
        match = _TOKEN.match(value, pos)
        if match is None:
            raise MalformedHeaderError("authentication challenge has no scheme")
        scheme = match.group()
        pos = match.end()
        spaced = _OWS.match(value, pos).end()  # type: ignore[union-attr]
        if spaced < end and value[spaced] != "," and spaced == pos:
            raise MalformedHeaderError("authentication scheme is not followed by a space")
        pos = spaced
        token = _TOKEN68_ITEM.match(value, pos) if pos < end else None
        if token is not None and not _PARAM.match(value, pos):
            out.append(Challenge(scheme, token.group(1)))
            pos = token.end()
        else:
            params: list[tuple[str, str]] = []
            while (param := _PARAM.match(value, pos)) is not None:
                params.append((param.group(1).lower(), _unquote(param.group(2))))
                pos = _OWS.match(value, param.end()).end()  # type: ignore[union-attr]
                if pos < end and value[pos] == ",":
                    after = _SEP.match(value, pos).end()  # type: ignore[union-attr]
                    if _PARAM.match(value, after):
                        pos = after
                        continue
                break
            out.append(Challenge(scheme, None, tuple(params)))
        if pos < end and value[pos] != ",":
            raise MalformedHeaderError("unexpected text in an authentication challenge")
        pos = _SEP.match(value, pos).end()  # type: ignore[union-attr]


def _unquote(text: str) -> str:
    if text.startswith('"'):
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text
