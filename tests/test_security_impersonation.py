"""Impersonation on contextvars, and access checks against security descriptors."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from rpcsec.security import (
    EVERYONE,
    AccessMask,
    AccessToken,
    Ace,
    SecurityDescriptor,
    access_check,
    current_token,
    impersonate,
    revert_to_self,
)
from rpcsec.sspi import AccessDeniedError, ImpersonationLevel, NoImpersonationError

ALICE = AccessToken("alice", "x509", groups=frozenset({"finance"}))
BOB = AccessToken("bob", "x509", groups=frozenset({"engineering"}))


def test_impersonate_and_revert() -> None:
    assert current_token() is None
    scope = impersonate(ALICE)
    assert current_token() is ALICE
    with impersonate(BOB):
        assert current_token() is BOB
    assert current_token() is ALICE
    with revert_to_self():
        assert current_token() is None
    scope.revert()
    scope.revert()  # idempotent
    assert current_token() is None


def test_run_as_is_impersonate_around_one_call() -> None:
    """``run_as`` (the bindings' per-call form): the token is current for the call only, the
    previous one (none, or an outer impersonation) is back after a return or a raise, the
    result and the arguments pass through, and a non-token is refused before anything runs."""
    from rpcsec.security._impersonation import run_as

    assert run_as(ALICE, lambda a, b: (current_token(), a, b), 1, 2) == (ALICE, 1, 2)
    assert current_token() is None
    with impersonate(BOB):
        with pytest.raises(KeyError):
            run_as(ALICE, {}.__getitem__, "missing")
        assert current_token() is BOB
    assert current_token() is None
    called = []
    with pytest.raises(TypeError):
        run_as("alice", called.append, 1)  # type: ignore[arg-type]
    assert called == []


def test_run_as_emits_the_impersonation_audit_event(caplog) -> None:
    from rpcsec.security._impersonation import run_as

    with caplog.at_level(logging.DEBUG, logger="rpcsec.audit"):
        run_as(ALICE, lambda: None)
    (record,) = [r for r in caplog.records if r.name == "rpcsec.audit"]
    assert record.rpcsec_audit["event"] == "impersonation"
    assert record.rpcsec_audit["principal"] == "alice"


def test_impersonation_is_per_thread() -> None:
    seen: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def run(name: str, token: AccessToken) -> None:
        with impersonate(token):
            barrier.wait()  # both threads are impersonating at the same time
            seen[name] = current_token()

    threads = [
        threading.Thread(target=run, args=("a", ALICE)),
        threading.Thread(target=run, args=("b", BOB)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"a": ALICE, "b": BOB}
    assert current_token() is None


async def test_impersonation_is_per_asyncio_task() -> None:
    started = asyncio.Event()

    async def handler(token: AccessToken) -> AccessToken | None:
        with impersonate(token):
            started.set()
            await asyncio.sleep(0)  # yield to the other task mid-impersonation
            await asyncio.sleep(0)
            return current_token()

    results = await asyncio.gather(handler(ALICE), handler(BOB))
    assert results == [ALICE, BOB]
    assert current_token() is None


async def test_tasks_inherit_the_impersonation_of_their_creator() -> None:
    with impersonate(ALICE):
        inner = asyncio.create_task(asyncio.sleep(0, result=None))
        child = asyncio.create_task(_read_token())
    await inner
    assert await child is ALICE


async def _read_token() -> AccessToken | None:
    return current_token()


def _descriptor() -> SecurityDescriptor:
    return SecurityDescriptor.build(
        "alice",
        [
            Ace.allow("alice", AccessMask.ALL),
            Ace.allow("group:engineering", AccessMask.READ),
            Ace.deny("bob", AccessMask.WRITE),
            Ace.allow("anonymous", AccessMask.LIST),
        ],
    )


def test_access_check_uses_the_current_impersonation_token() -> None:
    descriptor = _descriptor()
    with impersonate(ALICE):
        assert access_check(descriptor, AccessMask.READ | AccessMask.WRITE)
    with impersonate(BOB):
        assert access_check(descriptor, AccessMask.READ) == AccessMask.READ
        with pytest.raises(AccessDeniedError):
            access_check(descriptor, AccessMask.DELETE)
    with pytest.raises(NoImpersonationError):
        access_check(descriptor, AccessMask.READ)  # not impersonating anyone


def test_deny_is_evaluated_before_allow() -> None:
    # Even though an allow ACE for the group comes first in the input, the deny wins.
    bob_engineer = AccessToken("bob", "x509", groups=frozenset({"engineering", "writers"}))
    descriptor = SecurityDescriptor.build(
        "alice",
        [Ace.allow("group:writers", AccessMask.WRITE), Ace.deny("bob", AccessMask.WRITE)],
    )
    assert descriptor.aces[0].type.value == "deny"
    with pytest.raises(AccessDeniedError):
        access_check(descriptor, AccessMask.WRITE, bob_engineer)


def test_partial_allow_is_denied() -> None:
    with pytest.raises(AccessDeniedError):
        access_check(_descriptor(), AccessMask.READ | AccessMask.WRITE, BOB)


def test_identify_level_tokens_cannot_be_used_for_access_checks() -> None:
    identify = ALICE.replace(impersonation_level=ImpersonationLevel.IDENTIFY)
    with impersonate(identify):
        assert current_token().principal == "alice"  # the server may still see who it is
        with pytest.raises(NoImpersonationError, match="IDENTIFY"):
            access_check(_descriptor(), AccessMask.READ)


def test_anonymous_is_its_own_principal() -> None:
    anonymous = AccessToken.anonymous()
    descriptor = _descriptor()
    assert access_check(descriptor, AccessMask.LIST, anonymous) == AccessMask.LIST
    with pytest.raises(AccessDeniedError):
        access_check(descriptor, AccessMask.READ, anonymous)
    everyone = SecurityDescriptor.build("alice", [Ace.allow(EVERYONE, AccessMask.READ)])
    assert access_check(everyone, AccessMask.READ, BOB)
    with pytest.raises(AccessDeniedError):
        access_check(everyone, AccessMask.READ, anonymous)


def test_expired_token_is_denied() -> None:
    expired = ALICE.replace(expires_at=1.0)
    with pytest.raises(AccessDeniedError):
        access_check(_descriptor(), AccessMask.READ, expired)


def test_caller_misuse_is_a_type_or_value_error() -> None:
    with pytest.raises(TypeError):
        impersonate("alice")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        access_check(_descriptor(), 0, ALICE)
    with pytest.raises(TypeError):
        access_check({}, AccessMask.READ, ALICE)  # type: ignore[arg-type]


def test_delegated_credentials_are_never_printed() -> None:
    token = ALICE.replace(delegated_credentials=object())
    assert "delegated" not in repr(token)
    assert token == ALICE  # credentials do not take part in equality


def test_descriptor_built_directly_is_put_in_canonical_order() -> None:
    # Regression (issue 10 item 8): SecurityDescriptor(...) kept an allow before a deny and
    # granted what the deny refuses.
    bob_writer = AccessToken("bob", "x509", groups=frozenset({"writers"}))
    descriptor = SecurityDescriptor(
        "alice", (Ace.allow("group:writers", AccessMask.WRITE), Ace.deny("bob", AccessMask.WRITE))
    )
    assert [ace.type.value for ace in descriptor.aces] == ["deny", "allow"]
    with pytest.raises(AccessDeniedError):
        access_check(descriptor, AccessMask.WRITE, bob_writer)
    assert access_check(descriptor, AccessMask.WRITE, ALICE.replace(groups=frozenset({"writers"})))
    with pytest.raises(TypeError):
        SecurityDescriptor("alice", ("allow alice",))  # type: ignore[arg-type]
