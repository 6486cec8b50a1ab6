"""Internet free/busy: ``GET /freebusy/<address>.vfb`` answers an iCalendar VFREEBUSY for a time window."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from ..services.availability import AvailabilityError
from ..services.freebusy import BusyType
from .app import CTX
from .basic_auth import authenticate

_FBTYPE = {BusyType.TENTATIVE: "BUSY-TENTATIVE", BusyType.BUSY: "BUSY", BusyType.OOF: "BUSY-UNAVAILABLE"}
_STATUS = {"not-found": web.HTTPNotFound, "denied": web.HTTPForbidden, "timeout": web.HTTPGatewayTimeout,
           "unavailable": web.HTTPServiceUnavailable, "no-calendar-backend": web.HTTPNotFound}


def _parse_when(value: str, name: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name}: expected an ISO 8601 date or date-time\n") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def render_vfreebusy(address: str, start: dt.datetime, end: dt.datetime, events, now: dt.datetime) -> str:
    """A VCALENDAR with one VFREEBUSY (RFC 5545 3.6.4), busy periods clipped to the window."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//casgate//free-busy//EN", "METHOD:PUBLISH",
             "BEGIN:VFREEBUSY", f"DTSTAMP:{_stamp(now)}", f"ORGANIZER:mailto:{address}",
             f"DTSTART:{_stamp(start)}", f"DTEND:{_stamp(end)}"]
    for ev in events:
        fbtype = _FBTYPE.get(ev.busy)
        s, e = max(ev.start, start), min(ev.end, end)
        if fbtype and s < e:
            lines.append(f"FREEBUSY;FBTYPE={fbtype}:{_stamp(s)}/{_stamp(e)}")
    lines += ["END:VFREEBUSY", "END:VCALENDAR"]
    return "\r\n".join(lines) + "\r\n"


async def vfreebusy(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    user, _ = await authenticate(request, ctx.auth)
    address = request.match_info["address"]
    now = dt.datetime.now(dt.timezone.utc)
    default_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    start = _parse_when(request.query["start"], "start") if "start" in request.query else default_start
    days = ctx.config.availability.max_days
    end = _parse_when(request.query["end"], "end") if "end" in request.query else start + dt.timedelta(days=days)
    if end <= start:
        raise web.HTTPBadRequest(text="end must be after start\n")
    if end - start > dt.timedelta(days=days):
        raise web.HTTPBadRequest(text=f"the window may be at most {days} days\n")
    try:
        answer = await ctx.availability.freebusy_for(user, address, start, end)
    except AvailabilityError as exc:
        raise _STATUS.get(exc.kind, web.HTTPServiceUnavailable)(text=f"{exc.message or exc.kind}\n") from None
    body = render_vfreebusy(answer.address, start, end, answer.events, now)
    return web.Response(text=body, content_type="text/calendar", charset="utf-8",
                        headers={"Cache-Control": "private, max-age=60"})


def register(app: web.Application) -> None:
    app.router.add_get("/freebusy/{address}.vfb", vfreebusy)
