"""The authentication service against a real Dovecot: checks, the login cache, back-off, and what it logs.

Dovecot delays further logins from a client address that has just failed (its
auth penalty, keyed by the x-originating-ip we forward); every failure here
therefore comes from a documentation address (RFC 5737) no other test uses.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from adapters.errors import AuthenticationFailed, BackendUnavailable
from gateway import logs
from gateway.config import from_dict
from gateway.demo.procs import free_port
from gateway.services import auth as auth_module
from gateway.services.auth import AuthService, LoginThrottled
from gateway.services.backends import Backends
from gateway.services.directory import StaticDirectory, parse_users

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend_calls(monkeypatch) -> list[tuple[str, str | None]]:
    """Every back-end login check the service makes, as (login, client address); the real check still runs."""
    calls: list[tuple[str, str | None]] = []
    real = auth_module.check_login

    async def counting(ep, creds, client_ip=None):
        calls.append((creds.username, client_ip))
        return await real(ep, creds, client_ip)

    monkeypatch.setattr(auth_module, "check_login", counting)
    return calls


def _service(clock: Clock, url: str, ca_file: str, extra_users: tuple[str, ...] = (), **auth) -> AuthService:
    config = from_dict({
        "auth": auth,
        "backends": {"dovecot": {"type": "imap", "url": url, "ca_file": ca_file, "timeout": 5}},
        "domains": {"example.test": {"imap": "dovecot", "aliases": ["example.org"]}},
    })
    records = parse_users(config, {"user": [{"address": a} for a in (ALICE, BOB, CAROL, *extra_users)]})
    return AuthService(config.auth, StaticDirectory(config, records), Backends(config), clock=clock)


@pytest.fixture
def make_service(dovecot, certs, clock):
    def make(**auth) -> AuthService:
        return _service(clock, f"imaps://127.0.0.1:{dovecot.imaps_port}", str(certs.ca_cert), **auth)
    return make


# --- checks and the cache ---------------------------------------------------------------------------------


async def test_right_password_then_served_from_cache(make_service, users, backend_calls):
    svc = make_service()
    first = await svc.authenticate(ALICE, users[ALICE], "192.0.2.1")
    assert first.user.address == ALICE and first.cached is False
    assert backend_calls == [(ALICE, "192.0.2.1")]
    second = await svc.authenticate(ALICE, users[ALICE], "192.0.2.1")
    assert second.user.address == ALICE and second.cached is True
    # Another spelling of the same user (case, alias domain) hits the same cache entry.
    third = await svc.authenticate("Alice@Example.ORG", users[ALICE], "192.0.2.1")
    assert third.cached is True and third.user.address == ALICE
    assert len(backend_calls) == 1


async def test_cache_entry_expires_after_ttl(make_service, users, clock, backend_calls):
    svc = make_service(cache_ttl=60)
    assert (await svc.authenticate(BOB, users[BOB], "192.0.2.2")).cached is False
    clock.advance(59)
    assert (await svc.authenticate(BOB, users[BOB], "192.0.2.2")).cached is True
    clock.advance(2)
    assert (await svc.authenticate(BOB, users[BOB], "192.0.2.2")).cached is False
    assert len(backend_calls) == 2
    assert (await svc.authenticate(BOB, users[BOB], "192.0.2.2")).cached is True


async def test_wrong_password_fails_and_is_not_cached(make_service, users, backend_calls):
    svc = make_service()
    for ip in ("192.0.2.31", "192.0.2.32"):
        with pytest.raises(AuthenticationFailed) as info:
            await svc.authenticate(CAROL, "not-carols-password", ip)
        assert not isinstance(info.value, LoginThrottled)
    assert backend_calls == [(CAROL, "192.0.2.31"), (CAROL, "192.0.2.32")]  # asked again: nothing remembered
    ok = await svc.authenticate(CAROL, users[CAROL], "192.0.2.33")
    assert ok.cached is False and len(backend_calls) == 3


async def test_cached_user_with_other_password_is_checked_again(make_service, users, backend_calls):
    svc = make_service()
    await svc.authenticate(ALICE, users[ALICE], "192.0.2.41")
    with pytest.raises(AuthenticationFailed):
        await svc.authenticate(ALICE, users[ALICE] + "x", "192.0.2.42")
    assert len(backend_calls) == 2
    assert (await svc.authenticate(ALICE, users[ALICE], "192.0.2.43")).cached is True  # the good entry survives


async def _reload(dovecot) -> None:
    dovecot.reload_users()
    # Dovecot re-reads the passwd file at most once per wall-clock second: a lookup earlier in this second
    # (by this or another test) would hide the change until the next one.
    await asyncio.sleep(1.1)


async def test_changed_password_is_not_served_from_cache(dovecot, certs, clock, backend_calls):
    login = "dana.auth@example.test"
    old, new = "old-password-1", "a-new-and-longer-password-2"
    dovecot.users[login] = old
    await _reload(dovecot)
    try:
        svc = _service(clock, f"imaps://127.0.0.1:{dovecot.imaps_port}", str(certs.ca_cert),
                       extra_users=(login,), cache_ttl=120)
        assert (await svc.authenticate(login, old, "192.0.2.51")).cached is False
        dovecot.users[login] = new
        await _reload(dovecot)
        result = await svc.authenticate(login, new, "192.0.2.52")
        assert result.cached is False and result.user.address == login
        assert len(backend_calls) == 2
        # The old password is only remembered until the cache entry ends; then the back end refuses it.
        clock.advance(121)
        with pytest.raises(AuthenticationFailed):
            await svc.authenticate(login, old, "192.0.2.53")
        assert len(backend_calls) == 3
    finally:
        del dovecot.users[login]
        dovecot.reload_users()


async def test_unknown_user_fails_like_a_wrong_password(make_service, backend_calls):
    svc = make_service()
    with pytest.raises(AuthenticationFailed) as wrong:
        await svc.authenticate(BOB, "wrong-password", "192.0.2.61")
    with pytest.raises(AuthenticationFailed) as unknown:
        await svc.authenticate("nobody@example.test", "wrong-password", "192.0.2.62")
    assert type(unknown.value) is type(wrong.value) is AuthenticationFailed
    assert str(unknown.value) == str(wrong.value)
    assert backend_calls == [(BOB, "192.0.2.61")]  # the unknown user never reached the back end


async def test_empty_password_fails_without_backend(make_service, backend_calls):
    svc = make_service()
    with pytest.raises(AuthenticationFailed) as info:
        await svc.authenticate(ALICE, "", "192.0.2.63")
    assert not isinstance(info.value, LoginThrottled)
    assert backend_calls == []


# --- back-off ---------------------------------------------------------------------------------------------


async def test_user_backoff_blocks_right_password_then_lifts(make_service, users, clock, backend_calls):
    svc = make_service(max_failures=3, backoff_base=4.0, backoff_max=60.0)
    for i in range(3):  # from three addresses: the user is what is being guessed
        with pytest.raises(AuthenticationFailed) as info:
            await svc.authenticate(BOB, f"guess-{i}", f"198.51.100.{i + 1}")
        assert not isinstance(info.value, LoginThrottled)
    with pytest.raises(LoginThrottled) as info:
        await svc.authenticate(BOB, users[BOB], "198.51.100.10")
    assert isinstance(info.value, AuthenticationFailed)
    assert info.value.retry_after == 4
    assert svc.throttled_for("BOB@example.test", "198.51.100.11") == pytest.approx(4.0)
    assert len(backend_calls) == 3  # a throttled attempt never reaches the back end
    clock.advance(3)
    with pytest.raises(LoginThrottled) as info:
        await svc.authenticate(BOB, users[BOB], "198.51.100.10")
    assert info.value.retry_after == 1
    clock.advance(1.5)
    # One more failure after the wait doubles it.
    with pytest.raises(AuthenticationFailed) as info:
        await svc.authenticate(BOB, "guess-4", "198.51.100.4")
    assert not isinstance(info.value, LoginThrottled)
    with pytest.raises(LoginThrottled) as info:
        await svc.authenticate(BOB, users[BOB], "198.51.100.10")
    assert info.value.retry_after == 8
    clock.advance(8.5)
    result = await svc.authenticate(BOB, users[BOB], "198.51.100.10")
    assert result.user.address == BOB and result.cached is False
    assert svc.throttled_for(BOB, "198.51.100.10") == 0


async def test_backoff_applies_to_other_spellings_of_the_login(make_service, users):
    svc = make_service(max_failures=2)
    for i, ip in enumerate(("198.51.100.21", "198.51.100.22")):
        with pytest.raises(AuthenticationFailed):
            await svc.authenticate(CAROL, f"guess-{i}", ip)
    with pytest.raises(LoginThrottled):
        await svc.authenticate(" Carol@Example.Test ", users[CAROL], "198.51.100.23")


async def test_address_backoff_over_many_user_names(make_service, users, clock, backend_calls):
    svc = make_service(max_failures=4, backoff_base=10.0)
    spray = "192.0.2.71"
    names = ["nobody1@example.test", "nobody2@example.test", "admin", CAROL]
    for name in names:
        with pytest.raises(AuthenticationFailed) as info:
            await svc.authenticate(name, "Summer2024!", spray)
        assert not isinstance(info.value, LoginThrottled)
    # No single user reached the limit, but the address did.
    with pytest.raises(LoginThrottled) as info:
        await svc.authenticate(ALICE, users[ALICE], spray)
    assert info.value.retry_after == 10
    assert svc.throttled_for("someone-else", spray) > 0
    # Everyone else is unaffected, including the users that were guessed at.
    assert svc.throttled_for(ALICE, "192.0.2.72") == 0
    assert (await svc.authenticate(ALICE, users[ALICE], "192.0.2.72")).cached is False
    assert (await svc.authenticate(CAROL, users[CAROL], "192.0.2.73")).cached is False
    clock.advance(11)
    assert (await svc.authenticate(ALICE, users[ALICE], spray)).cached is True
    assert len(backend_calls) == 3  # carol's wrong guess, alice and carol from clean addresses


async def test_failures_outside_the_window_are_forgotten(make_service, users, clock):
    svc = make_service(max_failures=2, failure_window=100)
    with pytest.raises(AuthenticationFailed):
        await svc.authenticate("nobody@example.test", "x", "192.0.2.75")
    clock.advance(101)
    with pytest.raises(AuthenticationFailed):
        await svc.authenticate("nobody@example.test", "x", "192.0.2.75")
    assert svc.throttled_for("nobody@example.test", "192.0.2.75") == 0  # a new window began with one failure
    with pytest.raises(AuthenticationFailed) as info:
        await svc.authenticate("nobody@example.test", "x", "192.0.2.75")
    assert not isinstance(info.value, LoginThrottled)
    with pytest.raises(LoginThrottled):
        await svc.authenticate("nobody@example.test", "x", "192.0.2.75")


# --- concurrency and an unreachable back end --------------------------------------------------------------


async def test_concurrent_identical_logins_share_one_check(make_service, users, backend_calls):
    svc = make_service()
    results = await asyncio.gather(*(svc.authenticate(CAROL, users[CAROL], "192.0.2.81") for _ in range(10)))
    assert len(backend_calls) == 1
    assert all(r.user.address == CAROL for r in results)
    assert (await svc.authenticate(CAROL, users[CAROL], "192.0.2.81")).cached is True
    assert len(backend_calls) == 1


async def test_concurrent_wrong_logins_share_one_check_and_all_fail(make_service, backend_calls):
    svc = make_service(max_failures=50)
    results = await asyncio.gather(*(svc.authenticate(BOB, "bad-guess", "192.0.2.82") for _ in range(6)),
                                   return_exceptions=True)
    assert len(backend_calls) == 1
    assert all(type(r) is AuthenticationFailed for r in results), results


async def test_backend_down_is_unavailable_not_a_failure(certs, clock, users, backend_calls):
    svc = _service(clock, f"imaps://127.0.0.1:{free_port()}", str(certs.ca_cert), max_failures=2)
    for password in (users[ALICE], "wrong", users[ALICE], "wrong", users[ALICE]):
        with pytest.raises(BackendUnavailable):
            await svc.authenticate(ALICE, password, "192.0.2.91")
    assert len(backend_calls) == 5  # never throttled, never cached
    assert svc.throttled_for(ALICE, "192.0.2.91") == 0


async def test_backend_down_then_up(dovecot, certs, clock, users):
    down = _service(clock, f"imaps://127.0.0.1:{free_port()}", str(certs.ca_cert))
    with pytest.raises(BackendUnavailable):
        await down.authenticate(BOB, users[BOB], "192.0.2.92")
    with pytest.raises(BackendUnavailable):  # a failed check is not remembered as a success either
        await down.authenticate(BOB, users[BOB], "192.0.2.92")
    up = _service(clock, f"imaps://127.0.0.1:{dovecot.imaps_port}", str(certs.ca_cert))
    assert (await up.authenticate(BOB, users[BOB], "192.0.2.92")).cached is False


# --- what gets logged -------------------------------------------------------------------------------------


async def test_log_never_contains_a_password(make_service, users, caplog):
    results: list[str] = []
    svc = make_service(max_failures=2)
    svc.on_result = results.append
    logger = logging.getLogger("casgate.auth")
    # Attached directly: another test may have made "casgate" stop propagating (gateway.logs.setup).
    logger.addHandler(caplog.handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    wrong = "Wr0ng-Pa55word-zz"
    try:
        await svc.authenticate(ALICE, users[ALICE], "192.0.2.101")
        await svc.authenticate(ALICE, users[ALICE], "192.0.2.101")
        for who, ip in ((ALICE, "192.0.2.102"), ("ghost@example.test", "192.0.2.102")):
            with pytest.raises(AuthenticationFailed) as info:
                await svc.authenticate(who, wrong, ip)
            assert wrong not in str(info.value)
        with pytest.raises(LoginThrottled):
            await svc.authenticate(BOB, users[BOB], "192.0.2.102")
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)
    records = [r for r in caplog.records if r.name == "casgate.auth"]
    assert {getattr(r, "result", None) for r in records} >= {"ok", "ok-cached", "failed", "throttled"}
    assert results == ["ok", "ok-cached", "failed", "failed", "throttled"]
    assert {getattr(r, "user", None) for r in records} >= {ALICE, "ghost@example.test"}
    secrets = [users[ALICE], users[BOB], wrong]
    formatted = [logs.JsonFormatter().format(r) for r in records] + [logs.TextFormatter().format(r) for r in records]
    for r, line in zip(records, formatted):
        everything = " ".join([r.getMessage(), repr(r.args), line, *map(repr, vars(r).values())])
        for secret in secrets:
            assert secret not in everything, (secret, line)
    assert all(json.loads(line)["logger"] == "casgate.auth" for line in formatted[:len(records)])
