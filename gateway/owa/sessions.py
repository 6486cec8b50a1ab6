"""Web sign-in sessions: kept in the state store (any node serves the next request), sealed with a key only the
browser holds.

The cookie is ``<id>.<key>``. The state store keeps, under the id, the user and
the password the back ends need (pass-through authentication), encrypted with
AES-GCM under the key, which is never stored on the server: someone who reads
the state store learns no password, and a session dies with its cookie. A
session lasts ``idle`` seconds after its last use (the store's TTL, renewed at
most once a minute) and never more than ``lifetime`` seconds in all.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..state import StateStore

NS = "owa-session"
_RENEW = 60.0  # seconds between TTL renewals of a session in use


@dataclass(frozen=True)
class WebSession:
    id: str
    address: str
    login: str
    password: str
    csrf: str
    created: float

    def __repr__(self) -> str:  # never the password, wherever a session is printed or logged
        return f"WebSession({self.address!r}, id={self.id[:6]}...)"

    def csrf_ok(self, sent: str | None) -> bool:
        return bool(sent) and hmac.compare_digest(sent.encode(), self.csrf.encode())


class WebSessions:
    def __init__(self, state: StateStore, idle: float, lifetime: float) -> None:
        self.state, self.idle, self.lifetime = state, idle, lifetime
        self._renewed: dict[str, float] = {}

    async def create(self, address: str, login: str, password: str) -> tuple[str, WebSession]:
        """(cookie value, session)."""
        sid, key = secrets.token_urlsafe(24), AESGCM.generate_key(bit_length=256)
        session = WebSession(sid, address, login, password, secrets.token_urlsafe(24), time.time())
        data = json.dumps({"a": address, "l": login, "p": password, "c": session.csrf, "t": session.created})
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(key).encrypt(nonce, data.encode(), sid.encode())
        await self.state.kv_set(NS, sid, sealed, ttl=self.idle)
        now = time.monotonic()
        if len(self._renewed) > 10_000:  # forget renewals of sessions that have surely expired
            self._renewed = {k: t for k, t in self._renewed.items() if now - t < self.idle}
        self._renewed[sid] = now
        return f"{sid}.{base64.urlsafe_b64encode(key).decode().rstrip('=')}", session

    async def get(self, cookie: str | None) -> WebSession | None:
        """The live session the cookie names, or None (unknown, expired, tampered with)."""
        if not cookie or cookie.count(".") != 1:
            return None
        sid, _, key_text = cookie.partition(".")
        try:
            key = base64.urlsafe_b64decode(key_text + "=" * (-len(key_text) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(key) != 32 or not sid:
            return None
        sealed = await self.state.kv_get(NS, sid)
        if sealed is None or len(sealed) < 13:
            return None
        try:
            data = json.loads(AESGCM(key).decrypt(sealed[:12], sealed[12:], sid.encode()))
        except (InvalidTag, ValueError):
            return None
        session = WebSession(sid, data["a"], data["l"], data["p"], data["c"], data["t"])
        if time.time() - session.created > self.lifetime:
            await self.end(sid)
            return None
        now = time.monotonic()
        if now - self._renewed.get(sid, 0.0) > min(_RENEW, self.idle / 4):
            await self.state.kv_set(NS, sid, sealed, ttl=self.idle)
            self._renewed[sid] = now
        return session

    async def end(self, sid: str) -> None:
        self._renewed.pop(sid, None)
        await self.state.kv_delete(NS, sid)
