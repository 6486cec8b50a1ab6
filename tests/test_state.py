"""State store behaviour, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures_state import FakeClock
from gateway.state import Device, DeviceStatus, StateStore, open_store

U, D = "alice@example.test", "ANDROIDC0FFEE"


def phone(**changes: object) -> Device:
    base = Device(U, D, device_type="Android", user_agent="Android-Mail/2024", model="Pixel 8", os="Android 14",
                  policy_key=0, status=DeviceStatus.ALLOWED, last_sync=0.0,
                  info={"imei": "3569", "folders": ["Inbox", "Calendar"], "nested": {"n": 1}})
    return dataclasses.replace(base, **changes)


# -- lifecycle


async def test_store_satisfies_protocol(state_store: StateStore) -> None:
    assert isinstance(state_store, StateStore)


async def test_start_is_idempotent_and_safe_for_two_nodes_at_once(state_opener) -> None:
    a, b = await asyncio.gather(state_opener(), state_opener())
    await a.start()
    await a.kv_set("ns", "k", b"from-a")
    assert await b.kv_get("ns", "k") == b"from-a"


async def test_data_survives_close_and_reopen(state_opener, state_clock: FakeClock) -> None:
    first = await state_opener()
    await first.upsert_device(phone(policy_key=7))
    await first.put_sync_state(U, D, "inbox", "1", b"state-1")
    session = await first.create_session(U, {"owa": True}, idle_timeout=600)
    await first.kv_set("lockout", U, b"x")
    await first.close()
    await first.close()  # a second close is harmless

    second = await state_opener()
    device = await second.get_device(U, D)
    assert device is not None and device.policy_key == 7 and device.info == phone().info
    assert await second.get_sync_state(U, D, "inbox", "1") == b"state-1"
    assert await second.get_session(session.id) == session
    assert await second.kv_get("lockout", U) == b"x"


async def test_unstarted_store_refuses_work() -> None:
    store = open_store("sqlite")
    with pytest.raises(RuntimeError):
        await store.kv_get("ns", "k")


def test_open_store_rejects_unknown_backend_and_missing_dsn() -> None:
    with pytest.raises(ValueError, match="unknown state backend"):
        open_store("redis")
    with pytest.raises(ValueError, match="dsn"):
        open_store("postgresql")
    with pytest.raises(ValueError, match="schema"):
        open_store("postgresql", dsn="postgresql://x@127.0.0.1/test", schema='bad"; drop')


async def test_sqlite_in_memory_works() -> None:
    store = open_store("sqlite", path=":memory:", purge_interval=None)
    await store.start()
    try:
        await store.upsert_device(phone())
        assert [d.device_id for d in await store.list_devices(U)] == [D]
    finally:
        await store.close()


async def test_sqlite_file_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    store = open_store("sqlite", path=str(path), purge_interval=None)
    await store.start()
    try:
        await store.kv_set("ns", "k", b"v")
        with sqlite3.connect(path) as peek:
            assert peek.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        await store.close()


# -- devices


async def test_device_round_trip(state_store: StateStore, state_clock: FakeClock) -> None:
    stored = await state_store.upsert_device(phone(last_sync=state_clock() - 5))
    assert stored == phone(first_seen=state_clock(), last_sync=state_clock() - 5)
    assert await state_store.get_device(U, D) == stored
    assert isinstance(stored.status, DeviceStatus)
    assert await state_store.get_device(U, "OTHER") is None
    assert await state_store.get_device("bob@example.test", D) is None


async def test_device_upsert_updates_fields_but_keeps_first_seen(state_store: StateStore,
                                                                 state_clock: FakeClock) -> None:
    first = await state_store.upsert_device(phone())
    state_clock.advance(3600)
    updated = await state_store.upsert_device(phone(policy_key=3141592653, status=DeviceStatus.WIPE_PENDING,
                                                    os="Android 15", info={"wipe": "requested"},
                                                    first_seen=state_clock(), last_sync=state_clock()))
    assert updated.first_seen == first.first_seen
    assert (updated.policy_key, updated.status, updated.os) == (3141592653, "wipe_pending", "Android 15")
    assert updated.info == {"wipe": "requested"} and updated.last_sync == state_clock()
    assert await state_store.get_device(U, D) == updated


async def test_list_and_delete_devices(state_store: StateStore) -> None:
    for device_id in ("ZZZ", "AAA", "MMM"):
        await state_store.upsert_device(phone(device_id=device_id))
    await state_store.upsert_device(phone(user="bob@example.test"))
    assert [d.device_id for d in await state_store.list_devices(U)] == ["AAA", "MMM", "ZZZ"]
    assert await state_store.list_devices("nobody@example.test") == []

    assert await state_store.delete_device(U, "MMM") is True
    assert await state_store.delete_device(U, "MMM") is False
    assert [d.device_id for d in await state_store.list_devices(U)] == ["AAA", "ZZZ"]
    assert [d.user for d in await state_store.list_devices("bob@example.test")] == ["bob@example.test"]


async def test_deleting_a_device_drops_its_sync_state_only(state_store: StateStore) -> None:
    await state_store.upsert_device(phone())
    await state_store.put_sync_state(U, D, "inbox", "1", b"a")
    await state_store.put_sync_state(U, "OTHER", "inbox", "1", b"b")
    await state_store.delete_device(U, D)
    assert await state_store.latest_sync_state(U, D, "inbox") is None
    assert await state_store.get_sync_state(U, "OTHER", "inbox", "1") == b"b"


# -- sync state


async def test_sync_state_round_trip_and_latest(state_store: StateStore, state_clock: FakeClock) -> None:
    assert await state_store.latest_sync_state(U, D, "inbox") is None
    await state_store.put_sync_state(U, D, "inbox", "{abc}1", b"\x00\x01first")
    state_clock.advance(1)
    await state_store.put_sync_state(U, D, "inbox", "{abc}2", b"\xffsecond")
    assert await state_store.get_sync_state(U, D, "inbox", "{abc}1") == b"\x00\x01first"
    assert await state_store.get_sync_state(U, D, "inbox", "{abc}3") is None
    assert await state_store.get_sync_state(U, D, "calendar", "{abc}1") is None
    latest = await state_store.latest_sync_state(U, D, "inbox")
    assert latest is not None
    assert (latest.sync_key, latest.blob, latest.created) == ("{abc}2", b"\xffsecond", state_clock())


async def test_re_putting_a_key_makes_it_newest(state_store: StateStore) -> None:
    # A retried request rewrites the state for the key the server already handed out.
    for key in ("1", "2", "3"):
        await state_store.put_sync_state(U, D, "inbox", key, key.encode())
    await state_store.put_sync_state(U, D, "inbox", "2", b"rewritten")
    assert await state_store.sync_keys(U, D, "inbox") == ["2", "3", "1"]
    latest = await state_store.latest_sync_state(U, D, "inbox")
    assert latest is not None and latest.blob == b"rewritten"


async def test_prune_keeps_newest_n_per_collection(state_store: StateStore) -> None:
    for n in range(1, 8):
        await state_store.put_sync_state(U, D, "inbox", str(n), b"i%d" % n)
        await state_store.put_sync_state(U, D, "contacts", str(n), b"c%d" % n)
    assert await state_store.prune_sync_states(U, D, "inbox", keep=2) == 5
    assert await state_store.sync_keys(U, D, "inbox") == ["7", "6"]
    assert await state_store.get_sync_state(U, D, "inbox", "6") == b"i6"
    assert await state_store.get_sync_state(U, D, "inbox", "5") is None
    assert len(await state_store.sync_keys(U, D, "contacts")) == 7
    assert await state_store.prune_sync_states(U, D, "inbox", keep=2) == 0
    with pytest.raises(ValueError):
        await state_store.prune_sync_states(U, D, "inbox", keep=-1)


async def test_put_with_keep_prunes_as_it_goes(state_store: StateStore) -> None:
    for n in range(1, 6):
        await state_store.put_sync_state(U, D, "inbox", str(n), b"x", keep=2)
        assert await state_store.sync_keys(U, D, "inbox") == [str(k) for k in range(n, max(n - 2, 0), -1)]


async def test_delete_sync_state_by_key_collection_and_device(state_store: StateStore) -> None:
    for coll in ("inbox", "calendar"):
        for key in ("1", "2"):
            await state_store.put_sync_state(U, D, coll, key, b"x")
    await state_store.put_sync_state(U, "OTHER", "inbox", "1", b"x")
    assert await state_store.delete_sync_state(U, D, "inbox", "1") == 1
    assert await state_store.sync_keys(U, D, "inbox") == ["2"]
    assert await state_store.delete_sync_state(U, D, "calendar") == 2
    assert await state_store.sync_keys(U, D, "calendar") == []
    assert await state_store.delete_sync_state(U, D) == 1
    assert await state_store.sync_keys(U, "OTHER", "inbox") == ["1"]
    with pytest.raises(ValueError):
        await state_store.delete_sync_state(U, D, None, "1")


# -- sessions


async def test_session_round_trip_touch_and_delete(state_store: StateStore, state_clock: FakeClock) -> None:
    session = await state_store.create_session(U, {"canary": "c1", "tz": "UTC"}, idle_timeout=60)
    assert len(session.id) >= 40
    assert await state_store.get_session(session.id) == session
    assert session.expires == state_clock() + 60

    state_clock.advance(50)
    touched = await state_store.touch_session(session.id)
    assert touched is not None and touched.last_seen == state_clock() and touched.data == session.data
    state_clock.advance(50)  # 100s after creation, but only 50s idle
    assert await state_store.get_session(session.id) == touched

    replaced = await state_store.touch_session(session.id, {"canary": "c2"})
    assert replaced is not None and replaced.data == {"canary": "c2"}
    assert (await state_store.get_session(session.id)).data == {"canary": "c2"}

    assert await state_store.delete_session(session.id) is True
    assert await state_store.delete_session(session.id) is False
    assert await state_store.get_session(session.id) is None


async def test_session_expires_when_idle(state_store: StateStore, state_clock: FakeClock) -> None:
    session = await state_store.create_session(U, {}, idle_timeout=30)
    other = await state_store.create_session(U, {}, idle_timeout=30)
    assert session.id != other.id
    state_clock.advance(30)
    assert await state_store.get_session(session.id) is None
    assert await state_store.touch_session(session.id) is None  # no resurrection once expired
    assert await state_store.get_session("no-such-session") is None


# -- key/value


async def test_kv_set_get_delete_and_namespaces(state_store: StateStore) -> None:
    assert await state_store.kv_get("a", "k") is None
    await state_store.kv_set("a", "k", b"one")
    await state_store.kv_set("b", "k", b"two")
    await state_store.kv_set("a", "k", b"three")
    assert await state_store.kv_get("a", "k") == b"three"
    assert await state_store.kv_get("b", "k") == b"two"
    assert await state_store.kv_delete("a", "k") is True
    assert await state_store.kv_delete("a", "k") is False
    assert await state_store.kv_get("a", "k") is None
    assert await state_store.kv_get("b", "k") == b"two"


async def test_kv_ttl_expiry(state_store: StateStore, state_clock: FakeClock) -> None:
    await state_store.kv_set("ns", "short", b"s", ttl=10)
    await state_store.kv_set("ns", "forever", b"f", ttl=None)
    state_clock.advance(9.5)
    assert await state_store.kv_get("ns", "short") == b"s"
    state_clock.advance(0.5)
    assert await state_store.kv_get("ns", "short") is None
    assert await state_store.kv_delete("ns", "short") is False
    state_clock.advance(10**6)
    assert await state_store.kv_get("ns", "forever") == b"f"
    await state_store.kv_set("ns", "short", b"again", ttl=10)  # overwriting an expired entry revives it
    assert await state_store.kv_get("ns", "short") == b"again"


async def test_kv_ttl_expiry_on_real_clock(state_opener) -> None:
    import time

    store = await state_opener(clock=time.time)
    await store.kv_set("ns", "k", b"v", ttl=0.05)
    assert await store.kv_get("ns", "k") == b"v"
    await asyncio.sleep(0.1)
    assert await store.kv_get("ns", "k") is None


async def test_kv_incr_counts_within_a_fixed_window(state_store: StateStore, state_clock: FakeClock) -> None:
    assert [await state_store.kv_incr("authfail", U, ttl=60) for _ in range(3)] == [1, 2, 3]
    assert await state_store.kv_get("authfail", U) == b"3"
    state_clock.advance(59)
    assert await state_store.kv_incr("authfail", U, ttl=60) == 4  # does not push the deadline out
    state_clock.advance(1)
    assert await state_store.kv_get("authfail", U) is None
    assert await state_store.kv_incr("authfail", U, ttl=60) == 1
    assert await state_store.kv_incr("authfail", "bob", ttl=None) == 1
    state_clock.advance(10**6)
    assert await state_store.kv_incr("authfail", "bob") == 2


async def test_kv_incr_on_a_non_counter_is_an_error(state_store: StateStore) -> None:
    await state_store.kv_set("ns", "blob", b"\xff\xfe")
    await state_store.kv_set("ns", "word", b"hello")
    for key in ("blob", "word"):
        with pytest.raises(ValueError):
            await state_store.kv_incr("ns", key)
    assert await state_store.kv_get("ns", "word") == b"hello"


async def test_concurrent_kv_incr_is_exact(state_store: StateStore) -> None:
    results = await asyncio.gather(*(state_store.kv_incr("authfail", U, ttl=300) for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    assert await state_store.kv_get("authfail", U) == b"200"


async def test_concurrent_kv_incr_across_two_nodes_is_exact(state_opener) -> None:
    a, b = await state_opener(), await state_opener()
    results = await asyncio.gather(*(node.kv_incr("authfail", U, ttl=300) for _ in range(60) for node in (a, b)))
    assert sorted(results) == list(range(1, 121))
    assert await b.kv_get("authfail", U) == b"120"


async def test_purge_expired_removes_only_dead_rows(state_store: StateStore, state_clock: FakeClock) -> None:
    await state_store.kv_set("ns", "dead", b"x", ttl=5)
    await state_store.kv_incr("ns", "dead-counter", ttl=5)
    await state_store.kv_set("ns", "alive", b"y", ttl=500)
    await state_store.kv_set("ns", "forever", b"z")
    dead_session = await state_store.create_session(U, {}, idle_timeout=5)
    live_session = await state_store.create_session(U, {}, idle_timeout=500)
    state_clock.advance(10)
    assert await state_store.purge_expired() == 3
    assert await state_store.purge_expired() == 0
    assert await state_store.kv_get("ns", "alive") == b"y"
    assert await state_store.kv_get("ns", "forever") == b"z"
    assert await state_store.get_session(live_session.id) is not None
    assert await state_store.get_session(dead_session.id) is None


async def test_background_purge_runs_on_its_own(state_opener, state_clock: FakeClock) -> None:
    store = await state_opener(purge_interval=0.02)
    await store.kv_set("ns", "dead", b"x", ttl=1)
    await store.create_session(U, {}, idle_timeout=1)
    state_clock.advance(2)
    await asyncio.sleep(0.3)  # fifteen purge intervals
    # Had the background task not run, this second node would find the two dead rows itself.
    observer = await state_opener()
    assert await observer.purge_expired() == 0


# Keys are text a database can hold: no NUL (PostgreSQL refuses it) and no lone surrogates.
KEY_CHARS = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ns=st.text(KEY_CHARS, max_size=20), key=st.text(KEY_CHARS, max_size=200),
       value=st.binary(max_size=2048))
async def test_kv_round_trips_any_bytes_and_keys(state_store: StateStore, ns: str, key: str, value: bytes) -> None:
    await state_store.kv_set(ns, key, value)
    assert await state_store.kv_get(ns, key) == value
    assert await state_store.kv_delete(ns, key) is True
    assert await state_store.kv_get(ns, key) is None
