"""Anti-replay windows: RFC 4303 / RFC 6479 sliding window and the strict SEQUENCE_DETECT rule,
property-tested against a simple reference model."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpcsec.sspi import OutOfSequenceError, ReplayError, ReplayWindow, SequenceCounter


class ReferenceWindow:
    """The obvious model: a set of everything seen and the highest number."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.top = -1

    def accept(self, seq: int) -> bool:
        if seq in self.seen or (self.top >= 0 and self.top - seq >= self.size):
            return False
        self.seen.add(seq)
        self.top = max(self.top, seq)
        return True


def _try(window: ReplayWindow, seq: int) -> bool:
    try:
        window.accept(seq)
    except ReplayError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(
    size=st.sampled_from([64, 128, 256]),
    seqs=st.lists(st.integers(min_value=0, max_value=2000), max_size=300),
)
def test_window_matches_reference_model(size: int, seqs: list[int]) -> None:
    window, model = ReplayWindow(size), ReferenceWindow(size)
    for seq in seqs:
        assert _try(window, seq) == model.accept(seq), seq


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(200))))
def test_any_order_inside_the_window_is_accepted_once(order: list[int]) -> None:
    window = ReplayWindow(256)
    for seq in order:
        window.accept(seq)
    for seq in order:
        with pytest.raises(ReplayError):
            window.accept(seq)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=64, max_value=10**5))
def test_messages_older_than_the_window_are_rejected(base: int, jump: int) -> None:
    window = ReplayWindow(64)
    window.accept(base)
    window.accept(base + jump)
    # base + 1 was never seen: it is accepted exactly when it is still inside the window.
    if jump - 1 >= 64:
        with pytest.raises(ReplayError):
            window.accept(base + 1)
    else:
        window.accept(base + 1)


def test_large_jump_clears_the_whole_ring() -> None:
    window = ReplayWindow(128)
    for seq in range(128):
        window.accept(seq)
    window.accept(10_000)  # slides far past everything: stale bits must not survive
    for seq in range(10_000 - 127, 10_000):
        window.accept(seq)
    with pytest.raises(ReplayError):
        window.accept(10_000 - 128)


def test_check_does_not_change_state() -> None:
    window = ReplayWindow(64)
    window.check(5)
    window.check(5)
    window.accept(5)
    with pytest.raises(ReplayError):
        window.check(5)


@settings(max_examples=200, deadline=None)
@given(
    size=st.sampled_from([64, 128]),
    seqs=st.lists(st.integers(min_value=0, max_value=1000), max_size=200),
)
def test_record_decides_like_accept_and_a_refusal_changes_nothing(
    size: int, seqs: list[int]
) -> None:
    """``record`` (the replay store's lock-free-inside-its-own-lock twin of ``accept``) accepts
    and refuses exactly what ``accept`` does, and a refused number leaves the window as it was
    (a replay must never move the window)."""
    recorded, accepted = ReplayWindow(size), ReplayWindow(size)
    for seq in seqs:
        before = (list(recorded._blocks), recorded.highest)
        refused = recorded.record(seq)
        assert (refused is None) == _try(accepted, seq)
        if refused is not None:
            assert refused in (
                "message is older than the replay window",
                "message was already received",
            )
            assert (list(recorded._blocks), recorded.highest) == before


def test_window_size_must_be_a_multiple_of_64() -> None:
    for bad in (0, -64, 100):
        with pytest.raises(ValueError):
            ReplayWindow(bad)


def test_concurrent_accepts_have_no_false_rejections_and_no_double_accepts() -> None:
    window = ReplayWindow(1 << 14)
    accepted: list[int] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        for seq in range(offset, 8000, 8):
            window.accept(seq)
            with lock:
                accepted.append(seq)
        for seq in range(offset, 8000, 8):  # every one is a replay now
            with pytest.raises(ReplayError):
                window.accept(seq)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(accepted) == list(range(8000))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40), max_size=80))
def test_sequence_counter_matches_reference(seqs: list[int]) -> None:
    counter = SequenceCounter(0)
    expected = 0
    for seq in seqs:
        if seq == expected:
            counter.accept(seq)
            expected += 1
        elif seq < expected:
            with pytest.raises(ReplayError):
                counter.accept(seq)
        else:
            with pytest.raises(OutOfSequenceError):
                counter.accept(seq)
    assert counter.expected == expected


def test_sequence_counter_rejects_reorder_and_gap() -> None:
    counter = SequenceCounter(0)
    counter.accept(0)
    with pytest.raises(OutOfSequenceError):
        counter.accept(2)  # 1 is missing
    counter.accept(1)  # the rejected message changed nothing
    counter.accept(2)
    with pytest.raises(ReplayError):
        counter.accept(1)


@settings(max_examples=300, deadline=None)
@given(
    size=st.sampled_from([64, 128, 256]),
    highest=st.integers(min_value=0, max_value=1000),
    seqs=st.lists(st.integers(min_value=0, max_value=1500), max_size=200),
)
def test_resumed_window_matches_a_model_that_saw_everything_up_to_highest(
    size: int, highest: int, seqs: list[int]
) -> None:
    """ImportSecurityContext's resume: as if every number up to ``highest`` had arrived."""
    window, model = ReplayWindow(size), ReferenceWindow(size)
    window.resume(highest)
    for seq in range(highest + 1):
        model.accept(seq)
    assert window.highest == highest
    for seq in seqs:
        assert _try(window, seq) == model.accept(seq), seq


def test_resume_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(64).resume(-1)
