"""GetUserAvailability: several mailboxes' free/busy over one window, in the requester's time zone."""

from __future__ import annotations

from xml.sax.saxutils import escape
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from lxml import etree

from adapters.interfaces import UserRecord

from ...services.availability import AccessLevel, AvailabilityError, MailboxAvailability
from ...services.freebusy import BusyEvent, BusyType, WorkingHours, merged_free_busy
from ..soap import M_NS, T_NS, EwsRequest, m, response_message, sub, t, version_at_least, xml_text
from ..timezones import WallClock, rule_to_xml
from ..zone_rules import rule_for_year
from . import Operation
from .availability_request import AvailabilityQuery, parse_query

_BUSY = {BusyType.FREE: "Free", BusyType.TENTATIVE: "Tentative", BusyType.BUSY: "Busy", BusyType.OOF: "OOF",
         BusyType.WORKING_ELSEWHERE: "WorkingElsewhere"}
# Per-mailbox failures, as Exchange's availability service reports them.
_ERRORS = {
    "not-found": ("ErrorMailRecipientNotFound", "Unable to resolve {address} to a mailbox."),
    "denied": ("ErrorNoFreeBusyAccess", "The caller does not have access to free/busy data of {address}."),
    "timeout": ("ErrorTimeoutExpired", "The free/busy request for {address} timed out."),
    "unavailable": ("ErrorMailboxStoreUnavailable", "The calendar of {address} is unavailable right now."),
    "no-calendar-backend": ("ErrorFreeBusyGenerationFailed", "{address} has no calendar to generate free/busy "
                                                              "data from."),
}
# What a requested view becomes when the requester may only see free/busy times.
_WITHOUT_DETAILS = {"Detailed": "FreeBusy", "DetailedMerged": "FreeBusyMerged"}


_FLAGS = ("IsMeeting", "IsRecurring", "IsException", "IsReminderSet", "IsPrivate")


def _text(value: str) -> str:
    return escape(xml_text(value))


def _event_xml(ev: BusyEvent, clock: WallClock, details: bool, working_elsewhere: bool) -> str:
    # Times in the requester's zone without offset, as Exchange writes them.
    # Exchange 2010's schema has no WorkingElsewhere; older clients are told such time is free.
    busy = ev.busy if working_elsewhere or ev.busy is not BusyType.WORKING_ELSEWHERE else BusyType.FREE
    parts = [f"<t:CalendarEvent><t:StartTime>{clock.wall(ev.start)}</t:StartTime>"
             f"<t:EndTime>{clock.wall(ev.end)}</t:EndTime><t:BusyType>{_BUSY[busy]}</t:BusyType>"]
    if details and (ev.subject is not None or ev.location is not None or ev.private):
        parts.append("<t:CalendarEventDetails>")
        if ev.subject is not None:
            parts.append(f"<t:Subject>{_text(ev.subject)}</t:Subject>")
        if ev.location is not None:
            parts.append(f"<t:Location>{_text(ev.location)}</t:Location>")
        for name, value in zip(_FLAGS, (ev.meeting, ev.recurring, ev.exception, ev.reminder, ev.private)):
            parts.append(f"<t:{name}>{'true' if value else 'false'}</t:{name}>")
        parts.append("</t:CalendarEventDetails>")
    parts.append("</t:CalendarEvent>")
    return "".join(parts)


# Text rendered from recent answers. The availability service hands out one immutable tuple of
# events per cached calendar and access level, so a scheduling assistant asking again for the
# same people renders nothing anew; the tuple is kept with its text, so an id is never mistaken.
_RENDERED: OrderedDict[tuple, tuple[Sequence[BusyEvent], str]] = OrderedDict()
_RENDERED_MAX = 1024


def _memo(events: Sequence[BusyEvent], key: tuple, build: Callable[[], str]) -> str:
    if not isinstance(events, tuple):
        return build()
    full = (id(events), *key)
    hit = _RENDERED.get(full)
    if hit is not None and hit[0] is events:
        _RENDERED.move_to_end(full)
        return hit[1]
    text = build()
    _RENDERED[full] = (events, text)
    if len(_RENDERED) > _RENDERED_MAX:
        _RENDERED.popitem(last=False)
    return text


def _event_array(parent: etree._Element, events: Sequence[BusyEvent], clock: WallClock, details: bool,
                 working_elsewhere: bool) -> None:
    """Append the CalendarEventArray, built as text and parsed once.

    An answer can list tens of thousands of events; one parse of their text is
    several times faster than creating each of their elements through lxml.
    """
    zone = getattr(clock.tz, "rule", clock.tz)  # the zone's rules, not the object made for this request
    body = _memo(events, ("events", zone, details, working_elsewhere), lambda: "".join(
        _event_xml(ev, clock, details, working_elsewhere) for ev in events))
    parent.append(etree.fromstring(f'<t:CalendarEventArray xmlns:t="{T_NS}">{body}</t:CalendarEventArray>'))


def _working_hours(parent: etree._Element, hours: WorkingHours, year: int) -> None:
    elem = sub(parent, t("WorkingHours"))
    rule_to_xml(elem, rule_for_year(hours.time_zone, year))
    period = sub(sub(elem, t("WorkingPeriodArray")), t("WorkingPeriod"))
    sub(period, t("DayOfWeek"), " ".join(hours.days))
    sub(period, t("StartTimeInMinutes"), str(hours.start_minutes))
    sub(period, t("EndTimeInMinutes"), str(hours.end_minutes))


def _failure(parent: etree._Element, address: str, kind: str) -> None:
    code, text = _ERRORS.get(kind, ("ErrorFreeBusyGenerationFailed", "Free/busy of {address} failed."))
    response_message(parent, m("ResponseMessage"), code, text.format(address=address))
    sub(sub(parent, m("FreeBusyView")), t("FreeBusyViewType"), "None")


def _mailbox(parent: etree._Element, query: AvailabilityQuery, answer: MailboxAvailability,
             working_elsewhere: bool, clock: WallClock) -> None:
    response_message(parent, m("ResponseMessage"))
    view = query.view if answer.access is AccessLevel.LIMITED else _WITHOUT_DETAILS.get(query.view, query.view)
    fbv = sub(parent, m("FreeBusyView"))
    sub(fbv, t("FreeBusyViewType"), view)
    if view.endswith("Merged") or view == "MergedOnly":
        merged = _memo(answer.events, ("merged", query.start, query.end, query.interval),
                       lambda: merged_free_busy(answer.events, query.start, query.end, query.interval))
        sub(fbv, t("MergedFreeBusy"), merged)
    if view != "MergedOnly":
        _event_array(fbv, answer.events, clock, view.startswith("Detailed"), working_elsewhere)
    _working_hours(fbv, answer.working_hours, query.start.astimezone(query.tz).year)


def render(query: AvailabilityQuery, answers: list[MailboxAvailability | AvailabilityError | None],
           server_version: str | None) -> etree._Element:
    """The m:GetUserAvailabilityResponse for one answer per requested mailbox (None: no answer came)."""
    resp = etree.Element(m("GetUserAvailabilityResponse"), nsmap={"m": M_NS, "t": T_NS})
    if query.free_busy:
        working_elsewhere = version_at_least(server_version, "Exchange2013")
        clock = WallClock(query.tz)
        array = sub(resp, m("FreeBusyResponseArray"))
        for address, answer in zip(query.addresses, answers, strict=True):
            one = sub(array, m("FreeBusyResponse"))
            if isinstance(answer, AvailabilityError):
                _failure(one, address, answer.kind)
            elif answer is None:
                _failure(one, address, "unavailable")
            elif answer.access is AccessLevel.NONE:
                # Permission "None", as Exchange answers it: a successful view that shows nothing.
                response_message(one, m("ResponseMessage"))
                sub(sub(one, m("FreeBusyView")), t("FreeBusyViewType"), "None")
            else:
                _mailbox(one, query, answer, working_elsewhere, clock)
    if query.suggestions:
        response_message(sub(resp, m("SuggestionsResponse")), m("ResponseMessage"),
                         "ErrorMeetingSuggestionGenerationFailed",
                         "Meeting suggestions (SuggestionsViewOptions) are not implemented by this server.")
    return resp


async def handle(ctx: Any, user: UserRecord, request: EwsRequest) -> etree._Element:
    query = parse_query(request.body, request.header, ctx.config.availability)
    answers: list[MailboxAvailability | AvailabilityError | None] = [None] * len(query.addresses)
    if query.free_busy:
        found = await ctx.availability.lookup(user, query.addresses, query.start, query.end,
                                     credentials=request.credentials)
        count = len(query.addresses)
        answers = list(found)[:count] + [None] * (count - len(found))  # a short answer leaves the rest failed
    return render(query, answers, request.server_version)


OPERATION = Operation("GetUserAvailabilityRequest", handle)
