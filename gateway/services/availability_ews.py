"""Free/busy of mailboxes on an existing Exchange: batched GetUserAvailability per back end, cached for cache_ttl."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from adapters.errors import BackendError
from adapters.interfaces import Credentials

from ..config import Config
from .backends import Backends
from .freebusy import BusyEvent, BusyType

if TYPE_CHECKING:  # the adapter (and exchangelib) load only when an EWS back end is first asked
    from adapters.ews import RemoteBusy

__all__ = ["EwsAvailability"]

# (back end, login, window) of one remote request; a mailbox's key adds its address.
_BatchKey = tuple[str, Credentials, dt.datetime, dt.datetime]
_Key = tuple[str, str, str, dt.datetime, dt.datetime]


def _event(r: RemoteBusy) -> BusyEvent:
    return BusyEvent(start=r.start, end=r.end, busy=BusyType(r.busy), subject=r.subject, location=r.location,
                     private=r.private, recurring=r.recurring, exception=r.exception, meeting=r.meeting,
                     reminder=r.reminder, uid=r.uid)


def _retrieve(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # an answer every waiter gave up on is not worth a "never retrieved" warning


class EwsAvailability:
    """Events of mailboxes routed to "ews" back ends, as the remote server reports them (unfiltered).

    Mailboxes asked for in the same turn of the event loop (one lookup's) that
    share a back end, login and window go out as one request, as Exchange's own
    availability service batches its proxy calls. An EWS server has no ctag to
    validate a cache against, so answers are reused for availability.cache_ttl
    only. Errors are those of ``adapters.errors``, per mailbox.
    """

    def __init__(self, config: Config, backends: Backends, clock: Callable[[], float], cache_size: int) -> None:
        self._ttl = config.availability.cache_ttl
        self._backends = backends
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[_Key, tuple[float, list[BusyEvent]]] = OrderedDict()
        self._waiting: dict[_Key, asyncio.Future[list[BusyEvent]]] = {}  # queued or on the wire
        self._batches: dict[_BatchKey, list[str]] = {}  # queued, not yet sent
        self._running: set[asyncio.Task[None]] = set()

    async def events(self, name: str, login: Credentials, address: str, start: dt.datetime,
                     end: dt.datetime) -> list[BusyEvent]:
        """``address``'s events in [start, end) from EWS back end ``name``, read as ``login``.

        Raises NotFound (the server knows no such mailbox), PermissionDenied (it
        shares nothing with ``login``), AuthenticationFailed or BackendUnavailable.
        """
        key = (name, login.username, address.lower(), start, end)
        hit = self._cache.get(key)
        if hit is not None and self._clock() - hit[0] < self._ttl:
            self._cache.move_to_end(key)
            return hit[1]
        fut = self._waiting.get(key)
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self._waiting[key] = loop.create_future()
            fut.add_done_callback(_retrieve)
            batch_key = (name, login, start, end)
            if batch_key not in self._batches:
                # call_soon runs after every task already scheduled, so the other mailboxes of the
                # same lookup join this batch before it leaves.
                self._batches[batch_key] = []
                loop.call_soon(self._send, batch_key)
            self._batches[batch_key].append(address)
        # A waiter that times out must not cancel the answer others still wait for.
        return await asyncio.shield(fut)

    def _send(self, batch_key: _BatchKey) -> None:
        addresses = self._batches.pop(batch_key)
        task = asyncio.get_running_loop().create_task(self._ask(batch_key, addresses))
        self._running.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._running.discard)

    async def _ask(self, batch_key: _BatchKey, addresses: list[str]) -> None:
        name, login, start, end = batch_key
        keys = [(name, login.username, a.lower(), start, end) for a in addresses]
        try:
            try:
                client = self._backends.ews_freebusy(name, login)
                answers: list[list[RemoteBusy] | BaseException] = list(
                    await client.busy_events(addresses, start, end))
            except (BackendError, ValueError) as exc:
                answers = [exc] * len(addresses)
            for key, answer in zip(keys, answers):
                fut = self._waiting.pop(key, None)
                if fut is None or fut.done():
                    continue
                if isinstance(answer, BaseException):
                    fut.set_exception(answer)
                else:
                    events = [_event(r) for r in answer]
                    self._store(key, events)
                    fut.set_result(events)
        finally:
            # Whatever went wrong above (or cancelled us), no waiter may hang on.
            for key in keys:
                fut = self._waiting.pop(key, None)
                if fut is not None and not fut.done():
                    fut.set_exception(BackendError("the free/busy request to the EWS back end failed"))

    def _store(self, key: _Key, events: list[BusyEvent]) -> None:
        self._cache[key] = (self._clock(), events)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)  # least recently used
