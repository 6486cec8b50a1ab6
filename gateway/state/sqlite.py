"""SQLite state store for one node: a single connection owned by one worker thread, in WAL mode."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from . import Clock, Device, DeviceStatus, Session, SyncState, purge_periodically

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device (
    user_name TEXT NOT NULL, device_id TEXT NOT NULL, device_type TEXT NOT NULL,
    user_agent TEXT NOT NULL, model TEXT NOT NULL, os TEXT NOT NULL, policy_key INTEGER NOT NULL,
    status TEXT NOT NULL, first_seen REAL NOT NULL, last_sync REAL NOT NULL, info TEXT NOT NULL,
    PRIMARY KEY (user_name, device_id));
CREATE TABLE IF NOT EXISTS sync_state (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_name TEXT NOT NULL, device_id TEXT NOT NULL, collection_id TEXT NOT NULL,
    sync_key TEXT NOT NULL, blob BLOB NOT NULL, created REAL NOT NULL,
    UNIQUE (user_name, device_id, collection_id, sync_key));
CREATE TABLE IF NOT EXISTS session (
    id TEXT PRIMARY KEY, user_name TEXT NOT NULL, data TEXT NOT NULL, created REAL NOT NULL,
    last_seen REAL NOT NULL, idle_timeout REAL NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS session_expires ON session (expires);
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, expires REAL,
    PRIMARY KEY (ns, key));
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires);
"""

_DEVICE_COLS = ("user_name, device_id, device_type, user_agent, model, os, policy_key, status, "
                "first_seen, last_sync, info")
_SESSION_COLS = "id, user_name, data, created, last_seen, idle_timeout"
_SYNC_WHERE = "user_name = ? AND device_id = ? AND collection_id = ?"
_LIVE = "(expires IS NULL OR expires > ?)"


def _device(row: tuple) -> Device:
    return Device(*row[:7], DeviceStatus(row[7]), row[8], row[9], json.loads(row[10]))


def _session(row: tuple) -> Session:
    return Session(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5])


class SqliteStore:
    def __init__(self, path: str, *, clock: Clock = time.time, purge_interval: float | None = 300.0) -> None:
        self.path = path
        self._clock = clock
        self._purge_interval = purge_interval
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._purger: asyncio.Task[None] | None = None

    # sqlite3 connections may only be used from the thread that made them, and one
    # thread also serialises every statement of this node without an extra lock.
    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("state store is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._conn
        assert conn is not None
        # IMMEDIATE takes the write lock up front, so a read-then-write (kv_incr) cannot
        # interleave with another process that has the same file open.
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._call(self._tx, fn, *args)

    async def _read(self, sql: str, *args: Any) -> list[tuple]:
        return await self._call(lambda: self._conn.execute(sql, args).fetchall())

    def _open(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        # Switching a fresh file to WAL ignores the busy timeout: when two nodes open it at the same
        # moment, one sees "database is locked" at once. Retry for as long as the busy timeout would wait.
        for attempt in range(200):
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.05)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        self._conn = conn

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="casgate-sqlite")
        try:
            await self._call(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        if self._purge_interval:
            self._purger = asyncio.create_task(purge_periodically(self, self._purge_interval))

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            self._purger = None
        if self._executor is None:
            return
        if self._conn is not None:
            await self._call(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)
        self._executor = None

    # -- devices

    async def upsert_device(self, device: Device) -> Device:
        def run(conn: sqlite3.Connection) -> Device:
            conn.execute(
                f"INSERT INTO device ({_DEVICE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (user_name, device_id) DO UPDATE SET device_type = excluded.device_type, "
                "user_agent = excluded.user_agent, model = excluded.model, os = excluded.os, "
                "policy_key = excluded.policy_key, status = excluded.status, "
                "last_sync = excluded.last_sync, info = excluded.info",
                (device.user, device.device_id, device.device_type, device.user_agent, device.model,
                 device.os, device.policy_key, str(device.status), device.first_seen or self._clock(),
                 device.last_sync, json.dumps(device.info)))
            row = conn.execute(f"SELECT {_DEVICE_COLS} FROM device WHERE user_name = ? AND device_id = ?",
                               (device.user, device.device_id)).fetchone()
            return _device(row)

        return await self._write(run)

    async def get_device(self, user: str, device_id: str) -> Device | None:
        rows = await self._read(f"SELECT {_DEVICE_COLS} FROM device WHERE user_name = ? AND device_id = ?",
                                user, device_id)
        return _device(rows[0]) if rows else None

    async def list_devices(self, user: str) -> list[Device]:
        rows = await self._read(f"SELECT {_DEVICE_COLS} FROM device WHERE user_name = ? ORDER BY device_id", user)
        return [_device(r) for r in rows]

    async def delete_device(self, user: str, device_id: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM sync_state WHERE user_name = ? AND device_id = ?", (user, device_id))
            return conn.execute("DELETE FROM device WHERE user_name = ? AND device_id = ?",
                                (user, device_id)).rowcount > 0

        return await self._write(run)

    # -- sync state

    async def put_sync_state(self, user: str, device_id: str, collection_id: str, sync_key: str, blob: bytes,
                             *, keep: int | None = None) -> None:
        if keep is not None and keep < 0:
            raise ValueError("keep must be >= 0")

        def run(conn: sqlite3.Connection) -> None:
            # REPLACE deletes and reinserts, so a re-put key gets a fresh (highest) seq.
            conn.execute("INSERT OR REPLACE INTO sync_state (user_name, device_id, collection_id, sync_key, "
                         "blob, created) VALUES (?,?,?,?,?,?)",
                         (user, device_id, collection_id, sync_key, bytes(blob), self._clock()))
            if keep is not None:
                self._prune(conn, user, device_id, collection_id, keep)

        await self._write(run)

    async def get_sync_state(self, user: str, device_id: str, collection_id: str, sync_key: str) -> bytes | None:
        rows = await self._read(f"SELECT blob FROM sync_state WHERE {_SYNC_WHERE} AND sync_key = ?",
                                user, device_id, collection_id, sync_key)
        return bytes(rows[0][0]) if rows else None

    async def latest_sync_state(self, user: str, device_id: str, collection_id: str) -> SyncState | None:
        rows = await self._read(f"SELECT sync_key, blob, created FROM sync_state WHERE {_SYNC_WHERE} "
                                "ORDER BY seq DESC LIMIT 1", user, device_id, collection_id)
        if not rows:
            return None
        key, blob, created = rows[0]
        return SyncState(user, device_id, collection_id, key, bytes(blob), created)

    async def sync_keys(self, user: str, device_id: str, collection_id: str) -> list[str]:
        rows = await self._read(f"SELECT sync_key FROM sync_state WHERE {_SYNC_WHERE} ORDER BY seq DESC",
                                user, device_id, collection_id)
        return [r[0] for r in rows]

    @staticmethod
    def _prune(conn: sqlite3.Connection, user: str, device_id: str, collection_id: str, keep: int) -> int:
        where = (user, device_id, collection_id)
        return conn.execute(f"DELETE FROM sync_state WHERE {_SYNC_WHERE} AND seq NOT IN "
                            f"(SELECT seq FROM sync_state WHERE {_SYNC_WHERE} ORDER BY seq DESC LIMIT ?)",
                            where + where + (keep,)).rowcount

    async def prune_sync_states(self, user: str, device_id: str, collection_id: str, keep: int) -> int:
        if keep < 0:
            raise ValueError("keep must be >= 0")
        return await self._write(self._prune, user, device_id, collection_id, keep)

    async def delete_sync_state(self, user: str, device_id: str, collection_id: str | None = None,
                                sync_key: str | None = None) -> int:
        if sync_key is not None and collection_id is None:
            raise ValueError("sync_key given without collection_id")
        sql, args = "DELETE FROM sync_state WHERE user_name = ? AND device_id = ?", [user, device_id]
        for column, value in (("collection_id", collection_id), ("sync_key", sync_key)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        return await self._write(lambda conn: conn.execute(sql, args).rowcount)

    # -- sessions

    async def create_session(self, user: str, data: dict[str, Any], idle_timeout: float) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), user, dict(data), now, now, idle_timeout)
        await self._write(lambda conn: conn.execute(
            f"INSERT INTO session ({_SESSION_COLS}, expires) VALUES (?,?,?,?,?,?,?)",
            (session.id, user, json.dumps(session.data), now, now, idle_timeout, session.expires)))
        return session

    async def get_session(self, session_id: str) -> Session | None:
        rows = await self._read(f"SELECT {_SESSION_COLS} FROM session WHERE id = ? AND expires > ?",
                                session_id, self._clock())
        return _session(rows[0]) if rows else None

    async def touch_session(self, session_id: str, data: dict[str, Any] | None = None) -> Session | None:
        now = self._clock()
        encoded = None if data is None else json.dumps(data)

        def run(conn: sqlite3.Connection) -> Session | None:
            conn.execute("UPDATE session SET last_seen = ?, expires = ? + idle_timeout, data = COALESCE(?, data) "
                         "WHERE id = ? AND expires > ?", (now, now, encoded, session_id, now))
            row = conn.execute(f"SELECT {_SESSION_COLS} FROM session WHERE id = ? AND expires > ?",
                               (session_id, now)).fetchone()
            return _session(row) if row else None

        return await self._write(run)

    async def delete_session(self, session_id: str) -> bool:
        return await self._write(lambda conn: conn.execute("DELETE FROM session WHERE id = ?",
                                                           (session_id,)).rowcount > 0)

    # -- key/value

    async def kv_set(self, ns: str, key: str, value: bytes, ttl: float | None = None) -> None:
        expires = None if ttl is None else self._clock() + ttl
        await self._write(lambda conn: conn.execute(
            "INSERT INTO kv (ns, key, value, expires) VALUES (?,?,?,?) "
            "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
            (ns, key, bytes(value), expires)))

    async def kv_get(self, ns: str, key: str) -> bytes | None:
        rows = await self._read(f"SELECT value FROM kv WHERE ns = ? AND key = ? AND {_LIVE}", ns, key, self._clock())
        return bytes(rows[0][0]) if rows else None

    async def kv_delete(self, ns: str, key: str) -> bool:
        now = self._clock()
        return await self._write(lambda conn: conn.execute(
            f"DELETE FROM kv WHERE ns = ? AND key = ? AND {_LIVE}", (ns, key, now)).rowcount > 0)

    async def kv_incr(self, ns: str, key: str, ttl: float | None = None) -> int:
        now = self._clock()

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(f"SELECT value FROM kv WHERE ns = ? AND key = ? AND {_LIVE}", (ns, key, now)).fetchone()
            if row is None:
                count, expires = 1, (None if ttl is None else now + ttl)
                conn.execute("INSERT OR REPLACE INTO kv (ns, key, value, expires) VALUES (?,?,?,?)",
                             (ns, key, b"1", expires))
                return count
            try:
                count = int(bytes(row[0]).decode("ascii")) + 1
            except (UnicodeDecodeError, ValueError):
                raise ValueError(f"kv {ns}/{key} does not hold a counter") from None
            conn.execute("UPDATE kv SET value = ? WHERE ns = ? AND key = ?", (str(count).encode(), ns, key))
            return count

        return await self._write(run)

    async def purge_expired(self) -> int:
        now = self._clock()

        def run(conn: sqlite3.Connection) -> int:
            gone = conn.execute("DELETE FROM kv WHERE expires <= ?", (now,)).rowcount
            return gone + conn.execute("DELETE FROM session WHERE expires <= ?", (now,)).rowcount

        return await self._write(run)
