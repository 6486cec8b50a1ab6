"""exchangelib finds the gateway from an address and a password alone, then asks it for free/busy.

exchangelib autodiscovers over HTTPS on port 443 at <domain> and autodiscover.<domain>,
then plain HTTP on port 80, then a DNS SRV record. The gateway listens on 443 and 80 of
a loopback address of its own; inside this test process only, socket.getaddrinfo and
dnspython's resolver answer for the example.test names, so no lookup leaves the machine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import socket
from contextlib import AsyncExitStack
from pathlib import Path

import dns.rdata
import dns.resolver
import pytest

from adapters.dav import CalDavCalendarStore
from adapters.interfaces import Credentials
from gateway.demo.procs import free_port
from gatewayproc import caldav_backend, config_toml, start_gateway, stop_gateway, users_toml, write_config

ALICE, BOB = "alice@example.test", "bob@example.test"
UTC = dt.timezone.utc
# An hour on 10 May 2033 that no other test writes to.
BUSY = (dt.datetime(2033, 5, 10, 9, tzinfo=UTC), dt.datetime(2033, 5, 10, 10, tzinfo=UTC))
EVENT = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//casgate tests//EN\r\nBEGIN:VEVENT\r\nUID:ad-e2e-1\r\n"
         "DTSTAMP:20330101T000000Z\r\nDTSTART:20330510T090000Z\r\nDTEND:20330510T100000Z\r\nSUMMARY:Review\r\n"
         "END:VEVENT\r\nEND:VCALENDAR\r\n")


def _loopback_with_free_ports(*ports: int) -> str:
    """A loopback address other than 127.0.0.1 on which every port in ``ports`` can be bound (we run as root)."""
    for _ in range(50):
        ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        try:
            for port in ports:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((ip, port))
        except OSError:
            continue
        return ip
    raise RuntimeError("no loopback address with free ports 443 and 80")


@pytest.fixture(scope="module")
def gateway(workdir, certs, dovecot, radicale, users, service_user):
    async def seed():
        async with AsyncExitStack() as stack:
            store = CalDavCalendarStore(radicale.url, Credentials(BOB, users[BOB]), certs.ca_cert)
            await store.start(stack)
            calendar = await store.ensure_default_calendar()
            await store.put_event(calendar.url, EVENT)
    asyncio.run(seed())
    ip = _loopback_with_free_ports(443, 80)
    root = Path(workdir) / f"ad-exchangelib-{free_port()}"
    write_config(root, config_toml(certs, dovecot, listen=ip, https=443, extra=f"""
[autodiscover]
http_port = 80
public_host = "mail.example.test"
{caldav_backend("dav", radicale.url, service_user)}
[domains."example.test"]
imap = "dovecot"
caldav = "dav"
aliases = ["example.org"]
"""), users_toml(users))
    proc = start_gateway(root, [443, 80], host=ip)
    try:
        yield {"ip": ip, "log": root / "gateway.log", "proc": proc}
    finally:
        stop_gateway(proc)


class Names:
    """This process's view of DNS: A records and SRV records for *.test, and where each host:port connects."""

    def __init__(self) -> None:
        self.connect: dict[tuple[str, int], tuple[str, int]] = {}
        self.srv: dict[str, str] = {}

    def point(self, host: str, ip: str, port: int, to_port: int | None = None) -> None:
        self.connect[(host, port)] = (ip, to_port or port)

    def has_a(self, host: str) -> bool:
        return any(h == host for h, _ in self.connect)


@pytest.fixture()
def names(monkeypatch, certs):
    from exchangelib.autodiscover import Autodiscovery, clear_cache
    table = Names()
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = (host.decode() if isinstance(host, bytes) else host or "").rstrip(".").lower()
        if name.endswith((".test", ".example.org")) or name == "example.org":
            target = table.connect.get((name, int(port or 0)))
            if target is None:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", target)]
        return real(host, port, family, type, proto, flags)

    def resolve(self, qname, rdtype="A", *args, **kwargs):
        name = str(qname).rstrip(".").lower()
        if rdtype == "A" and table.has_a(name):
            return [dns.rdata.from_text("IN", "A", "192.0.2.1")]  # exchangelib only checks that one exists
        if rdtype == "SRV" and name in table.srv:
            return [dns.rdata.from_text("IN", "SRV", table.srv[name])]
        raise dns.resolver.NXDOMAIN()

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(dns.resolver.Resolver, "resolve", resolve)
    # No resolv.conf is read: every query is answered above.
    monkeypatch.setattr(Autodiscovery, "DNS_RESOLVER_KWARGS", {"configure": False})
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs.ca_cert))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    clear_cache()
    yield table
    clear_cache()


def account_for(address: str, login: str, password: str):
    from exchangelib import DELEGATE, Account, EWSTimeZone
    from exchangelib import Credentials as EwsCredentials
    return Account(address, credentials=EwsCredentials(login, password), autodiscover=True, access_type=DELEGATE,
                   default_timezone=EWSTimeZone("UTC"))


def test_discovers_ews_url_and_version_then_free_busy_works(gateway, names, users):
    from exchangelib import EWSDateTime, EWSTimeZone
    for host in ("autodiscover.example.test", "mail.example.test"):
        names.point(host, gateway["ip"], 443)
    account = account_for(ALICE, ALICE, users[ALICE])
    assert account.protocol.service_endpoint == "https://mail.example.test/EWS/Exchange.asmx"
    assert account.ad_response.autodiscover_smtp_address == ALICE == account.primary_smtp_address
    assert account.version.api_version == "Exchange2010_SP2"
    assert (account.version.build.major_version, account.version.build.minor_version) == (14, 3)
    utc = EWSTimeZone("UTC")
    start = EWSDateTime(2033, 5, 10, 8, tzinfo=utc)
    (view,) = account.protocol.get_free_busy_info(accounts=[(BOB, "Required", False)], start=start,
                                                  end=start + dt.timedelta(hours=3),
                                                  merged_free_busy_interval=60, requested_view="DetailedMerged")
    assert view.merged == "020"  # free 08-09, busy 09-10 (the event put in Radicale above), free 10-11


def test_http_redirect_method_when_https_on_the_autodiscover_name_is_down(gateway, names, users):
    closed = free_port(gateway["ip"])  # nothing listens here: connecting is refused
    names.point("autodiscover.example.test", gateway["ip"], 443, closed)
    names.point("autodiscover.example.test", gateway["ip"], 80)
    names.point("mail.example.test", gateway["ip"], 443)
    account = account_for(ALICE, ALICE, users[ALICE])
    assert account.protocol.service_endpoint == "https://mail.example.test/EWS/Exchange.asmx"
    lines = [json.loads(line) for line in gateway["log"].read_text().splitlines() if line.startswith("{")]
    assert any(e.get("path", "").lower() == "/autodiscover/autodiscover.svc" and e.get("status") == 302
               and e.get("method") == "GET" for e in lines)


def test_alias_domain_address_found_by_srv_and_redirected_to_the_primary(gateway, names, users):
    for host in ("autodiscover.example.test", "mail.example.test"):
        names.point(host, gateway["ip"], 443)
    names.srv["_autodiscover._tcp.example.org"] = "0 0 443 autodiscover.example.test."
    account = account_for("alice@example.org", ALICE, users[ALICE])
    assert account.primary_smtp_address == ALICE
    assert account.protocol.service_endpoint == "https://mail.example.test/EWS/Exchange.asmx"


@pytest.mark.parametrize("address", [BOB, "nobody@example.test"])
def test_other_and_unknown_mailboxes_fail_alike(gateway, names, users, address):
    from exchangelib.errors import ErrorNonExistentMailbox
    for host in ("autodiscover.example.test", "mail.example.test"):
        names.point(host, gateway["ip"], 443)
    with pytest.raises(ErrorNonExistentMailbox) as info:
        account_for(address, ALICE, users[ALICE])
    assert str(info.value).replace(address, "X") == "Invalid user: 'X'"


def test_wrong_credentials_discover_nothing(gateway, names):
    from exchangelib.errors import AutoDiscoverFailed, UnauthorizedError
    for host in ("autodiscover.example.test", "mail.example.test"):
        names.point(host, gateway["ip"], 443)
    # An unknown login never reaches Dovecot, so no back-end login penalty slows other tests.
    with pytest.raises((AutoDiscoverFailed, UnauthorizedError)):
        account_for("nobody@example.test", "nobody@example.test", "not-a-password")
    assert gateway["proc"].poll() is None
