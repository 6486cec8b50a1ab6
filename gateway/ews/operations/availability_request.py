"""Read a GetUserAvailabilityRequest into a checked query; request-wide problems are SOAP faults, as Exchange sends."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from lxml import etree

from ...config import AvailabilityConfig
from ..soap import SoapFault, m, t
from ..timezones import RuleTimeZone, rule_from_xml
from ..zone_rules import iana_zone

__all__ = ["VIEWS", "AvailabilityQuery", "parse_query", "request_zone"]

VIEWS = ("MergedOnly", "FreeBusy", "FreeBusyMerged", "Detailed", "DetailedMerged")
_UTC = dt.timezone.utc


@dataclass(frozen=True)
class AvailabilityQuery:
    """What was asked: mailboxes, the window as aware UTC, the requester's zone, the view and its interval."""

    addresses: list[str]
    start: dt.datetime
    end: dt.datetime
    tz: dt.tzinfo
    view: str
    interval: int
    free_busy: bool
    suggestions: bool


def _schema(message: str) -> SoapFault:
    return SoapFault("ErrorSchemaValidation", f"The request failed schema validation: {message}")


def request_zone(body: etree._Element, header: etree._Element | None) -> dt.tzinfo:
    """The requester's zone: the request's TimeZone, else the TimeZoneContext header's Windows id, else UTC."""
    elem = body.find(t("TimeZone"))
    if elem is not None:
        try:
            return RuleTimeZone(rule_from_xml(elem))
        except ValueError as exc:
            raise SoapFault("ErrorTimeZone", f"The time zone in the request is invalid: {exc}.") from None
    context = header.find(f"{t('TimeZoneContext')}/{t('TimeZoneDefinition')}") if header is not None else None
    if context is not None:
        zone = iana_zone(context.get("Id") or "")
        if zone is None:
            raise SoapFault("ErrorTimeZone", f"The time zone {context.get('Id')!r} is not known to this server.")
        return ZoneInfo(zone)
    return _UTC


def _instant(elem: etree._Element | None, name: str, tz: dt.tzinfo) -> dt.datetime:
    """An xs:dateTime as aware UTC; one without an offset is wall time in the requester's zone."""
    text = (elem.findtext(t(name)) if elem is not None else None) or ""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise _schema(f"TimeWindow/{name} {text.strip()[:40]!r} is not a date and time.") from None
    if not 2 <= when.year <= 9998:  # leaves room for the zone rules of the neighbouring years
        raise _schema(f"TimeWindow/{name} is out of range.")
    return (when if when.tzinfo else when.replace(tzinfo=tz)).astimezone(_UTC)


def _addresses(body: etree._Element, limit: int) -> list[str]:
    array = body.find(m("MailboxDataArray"))
    entries = array.findall(t("MailboxData")) if array is not None else []
    if not entries:
        raise SoapFault("ErrorMailboxDataArrayEmpty", "MailboxDataArray must contain at least one mailbox.")
    if len(entries) > limit:
        raise SoapFault("ErrorMailboxDataArrayTooBig",
                        f"The request asks for {len(entries)} mailboxes; at most {limit} are allowed.")
    addresses = []
    for entry in entries:
        address = (entry.findtext(f"{t('Email')}/{t('Address')}") or "").strip()
        if not address:
            raise _schema("every MailboxData needs Email/Address.")
        addresses.append(address)
    return addresses


def parse_query(body: etree._Element, header: etree._Element | None, config: AvailabilityConfig) -> AvailabilityQuery:
    """The checked query of a m:GetUserAvailabilityRequest; raises SoapFault with Exchange's codes."""
    tz = request_zone(body, header)
    addresses = _addresses(body, config.max_mailboxes)
    options = body.find(t("FreeBusyViewOptions"))
    suggestions = body.find(t("SuggestionsViewOptions")) is not None
    if options is None and not suggestions:
        raise _schema("the request needs FreeBusyViewOptions or SuggestionsViewOptions.")
    window = options.find(t("TimeWindow")) if options is not None else None
    if window is None and suggestions:
        window = body.find(f"{t('SuggestionsViewOptions')}/{t('DetailedSuggestionsWindow')}")
    start, end = _instant(window, "StartTime", tz), _instant(window, "EndTime", tz)
    if end <= start:
        raise SoapFault("ErrorInvalidTimeInterval", "The EndTime of the time window must be after its StartTime.")
    if end - start > dt.timedelta(days=config.max_days):
        raise SoapFault("ErrorTimeIntervalTooBig",
                        f"The time window is longer than the {config.max_days} days allowed.")
    view, interval = "Detailed", 30
    if options is not None:
        view = (options.findtext(t("RequestedView")) or view).strip()
        if view not in VIEWS:
            raise SoapFault("ErrorInvalidFreeBusyViewType", f"RequestedView {view[:40]!r} is not one of "
                                                            f"{', '.join(VIEWS)}.")
        raw = (options.findtext(t("MergedFreeBusyIntervalInMinutes")) or "30").strip()
        try:
            interval = int(raw)
        except ValueError:
            raise _schema(f"MergedFreeBusyIntervalInMinutes {raw[:20]!r} is not a number.") from None
        if not 5 <= interval <= 1440:
            raise SoapFault("ErrorInvalidMergedFreeBusyInterval",
                            "MergedFreeBusyIntervalInMinutes must be between 5 and 1440.")
    return AvailabilityQuery(addresses, start, end, tz, view, interval, options is not None, suggestions)
