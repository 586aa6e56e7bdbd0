"""The handshake frame and offer record parsers (shared by kerberos and negotiate): pure Python,
no KDC. Round trips, and hostile bytes only ever raise InvalidTokenError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpcsec.packages.kerberos._records import (
    MAX_CHAIN,
    OfferRecord,
    bindings_data,
    decode_frame,
    encode_frame,
)
from rpcsec.sspi import ContextOffer, ContextReq, ImpersonationLevel, InvalidTokenError

flags = st.sampled_from(list(ContextReq)).map(ContextReq)
offers = st.builds(
    ContextOffer,
    st.lists(flags, max_size=6).map(lambda fs: ContextReq(sum({int(f) for f in fs}))),
    st.sampled_from(list(ImpersonationLevel)),
)
names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x2FFF, exclude_categories=("Cs",)),
    min_size=1,
    max_size=40,
)


@given(offer=offers, chain=st.lists(names, max_size=MAX_CHAIN).map(tuple))
def test_offer_record_round_trips(offer, chain) -> None:
    record = OfferRecord(offer, chain)
    assert OfferRecord.decode(record.encode()) == record


@given(data=st.binary(max_size=200))
def test_offer_record_garbage(data) -> None:
    with contextlib.suppress(InvalidTokenError):
        OfferRecord.decode(data)


@given(offer=offers, chain=st.lists(names, min_size=1, max_size=4).map(tuple), cut=st.integers(1))
def test_truncated_offer_record(offer, chain, cut) -> None:
    encoded = OfferRecord(offer, chain).encode()
    with pytest.raises(InvalidTokenError):
        OfferRecord.decode(encoded[: cut % len(encoded)])
    with pytest.raises(InvalidTokenError):
        OfferRecord.decode(encoded + b"\x00")


def test_offer_record_limits() -> None:
    offer = ContextOffer(ContextReq.default(), ImpersonationLevel.DELEGATE)
    with pytest.raises(ValueError):
        OfferRecord(offer, ("svc",) * (MAX_CHAIN + 1)).encode()
    with pytest.raises(ValueError):
        OfferRecord(offer, ("x" * 513,)).encode()
    too_many = offer.encode() + bytes([MAX_CHAIN + 1])
    with pytest.raises(InvalidTokenError):
        OfferRecord.decode(too_many)
    control = offer.encode() + b"\x01\x00\x02a\n"
    with pytest.raises(InvalidTokenError):
        OfferRecord.decode(control)
    bad_utf8 = offer.encode() + b"\x01\x00\x01\xff"
    with pytest.raises(InvalidTokenError):
        OfferRecord.decode(bad_utf8)


@given(kind=st.integers(0, 255), first=st.binary(max_size=64), second=st.binary(max_size=64))
def test_frame_round_trips(kind, first, second) -> None:
    frame = decode_frame(b"RK", encode_frame(b"RK", kind, first, second), kind)
    assert (frame.kind, frame.first, frame.second) == (kind, first, second)


@given(data=st.binary(max_size=100), kind=st.integers(0, 255))
def test_frame_garbage(data, kind) -> None:
    with contextlib.suppress(InvalidTokenError):
        decode_frame(b"RK", data, kind)


def test_frame_checks_magic_version_kind_and_length() -> None:
    token = encode_frame(b"RK", 1, b"gss", b"record")
    for bad in (
        b"RG" + token[2:],  # another package's frame
        token[:2] + b"\x02" + token[3:],  # another version
        token[: -len(b"gssrecord")],
        token[:7],
    ):
        with pytest.raises(InvalidTokenError):
            decode_frame(b"RK", bad, 1)
    with pytest.raises(InvalidTokenError):
        decode_frame(b"RK", token, 2)


def test_bindings_data_is_unambiguous() -> None:
    # Length prefixes: moving bytes between the record and the external binding changes it.
    assert bindings_data(b"L", b"ab", b"c") != bindings_data(b"L", b"a", b"bc")
