"""Web sessions (gateway/owa/sessions.py) on a real SQLite state store: sealed, tamper-evident, expiring, and any
cookie a browser may send is refused quietly."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.owa.sessions import NS, WebSessions
from gateway.state.sqlite import SqliteStore


async def _store(tmp_path) -> SqliteStore:
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.start()
    return store


async def test_a_session_round_trips_and_any_change_to_its_cookie_or_record_ends_it(tmp_path):
    store = await _store(tmp_path)
    try:
        sessions = WebSessions(store, idle=60, lifetime=3600)
        cookie, made = await sessions.create("carol@example.test", "carol", "pa$$word")
        got = await sessions.get(cookie)
        assert got == made and got.csrf_ok(made.csrf) and not got.csrf_ok("x") and not got.csrf_ok(None)
        assert "pa$$word" not in repr(got)
        sealed = await store.kv_get(NS, made.id)
        assert b"pa$$word" not in sealed and b"carol" not in sealed
        sid, _, key = cookie.partition(".")
        flipped = key[:-2] + ("A" if key[-2] != "A" else "B") + key[-1]
        assert await sessions.get(f"{sid}.{flipped}") is None
        await store.kv_set(NS, made.id, sealed[:-1] + bytes([sealed[-1] ^ 1]), ttl=60)
        assert await sessions.get(cookie) is None  # the record was changed: AES-GCM says so
        cookie2, made2 = await sessions.create("carol@example.test", "carol", "pa$$word")
        await sessions.end(made2.id)
        assert await sessions.get(cookie2) is None
        old = WebSessions(store, idle=60, lifetime=0.0)
        cookie3, _ = await old.create("carol@example.test", "carol", "pa$$word")
        await asyncio.sleep(0.01)
        assert await old.get(cookie3) is None  # past its lifetime, however recently used
    finally:
        await store.close()


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=120))
def test_any_cookie_text_is_refused_without_error(tmp_path_factory, cookie):
    async def go():
        store = await _store(tmp_path_factory.mktemp("owa"))
        try:
            assert await WebSessions(store, idle=60, lifetime=3600).get(cookie) is None
        finally:
            await store.close()
    asyncio.run(go())
