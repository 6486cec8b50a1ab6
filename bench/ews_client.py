"""GetUserAvailability over raw SOAP (timed) and through exchangelib (checked): the benchmark's EWS client side."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import requests
from lxml import etree

from .harness import BenchError

M = "http://schemas.microsoft.com/exchange/services/2006/messages"
T = "http://schemas.microsoft.com/exchange/services/2006/types"
BERLIN = ZoneInfo("Europe/Berlin")
# Europe/Berlin as an EWS SerializableTimeZone: UTC = local + Bias (+ the period's Bias).
_TIME_ZONE = ("<t:TimeZone><t:Bias>-60</t:Bias>"
              "<t:StandardTime><t:Bias>0</t:Bias><t:Time>03:00:00</t:Time><t:DayOrder>5</t:DayOrder>"
              "<t:Month>10</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:StandardTime>"
              "<t:DaylightTime><t:Bias>-60</t:Bias><t:Time>02:00:00</t:Time><t:DayOrder>5</t:DayOrder>"
              "<t:Month>3</t:Month><t:DayOfWeek>Sunday</t:DayOfWeek></t:DaylightTime></t:TimeZone>")


def request_body(addresses: list[str], start: dt.datetime, end: dt.datetime, view: str = "DetailedMerged",
                 interval: int = 30) -> bytes:
    """A GetUserAvailabilityRequest as Outlook or exchangelib sends it: Berlin zone, wall-clock window."""
    def local(t: dt.datetime) -> str:
        return t.astimezone(BERLIN).replace(tzinfo=None).isoformat(timespec="seconds")
    mailboxes = "".join(f"<t:MailboxData><t:Email><t:Address>{escape(a)}</t:Address></t:Email>"
                        "<t:AttendeeType>Required</t:AttendeeType><t:ExcludeConflicts>false</t:ExcludeConflicts>"
                        "</t:MailboxData>" for a in addresses)
    return (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
            f'xmlns:m="{M}" xmlns:t="{T}"><s:Header><t:RequestServerVersion Version="Exchange2010_SP2"/></s:Header>'
            f"<s:Body><m:GetUserAvailabilityRequest>{_TIME_ZONE}<m:MailboxDataArray>{mailboxes}</m:MailboxDataArray>"
            f"<t:FreeBusyViewOptions><t:TimeWindow><t:StartTime>{local(start)}</t:StartTime>"
            f"<t:EndTime>{local(end)}</t:EndTime></t:TimeWindow>"
            f"<t:MergedFreeBusyIntervalInMinutes>{interval}</t:MergedFreeBusyIntervalInMinutes>"
            f"<t:RequestedView>{view}</t:RequestedView></t:FreeBusyViewOptions>"
            "</m:GetUserAvailabilityRequest></s:Body></s:Envelope>").encode()


def summarise(data: bytes, mailboxes: int, digits: int) -> dict:
    """Check an answer: every mailbox answered with success and a full merged string; counts its events."""
    try:
        root = etree.fromstring(data)
    except etree.XMLSyntaxError as exc:
        raise BenchError(f"GetUserAvailability answer is not XML ({exc}): {data[:300]!r}") from None
    answers = root.findall(f".//{{{M}}}FreeBusyResponse")
    failed = [r.findtext(f"{{{M}}}ResponseMessage/{{{M}}}MessageText") for r in answers
              if r.find(f"{{{M}}}ResponseMessage").get("ResponseClass") != "Success"]
    merged = [e.text or "" for e in root.iter(f"{{{T}}}MergedFreeBusy")]
    if len(answers) != mailboxes or failed or len(merged) != mailboxes or any(len(s) != digits for s in merged):
        raise BenchError(f"GetUserAvailability answered {len(answers)} of {mailboxes} mailboxes, {len(failed)} "
                         f"failed ({failed[:2]}), merged lengths {sorted({len(s) for s in merged})} "
                         f"(want {digits}): {data[:400]!r}")
    return {"events": sum(1 for _ in root.iter(f"{{{T}}}CalendarEvent")), "merged": merged, "bytes": len(data)}


class EwsClient:
    """One keep-alive HTTPS connection to the gateway's EWS endpoint, Basic auth as ``login``."""

    def __init__(self, url: str, login: tuple[str, str], ca_file: Path) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.auth = login
        # Per request: requests lets REQUESTS_CA_BUNDLE from the environment override Session.verify.
        self.verify = str(ca_file)

    def post(self, body: bytes, timeout: float = 120.0) -> tuple[float, bytes]:
        """(seconds until the whole answer was read, answer) of one request."""
        t0 = time.perf_counter()
        try:
            r = self.session.post(self.url, data=body, timeout=timeout, verify=self.verify,
                                  headers={"Content-Type": "text/xml; charset=utf-8"})
            data = r.content
        except requests.RequestException as exc:
            raise BenchError(f"EWS request to {self.url} failed: {exc}") from None
        seconds = time.perf_counter() - t0
        if r.status_code != 200:
            raise BenchError(f"EWS answered HTTP {r.status_code}: {data[:400]!r}")
        return seconds, data

    def close(self) -> None:
        self.session.close()


def exchangelib_merged(url: str, login: tuple[str, str], ca_file: Path, addresses: list[str], start: dt.datetime,
                       end: dt.datetime) -> tuple[float, list[str]]:
    """The same request made by exchangelib: (seconds, merged strings); its GetServerTimeZones call included."""
    saved = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(ca_file)  # how exchangelib is told which CA to trust
    try:
        return _exchangelib_merged(url, login, addresses, start, end)
    finally:
        if saved is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = saved


def _exchangelib_merged(url: str, login: tuple[str, str], addresses: list[str], start: dt.datetime,
                        end: dt.datetime) -> tuple[float, list[str]]:
    from exchangelib import DELEGATE, Account, Configuration, Credentials, EWSDateTime, EWSTimeZone
    from exchangelib.transport import BASIC
    tz = EWSTimeZone("Europe/Berlin")
    config = Configuration(service_endpoint=url, auth_type=BASIC, credentials=Credentials(*login))
    account = Account(login[0], config=config, autodiscover=False, access_type=DELEGATE, default_timezone=tz)
    account.protocol.version  # noqa: B018 - the version guess is a request of its own; keep it out of the timing
    t0 = time.perf_counter()
    views = list(account.protocol.get_free_busy_info(
        accounts=[(a, "Required", False) for a in addresses],
        start=EWSDateTime.from_datetime(start).astimezone(tz), end=EWSDateTime.from_datetime(end).astimezone(tz),
        merged_free_busy_interval=30, requested_view="DetailedMerged"))
    seconds = time.perf_counter() - t0
    bad = [v for v in views if isinstance(v, Exception)]
    if bad:
        raise BenchError(f"exchangelib got {len(bad)} failed mailboxes: {bad[0]!r}")
    return seconds, [v.merged for v in views]
