"""The EWS endpoint over real TLS with real logins against Dovecot: auth flow, path spelling, limits, exchangelib.

The free/busy data comes from a fake availability service; everything in
front of it (aiohttp app, TLS, Basic auth through AuthService and Dovecot,
SOAP) is real. Failed logins here use unknown users or empty passwords, which
never reach Dovecot, so its per-address login penalty never slows other tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ssl
from types import SimpleNamespace

import aiohttp
import pytest
import requests.adapters
from aiohttp import web
from exchangelib import BASIC, Configuration, EWSDateTime, EWSTimeZone
from exchangelib import Credentials as ExCredentials
from exchangelib import errors as exerrors
from exchangelib.protocol import BaseProtocol, Protocol
from exchangelib.version import Build
from lxml import etree

from gateway import tls
from gateway.config import from_dict
from gateway.demo.procs import free_port
from gateway.ews import soap
from gateway.http.app import build_app
from gateway.metrics import Metrics
from gateway.services.auth import AuthService
from gateway.services.availability import AccessLevel, AvailabilityError, MailboxAvailability
from gateway.services.backends import Backends
from gateway.services.directory import StaticDirectory, parse_users
from gateway.services.freebusy import BusyEvent, BusyType, WorkingHours

ALICE, BOB = "alice@example.test", "bob@example.test"
UTC = dt.timezone.utc
CONVERT = (f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{soap.SOAP_NS}" xmlns:m="{soap.M_NS}" '
           f'xmlns:t="{soap.T_NS}"><s:Header><t:RequestServerVersion Version="Exchange2010_SP2"/></s:Header>'
           '<s:Body>{body}</s:Body></s:Envelope>')
CONVERT_DUMMY = CONVERT.format(body='<m:ConvertId DestinationFormat="EntryId"><m:SourceIds><t:AlternateId '
                                    'Id="DUMMY" Format="EwsId" Mailbox="DUMMY"/></m:SourceIds></m:ConvertId>').encode()
STANDUP = BusyEvent(dt.datetime(2024, 3, 31, 7, 0, tzinfo=UTC), dt.datetime(2024, 3, 31, 8, 30, tzinfo=UTC),
                    BusyType.BUSY, "Standup", "Room 1", False, True, False, True, False, "uid-1")
HOURS = WorkingHours("Europe/Berlin", ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"), 480, 1020)


class FakeAvailability:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    async def lookup(self, requester, addresses, start, end, *, credentials=None):
        self.calls.append((requester.address, list(addresses), start, end, credentials))
        return [MailboxAvailability(a, [STANDUP], AccessLevel.LIMITED, HOURS) if a == ALICE
                else AvailabilityError("not-found", a) for a in addresses]


def _auth(imap_url: str, ca_file: str, **auth) -> AuthService:
    config = from_dict({"auth": auth,
                        "backends": {"dovecot": {"type": "imap", "url": imap_url, "ca_file": ca_file, "timeout": 5}},
                        "domains": {"example.test": {"imap": "dovecot"}}})
    records = parse_users(config, {"user": [{"address": a} for a in (ALICE, BOB)]})
    return AuthService(config.auth, StaticDirectory(config, records), Backends(config))


@contextlib.asynccontextmanager
async def ews_server(certs, auth: AuthService):
    """The gateway's HTTPS app on a free port; yields (base URL, context)."""
    ctx = SimpleNamespace(config=from_dict({}), auth=auth, metrics=Metrics(), availability=FakeAvailability())
    runner = web.AppRunner(build_app(ctx))  # type: ignore[arg-type]
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls.server_context(certs.cert, certs.key)).start()
    try:
        yield f"https://127.0.0.1:{port}", ctx
    finally:
        await runner.cleanup()


@pytest.fixture
async def server(certs, dovecot):
    auth = _auth(f"imaps://127.0.0.1:{dovecot.imaps_port}", str(certs.ca_cert))
    async with ews_server(certs, auth) as running:
        yield running


@pytest.fixture
async def client(certs):
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def post(client, url, data: bytes, auth: dict[str, str] | None = None):
    headers = {"Content-Type": "text/xml; charset=utf-8", **(auth or {})}
    async with client.post(url, data=data, headers=headers) as r:
        return r.status, r.headers, await r.read()


async def test_login_flow(server, client, users):
    base, ctx = server
    status, headers, _ = await post(client, base + "/EWS/Exchange.asmx", CONVERT_DUMMY)
    assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="127.0.0.1"')
    for creds in (basic("nobody@example.test", "whatever"), basic(ALICE, "")):
        status, headers, body = await post(client, base + "/EWS/Exchange.asmx", CONVERT_DUMMY, auth=creds)
        assert status == 401 and "WWW-Authenticate" in headers and b"Envelope" not in body
    status, headers, body = await post(client, base + "/EWS/Exchange.asmx", CONVERT_DUMMY,
                                       auth=basic(ALICE, users[ALICE]))
    assert status == 200 and headers["Content-Type"] == "text/xml; charset=utf-8"
    assert b"ErrorInvalidIdMalformed" in body and b'MajorVersion="14"' in body
    # Windows-style DOMAIN\\user logins resolve to the same user.
    status, _, _ = await post(client, base + "/EWS/Exchange.asmx", CONVERT_DUMMY,
                              auth=basic("EXAMPLE\\" + ALICE, users[ALICE]))
    assert status == 200


@pytest.mark.parametrize("path", ["/ews/exchange.asmx", "/EWS/exchange.asmx", "/Ews/EXCHANGE.ASMX"])
async def test_path_in_any_letter_case(server, client, users, path):
    base, _ = server
    status, _, body = await post(client, base + path, CONVERT_DUMMY, auth=basic(ALICE, users[ALICE]))
    assert status == 200 and b"ConvertIdResponse" in body


async def test_other_paths_and_methods(server, client, users):
    base, _ = server
    async with client.get(base + "/EWS/Exchange.asmx") as r:
        assert r.status == 401
    async with client.get(base + "/ews/Exchange.asmx", headers=basic(ALICE, users[ALICE])) as r:
        assert r.status == 200 and "Exchange Web Services" in await r.text()
    async with client.put(base + "/EWS/Exchange.asmx", data=b"x") as r:
        assert r.status == 405 and "POST" in r.headers["Allow"]
    async with client.post(base + "/EWS/Exchange.asmx/extra", data=CONVERT_DUMMY) as r:
        assert r.status == 404


async def test_unimplemented_operation_is_200_naming_it(server, client, users):
    base, _ = server
    data = CONVERT.format(body="<m:FindItem Traversal='Shallow'/>").encode()
    status, _, body = await post(client, base + "/EWS/Exchange.asmx", data, auth=basic(ALICE, users[ALICE]))
    assert status == 200
    msg = etree.fromstring(body).find(f".//{{{soap.M_NS}}}FindItemResponseMessage")
    assert msg.findtext(f"{{{soap.M_NS}}}ResponseCode") == "ErrorInvalidOperation"
    assert "FindItem" in msg.findtext(f"{{{soap.M_NS}}}MessageText")


async def test_huge_and_malformed_bodies_are_refused_and_serving_goes_on(server, client, users):
    base, ctx = server
    alice = basic(ALICE, users[ALICE])
    huge = CONVERT_DUMMY.replace(b"<s:Body>", b"<s:Body>" + b" " * (10 * 1024 * 1024))
    try:
        status, _, body = await post(client, base + "/EWS/Exchange.asmx", huge, auth=alice)
        assert status == 413 and b"ErrorRequestStreamTooBig" in body
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        pass  # the server may close before the client has finished sending: refused all the same

    async def chunks():
        for _ in range(160):
            yield b" " * 65536

    with contextlib.suppress(aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        async with client.post(base + "/EWS/Exchange.asmx", data=chunks(), headers=alice) as r:
            assert r.status == 413  # no Content-Length: stopped while reading
    for bad in (b"<s:Envelope", b"\x00\xff garbage", b'<!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'):
        status, _, body = await post(client, base + "/EWS/Exchange.asmx", bad, auth=alice)
        assert status == 400 and etree.fromstring(body).findtext(f".//{{{soap.SOAP_NS}}}Fault/faultcode") == "s:Client"
    status, _, body = await post(client, base + "/EWS/Exchange.asmx", CONVERT_DUMMY, auth=alice)
    assert status == 200
    assert ctx.availability.calls == []


async def test_throttled_login_gets_retry_after(certs, dovecot, client, users):
    auth = _auth(f"imaps://127.0.0.1:{dovecot.imaps_port}", str(certs.ca_cert), max_failures=2, backoff_base=30)
    async with ews_server(certs, auth) as (base, _):
        for _ in range(2):
            status, _, _ = await post(client, base + "/EWS/Exchange.asmx", CONVERT_DUMMY,
                                      auth=basic("nobody@example.test", "guess"))
            assert status == 401
        status, headers, _ = await post(client, base + "/EWS/Exchange.asmx", CONVERT_DUMMY,
                                        auth=basic(ALICE, users[ALICE]))
        assert status == 401 and int(headers["Retry-After"]) >= 29 and "WWW-Authenticate" in headers


async def test_unreachable_password_store_is_503(certs, client, users):
    auth = _auth(f"imaps://127.0.0.1:{free_port()}", str(certs.ca_cert))
    async with ews_server(certs, auth) as (base, _):
        status, headers, _ = await post(client, base + "/EWS/Exchange.asmx", CONVERT_DUMMY,
                                        auth=basic(ALICE, users[ALICE]))
        assert status == 503 and int(headers["Retry-After"]) > 0


def _exchangelib_free_busy(endpoint: str, password: str, ca_file: str):
    """What an exchangelib user does: discover the version, then ask for free/busy (blocking, in a thread)."""
    config = Configuration(service_endpoint=endpoint, credentials=ExCredentials(ALICE, password), auth_type=BASIC)
    protocol = Protocol(config=config)
    try:
        version = protocol.version
        berlin = EWSTimeZone("Europe/Berlin")
        start, end = EWSDateTime(2024, 3, 30, tzinfo=berlin), EWSDateTime(2024, 4, 1, tzinfo=berlin)
        views = list(protocol.get_free_busy_info([(ALICE, "Required", False), ("ghost@example.test", "Required",
                                                                               False)], start, end))
        return version, views
    finally:
        protocol.close()


async def test_exchangelib_discovers_the_version_and_reads_free_busy(server, users, certs, monkeypatch):
    base, ctx = server
    ca_file = str(certs.ca_cert)

    class TrustTestCA(requests.adapters.HTTPAdapter):
        def cert_verify(self, conn, url, verify, cert):
            super().cert_verify(conn=conn, url=url, verify=ca_file, cert=cert)

    monkeypatch.setattr(BaseProtocol, "HTTP_ADAPTER_CLS", TrustTestCA)
    version, (mine, ghost) = await asyncio.to_thread(_exchangelib_free_busy, base + "/ews/exchange.asmx",
                                                     users[ALICE], ca_file)
    assert version.build == Build(14, 3, 123, 4) and version.api_version == "Exchange2010_SP2"
    assert mine.view_type == "DetailedMerged" and mine.merged == "0" * 64 + "222" + "0" * 27
    (ev,) = mine.calendar_events
    assert ev.start == EWSDateTime(2024, 3, 31, 9, 0, tzinfo=EWSTimeZone("Europe/Berlin"))
    assert ev.details.subject == "Standup"
    assert isinstance(ghost, exerrors.ErrorMailRecipientNotFound)
    (requester, addresses, start, end, credentials), = ctx.availability.calls
    assert requester == ALICE and addresses == [ALICE, "ghost@example.test"]
    assert start == dt.datetime(2024, 3, 29, 23, tzinfo=UTC) and credentials.username == ALICE
