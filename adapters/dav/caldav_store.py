"""CalendarStore over CalDAV with the caldav library: calendars, events, time-range queries."""

from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import Executor
from contextlib import AsyncExitStack
from pathlib import Path
from urllib.parse import quote

import icalendar
import recurring_ical_events  # a dependency of caldav, which expands recurrences with it too
from caldav.collection import CalendarSet

from adapters.errors import InvalidData
from adapters.interfaces import CalendarInfo, CalendarObject, Credentials

from . import objects
from .common import CALDAV, DAV, DavConnection, check, check_put, parse_xml

DEFAULT_CALENDAR = "Calendar"
# A fixed path segment makes creating the default calendar idempotent: two
# sessions racing to create it end with one collection, not two.
DEFAULT_CALENDAR_ID = "calendar"
_OBJECT_TYPES = ("VEVENT", "VTODO", "VJOURNAL")
_ICAL_HEADERS = {"Content-Type": "text/calendar; charset=utf-8"}
_QUERY_HEADERS = {"Content-Type": "application/xml; charset=utf-8", "Depth": "1"}
# RFC 4791 7.8.1: VEVENTs overlapping a time range, each resource whole (no expand), with its ETag.
_EVENT_QUERY = ('<?xml version="1.0" encoding="utf-8"?>'
                '<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
                '<d:prop><d:getetag/><c:calendar-data/></d:prop>'
                '<c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT">'
                '<c:time-range start="{start}" end="{end}"/>'
                '</c:comp-filter></c:comp-filter></c:filter></c:calendar-query>')


def prepare_ical(ical: str, uid: str | None) -> tuple[str, str]:
    """Check an iCalendar object and give it a UID; returns (text to store, UID).

    The text is kept as given unless a UID has to be written into it.
    """
    try:
        cal = icalendar.Calendar.from_ical(ical)
    except (ValueError, KeyError, IndexError) as exc:
        raise InvalidData(f"not an iCalendar object: {exc}") from None
    if cal.name != "VCALENDAR":
        raise InvalidData(f"expected VCALENDAR, got {cal.name}")
    items = [c for c in cal.subcomponents if c.name in _OBJECT_TYPES]
    if not items:
        raise InvalidData("calendar object has no VEVENT, VTODO or VJOURNAL")
    uids = {str(c["UID"]) for c in items if "UID" in c}
    if uid is None and len(uids) > 1:
        # RFC 4791 4.1: one resource holds one UID (a master and its exceptions).
        raise InvalidData("calendar object holds more than one UID")
    wanted = uid or (uids.pop() if uids else str(uuid.uuid4()))
    if all(str(c.get("UID", "")) == wanted for c in items):
        return ical, wanted
    for c in items:
        c.pop("UID", None)
        c.add("UID", wanted)
    return cal.to_ical().decode("utf-8"), wanted


def expand_instances(ical: str, start: dt.datetime, end: dt.datetime) -> list[str]:
    """One VCALENDAR per occurrence of the VEVENTs in ``ical`` overlapping [start, end)."""
    cal = icalendar.Calendar.from_ical(ical)
    if not any("RRULE" in c or "RDATE" in c for c in cal.walk("VEVENT")):
        # Nothing recurs: the object is its own only instance, without a RECURRENCE-ID.
        return [ical]
    timezones = [c for c in cal.subcomponents if c.name == "VTIMEZONE"]
    instances = []
    # between() overlaps half-open like a CalDAV time-range, though its docstring says inclusive.
    for occurrence in recurring_ical_events.of(cal).between(start, end):
        one = icalendar.Calendar()
        for key, value in cal.items():
            one.add(key, value)
        for tz in timezones:
            one.add_component(tz)
        one.add_component(occurrence)
        instances.append(one.to_ical().decode("utf-8"))
    return instances


def _as_utc(value: dt.date | dt.datetime) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


class CalDavCalendarStore:
    """A user's calendars on a CalDAV server (Radicale or any other)."""

    def __init__(self, base_url: str, credentials: Credentials, ca_file: str | Path | None = None,
                 timeout: float = 30.0, executor: Executor | None = None, pool_size: int = 0) -> None:
        """``executor`` runs the blocking calls (None: asyncio's default); ``pool_size`` is how many
        connections the client keeps for concurrent calls (0: the HTTP library's default of 10)."""
        self._conn = DavConnection(base_url, credentials, ca_file, timeout, executor, pool_size)
        self._home: str | None = None

    async def start(self, stack: AsyncExitStack) -> None:
        await self._conn.start(stack)

    def _calendar_home(self) -> str:
        if self._home is None:
            self._home = self._conn.home_set(f"{CALDAV}calendar-home-set", "find calendar home")
        return self._home

    def _list(self) -> list[CalendarInfo]:
        return self._calendars_at(self._calendar_home())

    def _calendars_at(self, home_url: str) -> list[CalendarInfo]:
        found = self._conn.collections(self._conn.absolute(home_url), f"{CALDAV}calendar", "list calendars")
        return [CalendarInfo(url=url, name=name, ctag=tag, components=kinds) for url, name, tag, kinds in found]

    def _create(self, name: str, cal_id: str | None = None, components: tuple[str, ...] = ()) -> CalendarInfo:
        home = CalendarSet(client=self._conn.client, url=self._calendar_home())
        cal = home.make_calendar(name=name, cal_id=cal_id,
                                 supported_calendar_component_set=list(components) or None)
        return CalendarInfo(url=self._conn.absolute(str(cal.url)), name=name, components=components)

    def _ensure_default(self) -> list[CalendarInfo]:
        calendars = self._list()
        if calendars:
            return calendars
        try:
            self._create(DEFAULT_CALENDAR, DEFAULT_CALENDAR_ID)
        except Exception:
            # Refused because someone else made the default between our listing
            # and our MKCALENDAR? Then it is listed now.
            calendars = self._list()
            if calendars:
                return calendars
            raise
        return self._list()

    async def list_calendars(self) -> list[CalendarInfo]:
        """The user's calendars; a principal with none gets a default "Calendar" first."""
        return await self._conn.run("list calendars", self._ensure_default)

    async def calendars_at(self, home_url: str) -> list[CalendarInfo]:
        """The calendars directly under ``home_url`` with their ctags, creating nothing.

        One PROPFIND (Depth 1). The home may be another user's when this login
        may read it (a free/busy service account); a missing home is NotFound.
        """
        return await self._conn.run("list calendars", self._calendars_at, home_url)

    async def ensure_default_calendar(self) -> CalendarInfo:
        """The user's first calendar, creating "Calendar" when there is none."""
        calendars = await self.list_calendars()
        return calendars[0]

    async def create_calendar(self, name: str, components: tuple[str, ...] = ()) -> CalendarInfo:
        """A new calendar called ``name``, taking only these object types (VEVENT...; () any)."""
        return await self._conn.run("create calendar", self._create, name, None, components)

    async def rename_collection(self, url: str, name: str) -> None:
        """Set a calendar's display name."""
        await self._conn.run("rename calendar", objects.rename, self._conn, url, name, "rename calendar")

    def _put(self, calendar_url: str, ical: str, uid: str | None) -> CalendarObject:
        body, uid = prepare_ical(ical, uid)
        base = self._conn.absolute(calendar_url.rstrip("/") + "/")
        # Fully quoted ("@" as %40), the spelling Radicale uses in its own hrefs,
        # so the href returned here equals the one a later query reports.
        href = base + quote(uid, safe="") + ".ics"
        # A plain PUT rather than caldav's Event.save(): save() rewrites the data
        # (vobject clean-ups, SEQUENCE bumps) and we store what we were given.
        response = check_put(self._conn.client.put(href, body, _ICAL_HEADERS), "store event")
        return CalendarObject(href=href, etag=response.headers.get("ETag"), ical=body)

    async def put_event(self, calendar_url: str, ical: str, uid: str | None = None) -> CalendarObject:
        """Store (create or replace) one calendar object; ``uid`` overrides the data's UID."""
        return await self._conn.run("store event", self._put, calendar_url, ical, uid)

    def _query(self, calendar_url: str, start: dt.datetime, end: dt.datetime) -> list[CalendarObject]:
        # One calendar-query REPORT; the server filters by time range (RFC 4791 9.9), nothing is
        # parsed or filtered again here: each object is the server's text, with its href and ETag.
        stamp = "%Y%m%dT%H%M%SZ"
        utc = dt.timezone.utc
        body = _EVENT_QUERY.format(start=start.astimezone(utc).strftime(stamp), end=end.astimezone(utc).strftime(stamp))
        url = self._conn.absolute(calendar_url)
        response = self._conn.send("REPORT", url, body, _QUERY_HEADERS, "search events", ok=(207,))
        root = parse_xml(response.content or b"", "search events")
        objects = []
        for resp in root.iter(f"{DAV}response"):
            href = resp.findtext(f"{DAV}href")
            if not href:
                continue
            data = etag = None
            for propstat in resp.iter(f"{DAV}propstat"):
                if " 200 " not in (propstat.findtext(f"{DAV}status") or "") + " ":
                    continue
                data = propstat.findtext(f"{DAV}prop/{CALDAV}calendar-data") or data
                etag = propstat.findtext(f"{DAV}prop/{DAV}getetag") or etag
            if data:  # the collection itself, or an object the server would not give
                objects.append(CalendarObject(href=self._conn.absolute(href.strip()), etag=etag, ical=data))
        return objects

    def _between(self, calendar_url: str, start: dt.datetime, end: dt.datetime,
                 expand: bool) -> list[CalendarObject]:
        # Unexpanded on the wire so each resource keeps its ETag; expanded here when asked.
        found = self._query(calendar_url, start, end)
        if not expand:
            return found
        return [CalendarObject(href=o.href, etag=o.etag, ical=one)
                for o in found for one in expand_instances(o.ical, start, end)]

    async def events_between(self, calendar_url: str, start: dt.datetime, end: dt.datetime,
                             expand: bool = False) -> list[CalendarObject]:
        """Events overlapping [start, end); naive datetimes are UTC.

        Without ``expand`` each object is the calendar resource as the server
        stores it (its text is not parsed here), from one calendar-query REPORT.
        With ``expand`` each occurrence of a recurring event is its own object
        (href and ETag of the resource it came from), as RFC 4791 9.6.5 describes.
        """
        start, end = _as_utc(start), _as_utc(end)
        if end <= start:
            raise InvalidData("time range ends before it starts")
        return await self._conn.run("search events", self._between, calendar_url, start, end, expand)

    def _delete(self, href: str) -> None:
        check(self._conn.client.delete(self._conn.absolute(href)), "delete", ok=(200, 204))

    async def delete(self, href: str) -> None:
        await self._conn.run("delete", self._delete, href)

    # --- keeping a device in step (see objects.py) ---

    async def object_etags(self, calendar_url: str, component: str | None = None, since: dt.datetime | None = None,
                           open_only: bool = False) -> dict[str, str]:
        """href -> ETag of every object in the calendar: only those holding a ``component``, when given, and
        of those only the ones with an occurrence ending after ``since`` / tasks not completed (``open_only``)."""
        return await self._conn.run("list events", objects.etags, self._conn, calendar_url, "list events",
                                    component, since, open_only)

    async def fetch_objects(self, calendar_url: str, hrefs: list[str]) -> list[CalendarObject]:
        """The objects at ``hrefs`` that still exist, in that order."""
        found = await self._conn.run("read events", objects.multiget, self._conn, calendar_url, hrefs, "calendar",
                                     "read events")
        return [CalendarObject(href=h, etag=etag, ical=text) for h, (etag, text) in found.items()]

    async def replace_object(self, href: str, ical: str, etag: str | None) -> str:
        """Store ``ical`` at ``href`` if the object there still has ``etag`` (None: if there is none yet);
        the new ETag. Conflict when it changed meanwhile, NotFound when it is gone."""
        ical, _ = prepare_ical(ical, None)
        return await self._conn.run("store event", objects.replace, self._conn, href, ical,
                                    _ICAL_HEADERS["Content-Type"], etag, "store event")

    async def delete_object(self, href: str, etag: str | None = None) -> None:
        """Delete the object at ``href`` (if it still has ``etag``, when given); one already gone is fine."""
        await self._conn.run("delete event", objects.delete, self._conn, href, etag, "delete event")

    async def find_uid(self, calendar_url: str, uid: str, component: str = "VEVENT") -> CalendarObject | None:
        """The object in the calendar whose ``component`` has this UID (whatever its href), or None."""
        found = await self._conn.run("find event", objects.by_uid, self._conn, calendar_url, uid, component,
                                     "find event")
        return CalendarObject(href=found[0], etag=found[1], ical=found[2]) if found else None
