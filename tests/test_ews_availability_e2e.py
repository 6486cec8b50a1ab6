"""exchangelib, a real EWS client, asks the running gateway for free/busy of users whose calendars are in Radicale.

The expected answers are computed here, independently of the service, from the
events this test puts in the calendars (recurring with a moved instance across
the DST change, all-day, tentative, transparent, private, cancelled, out of office).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import zoneinfo
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from adapters.dav import CalDavCalendarStore
from adapters.interfaces import Credentials
from gateway.demo.procs import free_port
from gatewayproc import caldav_backend, config_toml, start_gateway, stop_gateway, users_toml, write_config

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
UTC = dt.timezone.utc
# A window in 2031 that no other test writes to, spanning the end of summer time (26 October 2031).
WINDOW = (dt.datetime(2031, 10, 20, tzinfo=BERLIN), dt.datetime(2031, 10, 29, tzinfo=BERLIN))

VTZ = """BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:DAYLIGHT
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
TZNAME:CEST
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
END:DAYLIGHT
BEGIN:STANDARD
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
TZNAME:CET
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
END:STANDARD
END:VTIMEZONE"""


def cal(*events: str, tz: bool = False) -> str:
    body = "\n".join(events)
    return ("BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//casgate tests//EN\n" + (VTZ + "\n" if tz else "")
            + body + "\nEND:VCALENDAR\n").replace("\n", "\r\n")


def ev(uid: str, start: str, end: str, summary: str, *extra: str) -> str:
    return "\n".join(["BEGIN:VEVENT", f"UID:{uid}", "DTSTAMP:20310101T000000Z", start, end,
                      f"SUMMARY:{summary}", *extra, "END:VEVENT"])


BOB_EVENTS = [
    # Weekly on Mondays 10:00-11:00 Berlin time; the second instance (after the DST change) moved to 14:00.
    cal(ev("e2e-weekly", "DTSTART;TZID=Europe/Berlin:20311020T100000", "DTEND;TZID=Europe/Berlin:20311020T110000",
           "Weekly sync", "RRULE:FREQ=WEEKLY;COUNT=3", "LOCATION:Room 1"),
        ev("e2e-weekly", "DTSTART;TZID=Europe/Berlin:20311027T140000", "DTEND;TZID=Europe/Berlin:20311027T150000",
           "Weekly sync (moved)", "RECURRENCE-ID;TZID=Europe/Berlin:20311027T100000"), tz=True),
    cal(ev("e2e-allday", "DTSTART;VALUE=DATE:20311022", "DTEND;VALUE=DATE:20311023", "Offsite")),
    cal(ev("e2e-tentative", "DTSTART:20311023T070000Z", "DTEND:20311023T073000Z", "Maybe", "STATUS:TENTATIVE")),
    cal(ev("e2e-transparent", "DTSTART:20311023T100000Z", "DTEND:20311023T110000Z", "Lunch reading",
           "TRANSP:TRANSPARENT")),
    cal(ev("e2e-private", "DTSTART:20311024T130000Z", "DTEND:20311024T140000Z", "Doctor", "CLASS:PRIVATE",
           "LOCATION:Clinic")),
    cal(ev("e2e-cancelled", "DTSTART:20311024T080000Z", "DTEND:20311024T090000Z", "Called off",
           "STATUS:CANCELLED")),
    cal(ev("e2e-oof", "DTSTART;VALUE=DATE:20311028", "DTEND;VALUE=DATE:20311029", "Holiday",
           "X-MICROSOFT-CDO-BUSYSTATUS:OOF")),
]

# The same events as (start, end, merged digit, subject-or-None when details are hidden).
def berlin(y, mo, d, h=0, mi=0):
    return dt.datetime(y, mo, d, h, mi, tzinfo=BERLIN).astimezone(UTC)


BOB_EXPECTED = [
    (berlin(2031, 10, 20, 10), berlin(2031, 10, 20, 11), 2, "Weekly sync"),
    (berlin(2031, 10, 22), berlin(2031, 10, 23), 2, "Offsite"),
    (dt.datetime(2031, 10, 23, 7, tzinfo=UTC), dt.datetime(2031, 10, 23, 7, 30, tzinfo=UTC), 1, "Maybe"),
    (dt.datetime(2031, 10, 24, 13, tzinfo=UTC), dt.datetime(2031, 10, 24, 14, tzinfo=UTC), 2, None),
    (berlin(2031, 10, 27, 14), berlin(2031, 10, 27, 15), 2, "Weekly sync (moved)"),
    (berlin(2031, 10, 28), berlin(2031, 10, 29), 3, "Holiday"),
]


def expected_merged(expected, start: dt.datetime, end: dt.datetime, minutes: int) -> str:
    out, t, step = [], start.astimezone(UTC), dt.timedelta(minutes=minutes)
    while t < end:
        digit = max([d for s, e, d, _ in expected if s < t + step and e > t] or [0])
        out.append(str(digit))
        t += step
    return "".join(out)


@pytest.fixture(scope="module")
def ews_gateway(workdir, certs, dovecot, radicale, users, service_user):
    async def seed():
        async with AsyncExitStack() as stack:
            store = CalDavCalendarStore(radicale.url, Credentials("bob@example.test", users["bob@example.test"]),
                                        certs.ca_cert)
            await store.start(stack)
            calendar = await store.ensure_default_calendar()
            for text in BOB_EVENTS:
                await store.put_event(calendar.url, text)
    asyncio.run(seed())
    root = Path(workdir) / f"ews-{free_port()}"
    https = free_port()
    write_config(root, config_toml(certs, dovecot, https=https, extra=f"""
[availability]
time_zone = "Europe/Berlin"
[availability.user_access]
"bob@example.test" = "limited"
"carol@example.test" = "none"
{caldav_backend("dav", radicale.url, service_user)}
{caldav_backend("deadcal", f"https://127.0.0.1:{free_port()}/", ("x", "y"))}
[domains."example.test"]
imap = "dovecot"
caldav = "dav"
"""), users_toml(users, '[[user]]\naddress = "dave@example.test"\ncaldav = "deadcal"\n'))
    proc = start_gateway(root, [https])
    try:
        yield f"https://127.0.0.1:{https}/EWS/Exchange.asmx", proc, root
    finally:
        stop_gateway(proc)


@pytest.fixture(scope="module")
def ca_bundle(certs):
    """exchangelib (requests) trusts the test CA through this variable, for this module only."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REQUESTS_CA_BUNDLE", str(certs.ca_cert))
        yield str(certs.ca_cert)


@pytest.fixture(scope="module")
def account(ews_gateway, ca_bundle, users):
    from exchangelib import DELEGATE, Account, Configuration, Credentials as EwsCredentials
    from exchangelib.transport import BASIC
    url, _, _ = ews_gateway
    config = Configuration(service_endpoint=url, auth_type=BASIC,
                           credentials=EwsCredentials("alice@example.test", users["alice@example.test"]))
    return Account("alice@example.test", config=config, autodiscover=False, access_type=DELEGATE,
                   default_timezone=__import__("exchangelib").EWSTimeZone("Europe/Berlin"))


def _views(account, addresses, view="DetailedMerged", interval=30):
    from exchangelib import EWSDateTime, EWSTimeZone
    tz = EWSTimeZone("Europe/Berlin")
    start = EWSDateTime.from_datetime(WINDOW[0]).astimezone(tz)
    end = EWSDateTime.from_datetime(WINDOW[1]).astimezone(tz)
    return list(account.protocol.get_free_busy_info(
        accounts=[(a, "Required", False) for a in addresses], start=start, end=end,
        merged_free_busy_interval=interval, requested_view=view))


def test_version_is_exchange_2010(account):
    version = account.protocol.version
    assert version.build.major_version == 14


def test_merged_string_matches_independent_computation(account):
    (view,) = _views(account, ["bob@example.test"])
    assert view.merged == expected_merged(BOB_EXPECTED, *WINDOW, 30)


def test_calendar_events_and_details(account):
    (view,) = _views(account, ["bob@example.test"], view="Detailed")
    from exchangelib import EWSTimeZone
    utc = EWSTimeZone("UTC")
    got = [(e.start.astimezone(utc), e.end.astimezone(utc), e.busy_type,
            e.details.subject if e.details else None) for e in view.calendar_events]
    names = {0: "Free", 1: "Tentative", 2: "Busy", 3: "OOF"}
    want = [(s, e, names[d], subject) for s, e, d, subject in BOB_EXPECTED]
    # The transparent event is listed as Free; everything else as the table says.
    assert [g for g in got if g[2] != "Free"] == want
    assert any(g[2] == "Free" for g in got)


def test_other_interval_and_view(account):
    (view,) = _views(account, ["bob@example.test"], view="FreeBusyMerged", interval=60)
    assert view.merged == expected_merged(BOB_EXPECTED, *WINDOW, 60)
    assert all(e.details is None for e in view.calendar_events or [])


def test_several_mailboxes_with_one_unknown(account):
    views = _views(account, ["bob@example.test", "nobody@example.test", "alice@example.test"])
    assert views[0].merged == expected_merged(BOB_EXPECTED, *WINDOW, 30)
    assert isinstance(views[1], Exception) and "ErrorMailRecipientNotFound" in type(views[1]).__name__ + str(views[1])
    assert set(views[2].merged) <= {"0", "1", "2", "3"}


def test_access_none_shows_no_data(account):
    (view,) = _views(account, ["carol@example.test"])
    assert not view.calendar_events
    assert not view.merged or set(view.merged) == {"4"}


def test_a_back_end_that_is_down_fails_only_its_mailbox(ews_gateway, account, users):
    from lxml import etree
    url, _, _ = ews_gateway
    status, body = _soap(url, users, _availability_body(["dave@example.test", "bob@example.test"]))
    assert status == 200
    ns = {"m": "http://schemas.microsoft.com/exchange/services/2006/messages",
          "t": "http://schemas.microsoft.com/exchange/services/2006/types"}
    replies = etree.fromstring(body).findall(".//m:FreeBusyResponse", ns)
    assert [r.findtext("m:ResponseMessage/m:ResponseCode", namespaces=ns) for r in replies] == \
        ["ErrorMailboxStoreUnavailable", "NoError"]
    merged = replies[1].findtext(".//t:MergedFreeBusy", namespaces=ns)
    # This request's time zone is UTC (bias 0), so its window is UTC midnight to midnight.
    utc_window = (dt.datetime(2031, 10, 20, tzinfo=UTC), dt.datetime(2031, 10, 29, tzinfo=UTC))
    assert merged == expected_merged(BOB_EXPECTED, *utc_window, 30)


def _soap(url: str, users, body: bytes) -> tuple[int, bytes]:
    import base64
    import ssl
    import urllib.request
    auth = base64.b64encode(f"alice@example.test:{users['alice@example.test']}".encode()).decode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Authorization": f"Basic {auth}", "Content-Type": "text/xml; charset=utf-8"})
    ctx = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])  # set by ca_bundle
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _availability_body(addresses, start="2031-10-20T00:00:00", end="2031-10-29T00:00:00") -> bytes:
    boxes = "".join(f"<t:MailboxData><t:Email><t:Address>{a}</t:Address></t:Email>"
                    f"<t:AttendeeType>Required</t:AttendeeType></t:MailboxData>" for a in addresses)
    return f"""<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types"
 xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
<s:Header><t:RequestServerVersion Version="Exchange2010_SP2"/></s:Header>
<s:Body><m:GetUserAvailabilityRequest>
<t:TimeZone><t:Bias>0</t:Bias><t:StandardTime><t:Bias>0</t:Bias><t:Time>00:00:00</t:Time><t:DayOrder>0</t:DayOrder>
<t:Month>0</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:StandardTime><t:DaylightTime><t:Bias>0</t:Bias>
<t:Time>00:00:00</t:Time><t:DayOrder>0</t:DayOrder><t:Month>0</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek>
</t:DaylightTime></t:TimeZone>
<m:MailboxDataArray>{boxes}</m:MailboxDataArray>
<t:FreeBusyViewOptions><t:TimeWindow><t:StartTime>{start}</t:StartTime><t:EndTime>{end}</t:EndTime></t:TimeWindow>
<t:MergedFreeBusyIntervalInMinutes>30</t:MergedFreeBusyIntervalInMinutes><t:RequestedView>MergedOnly</t:RequestedView>
</t:FreeBusyViewOptions></m:GetUserAvailabilityRequest></s:Body></s:Envelope>""".encode()


@pytest.mark.parametrize("body, status, code", [
    (b"<not xml", 400, b"ErrorSchemaValidation"),
    (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
     b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>&b;</s:Body></s:Envelope>',
     400, b"ErrorSchemaValidation"),
    (_availability_body([f"u{i}@example.test" for i in range(101)]), 500, b"ErrorMailboxDataArrayTooBig"),
    (_availability_body(["bob@example.test"], end="2031-12-19T00:00:00"), 500, b"ErrorTimeIntervalTooBig"),
])
def test_bad_requests_get_the_exchange_error_and_the_gateway_keeps_serving(ews_gateway, account, users,
                                                                           body, status, code):
    url, proc, _ = ews_gateway
    got_status, got = _soap(url, users, body)
    assert got_status == status and code in got
    assert proc.poll() is None
    ok_status, ok = _soap(url, users, _availability_body(["bob@example.test"]))
    assert ok_status == 200 and b"<t:MergedFreeBusy>" in ok


def test_internet_free_busy_url(ews_gateway, account, users):
    import base64
    import ssl
    import urllib.request

    import icalendar
    url, _, _ = ews_gateway
    base = url.rsplit("/EWS/", 1)[0]
    auth = base64.b64encode(f"alice@example.test:{users['alice@example.test']}".encode()).decode()
    ctx = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])  # set by ca_bundle

    def get(path):
        req = urllib.request.Request(base + path, headers={"Authorization": f"Basic {auth}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            return e.code, "", e.read()

    status, ctype, body = get("/freebusy/bob@example.test.vfb?start=2031-10-20T00:00:00%2B02:00"
                              "&end=2031-10-29T00:00:00%2B01:00")
    assert status == 200 and ctype.startswith("text/calendar")
    vfb = icalendar.Calendar.from_ical(body).walk("VFREEBUSY")[0]
    periods = []
    for prop in vfb.get("FREEBUSY") if isinstance(vfb.get("FREEBUSY"), list) else [vfb.get("FREEBUSY")]:
        fbtype = prop.params.get("FBTYPE")
        for start, end in prop.dts if hasattr(prop, "dts") else [(p.dt[0], p.dt[1]) for p in [prop]]:
            periods.append((start, end, fbtype))
    want = {(s, e, {1: "BUSY-TENTATIVE", 2: "BUSY", 3: "BUSY-UNAVAILABLE"}[d]) for s, e, d, _ in BOB_EXPECTED}
    assert {(s, e, t) for s, e, t in periods} == want
    assert b"Doctor" not in body and b"SUMMARY" not in body
    assert get("/freebusy/nobody@example.test.vfb")[0] == 404
    assert get("/freebusy/carol@example.test.vfb")[0] == 403
    assert get("/freebusy/bob@example.test.vfb?start=2031-01-01&end=2031-06-01")[0] == 400
    assert get("/freebusy/bob@example.test.vfb?start=yesterday")[0] == 400


def test_activesync_resolve_recipients_carries_the_same_merged_free_busy(ews_gateway, certs, users):
    """A phone asks ResolveRecipients with Availability: the MergedFreeBusy comes from the same service."""
    import requests
    from pyactivesync import Client

    from gateway.activesync import wbxml
    from gateway.activesync.wbxml import Element
    url, _, _ = ews_gateway
    server = url.split("/")[2]
    start = dt.datetime(2031, 10, 20, 6, tzinfo=UTC)
    end = dt.datetime(2031, 10, 20, 10, tzinfo=UTC)
    alice = "alice@example.test"
    with Client(server, alice, users[alice], device_id="FREEBUSYPHONE1") as c:
        c._transport.session.verify = str(certs.ca_cert)
        c._transport.session.trust_env = False
        key = c.provision()
    body = wbxml.encode(Element("ResolveRecipients", "ResolveRecipients", [
        Element("ResolveRecipients", "To", text="bob@example.test"),
        Element("ResolveRecipients", "Options", [Element("ResolveRecipients", "Availability", [
            Element("ResolveRecipients", "StartTime", text=start.strftime("%Y-%m-%dT%H:%M:%SZ")),
            Element("ResolveRecipients", "EndTime", text=end.strftime("%Y-%m-%dT%H:%M:%SZ"))])])]))
    r = requests.post(f"https://{server}/Microsoft-Server-ActiveSync", data=body, auth=(alice, users[alice]),
                      params={"Cmd": "ResolveRecipients", "User": alice, "DeviceId": "FREEBUSYPHONE1",
                              "DeviceType": "pyactivesync"}, verify=str(certs.ca_cert), timeout=30,
                      headers={"Content-Type": "application/vnd.ms-sync.wbxml", "MS-ASProtocolVersion": "14.1",
                               "X-MS-PolicyKey": key})
    availability = wbxml.decode(r.content).find("Response").find("Recipient").find("Availability")
    assert availability.text_of("Status") == "1"
    assert availability.text_of("MergedFreeBusy") == expected_merged(BOB_EXPECTED, start, end, 30)
    assert "2" in availability.text_of("MergedFreeBusy")  # the weekly meeting shows as busy
