"""PostgreSQL state store for several nodes: an asyncpg pool, optionally confined to one schema."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from typing import Any

import asyncpg

from . import Clock, Device, DeviceStatus, Session, SyncState, purge_periodically

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device (
    user_name text NOT NULL, device_id text NOT NULL, device_type text NOT NULL,
    user_agent text NOT NULL, model text NOT NULL, os text NOT NULL, policy_key bigint NOT NULL,
    status text NOT NULL, first_seen double precision NOT NULL, last_sync double precision NOT NULL,
    info jsonb NOT NULL,
    PRIMARY KEY (user_name, device_id));
CREATE TABLE IF NOT EXISTS sync_state (
    seq bigserial NOT NULL,
    user_name text NOT NULL, device_id text NOT NULL, collection_id text NOT NULL,
    sync_key text NOT NULL, blob bytea NOT NULL, created double precision NOT NULL,
    PRIMARY KEY (user_name, device_id, collection_id, sync_key));
CREATE TABLE IF NOT EXISTS session (
    id text PRIMARY KEY, user_name text NOT NULL, data jsonb NOT NULL, created double precision NOT NULL,
    last_seen double precision NOT NULL, idle_timeout double precision NOT NULL,
    expires double precision NOT NULL);
CREATE INDEX IF NOT EXISTS session_expires ON session (expires);
CREATE TABLE IF NOT EXISTS kv (
    ns text NOT NULL, key text NOT NULL, value bytea NOT NULL, expires double precision,
    PRIMARY KEY (ns, key));
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires);
"""

# CREATE ... IF NOT EXISTS is not race-free in PostgreSQL (two nodes can both pass the
# check and one then fails on the catalog's unique index), so DDL runs under this lock.
_DDL_LOCK = int.from_bytes(b"casgate", "big")
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_DEVICE_COLS = ("user_name, device_id, device_type, user_agent, model, os, policy_key, status, "
                "first_seen, last_sync, info")
_SESSION_COLS = "id, user_name, data, created, last_seen, idle_timeout"
_SYNC_WHERE = "user_name = $1 AND device_id = $2 AND collection_id = $3"


def _device(row: asyncpg.Record) -> Device:
    return Device(*row[:7], DeviceStatus(row[7]), row[8], row[9], row[10])


def _session(row: asyncpg.Record) -> Session:
    return Session(*row)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PostgresStore:
    def __init__(self, dsn: str, *, schema: str = "", clock: Clock = time.time,
                 purge_interval: float | None = 300.0, min_size: int = 1, max_size: int = 10) -> None:
        if schema and not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"invalid schema name {schema!r}")
        self.dsn = dsn
        self.schema = schema
        self._clock = clock
        self._purge_interval = purge_interval
        self._pool_size = (min_size, max_size)
        self._pool: asyncpg.Pool | None = None
        self._purger: asyncio.Task[None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("state store is not started")
        return self._pool

    async def start(self) -> None:
        if self._pool is not None:
            return
        # DDL first on a lone connection: the pool's search_path must name a schema that exists.
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
                if self.schema:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                    await conn.execute(f'SET LOCAL search_path TO "{self.schema}"')
                await conn.execute(_SCHEMA)
        finally:
            await conn.close()
        settings = {"search_path": f'"{self.schema}"'} if self.schema else {}
        self._pool = await asyncpg.create_pool(self.dsn, min_size=self._pool_size[0], max_size=self._pool_size[1],
                                               server_settings=settings, init=_init_connection)
        if self._purge_interval:
            self._purger = asyncio.create_task(purge_periodically(self, self._purge_interval))

    async def close(self) -> None:
        if self._purger is not None:
            self._purger.cancel()
            self._purger = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # -- devices

    async def upsert_device(self, device: Device) -> Device:
        row = await self.pool.fetchrow(
            f"INSERT INTO device ({_DEVICE_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) "
            "ON CONFLICT (user_name, device_id) DO UPDATE SET device_type = excluded.device_type, "
            "user_agent = excluded.user_agent, model = excluded.model, os = excluded.os, "
            "policy_key = excluded.policy_key, status = excluded.status, "
            f"last_sync = excluded.last_sync, info = excluded.info RETURNING {_DEVICE_COLS}",
            device.user, device.device_id, device.device_type, device.user_agent, device.model, device.os,
            device.policy_key, str(device.status), device.first_seen or self._clock(), device.last_sync,
            device.info)
        return _device(row)

    async def get_device(self, user: str, device_id: str) -> Device | None:
        row = await self.pool.fetchrow(
            f"SELECT {_DEVICE_COLS} FROM device WHERE user_name = $1 AND device_id = $2", user, device_id)
        return _device(row) if row else None

    async def list_devices(self, user: str) -> list[Device]:
        rows = await self.pool.fetch(
            f"SELECT {_DEVICE_COLS} FROM device WHERE user_name = $1 ORDER BY device_id", user)
        return [_device(r) for r in rows]

    async def delete_device(self, user: str, device_id: str) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM sync_state WHERE user_name = $1 AND device_id = $2", user, device_id)
            status = await conn.execute("DELETE FROM device WHERE user_name = $1 AND device_id = $2",
                                        user, device_id)
        return status != "DELETE 0"

    # -- sync state

    async def put_sync_state(self, user: str, device_id: str, collection_id: str, sync_key: str, blob: bytes,
                             *, keep: int | None = None) -> None:
        if keep is not None and keep < 0:
            raise ValueError("keep must be >= 0")
        async with self.pool.acquire() as conn, conn.transaction():
            # excluded.seq holds the nextval drawn for the proposed row, so a re-put key moves to the top.
            await conn.execute(
                "INSERT INTO sync_state (user_name, device_id, collection_id, sync_key, blob, created) "
                "VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (user_name, device_id, collection_id, sync_key) "
                "DO UPDATE SET blob = excluded.blob, created = excluded.created, seq = excluded.seq",
                user, device_id, collection_id, sync_key, bytes(blob), self._clock())
            if keep is not None:
                await self._prune(conn, user, device_id, collection_id, keep)

    async def get_sync_state(self, user: str, device_id: str, collection_id: str, sync_key: str) -> bytes | None:
        return await self.pool.fetchval(f"SELECT blob FROM sync_state WHERE {_SYNC_WHERE} AND sync_key = $4",
                                        user, device_id, collection_id, sync_key)

    async def latest_sync_state(self, user: str, device_id: str, collection_id: str) -> SyncState | None:
        row = await self.pool.fetchrow(f"SELECT sync_key, blob, created FROM sync_state WHERE {_SYNC_WHERE} "
                                       "ORDER BY seq DESC LIMIT 1", user, device_id, collection_id)
        return SyncState(user, device_id, collection_id, *row) if row else None

    async def sync_keys(self, user: str, device_id: str, collection_id: str) -> list[str]:
        rows = await self.pool.fetch(f"SELECT sync_key FROM sync_state WHERE {_SYNC_WHERE} ORDER BY seq DESC",
                                     user, device_id, collection_id)
        return [r[0] for r in rows]

    @staticmethod
    async def _prune(conn: asyncpg.Connection, user: str, device_id: str, collection_id: str, keep: int) -> int:
        status = await conn.execute(
            f"DELETE FROM sync_state WHERE {_SYNC_WHERE} AND seq NOT IN "
            f"(SELECT seq FROM sync_state WHERE {_SYNC_WHERE} ORDER BY seq DESC LIMIT $4)",
            user, device_id, collection_id, keep)
        return int(status.split()[-1])

    async def prune_sync_states(self, user: str, device_id: str, collection_id: str, keep: int) -> int:
        if keep < 0:
            raise ValueError("keep must be >= 0")
        async with self.pool.acquire() as conn:
            return await self._prune(conn, user, device_id, collection_id, keep)

    async def delete_sync_state(self, user: str, device_id: str, collection_id: str | None = None,
                                sync_key: str | None = None) -> int:
        if sync_key is not None and collection_id is None:
            raise ValueError("sync_key given without collection_id")
        sql, args = "DELETE FROM sync_state WHERE user_name = $1 AND device_id = $2", [user, device_id]
        for column, value in (("collection_id", collection_id), ("sync_key", sync_key)):
            if value is not None:
                args.append(value)
                sql += f" AND {column} = ${len(args)}"
        status = await self.pool.execute(sql, *args)
        return int(status.split()[-1])

    # -- sessions

    async def create_session(self, user: str, data: dict[str, Any], idle_timeout: float) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), user, dict(data), now, now, idle_timeout)
        await self.pool.execute(f"INSERT INTO session ({_SESSION_COLS}, expires) VALUES ($1,$2,$3,$4,$5,$6,$7)",
                                session.id, user, session.data, now, now, idle_timeout, session.expires)
        return session

    async def get_session(self, session_id: str) -> Session | None:
        row = await self.pool.fetchrow(f"SELECT {_SESSION_COLS} FROM session WHERE id = $1 AND expires > $2",
                                       session_id, self._clock())
        return _session(row) if row else None

    async def touch_session(self, session_id: str, data: dict[str, Any] | None = None) -> Session | None:
        now = self._clock()
        row = await self.pool.fetchrow(
            "UPDATE session SET last_seen = $2, expires = $2 + idle_timeout, data = COALESCE($3, data) "
            f"WHERE id = $1 AND expires > $2 RETURNING {_SESSION_COLS}", session_id, now, data)
        return _session(row) if row else None

    async def delete_session(self, session_id: str) -> bool:
        return await self.pool.execute("DELETE FROM session WHERE id = $1", session_id) != "DELETE 0"

    # -- key/value

    async def kv_set(self, ns: str, key: str, value: bytes, ttl: float | None = None) -> None:
        expires = None if ttl is None else self._clock() + ttl
        await self.pool.execute(
            "INSERT INTO kv (ns, key, value, expires) VALUES ($1,$2,$3,$4) "
            "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
            ns, key, bytes(value), expires)

    async def kv_get(self, ns: str, key: str) -> bytes | None:
        return await self.pool.fetchval(
            "SELECT value FROM kv WHERE ns = $1 AND key = $2 AND (expires IS NULL OR expires > $3)",
            ns, key, self._clock())

    async def kv_delete(self, ns: str, key: str) -> bool:
        status = await self.pool.execute(
            "DELETE FROM kv WHERE ns = $1 AND key = $2 AND (expires IS NULL OR expires > $3)",
            ns, key, self._clock())
        return status != "DELETE 0"

    async def kv_incr(self, ns: str, key: str, ttl: float | None = None) -> int:
        now = self._clock()
        # One statement, so the row lock taken by ON CONFLICT makes concurrent nodes count exactly.
        # The counter is kept as ASCII digits so kv_get shows it like any other value.
        try:
            return await self.pool.fetchval(
                "INSERT INTO kv (ns, key, value, expires) VALUES ($1, $2, '\\x31'::bytea, $3) "
                "ON CONFLICT (ns, key) DO UPDATE SET "
                "value = CASE WHEN kv.expires <= $4 THEN excluded.value "
                "ELSE convert_to((convert_from(kv.value, 'UTF8')::bigint + 1)::text, 'UTF8') END, "
                "expires = CASE WHEN kv.expires <= $4 THEN excluded.expires ELSE kv.expires END "
                "RETURNING convert_from(value, 'UTF8')::bigint",
                ns, key, None if ttl is None else now + ttl, now)
        except asyncpg.DataError as exc:
            raise ValueError(f"kv {ns}/{key} does not hold a counter") from exc

    async def purge_expired(self) -> int:
        now = self._clock()
        async with self.pool.acquire() as conn, conn.transaction():
            gone = await conn.execute("DELETE FROM kv WHERE expires <= $1", now)
            gone_sessions = await conn.execute("DELETE FROM session WHERE expires <= $1", now)
        return int(gone.split()[-1]) + int(gone_sessions.split()[-1])
