"""Fixtures for the state tests: a movable clock and a store on each back end, isolated per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from gateway.state import StateStore, open_store

__all__ = ["state_clock", "state_opener", "state_store"]

PG_DSN = os.environ.get("CASGATE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def state_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
async def state_opener(
    request: pytest.FixtureRequest, tmp_path: Path, state_clock: FakeClock,
) -> AsyncIterator[Callable[..., Awaitable[StateStore]]]:
    """Opens and starts stores that all share one place (a file or a schema), like nodes of one site."""
    backend = request.param
    schema = f"casgate_test_{uuid.uuid4().hex}"
    place = {"path": str(tmp_path / "state.db")} if backend == "sqlite" else {"dsn": PG_DSN, "schema": schema}
    opened: list[StateStore] = []

    async def open_(**overrides: object) -> StateStore:
        options = {"clock": state_clock, "purge_interval": None, **place, **overrides}
        store = open_store(backend, **options)
        opened.append(store)
        await store.start()
        return store

    open_.backend = backend  # type: ignore[attr-defined]
    yield open_
    for store in opened:
        await store.close()
    if backend == "postgresql":
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture
async def state_store(state_opener: Callable[..., Awaitable[StateStore]]) -> StateStore:
    return await state_opener()
