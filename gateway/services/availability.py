"""The Availability service: whose calendar, who may see what, every mailbox at once, cached by ctag or TTL."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, urljoin
from zoneinfo import ZoneInfo

from adapters.dav import CalDavCalendarStore
from adapters.errors import AuthenticationFailed, BackendError, NotFound, PermissionDenied
from adapters.interfaces import Credentials, UserRecord

from ..config import Config, ConfigError
from .availability_ews import EwsAvailability
from .backends import Backends
from .directory import StaticDirectory
from .freebusy import BusyEvent, WorkingHours, events_to_busy, to_utc, working_hours_from_config

__all__ = ["AccessLevel", "AvailabilityError", "AvailabilityService", "ERROR_KINDS", "MailboxAvailability"]

log = logging.getLogger(__name__)
ERROR_KINDS = frozenset({"not-found", "unavailable", "timeout", "no-calendar-backend", "denied"})
# The server's time-range filter reads dates and floating times as UTC; a day
# more on each side keeps events of far-off zones, events_to_busy trims exactly.
_SLACK = dt.timedelta(days=1)
#: Blocking DAV calls one CalDAV back end (one service login) runs at once, each on a thread of its
#: own pool over the same keep-alive client; a mailbox's timeout starts when it gets one of them.
DAV_THREADS = 16


class AccessLevel(StrEnum):
    """What a requester may see of someone else's calendar."""

    NONE = "none"
    AVAILABILITY = "availability"
    LIMITED = "limited"


class AvailabilityError(Exception):
    """One mailbox could not be answered; ``kind`` is one of ERROR_KINDS, which front ends map."""

    def __init__(self, kind: str, message: str = "") -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown availability error kind {kind!r}")
        super().__init__(message or kind)
        self.kind = kind
        self.message = message or kind


@dataclass(frozen=True)
class MailboxAvailability:
    """One mailbox's answer: its occurrences in the window, as much detail as the requester may see.

    The requester's own mailbox reports LIMITED with every detail, private ones included.
    ``events`` is immutable and, while a calendar stays cached, the same object on every
    answer at one access level, so front ends may memoise what they render from it.
    """

    address: str
    events: tuple[BusyEvent, ...]
    access: AccessLevel
    working_hours: WorkingHours


@dataclass
class _Cached:
    tags: tuple[tuple[str, str], ...]
    events: tuple[BusyEvent, ...]
    stored: float  # when fetched; cache_ttl counts from here
    checked: float  # when its ctags were last found unchanged (or fetched); revalidate_after counts from here


class _Dav:
    """One CalDAV back end as read with one login: a started store, its threads, and their slots."""

    def __init__(self, store: CalDavCalendarStore, executor: ThreadPoolExecutor) -> None:
        self.store = store
        self.executor = executor
        self.slots = asyncio.Semaphore(DAV_THREADS)
        self.store_started = False


@dataclass
class _Fetch:
    """A running fetch; ``started`` resolves when it got a DAV slot (or ended without one)."""

    task: asyncio.Task[list[BusyEvent]]
    started: asyncio.Future[None]


def _hide(ev: BusyEvent) -> BusyEvent:
    # The UID goes too: it can name hosts or people as much as a subject does.
    return dataclasses.replace(ev, subject=None, location=None, uid="")


def _dav_timeout(backend_timeout: float, lookup_timeout: float) -> float:
    """The socket timeout of a DAV store serving lookups bounded by ``lookup_timeout``.

    A little longer than the lookup's own: equal clocks raced, and under load the thread's socket
    timeout could fire first and report a slow calendar as "unavailable" instead of "timeout".
    """
    return min(backend_timeout, lookup_timeout + 1.0)


class AvailabilityService:
    """Free/busy of many mailboxes for one requester; calendars are read with each back end's service account.

    Without ``service_login`` on a CalDAV back end the service holds no
    credentials for its users: other users' mailboxes there answer
    "unavailable", and the requester's own only when ``credentials`` are given.

    Each CalDAV back end is read through one client per service login, kept
    (with its connections) until ``close()``, which whoever made the service
    awaits when done with it.
    """

    def __init__(self, config: Config, directory: StaticDirectory, backends: Backends,
                 clock: Callable[[], float] = time.monotonic, cache_size: int = 2000) -> None:
        self._config = config
        self._directory = directory
        self._backends = backends
        self._clock = clock
        self._cache_size = cache_size
        self._filtered_copies: dict[tuple[int, AccessLevel], tuple[Sequence[BusyEvent], tuple[BusyEvent, ...]]] = {}
        self._cache: OrderedDict[tuple, _Cached] = OrderedDict()
        self._inflight: dict[tuple, _Fetch] = {}
        self._dav: dict[tuple, _Dav] = {}
        self._stack = AsyncExitStack()
        self._closed = False
        av = config.availability
        self._working_hours = working_hours_from_config(av)
        self._floating_tz = ZoneInfo(av.time_zone)
        self._access = {address.lower(): AccessLevel(level) for address, level in av.user_access.items()}
        self._ews = EwsAvailability(config, backends, clock, cache_size)

    async def close(self) -> None:
        """Close the kept CalDAV clients and stop their threads (a DAV call still running finishes first)."""
        self._closed = True
        davs, self._dav = list(self._dav.values()), {}
        await self._stack.aclose()
        for dav in davs:
            dav.executor.shutdown(wait=False, cancel_futures=True)

    def access_for(self, requester: UserRecord | None, owner: UserRecord) -> AccessLevel:
        """What ``requester`` (None: anonymous) may see of ``owner``'s calendar; owners see all (LIMITED)."""
        if requester is not None and requester.address.lower() == owner.address.lower():
            return AccessLevel.LIMITED
        return self._access.get(owner.address.lower(), AccessLevel(self._config.availability.default_access))

    async def lookup(self, requester: UserRecord | None, addresses: Sequence[str], start: dt.datetime,
                     end: dt.datetime, *, credentials: Credentials | None = None
                     ) -> list[MailboxAvailability | AvailabilityError]:
        """One answer per address, in order, fetched concurrently, each within availability.timeout.

        Naive datetimes are UTC; ValueError when the window is empty. Request
        limits (mailboxes, days) are the front end's to check.
        """
        start, end = to_utc(start), to_utc(end)
        if end <= start:
            raise ValueError("the time window ends before it starts")
        return list(await asyncio.gather(*(self._bounded(requester, a, start, end, credentials)
                                           for a in addresses)))

    async def freebusy_for(self, requester: UserRecord | None, address: str, start: dt.datetime,
                           end: dt.datetime, *, credentials: Credentials | None = None) -> MailboxAvailability:
        """One mailbox for the iCalendar free/busy URL; raises AvailabilityError, "denied" for access none."""
        (answer,) = await self.lookup(requester, [address], start, end, credentials=credentials)
        if isinstance(answer, AvailabilityError):
            raise answer
        if answer.access is AccessLevel.NONE:
            raise AvailabilityError("denied", f"{answer.address} does not share free/busy")
        return answer

    async def _bounded(self, requester: UserRecord | None, address: str, start: dt.datetime,
                       end: dt.datetime, credentials: Credentials | None) -> MailboxAvailability | AvailabilityError:
        timeout = self._config.availability.timeout
        try:
            # Counted from now, but a CalDAV mailbox stops its clock while it waits for a free DAV
            # thread (behind the other mailboxes of a big request) and restarts it once it has one.
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + timeout) as timer:
                return await self._one(requester, address, start, end, credentials, timer)
        except AvailabilityError as exc:
            return exc
        except TimeoutError:
            return AvailabilityError("timeout", f"{address}: the calendar did not answer within {timeout:g} s")

    async def _one(self, requester: UserRecord | None, address: str, start: dt.datetime, end: dt.datetime,
                   credentials: Credentials | None, timer: asyncio.Timeout | None = None) -> MailboxAvailability:
        owner = self._directory.find(address)
        if owner is None:
            raise AvailabilityError("not-found", f"{address}: no such mailbox")
        own = requester is not None and requester.address.lower() == owner.address.lower()
        access = self.access_for(requester, owner)
        if access is AccessLevel.NONE:
            return MailboxAvailability(owner.address, (), access, self._working_hours)
        if name := self._directory.route(owner, "caldav"):
            events = await self._shared(owner, name, self._login(name, credentials if own else None), start, end,
                                        timer)
        elif name := self._directory.route(owner, "ews"):
            found = await self._remote(owner, name, self._login(name, credentials if own else None), start, end)
            if found is None:
                return MailboxAvailability(owner.address, (), AccessLevel.NONE, self._working_hours)
            events = found
        else:
            raise AvailabilityError("no-calendar-backend", f"{owner.address} has no calendar")
        if not own:
            events = self._filtered(events, access)
        return MailboxAvailability(owner.address, tuple(events), access, self._working_hours)

    def _filtered(self, events: Sequence[BusyEvent], access: AccessLevel) -> tuple[BusyEvent, ...]:
        """``events`` as ``access`` lets others see them; one filtered copy per cached list and level.

        A scheduling assistant asks for the same cached calendars again and again:
        hiding details anew each time would rebuild thousands of events per request.
        """
        key = (id(events), access)
        hit = self._filtered_copies.get(key)
        if hit is not None and hit[0] is events:
            return hit[1]
        shown = tuple(ev if access is AccessLevel.LIMITED and not ev.private else _hide(ev) for ev in events)
        if len(self._filtered_copies) >= 4 * self._cache_size:
            self._filtered_copies.clear()  # entries of lists no longer cached are dropped wholesale
        self._filtered_copies[key] = (events, shown)
        return shown

    def _login(self, name: str, own_credentials: Credentials | None) -> Credentials:
        b = self._backends.get(name)
        if b.service_login:
            try:
                return Credentials(b.service_login, b.service_secret(self._config))
            except ConfigError as exc:
                log.error("free/busy service account of back end %s unusable: %s", name, exc)
                raise AvailabilityError("unavailable", "free/busy is not set up for this calendar") from None
        if own_credentials is not None:
            return own_credentials
        log.warning("back end %s has no service_login: free/busy of its users cannot be read", name)
        raise AvailabilityError("unavailable", "free/busy is not set up for this calendar")

    async def _remote(self, owner: UserRecord, name: str, login: Credentials, start: dt.datetime,
                      end: dt.datetime) -> list[BusyEvent] | None:
        """The events an existing Exchange reports for ``owner``; None when it shares nothing with our account."""
        try:
            return await self._ews.events(name, login, owner.address, start, end)
        except NotFound:
            raise AvailabilityError("not-found", f"{owner.address}: no such mailbox on its Exchange") from None
        except PermissionDenied:
            return None  # passed on as Exchange says it: a view of type None
        except AuthenticationFailed as exc:
            log.warning("back end %s refused %s reading %s's free/busy: %s", name, login.username, owner.address, exc)
            raise AvailabilityError("unavailable", "the Exchange server refused the free/busy account") from None
        except BackendError as exc:
            log.info("free/busy of %s unavailable: %s", owner.address, exc)
            raise AvailabilityError("unavailable", f"{owner.address}: the Exchange server is unavailable") from None

    async def _shared(self, owner: UserRecord, name: str, login: Credentials, start: dt.datetime,
                      end: dt.datetime, timer: asyncio.Timeout | None = None) -> list[BusyEvent]:
        """Join a running fetch of the same calendar and window, or start one."""
        key = (owner.address, start, end, login.username)
        fetch = self._inflight.get(key)
        if fetch is None:
            loop = asyncio.get_running_loop()
            started = loop.create_future()
            task = loop.create_task(self._fetch(owner, name, login, start, end, started))
            fetch = self._inflight[key] = _Fetch(task, started)
            task.add_done_callback(functools.partial(self._landed, key, fetch))
        if timer is not None and not fetch.started.done():
            loop = asyncio.get_running_loop()
            timer.reschedule(None)  # queued behind other mailboxes: not this calendar's slowness
            await asyncio.shield(fetch.started)
            timer.reschedule(loop.time() + self._config.availability.timeout)
        # A waiter that times out must not cancel the fetch others still wait for.
        return await asyncio.shield(fetch.task)

    def _landed(self, key: tuple, fetch: _Fetch, task: asyncio.Task) -> None:
        if self._inflight.get(key) is fetch:
            del self._inflight[key]
        if not fetch.started.done():
            fetch.started.set_result(None)
        if not task.cancelled():
            task.exception()  # retrieved here, so a fetch every waiter gave up on is not logged as lost

    def _dav_for(self, name: str, login: Credentials) -> _Dav:
        """The kept store of back end ``name`` for ``login``, started on first use."""
        key = (name, login.username, login.password)
        dav = self._dav.get(key)
        if dav is None:
            if self._closed:
                raise AvailabilityError("unavailable", "the free/busy service is shutting down")
            b = self._backends.get(name)
            ca = b.ca_file or self._config.tls.ca_file
            executor = ThreadPoolExecutor(DAV_THREADS, thread_name_prefix=f"freebusy-{name}")
            # The blocking DAV call cannot be cancelled; its own timeout frees the thread soon after ours fires.
            store = CalDavCalendarStore(b.url, login, self._config.path(ca) if ca else None,
                                        _dav_timeout(b.timeout, self._config.availability.timeout), executor,
                                        DAV_THREADS)
            dav = self._dav[key] = _Dav(store, executor)
        return dav

    async def _fetch(self, owner: UserRecord, name: str, login: Credentials, start: dt.datetime,
                     end: dt.datetime, started: asyncio.Future[None] | None = None) -> list[BusyEvent]:
        b = self._backends.get(name)
        base = b.url if b.url.endswith("/") else b.url + "/"
        # Quoted (but for "@", as the template's docs show it) so no login can climb to another path.
        home = urljoin(base, b.home_template.format(login=quote(owner.login, safe="@"),
                                                    address=quote(owner.address, safe="@")))
        key = (owner.address, start, end)
        av = self._config.availability
        if (recent := self._recent(key)) is not None:
            return recent  # checked so recently that the calendar server is not asked again
        try:
            if b.service_login and login.username == b.service_login:
                dav = self._dav_for(name, login)
                async with dav.slots:
                    if started is not None and not started.done():
                        started.set_result(None)
                    if not dav.store_started:
                        await dav.store.start(self._stack)
                        dav.store_started = True
                    tags, found = await self._read(dav.store, home, key, start, end)
            else:
                # A user's own password (no service account): used for this fetch only, never kept.
                if started is not None and not started.done():
                    started.set_result(None)
                ca = b.ca_file or self._config.tls.ca_file
                async with AsyncExitStack() as stack:
                    store = CalDavCalendarStore(b.url, login, self._config.path(ca) if ca else None,
                                                _dav_timeout(b.timeout, av.timeout))
                    await store.start(stack)
                    tags, found = await self._read(store, home, key, start, end)
            if isinstance(found, _Cached):
                return found.events
        except (AuthenticationFailed, PermissionDenied) as exc:
            log.warning("back end %s refused %s reading %s's calendars: %s", name, login.username, owner.address, exc)
            raise AvailabilityError("unavailable", "the calendar server refused the free/busy account") from None
        except BackendError as exc:
            log.info("free/busy of %s unavailable: %s", owner.address, exc)
            raise AvailabilityError("unavailable", f"{owner.address}: the calendar server is unavailable") from None
        skipped: list[str] = []
        # Parsing and expanding is CPU work; a thread keeps the loop answering meanwhile.
        events = tuple(await asyncio.to_thread(events_to_busy, found, start, end, self._floating_tz,
                                               skipped=skipped))
        if skipped:
            log.warning("%d calendar object(s) of %s skipped in free/busy", len(skipped), owner.address)
        self._store(key, tags, events)
        return events  # the very tuple the cache holds, so answers from it keep one identity

    async def _read(self, store: CalDavCalendarStore, home: str, key: tuple, start: dt.datetime,
                    end: dt.datetime) -> tuple[tuple[tuple[str, str], ...], list[str] | _Cached]:
        """The calendars' (url, ctag) pairs and their objects' texts, or the cache entry when it still holds."""
        try:
            calendars = await store.calendars_at(home)
        except NotFound:
            calendars = []  # never used its calendar: nothing booked
        tags = tuple(sorted((c.url, c.ctag or "") for c in calendars))
        if (hit := self._cached(key, tags)) is not None:
            return tags, hit
        return tags, [o.ical for c in calendars
                      for o in await store.events_between(c.url, start - _SLACK, end + _SLACK)]

    def _recent(self, key: tuple) -> list[BusyEvent] | None:
        """The cached events for ``key`` if their ctags were checked less than revalidate_after ago."""
        hit = self._cache.get(key)
        if hit is None or any(not tag for _, tag in hit.tags):
            return None
        av, now = self._config.availability, self._clock()
        if now - hit.checked >= av.revalidate_after or now - hit.stored >= av.cache_ttl:
            return None
        self._cache.move_to_end(key)
        return hit.events

    def _cached(self, key: tuple, tags: tuple[tuple[str, str], ...]) -> _Cached | None:
        """The cached events for ``key`` if still fresh and no calendar changed (a missing ctag never matches)."""
        hit = self._cache.get(key)
        if hit is None or hit.tags != tags or any(not tag for _, tag in tags):
            return None
        now = self._clock()
        if now - hit.stored >= self._config.availability.cache_ttl:
            return None
        hit.checked = now
        self._cache.move_to_end(key)
        return hit

    def _store(self, key: tuple, tags: tuple[tuple[str, str], ...], events: tuple[BusyEvent, ...]) -> None:
        now = self._clock()
        self._cache[key] = _Cached(tags, events, now, now)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)  # least recently used
