"""GetServerTimeZones: the Windows time zones, with Periods, TransitionsGroups and Transitions derived from zoneinfo."""

from __future__ import annotations

import asyncio
from typing import Any

from lxml import etree

from adapters.interfaces import UserRecord

from ..soap import M_NS, T_NS, EwsRequest, SoapFault, m, response_message, sub, t
from ..timezones import LAST, WEEKDAYS, Change, Rule
from ..zone_rules import display_name, iana_zone, windows_ids, zone_rules
from . import Operation


def duration(minutes: int = 0, seconds: int = 0) -> str:
    """An xs:duration as Exchange writes time zone values: -PT1H, PT5H30M, PT0H."""
    total = minutes * 60 + seconds
    sign, total = ("-" if total < 0 else ""), abs(total)
    h, rest = divmod(total, 3600)
    mins, secs = divmod(rest, 60)
    text = (f"{h}H" if h or not (mins or secs) else "") + (f"{mins}M" if mins else "") + (f"{secs}S" if secs else "")
    return f"{sign}PT{text}"


def _boolean(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    if value.strip() in ("true", "1"):
        return True
    if value.strip() in ("false", "0"):
        return False
    raise SoapFault("ErrorSchemaValidation", f"The request failed schema validation: {value!r} is not a boolean.")


def _recurring(parent: etree._Element, to: str, change: Change) -> None:
    elem = sub(parent, t("RecurringDayTransition"))
    sub(elem, t("To"), to, Kind="Period")
    sub(elem, t("TimeOffset"), duration(seconds=change.time))
    sub(elem, t("Month"), str(change.month))
    sub(elem, t("DayOfWeek"), WEEKDAYS[change.weekday])
    sub(elem, t("Occurrence"), str(-1 if change.occurrence == LAST else change.occurrence))


def definition(parent: etree._Element, windows: str, full: bool) -> etree._Element:
    """Append one t:TimeZoneDefinition; with ``full`` its periods and transitions, one group per run of years."""
    elem = sub(parent, t("TimeZoneDefinition"), Id=windows, Name=display_name(windows))
    if not full:
        return elem
    rules: tuple[tuple[int, Rule], ...] = zone_rules(iana_zone(windows) or "UTC")
    periods, groups, transitions = (sub(elem, t(name)) for name in ("Periods", "TransitionsGroups", "Transitions"))
    # exchangelib picks a group by sorting the group ids as strings: pad them so that order is chronological.
    width = len(str(len(rules) - 1))
    for index, (year, rule) in enumerate(rules):
        base = f"trule:Microsoft/Registry/{windows}/{year}"
        sub(periods, t("Period"), Bias=duration(rule.bias + rule.standard_bias), Name="Standard",
            Id=f"{base}-Standard")
        group = sub(groups, t("TransitionsGroup"), Id=f"{index:0{width}d}")
        if rule.has_dst and rule.to_daylight and rule.to_standard:
            sub(periods, t("Period"), Bias=duration(rule.bias + rule.daylight_bias), Name="Daylight",
                Id=f"{base}-Daylight")
            _recurring(group, f"{base}-Daylight", rule.to_daylight)
            _recurring(group, f"{base}-Standard", rule.to_standard)
        else:
            sub(sub(group, t("Transition")), t("To"), f"{base}-Standard", Kind="Period")
        if index == 0:
            sub(sub(transitions, t("Transition")), t("To"), f"{index:0{width}d}", Kind="Group")
        else:
            switch = sub(transitions, t("AbsoluteDateTransition"))
            sub(switch, t("To"), f"{index:0{width}d}", Kind="Group")
            sub(switch, t("DateTime"), f"{year:04d}-01-01T00:00:00")
    return elem


def _warm(ids: tuple[str, ...]) -> None:
    for windows in ids:
        zone_rules(iana_zone(windows) or "UTC")


async def handle(ctx: Any, user: UserRecord, request: EwsRequest) -> etree._Element:
    body = request.body
    full = _boolean(body.get("ReturnFullTimeZoneData"), default=True)
    ids_elem = body.find(m("Ids"))
    if ids_elem is None:
        # Deriving every zone's rules takes a moment the first time; keep it off the event loop.
        ids = await asyncio.to_thread(windows_ids)
    else:
        ids = tuple(dict.fromkeys((e.text or "").strip() for e in ids_elem.findall(t("Id"))))
    resp = etree.Element(m("GetServerTimeZonesResponse"), nsmap={"m": M_NS, "t": T_NS})
    messages = sub(resp, m("ResponseMessages"))
    unknown = [i for i in ids if iana_zone(i) is None]
    if unknown:
        response_message(messages, m("GetServerTimeZonesResponseMessage"), "ErrorTimeZone",
                         f"The time zone {unknown[0]!r} is not known to this server.")
        return resp
    if full:
        await asyncio.to_thread(_warm, ids)  # only the rules; the XML is built here, on the loop's thread
    msg = response_message(messages, m("GetServerTimeZonesResponseMessage"))
    definitions = sub(msg, m("TimeZoneDefinitions"))
    for windows in ids:
        definition(definitions, windows, full)
    return resp


OPERATION = Operation("GetServerTimeZones", handle, since="Exchange2010")
