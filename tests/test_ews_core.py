"""EWS core transcripts: envelopes in, replies out (no sockets), read back with exchangelib's own parsers.

Requests are built with exchangelib's payload builders where it has them, so
what is tested is what a real client sends; GetUserAvailability runs against
a fake availability service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from exchangelib import BASIC, Build, Configuration, EWSDateTime, EWSTimeZone, Version
from exchangelib import Credentials as ExCredentials
from exchangelib import errors as exerrors
from exchangelib.properties import (AlternateId, FreeBusyViewOptions, MailboxData, TimeWindow, TimeZone,
                                    TimeZoneDefinition)
from exchangelib.protocol import Protocol
from exchangelib.services import ConvertId, GetServerTimeZones, GetUserAvailability
from lxml import etree

from adapters.errors import BackendUnavailable
from adapters.interfaces import Credentials, UserRecord
from gateway.config import from_dict
from gateway.ews import soap
from gateway.ews.http import answer
from gateway.ews.operations import Operation, registry
from gateway.ews.operations.availability_request import request_zone
from gateway.ews.timezones import RuleTimeZone, rule_from_xml
from gateway.ews.zone_rules import windows_ids
from gateway.services.availability import AccessLevel, AvailabilityError, MailboxAvailability
from gateway.services.freebusy import BusyEvent, BusyType, WorkingHours

UTC = dt.timezone.utc
ALICE = UserRecord("alice@example.test", "alice@example.test", "Alice", "example.test", {"caldav": "dav"})
NS = {"s": soap.SOAP_NS, "m": soap.M_NS, "t": soap.T_NS, "e": soap.E_NS}
BERLIN_HOURS = WorkingHours("Europe/Berlin", ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"), 480, 1020)


class FakeAvailability:
    """Answers per address from a table; records what it was asked."""

    def __init__(self, answers: dict[str, MailboxAvailability | AvailabilityError]) -> None:
        self.answers = answers
        self.calls: list[tuple] = []

    async def lookup(self, requester, addresses, start, end, *, credentials=None):
        self.calls.append((requester, list(addresses), start, end, credentials))
        return [self.answers.get(a.lower(), AvailabilityError("not-found", a)) for a in addresses]


def event(start: dt.datetime, minutes: int = 60, busy: BusyType = BusyType.BUSY, subject: str | None = "Standup",
          location: str | None = "Room 1", private: bool = False) -> BusyEvent:
    return BusyEvent(start, start + dt.timedelta(minutes=minutes), busy, subject, location, private,
                     recurring=True, exception=False, meeting=True, reminder=False, uid="uid-1")


def make_ctx(answers=None, **availability) -> SimpleNamespace:
    config = from_dict({"availability": availability})
    return SimpleNamespace(config=config, availability=FakeAvailability(answers or {}))


@pytest.fixture(scope="module")
def proto():
    config = Configuration(service_endpoint="https://mail.example.test/EWS/Exchange.asmx", auth_type=BASIC,
                           credentials=ExCredentials("alice@example.test", "unused"),
                           version=Version(build=Build(14, 3, 123, 4)))
    p = Protocol(config=config)
    yield p
    p.close()


async def call(data: bytes, ctx=None, ops=None, creds: Credentials | None = None):
    status, body, headers = await answer(ctx or make_ctx(), ops or registry(), ALICE, creds, data)
    return status, body, headers


def raw_envelope(body: str, version: str | None = "Exchange2010_SP2", header: str = "") -> bytes:
    rsv = f'<t:RequestServerVersion Version="{version}"/>' if version is not None else ""
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{soap.SOAP_NS}" xmlns:m="{soap.M_NS}" '
            f'xmlns:t="{soap.T_NS}"><s:Header>{rsv}{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>').encode()


def fault_of(body: bytes) -> tuple[str, str, str]:
    """(faultcode, EWS ResponseCode, message) of a fault reply."""
    root = etree.fromstring(body)
    fault = root.find("s:Body/s:Fault", NS)
    assert fault is not None, body
    return fault.findtext("faultcode"), fault.findtext("detail/e:ResponseCode", namespaces=NS), \
        fault.findtext("detail/e:Message", namespaces=NS)


def exchangelib_raises(body: bytes) -> Exception:
    """The exception exchangelib raises for a fault reply."""
    fault = etree.fromstring(body).find("s:Body/s:Fault", NS)
    with pytest.raises(Exception) as info:
        GetServerTimeZones._raise_soap_errors(fault=fault)
    return info.value


CONVERT_DUMMY = ('<m:ConvertId DestinationFormat="EntryId"><m:SourceIds>'
                 '<t:AlternateId Id="DUMMY" Format="EwsId" Mailbox="DUMMY"/></m:SourceIds></m:ConvertId>')


# --- envelope, versions and errors -----------------------------------------------------------------------


async def test_reply_header_is_exchange_2010_sp3():
    status, body, _ = await call(raw_envelope(CONVERT_DUMMY))
    assert status == 200
    header = etree.fromstring(body).find("s:Header", NS)
    version = Version.from_soap_header(requested_api_version="Exchange2010_SP2", header=header)
    assert version.build == Build(14, 3, 123, 4) and version.api_version == "Exchange2010_SP2"
    assert version.fullname == "Microsoft Exchange Server 2010 SP3"


@pytest.mark.parametrize("version", [*soap.REQUEST_VERSIONS, None])
async def test_accepted_request_versions(version):
    status, body, _ = await call(raw_envelope(CONVERT_DUMMY, version))
    assert status == 200 and b"ErrorInvalidIdMalformed" in body


@pytest.mark.parametrize("version", ["Exchange2007", "Exchange2019", "V2017_07_11", ""])
async def test_refused_request_versions(version):
    status, body, _ = await call(raw_envelope(CONVERT_DUMMY, version))
    assert status == 500
    assert fault_of(body)[:2] == ("a:ErrorInvalidServerVersion", "ErrorInvalidServerVersion")
    # exchangelib reads this as "try the next version", as it does with Exchange.
    assert isinstance(exchangelib_raises(body), exerrors.ErrorInvalidServerVersion)


async def test_operation_newer_than_requested_schema_is_refused():
    status, body, _ = await call(raw_envelope('<m:GetServerTimeZones ReturnFullTimeZoneData="false"/>',
                                              "Exchange2007_SP1"))
    assert status == 500 and fault_of(body)[1] == "ErrorInvalidServerVersion"


async def test_impersonation_is_refused():
    header = ("<t:ExchangeImpersonation><t:ConnectingSID><t:PrimarySmtpAddress>bob@example.test"
              "</t:PrimarySmtpAddress></t:ConnectingSID></t:ExchangeImpersonation>")
    status, body, _ = await call(raw_envelope(CONVERT_DUMMY, header=header))
    assert status == 500 and fault_of(body)[1] == "ErrorImpersonationDenied"


@pytest.mark.parametrize("operation", ["FindItem", "GetUserOofSettingsRequest", "SyncFolderItems"])
async def test_unimplemented_operation_is_named_in_an_error_message(operation):
    status, body, _ = await call(raw_envelope(f"<m:{operation}><m:Whatever/></m:{operation}>"))
    assert status == 200
    root = etree.fromstring(body)
    name = soap.response_name(operation)
    msg = root.find(f"s:Body/m:{name}/m:ResponseMessages/m:{name[:-8]}ResponseMessage", NS)
    assert msg.get("ResponseClass") == "Error"
    assert msg.findtext("m:ResponseCode", namespaces=NS) == "ErrorInvalidOperation"
    assert operation in msg.findtext("m:MessageText", namespaces=NS)
    assert msg.findtext("m:DescriptiveLinkKey", namespaces=NS) == "0"
    assert root.find("s:Header/t:ServerVersionInfo", NS) is not None


BAD_REQUESTS = {
    "malformed": b"<s:Envelope xmlns:s='http://schemas.xmlsoap.org/soap/envelope/'><s:Body>",
    "not-xml": b"GET / HTTP/1.1\r\n\r\n",
    "not-soap": b"<Autodiscover><Request/></Autodiscover>",
    "no-body": f"<s:Envelope xmlns:s='{soap.SOAP_NS}'><s:Header/></s:Envelope>".encode(),
    "empty-body": f"<s:Envelope xmlns:s='{soap.SOAP_NS}'><s:Body/></s:Envelope>".encode(),
    "two-requests": raw_envelope(CONVERT_DUMMY + CONVERT_DUMMY),
    "foreign-namespace": f"<s:Envelope xmlns:s='{soap.SOAP_NS}'><s:Body><x:ConvertId xmlns:x='urn:x'/>"
                         "</s:Body></s:Envelope>".encode(),
    "entity-bomb": b'<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;'
                   b'&a;&a;&a;&a;">]><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>&b;'
                   b'</s:Body></s:Envelope>',
    "xxe": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
async def test_bad_requests_get_a_client_fault_and_nothing_else(name):
    ctx = make_ctx()
    status, body, _ = await call(BAD_REQUESTS[name], ctx=ctx)
    assert status == 400
    faultcode, code, message = fault_of(body)
    assert faultcode == "s:Client" and code == "ErrorSchemaValidation" and message
    assert b"root:" not in body
    assert isinstance(exchangelib_raises(body), exerrors.ErrorSchemaValidation)
    assert ctx.availability.calls == []


async def test_soap_12_is_a_version_mismatch():
    data = b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/></e:Envelope>'
    status, body, _ = await call(data)
    assert status == 400 and fault_of(body)[0] == "s:VersionMismatch"


async def test_oversized_request_is_refused_before_parsing():
    data = raw_envelope(CONVERT_DUMMY).replace(b"<s:Body>", b"<s:Body>" + b" " * soap.MAX_REQUEST_BYTES)
    status, body, _ = await call(data)
    assert status == 400 and fault_of(body)[1] == "ErrorRequestStreamTooBig"


async def test_operation_failures_never_escape():
    async def broken(ctx, user, request):
        raise RuntimeError("bug")

    async def unavailable(ctx, user, request):
        raise BackendUnavailable("store down", retry_after=17)

    ops = {"ConvertId": Operation("ConvertId", broken), "GetFolder": Operation("GetFolder", unavailable)}
    status, body, _ = await call(raw_envelope(CONVERT_DUMMY), ops=ops)
    assert status == 500 and fault_of(body)[1] == "ErrorInternalServerError" and b"bug" not in body
    status, body, headers = await call(raw_envelope("<m:GetFolder/>"), ops=ops)
    assert status == 503 and headers == {"Retry-After": "17"} and fault_of(body)[1] == "ErrorServerBusy"


# --- ConvertId ---------------------------------------------------------------------------------------------


async def test_convert_id_answers_version_guess_like_exchange(proto):
    service = ConvertId(protocol=proto)
    payload = service.get_payload(items=[AlternateId(id="DUMMY", format="EwsId", mailbox="DUMMY"),
                                         AlternateId(id="AAMk=", format="EwsId", mailbox="alice@example.test")],
                                  destination_format="EntryId")
    status, body, _ = await call(service.wrap(content=payload, api_version="Exchange2016"))
    assert status == 200
    results = list(service.parse(body))
    assert [type(r) for r in results] == [exerrors.ErrorInvalidIdMalformed] * 2
    assert str(results[0]) == "Id is malformed."


async def test_convert_id_with_bad_format_is_a_schema_fault():
    status, body, _ = await call(raw_envelope(CONVERT_DUMMY.replace("EntryId", "Banana")))
    assert status == 500 and fault_of(body)[1] == "ErrorSchemaValidation"


# --- GetServerTimeZones ------------------------------------------------------------------------------------


async def server_zones(proto, ids=None, full=True, version="Exchange2010_SP2") -> list[TimeZoneDefinition]:
    service = GetServerTimeZones(protocol=proto)
    timezones = [EWSTimeZone.from_ms_id(i) for i in ids] if ids else None
    status, body, _ = await call(service.wrap(service.get_payload(timezones, full), api_version=version))
    assert status == 200, body
    return list(service.parse(body))


@pytest.mark.parametrize("windows, year, bias, std, dst", [
    ("W. Europe Standard Time", 2024, -60, (0, 10, 5, 7, dt.time(3)), (-60, 3, 5, 7, dt.time(2))),
    ("Eastern Standard Time", 2024, 300, (0, 11, 1, 7, dt.time(2)), (-60, 3, 2, 7, dt.time(2))),
    ("Eastern Standard Time", 2005, 300, (0, 10, 5, 7, dt.time(2)), (-60, 4, 1, 7, dt.time(2))),
    ("AUS Eastern Standard Time", 2024, -600, (0, 4, 1, 7, dt.time(3)), (-60, 10, 1, 7, dt.time(2))),
    ("India Standard Time", 2024, -330, None, None),
    ("UTC", 2024, 0, None, None),
])
async def test_server_zone_satisfies_exchangelib(proto, windows, year, bias, std, dst):
    (definition,) = await server_zones(proto, [windows])
    assert definition.id == windows and definition.name.startswith("(UTC")
    tz = TimeZone.from_server_timezone(tz_definition=definition, for_year=year)
    assert tz.bias == bias
    if std is None:  # no DST: exchangelib fills in zero-bias placeholders
        assert tz.standard_time.bias == tz.daylight_time.bias == 0
        return
    for got, want in ((tz.standard_time, std), (tz.daylight_time, dst)):
        assert (got.bias, got.iso_month, got.occurrence, got.weekday, got.time) == want


async def test_names_only_and_default_is_full(proto):
    (names_only,) = await server_zones(proto, ["Pacific Standard Time"], full=False)
    assert names_only.id == "Pacific Standard Time" and names_only.periods is None
    status, body, _ = await call(raw_envelope("<m:GetServerTimeZones><m:Ids><t:Id>Pacific Standard Time</t:Id>"
                                              "</m:Ids></m:GetServerTimeZones>"))
    assert b"RecurringDayTransition" in body  # ReturnFullTimeZoneData defaults to true


def _changes_in(zone: ZoneInfo, year: int) -> int:
    day, last, count = dt.datetime(year, 1, 1, 12, tzinfo=UTC), None, 0
    while day.year == year:
        offset = day.astimezone(zone).utcoffset()
        count += last is not None and offset != last
        last, day = offset, day + dt.timedelta(days=1)
    return count


async def test_every_server_zone_matches_zoneinfo_through_exchangelib(proto):
    definitions = await server_zones(proto)
    assert [d.id for d in definitions] == list(windows_ids()) and len(definitions) > 130
    for definition in definitions:
        zone = ZoneInfo(EWSTimeZone.from_ms_id(definition.id).key)
        for year in (2006, 2016, 2024, 2031):
            if _changes_in(zone, year) > 2:
                continue  # a year with a pause inside summer time: one yearly rule cannot say it
            tz = TimeZone.from_server_timezone(tz_definition=definition, for_year=year)
            mine = RuleTimeZone(rule_from_xml(etree.fromstring(etree.tostring(tz.to_xml(version=None)))))
            for month in range(1, 13):
                for day in (2, 16):
                    when = dt.datetime(year, month, day, 12, tzinfo=UTC)
                    assert when.astimezone(mine).utcoffset() == when.astimezone(zone).utcoffset(), \
                        (definition.id, when)


async def test_unknown_zone_id_is_an_error_message():
    status, body, _ = await call(raw_envelope('<m:GetServerTimeZones><m:Ids><t:Id>Mars Standard Time</t:Id>'
                                              '</m:Ids></m:GetServerTimeZones>'))
    assert status == 200 and b"ErrorTimeZone" in body and b"Mars Standard Time" in body
    status, body, _ = await call(raw_envelope('<m:GetServerTimeZones ReturnFullTimeZoneData="maybe"/>'))
    assert status == 500 and fault_of(body)[1] == "ErrorSchemaValidation"


# --- the request TimeZone as a tzinfo ----------------------------------------------------------------------


async def requester_tz(proto, iana: str, year: int) -> RuleTimeZone:
    """The tzinfo we build from the TimeZone element exchangelib sends for ``iana`` in ``year``."""
    (definition,) = await server_zones(proto, [EWSTimeZone(iana).ms_id])
    element = TimeZone.from_server_timezone(tz_definition=definition, for_year=year).to_xml(version=None)
    return RuleTimeZone(rule_from_xml(etree.fromstring(etree.tostring(element))))


@pytest.mark.parametrize("iana, days", [
    ("Europe/Berlin", [(2024, 3, 31), (2024, 10, 27)]),
    ("America/New_York", [(2024, 3, 10), (2024, 11, 3)]),
    ("Australia/Sydney", [(2024, 4, 7), (2024, 10, 6)]),
])
async def test_request_zone_agrees_with_zoneinfo_around_dst_changes(proto, iana, days):
    mine, zone = await requester_tz(proto, iana, 2024), ZoneInfo(iana)
    for y, mo, d in days:
        start = dt.datetime(y, mo, d) - dt.timedelta(hours=6)
        for quarter in range(4 * 36):
            wall = start + dt.timedelta(minutes=15 * quarter)
            for fold in (0, 1):  # wall times in gaps and overlaps, both ways PEP 495 reads them
                assert wall.replace(tzinfo=mine, fold=fold).utcoffset() == \
                    wall.replace(tzinfo=zone, fold=fold).utcoffset(), (iana, wall, fold)
            instant = (start + dt.timedelta(minutes=15 * quarter)).replace(tzinfo=UTC)
            converted = instant.astimezone(mine)
            assert converted.replace(tzinfo=None) == instant.astimezone(zone).replace(tzinfo=None)
            assert converted.astimezone(UTC) == instant  # fromutc sets fold so the round trip is exact


def _tz_xml(inner: str) -> etree._Element:
    return etree.fromstring(f'<t:TimeZone xmlns:t="{soap.T_NS}">{inner}</t:TimeZone>')


def _transition(tag: str, bias: int, time: str, order: int, month: int, day: str, year: str = "") -> str:
    return (f"<t:{tag}><t:Bias>{bias}</t:Bias><t:Time>{time}</t:Time><t:DayOrder>{order}</t:DayOrder>"
            f"<t:Month>{month}</t:Month><t:DayOfWeek>{day}</t:DayOfWeek>{year}</t:{tag}>")


def test_time_zone_without_dst_and_with_absolute_dates():
    fixed = RuleTimeZone(rule_from_xml(_tz_xml("<t:Bias>-330</t:Bias>" + _transition("StandardTime", 0, "00:00:00", 0,
                                                                                   0, "Sunday") +
                                               _transition("DaylightTime", 0, "00:00:00", 0, 0, "Sunday"))))
    assert dt.datetime(2024, 7, 1, tzinfo=fixed).utcoffset() == dt.timedelta(hours=5, minutes=30)
    # With Year the change is a date (DayOrder = day of the month), as in Windows.
    absolute = RuleTimeZone(rule_from_xml(_tz_xml(
        "<t:Bias>0</t:Bias>" + _transition("StandardTime", 0, "02:00:00", 20, 10, "Sunday", "<t:Year>2024</t:Year>")
        + _transition("DaylightTime", -60, "01:00:00", 3, 3, "Sunday", "<t:Year>2024</t:Year>"))))
    assert dt.datetime(2024, 3, 3, 0, 59, tzinfo=absolute).utcoffset() == dt.timedelta(0)
    assert dt.datetime(2024, 3, 3, 2, 30, tzinfo=absolute).utcoffset() == dt.timedelta(hours=1)
    assert dt.datetime(2024, 10, 21, tzinfo=absolute).utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("inner", [
    "<t:Bias>x</t:Bias>",
    "",
    "<t:Bias>1440</t:Bias>",
    "<t:Bias>600</t:Bias>" + _transition("StandardTime", 0, "02:00:00", 1, 10, "Sunday")
    + _transition("DaylightTime", 600, "02:00:00", 1, 3, "Sunday"),
    "<t:Bias>0</t:Bias>" + _transition("StandardTime", 0, "02:00", 1, 10, "Sunday")
    + _transition("DaylightTime", -60, "02:00:00", 1, 3, "Sunday"),
    "<t:Bias>0</t:Bias>" + _transition("StandardTime", 0, "02:00:00", 1, 13, "Sunday")
    + _transition("DaylightTime", -60, "02:00:00", 1, 3, "Sunday"),
    "<t:Bias>0</t:Bias>" + _transition("StandardTime", 0, "02:00:00", 7, 10, "Sunday")
    + _transition("DaylightTime", -60, "02:00:00", 1, 3, "Sunday"),
    "<t:Bias>0</t:Bias>" + _transition("StandardTime", 0, "25:00:00", 1, 10, "Sunday")
    + _transition("DaylightTime", -60, "02:00:00", 1, 3, "Sunday"),
    "<t:Bias>0</t:Bias>" + _transition("StandardTime", 0, "02:00:00", 1, 10, "Funday")
    + _transition("DaylightTime", -60, "02:00:00", 1, 3, "Sunday"),
])
def test_invalid_time_zones_are_refused(inner):
    with pytest.raises(soap.SoapFault) as info:
        request_zone(etree.fromstring(f'<m:R xmlns:m="{soap.M_NS}" xmlns:t="{soap.T_NS}">'
                                      f'<t:TimeZone>{inner}</t:TimeZone></m:R>'), None)
    assert info.value.response_code == "ErrorTimeZone"


# --- GetUserAvailability -----------------------------------------------------------------------------------


BERLIN = EWSTimeZone("Europe/Berlin")
NEW_YORK = EWSTimeZone("America/New_York")


async def availability_request(proto, emails, start: EWSDateTime, end: EWSDateTime, view="DetailedMerged",
                               interval=30, version="Exchange2010_SP2", edit=None):
    """(service, request bytes) as exchangelib's Protocol.get_free_busy_info builds them; ``edit`` may alter
    the payload element first (for values exchangelib itself would refuse to send)."""
    (definition,) = await server_zones(proto, [start.tzinfo.ms_id])
    service = GetUserAvailability(protocol=proto)
    service.tzinfo = start.tzinfo
    options = FreeBusyViewOptions(time_window=TimeWindow(start=start, end=end),
                                  merged_free_busy_interval=max(5, min(interval, 1440)),
                                  requested_view=view if view in FreeBusyViewOptions.REQUESTED_VIEWS else "FreeBusy")
    payload = service.get_payload(
        mailbox_data=[MailboxData(email=e, attendee_type="Required", exclude_conflicts=False) for e in emails],
        timezone=TimeZone.from_server_timezone(tz_definition=definition, for_year=start.year),
        free_busy_view_options=options)
    payload.find(f".//{{{soap.T_NS}}}MergedFreeBusyIntervalInMinutes").text = str(interval)
    payload.find(f".//{{{soap.T_NS}}}RequestedView").text = view
    if edit:
        edit(payload)
    return service, service.wrap(content=payload, api_version=version)


def mailbox(address: str, events: list[BusyEvent], access=AccessLevel.LIMITED, hours=BERLIN_HOURS):
    return MailboxAvailability(address, events, access, hours)


WINDOW = (EWSDateTime(2024, 3, 30, 0, 0, tzinfo=BERLIN), EWSDateTime(2024, 4, 1, 0, 0, tzinfo=BERLIN))
STANDUP = event(dt.datetime(2024, 3, 31, 7, 0, tzinfo=UTC), 90)  # 09:00-10:30 CEST, the day clocks change


@pytest.mark.parametrize("view, merged, events, details", [
    ("MergedOnly", True, False, False),
    ("FreeBusy", False, True, False),
    ("FreeBusyMerged", True, True, False),
    ("Detailed", False, True, True),
    ("DetailedMerged", True, True, True),
])
async def test_every_requested_view(proto, view, merged, events, details):
    ctx = make_ctx({"alice@example.test": mailbox("alice@example.test", [STANDUP])})
    service, data = await availability_request(proto, ["alice@example.test"], *WINDOW, view=view)
    status, body, _ = await call(data, ctx=ctx)
    assert status == 200
    (result,) = list(service.parse(body))
    assert result.view_type == view
    # 47 hours (one lost to the clock change) in 30-minute slots; busy from 09:00 CEST = slot 2*(24+8)
    assert (result.merged == "0" * 64 + "222" + "0" * 27) is merged
    assert (result.merged is None) is not merged
    if not events:
        assert not result.calendar_events
    else:
        (ev,) = result.calendar_events
        assert (ev.start, ev.end, ev.busy_type) == (EWSDateTime(2024, 3, 31, 9, 0, tzinfo=BERLIN),
                                                    EWSDateTime(2024, 3, 31, 10, 30, tzinfo=BERLIN), "Busy")
        assert (ev.details is not None) is details
        if details:
            assert (ev.details.subject, ev.details.location, ev.details.is_meeting, ev.details.is_private) == \
                ("Standup", "Room 1", True, False)
    assert [(p.weekdays, p.start, p.end) for p in result.working_hours] == [([1, 2, 3, 4, 5], dt.time(8), dt.time(17))]
    assert result.working_hours_timezone.bias == -60


async def test_window_and_times_are_read_and_written_in_the_requesters_zone(proto):
    ctx = make_ctx({"bob@example.test": mailbox("bob@example.test", [
        event(dt.datetime(2024, 3, 10, 6, 30, tzinfo=UTC), 60),   # 01:30-03:30 EST->EDT: the hour 02:00 never was
        event(dt.datetime(2024, 3, 10, 16, 0, tzinfo=UTC), 30)])})  # 12:00 EDT
    start, end = EWSDateTime(2024, 3, 9, 0, 0, tzinfo=NEW_YORK), EWSDateTime(2024, 3, 11, 0, 0, tzinfo=NEW_YORK)

    def naive_window(payload):  # Outlook-style: wall times without offset, to be read in the request's zone
        for name in ("StartTime", "EndTime"):
            elem = payload.find(f".//{{{soap.T_NS}}}{name}")
            elem.text = elem.text[:19]

    service, data = await availability_request(proto, ["bob@example.test"], start, end, view="FreeBusy",
                                               edit=naive_window)
    assert b"<t:StartTime>2024-03-09T00:00:00</t:StartTime>" in data
    status, body, _ = await call(data, ctx=ctx)
    (_, _, asked_start, asked_end, _), = ctx.availability.calls
    assert (asked_start, asked_end) == (dt.datetime(2024, 3, 9, 5, tzinfo=UTC), dt.datetime(2024, 3, 11, 4, tzinfo=UTC))
    assert b"<t:StartTime>2024-03-10T01:30:00</t:StartTime>" in body  # no offset, as Exchange writes them
    assert b"<t:EndTime>2024-03-10T03:30:00</t:EndTime>" in body
    assert b"<t:StartTime>2024-03-10T12:00:00</t:StartTime>" in body
    (result,) = list(service.parse(body))
    assert [e.start.astimezone(EWSTimeZone("UTC")) for e in result.calendar_events] == \
        [dt.datetime(2024, 3, 10, 6, 30, tzinfo=UTC), dt.datetime(2024, 3, 10, 16, 0, tzinfo=UTC)]


async def test_working_hours_carry_the_owners_zone(proto):
    hours = WorkingHours("America/New_York", ("Monday", "Wednesday"), 540, 1080)
    ctx = make_ctx({"bob@example.test": mailbox("bob@example.test", [], hours=hours)})
    service, data = await availability_request(proto, ["bob@example.test"], *WINDOW, view="FreeBusy")
    (result,) = list(service.parse((await call(data, ctx=ctx))[1]))
    tz = result.working_hours_timezone
    assert (tz.bias, tz.daylight_time.bias, tz.daylight_time.iso_month, tz.daylight_time.occurrence) == (300, -60, 3, 2)
    assert (tz.standard_time.iso_month, tz.standard_time.occurrence) == (11, 1)
    assert [(p.weekdays, p.start, p.end) for p in result.working_hours] == [([1, 3], dt.time(9), dt.time(18))]


async def test_access_decides_the_view_and_the_details(proto):
    private = event(dt.datetime(2024, 3, 30, 10, 0, tzinfo=UTC), subject=None, location=None, private=True)
    bare = event(dt.datetime(2024, 3, 30, 12, 0, tzinfo=UTC), subject=None, location=None)
    ctx = make_ctx({"limited@example.test": mailbox("limited@example.test", [private, bare, STANDUP]),
                    "times@example.test": mailbox("times@example.test", [event(STANDUP.start, subject=None,
                                                                               location=None)],
                                                  access=AccessLevel.AVAILABILITY),
                    "closed@example.test": mailbox("closed@example.test", [STANDUP], access=AccessLevel.NONE)})
    service, data = await availability_request(proto, ["limited@example.test", "times@example.test"], *WINDOW,
                                               view="DetailedMerged")
    limited, times = list(service.parse((await call(data, ctx=ctx))[1]))
    assert limited.view_type == "DetailedMerged"
    private_one, bare_one, standup = limited.calendar_events
    assert standup.details.subject == "Standup"
    assert private_one.details.is_private is True and private_one.details.subject is None
    assert bare_one.details is None  # nothing to tell beyond the time
    assert times.view_type == "FreeBusyMerged" and times.calendar_events[0].details is None
    # Permission "none" is a view of type None: nothing booked shows, not even working hours.
    service, data = await availability_request(proto, ["closed@example.test"], *WINDOW)
    status, body, _ = await call(data, ctx=ctx)
    (closed,) = list(service.parse(body))
    assert status == 200 and b"Standup" not in body and b"WorkingHours" not in body
    assert closed.view_type == "None" and not closed.merged and not closed.calendar_events


@pytest.mark.parametrize("kind, code", [
    ("not-found", "ErrorMailRecipientNotFound"),
    ("denied", "ErrorNoFreeBusyAccess"),
    ("timeout", "ErrorTimeoutExpired"),
    ("unavailable", "ErrorMailboxStoreUnavailable"),
    ("no-calendar-backend", "ErrorFreeBusyGenerationFailed"),
])
async def test_per_mailbox_errors(proto, kind, code):
    ctx = make_ctx({"alice@example.test": mailbox("alice@example.test", [STANDUP]),
                    "x@example.test": AvailabilityError(kind, "detail")})
    _, data = await availability_request(proto, ["alice@example.test", "x@example.test"], *WINDOW)
    status, body, _ = await call(data, ctx=ctx)
    assert status == 200
    ok, failed = etree.fromstring(body).findall(".//m:FreeBusyResponse", NS)
    assert ok.find("m:ResponseMessage", NS).get("ResponseClass") == "Success"
    msg = failed.find("m:ResponseMessage", NS)
    assert msg.get("ResponseClass") == "Error" and msg.findtext("m:ResponseCode", namespaces=NS) == code
    assert "x@example.test" in msg.findtext("m:MessageText", namespaces=NS)
    assert failed.findtext("m:FreeBusyView/t:FreeBusyViewType", namespaces=NS) == "None"


async def test_text_xml_cannot_carry_is_dropped_not_fatal(proto):
    odd = dataclasses.replace(STANDUP, subject="Stand\x00up\x07 \ud800ok", location="Room\x1b 1")
    ctx = make_ctx({"alice@example.test": mailbox("alice@example.test", [odd])})
    service, data = await availability_request(proto, ["alice@example.test"], *WINDOW, view="Detailed")
    status, body, _ = await call(data, ctx=ctx)
    (result,) = list(service.parse(body))
    assert status == 200 and result.calendar_events[0].details.subject == "Standup ok"
    assert result.calendar_events[0].details.location == "Room 1"


async def test_not_found_is_returned_by_exchangelib_not_raised(proto):
    ctx = make_ctx({"alice@example.test": mailbox("alice@example.test", [])})
    service, data = await availability_request(proto, ["alice@example.test", "ghost@example.test"], *WINDOW)
    found, missing = list(service.parse((await call(data, ctx=ctx))[1]))
    assert found.view_type == "DetailedMerged" and isinstance(missing, exerrors.ErrorMailRecipientNotFound)


async def test_service_gets_requester_and_credentials_and_short_answers_fail_the_rest(proto):
    class Short(FakeAvailability):
        async def lookup(self, requester, addresses, start, end, *, credentials=None):
            await super().lookup(requester, addresses, start, end, credentials=credentials)
            return [mailbox(addresses[0], [])]

    ctx = make_ctx()
    ctx.availability = Short({})
    _, data = await availability_request(proto, ["alice@example.test", "bob@example.test"], *WINDOW)
    creds = Credentials("alice@example.test", "secret")
    status, body, _ = await call(data, ctx=ctx, creds=creds)
    requester, addresses, _, _, given = ctx.availability.calls[0]
    assert requester is ALICE and addresses == ["alice@example.test", "bob@example.test"] and given == creds
    codes = [e.text for e in etree.fromstring(body).iterfind(".//m:ResponseCode", NS)]
    assert codes == ["NoError", "ErrorMailboxStoreUnavailable"]


@pytest.mark.parametrize("version, shown", [("Exchange2010_SP2", "Free"), ("Exchange2013", "WorkingElsewhere"),
                                            ("Exchange2016", "WorkingElsewhere")])
async def test_working_elsewhere_only_for_schemas_that_have_it(proto, version, shown):
    elsewhere = event(STANDUP.start, busy=BusyType.WORKING_ELSEWHERE)
    ctx = make_ctx({"alice@example.test": mailbox("alice@example.test", [elsewhere])})
    _, data = await availability_request(proto, ["alice@example.test"], *WINDOW, view="FreeBusy", version=version)
    assert f"<t:BusyType>{shown}</t:BusyType>".encode() in (await call(data, ctx=ctx))[1]


@pytest.mark.parametrize("change, code, error", [
    ({"mailboxes": 4}, "ErrorMailboxDataArrayTooBig", exerrors.ErrorMailboxDataArrayTooBig),
    ({"days": 8}, "ErrorTimeIntervalTooBig", exerrors.ErrorTimeIntervalTooBig),
    ({"interval": 4}, "ErrorInvalidMergedFreeBusyInterval", exerrors.ErrorInvalidMergedFreeBusyInterval),
    ({"interval": 1441}, "ErrorInvalidMergedFreeBusyInterval", exerrors.ErrorInvalidMergedFreeBusyInterval),
    ({"view": "None"}, "ErrorInvalidFreeBusyViewType", exerrors.ErrorInvalidFreeBusyViewType),
    ({"reverse": True}, "ErrorInvalidTimeInterval", exerrors.ErrorInvalidTimeInterval),
])
async def test_request_limits_are_faults_with_exchanges_codes(proto, change, code, error):
    ctx = make_ctx(max_mailboxes=3, max_days=7)
    emails = [f"u{i}@example.test" for i in range(change.get("mailboxes", 1))]
    start = EWSDateTime(2024, 3, 1, 0, 0, tzinfo=BERLIN)
    end = start + dt.timedelta(days=change.get("days", 7))

    def reverse(payload):
        s, e = (payload.find(f".//{{{soap.T_NS}}}{n}") for n in ("StartTime", "EndTime"))
        s.text, e.text = e.text, s.text

    service, data = await availability_request(proto, emails, start, end, view=change.get("view", "FreeBusy"),
                                               interval=change.get("interval", 30),
                                               edit=reverse if change.get("reverse") else None)
    status, body, _ = await call(data, ctx=ctx)
    assert status == 500 and fault_of(body)[1] == code
    with pytest.raises(error):
        list(service.parse(body))
    assert ctx.availability.calls == []


@pytest.mark.parametrize("interval", [5, 1440])
async def test_interval_bounds_are_inclusive(proto, interval):
    ctx = make_ctx({"alice@example.test": mailbox("alice@example.test", [])})
    service, data = await availability_request(proto, ["alice@example.test"], *WINDOW, view="MergedOnly",
                                               interval=interval)
    (result,) = list(service.parse((await call(data, ctx=ctx))[1]))
    assert result.merged == "0" * -(-47 * 60 // interval)


async def test_empty_mailbox_array_is_a_fault():
    body = ('<m:GetUserAvailabilityRequest><m:MailboxDataArray/><t:FreeBusyViewOptions><t:TimeWindow>'
            '<t:StartTime>2024-03-01T00:00:00</t:StartTime><t:EndTime>2024-03-02T00:00:00</t:EndTime>'
            '</t:TimeWindow></t:FreeBusyViewOptions></m:GetUserAvailabilityRequest>')
    status, reply, _ = await call(raw_envelope(body))
    assert status == 500 and fault_of(reply)[1] == "ErrorMailboxDataArrayEmpty"


SUGGESTIONS = ("<t:SuggestionsViewOptions><t:DetailedSuggestionsWindow><t:StartTime>2024-03-01T00:00:00"
               "</t:StartTime><t:EndTime>2024-03-02T00:00:00</t:EndTime></t:DetailedSuggestionsWindow>"
               "</t:SuggestionsViewOptions>")


async def test_suggestions_are_declined_while_free_busy_is_answered(proto):
    ctx = make_ctx({"alice@example.test": mailbox("alice@example.test", [STANDUP])})

    def add_suggestions(payload):
        payload.append(etree.fromstring(f'<r xmlns:t="{soap.T_NS}">{SUGGESTIONS}</r>')[0])

    service, data = await availability_request(proto, ["alice@example.test"], *WINDOW, edit=add_suggestions)
    status, body, _ = await call(data, ctx=ctx)
    (result,) = list(service.parse(body))
    assert result.view_type == "DetailedMerged"
    msg = etree.fromstring(body).find(".//m:SuggestionsResponse/m:ResponseMessage", NS)
    assert msg.findtext("m:ResponseCode", namespaces=NS) == "ErrorMeetingSuggestionGenerationFailed"
    assert "not implemented" in msg.findtext("m:MessageText", namespaces=NS)
    # Suggestions alone: only the declining answer.
    only = ('<m:GetUserAvailabilityRequest><m:MailboxDataArray><t:MailboxData><t:Email><t:Address>'
            'alice@example.test</t:Address></t:Email></t:MailboxData></m:MailboxDataArray>'
            f'{SUGGESTIONS}</m:GetUserAvailabilityRequest>')
    status, body, _ = await call(raw_envelope(only), ctx=ctx)
    root = etree.fromstring(body)
    assert status == 200 and root.find(".//m:FreeBusyResponseArray", NS) is None
    assert root.find(".//m:SuggestionsResponse", NS) is not None


async def test_time_zone_context_header_stands_in_for_a_missing_time_zone(proto):
    ctx = make_ctx({"alice@example.test": mailbox("alice@example.test", [STANDUP])})

    def drop_time_zone(payload):
        payload.remove(payload.find(f"{{{soap.T_NS}}}TimeZone"))
        for name in ("StartTime", "EndTime"):
            elem = payload.find(f".//{{{soap.T_NS}}}{name}")
            elem.text = elem.text[:19]

    service, data = await availability_request(proto, ["alice@example.test"], *WINDOW, view="FreeBusy",
                                               edit=drop_time_zone)
    assert b"TimeZoneContext" in data  # exchangelib sends it for this operation
    (result,) = list(service.parse((await call(data, ctx=ctx))[1]))
    assert result.calendar_events[0].start == EWSDateTime(2024, 3, 31, 9, 0, tzinfo=BERLIN)
    assert ctx.availability.calls[0][2] == dt.datetime(2024, 3, 29, 23, tzinfo=UTC)


def test_request_dataclass_keeps_credentials_out_of_repr():
    req = soap.EwsRequest("ConvertId", etree.Element("x"), None, None, Credentials("a", "hunter2"))
    assert "hunter2" not in repr(req) and "hunter2" not in repr(dataclasses.replace(req))


GUA_BODY = ('<m:GetUserAvailabilityRequest><t:TimeZone><t:Bias>-60</t:Bias><t:StandardTime><t:Bias>0</t:Bias>'
            '<t:Time>03:00:00</t:Time><t:DayOrder>5</t:DayOrder><t:Month>10</t:Month><t:DayOfWeek>Sunday'
            '</t:DayOfWeek></t:StandardTime><t:DaylightTime><t:Bias>-60</t:Bias><t:Time>02:00:00</t:Time>'
            '<t:DayOrder>5</t:DayOrder><t:Month>3</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:DaylightTime>'
            '</t:TimeZone><m:MailboxDataArray><t:MailboxData><t:Email><t:Address>alice@example.test</t:Address>'
            '</t:Email><t:AttendeeType>Required</t:AttendeeType></t:MailboxData></m:MailboxDataArray>'
            '<t:FreeBusyViewOptions><t:TimeWindow><t:StartTime>2024-03-30T00:00:00</t:StartTime><t:EndTime>'
            '2024-04-01T00:00:00</t:EndTime></t:TimeWindow><t:MergedFreeBusyIntervalInMinutes>30'
            '</t:MergedFreeBusyIntervalInMinutes><t:RequestedView>DetailedMerged</t:RequestedView>'
            '</t:FreeBusyViewOptions></m:GetUserAvailabilityRequest>')
SEEDS = [raw_envelope(GUA_BODY), raw_envelope(CONVERT_DUMMY),
         raw_envelope('<m:GetServerTimeZones ReturnFullTimeZoneData="true"><m:Ids><t:Id>UTC</t:Id></m:Ids>'
                      '</m:GetServerTimeZones>')]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), cuts=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 40),
                                                            st.binary(max_size=8)), max_size=4))
def test_fuzz_mangled_requests_get_a_soap_answer_never_an_internal_error(seed, cuts):
    data = bytearray(seed)
    for at, length, replacement in cuts:
        at %= len(data) or 1
        data[at:at + length] = replacement
    ctx = make_ctx({"alice@example.test": mailbox("alice@example.test", [STANDUP])})
    status, body, _ = asyncio.run(answer(ctx, registry(), ALICE, None, bytes(data)))
    root = etree.fromstring(body)
    assert root.tag == f"{{{soap.SOAP_NS}}}Envelope"
    assert status in (200, 400, 500)
    assert b"ErrorInternalServerError" not in body, bytes(data)
