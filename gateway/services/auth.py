"""Pass-through authentication: check a login against the user's own back end, cache it, back off on failures.

Passwords are never stored: a successful login is remembered as an HMAC of
(user, password) under a key that lives only in this process's memory, for
``auth.cache_ttl`` seconds, so that a phone sending Basic auth on every request
does not cost a back-end login each time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from adapters.errors import AuthenticationFailed, BackendUnavailable
from adapters.imap import check_login
from adapters.interfaces import Credentials, UserRecord

from ..config import AuthConfig
from .backends import Backends
from .directory import StaticDirectory

log = logging.getLogger("casgate.auth")
T = TypeVar("T")


class LoginThrottled(AuthenticationFailed):
    """Too many recent failures for this user or client address; try again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many failed logins; try again later")
        self.retry_after = max(1, int(retry_after + 0.999))


@dataclass
class _Failures:
    count: int
    first: float
    last: float


@dataclass(frozen=True)
class AuthResult:
    user: UserRecord
    cached: bool


class AuthService:
    """Checks credentials; one instance per gateway process."""

    def __init__(self, config: AuthConfig, directory: StaticDirectory, backends: Backends,
                 clock: Callable[[], float] = time.monotonic, on_result: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.directory = directory
        self.backends = backends
        self.clock = clock
        self.on_result = on_result or (lambda result: None)
        self._key = os.urandom(32)
        self._cache: dict[bytes, float] = {}
        self._failures: dict[str, _Failures] = {}
        self._inflight: dict[bytes, asyncio.Task[frozenset[str]]] = {}
        self._backend_latency = 0.05  # running estimate, used to pace answers for unknown users

    def _digest(self, user: str, password: str) -> bytes:
        return hmac.new(self._key, user.encode() + b"\0" + password.encode(), hashlib.sha256).digest()

    def _retry_after(self, key: str, now: float) -> float:
        f = self._failures.get(key)
        if f is None or f.count < self.config.max_failures:
            return 0.0
        if now - f.first > self.config.failure_window and now - f.last > self.config.backoff_max:
            del self._failures[key]
            return 0.0
        wait = min(self.config.backoff_base * 2 ** (f.count - self.config.max_failures), self.config.backoff_max)
        return max(0.0, f.last + wait - now)

    def _fail(self, key: str, now: float) -> None:
        f = self._failures.get(key)
        if f is None or now - f.first > self.config.failure_window:
            self._failures[key] = _Failures(1, now, now)
        else:
            f.count += 1
            f.last = now
        if len(self._failures) > 100_000:  # bound memory under a spray of random names
            cutoff = now - self.config.failure_window - self.config.backoff_max
            self._failures = {k: v for k, v in self._failures.items() if v.last > cutoff}

    def throttled_for(self, login: str, client_ip: str) -> float:
        """Seconds until this login from this address may be tried again (0 when it may now)."""
        now = self.clock()
        return max(self._retry_after("u:" + login.strip().lower(), now), self._retry_after("ip:" + client_ip, now))

    async def authenticate(self, login: str, password: str, client_ip: str) -> AuthResult:
        """Return the user for valid credentials.

        Raises LoginThrottled while backing off, AuthenticationFailed for a wrong
        password or an unknown user (indistinguishable to the caller), and
        BackendUnavailable when the user's back end cannot answer.
        """
        user, keys = await self._admit(login, password, client_ip)
        digest = self._digest(user.address, password)
        expiry = self._cache.get(digest)
        if expiry is not None and expiry > self.clock():
            self._log("ok-cached", user.address, client_ip)
            return AuthResult(user, cached=True)
        backend = self._imap_backend(user)
        try:
            await self._check(digest, backend, Credentials(user.login, password), client_ip)
        except AuthenticationFailed:
            self._cache.pop(digest, None)
            self._failed(*keys, user.address, client_ip, "bad-password")
        except BackendUnavailable:
            self._log("backend-unavailable", user.address, client_ip)
            raise
        self._succeeded(keys, user, digest, client_ip)
        return AuthResult(user, cached=False)

    async def login_with(self, login: str, password: str, client_ip: str,
                         attempt: Callable[[UserRecord, str, Credentials], Awaitable[T]]) -> tuple[UserRecord, T]:
        """Check credentials by using them: ``attempt`` logs in to the user's mail back end and returns what
        it opened (a proxied session, a mail store). Throttling, failure counting and logging are as for
        ``authenticate``; the attempt always runs, cached or not, since its session is what the caller needs.
        """
        user, keys = await self._admit(login, password, client_ip)
        backend = self._imap_backend(user)
        try:
            result = await attempt(user, backend, Credentials(user.login, password))
        except AuthenticationFailed:
            self._failed(*keys, user.address, client_ip, "bad-password")
        except BackendUnavailable:
            self._log("backend-unavailable", user.address, client_ip)
            raise
        self._succeeded(keys, user, self._digest(user.address, password), client_ip)
        return user, result

    async def _admit(self, login: str, password: str, client_ip: str) -> tuple[UserRecord, tuple[str, str]]:
        """Refuse throttled and unknown logins; return the user and its failure-counter keys."""
        user_key = "u:" + login.strip().lower()
        ip_key = "ip:" + client_ip
        now = self.clock()
        wait = max(self._retry_after(user_key, now), self._retry_after(ip_key, now))
        if wait > 0:
            self._log("throttled", login, client_ip)
            raise LoginThrottled(wait)
        user = self.directory.find(login)
        if user is None or not password:
            await asyncio.sleep(self._backend_latency)  # answer as slowly as a real check would
            self._failed(user_key, ip_key, login, client_ip, "unknown-user" if user is None else "empty-password")
        assert user is not None
        return user, (user_key, ip_key)

    def _imap_backend(self, user: UserRecord) -> str:
        backend = self.directory.route(user, "imap")
        if backend is None:
            raise BackendUnavailable("no IMAP back end to check this user's password against")
        return backend

    def _succeeded(self, keys: tuple[str, str], user: UserRecord, digest: bytes, client_ip: str) -> None:
        self._failures.pop(keys[0], None)
        self._failures.pop("u:" + user.address, None)
        self._cache[digest] = self.clock() + self.config.cache_ttl
        if len(self._cache) > 100_000:
            now = self.clock()
            self._cache = {k: v for k, v in self._cache.items() if v > now}
        self._log("ok", user.address, client_ip)

    async def _check(self, digest: bytes, backend: str, creds: Credentials, client_ip: str) -> None:
        # Phones open several requests at once with the same credentials: one back-end login serves
        # them all. It runs as its own task so that one waiter giving up does not cancel the others.
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._timed_check(backend, creds, client_ip))
            self._inflight[digest] = task
            task.add_done_callback(lambda t: (self._inflight.pop(digest, None),
                                              t.cancelled() or t.exception()))  # retrieved even if nobody waits
        await asyncio.shield(task)

    async def _timed_check(self, backend: str, creds: Credentials, client_ip: str) -> frozenset[str]:
        t0 = time.perf_counter()
        caps = await check_login(self.backends.imap_endpoint(backend), creds, client_ip)
        self._backend_latency = 0.8 * self._backend_latency + 0.2 * (time.perf_counter() - t0)
        return caps

    def _failed(self, user_key: str, ip_key: str, who: str, client_ip: str, reason: str) -> None:
        now = self.clock()
        self._fail(user_key, now)
        self._fail(ip_key, now)
        self._log("failed", who, client_ip, reason)
        raise AuthenticationFailed("invalid user name or password")

    def _log(self, result: str, who: str, client_ip: str, reason: str = "") -> None:
        self.on_result(result)
        log.info("auth", extra={"event": "auth", "result": result, "user": who.lower()[:200],
                                "client": client_ip, **({"reason": reason} if reason else {})})
