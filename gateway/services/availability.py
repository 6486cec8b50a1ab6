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
    """

    address: str
    events: list[BusyEvent]
    access: AccessLevel
    working_hours: WorkingHours


@dataclass
class _Cached:
    tags: tuple[tuple[str, str], ...]
    events: list[BusyEvent]
    stored: float


def _hide(ev: BusyEvent) -> BusyEvent:
    # The UID goes too: it can name hosts or people as much as a subject does.
    return dataclasses.replace(ev, subject=None, location=None, uid="")


class AvailabilityService:
    """Free/busy of many mailboxes for one requester; calendars are read with each back end's service account.

    Without ``service_login`` on a CalDAV back end the service holds no
    credentials for its users: other users' mailboxes there answer
    "unavailable", and the requester's own only when ``credentials`` are given.
    """

    def __init__(self, config: Config, directory: StaticDirectory, backends: Backends,
                 clock: Callable[[], float] = time.monotonic, cache_size: int = 2000) -> None:
        self._config = config
        self._directory = directory
        self._backends = backends
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple, _Cached] = OrderedDict()
        self._inflight: dict[tuple, asyncio.Task[list[BusyEvent]]] = {}
        av = config.availability
        self._working_hours = working_hours_from_config(av)
        self._floating_tz = ZoneInfo(av.time_zone)
        self._access = {address.lower(): AccessLevel(level) for address, level in av.user_access.items()}
        self._ews = EwsAvailability(config, backends, clock, cache_size)

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
            return await asyncio.wait_for(self._one(requester, address, start, end, credentials), timeout)
        except AvailabilityError as exc:
            return exc
        except TimeoutError:
            return AvailabilityError("timeout", f"{address}: the calendar did not answer within {timeout:g} s")

    async def _one(self, requester: UserRecord | None, address: str, start: dt.datetime, end: dt.datetime,
                   credentials: Credentials | None) -> MailboxAvailability:
        owner = self._directory.find(address)
        if owner is None:
            raise AvailabilityError("not-found", f"{address}: no such mailbox")
        own = requester is not None and requester.address.lower() == owner.address.lower()
        access = self.access_for(requester, owner)
        if access is AccessLevel.NONE:
            return MailboxAvailability(owner.address, [], access, self._working_hours)
        if name := self._directory.route(owner, "caldav"):
            events = await self._shared(owner, name, self._login(name, credentials if own else None), start, end)
        elif name := self._directory.route(owner, "ews"):
            found = await self._remote(owner, name, self._login(name, credentials if own else None), start, end)
            if found is None:
                return MailboxAvailability(owner.address, [], AccessLevel.NONE, self._working_hours)
            events = found
        else:
            raise AvailabilityError("no-calendar-backend", f"{owner.address} has no calendar")
        if not own:
            events = [ev if access is AccessLevel.LIMITED and not ev.private else _hide(ev) for ev in events]
        return MailboxAvailability(owner.address, list(events), access, self._working_hours)

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
                      end: dt.datetime) -> list[BusyEvent]:
        """Join a running fetch of the same calendar and window, or start one."""
        key = (owner.address, start, end, login.username)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(owner, name, login, start, end))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._landed, key))
        # A waiter that times out must not cancel the fetch others still wait for.
        return await asyncio.shield(task)

    def _landed(self, key: tuple, task: asyncio.Task) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a fetch every waiter gave up on is not logged as lost

    async def _fetch(self, owner: UserRecord, name: str, login: Credentials, start: dt.datetime,
                     end: dt.datetime) -> list[BusyEvent]:
        b = self._backends.get(name)
        base = b.url if b.url.endswith("/") else b.url + "/"
        # Quoted (but for "@", as the template's docs show it) so no login can climb to another path.
        home = urljoin(base, b.home_template.format(login=quote(owner.login, safe="@"),
                                                    address=quote(owner.address, safe="@")))
        ca = b.ca_file or self._config.tls.ca_file
        # The blocking DAV call cannot be cancelled; its own timeout frees the thread soon after ours fires.
        timeout = min(b.timeout, self._config.availability.timeout)
        key = (owner.address, start, end)
        try:
            async with AsyncExitStack() as stack:
                store = CalDavCalendarStore(b.url, login, self._config.path(ca) if ca else None, timeout)
                await store.start(stack)
                try:
                    calendars = await store.calendars_at(home)
                except NotFound:
                    calendars = []  # never used its calendar: nothing booked
                tags = tuple(sorted((c.url, c.ctag or "") for c in calendars))
                if (hit := self._cached(key, tags)) is not None:
                    return hit
                texts = [o.ical for c in calendars
                         for o in await store.events_between(c.url, start - _SLACK, end + _SLACK)]
        except (AuthenticationFailed, PermissionDenied) as exc:
            log.warning("back end %s refused %s reading %s's calendars: %s", name, login.username, owner.address, exc)
            raise AvailabilityError("unavailable", "the calendar server refused the free/busy account") from None
        except BackendError as exc:
            log.info("free/busy of %s unavailable: %s", owner.address, exc)
            raise AvailabilityError("unavailable", f"{owner.address}: the calendar server is unavailable") from None
        skipped: list[str] = []
        # Parsing and expanding is CPU work; a thread keeps the loop answering meanwhile.
        events = await asyncio.to_thread(events_to_busy, texts, start, end, self._floating_tz, skipped=skipped)
        if skipped:
            log.warning("%d calendar object(s) of %s skipped in free/busy", len(skipped), owner.address)
        self._store(key, tags, events)
        return events

    def _cached(self, key: tuple, tags: tuple[tuple[str, str], ...]) -> list[BusyEvent] | None:
        """The cached events for ``key`` if still fresh and no calendar changed (a missing ctag never matches)."""
        hit = self._cache.get(key)
        if hit is None or hit.tags != tags or any(not tag for _, tag in tags):
            return None
        if self._clock() - hit.stored >= self._config.availability.cache_ttl:
            return None
        self._cache.move_to_end(key)
        return hit.events

    def _store(self, key: tuple, tags: tuple[tuple[str, str], ...], events: list[BusyEvent]) -> None:
        self._cache[key] = _Cached(tags, events, self._clock())
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)  # least recently used
