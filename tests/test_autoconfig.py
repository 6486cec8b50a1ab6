"""Thunderbird autoconfig: the pure builder, which servers get published, and the endpoint on a running gateway."""

from __future__ import annotations

import imaplib
import poplib
import ssl
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from gateway.autodiscover.autoconfig import (AddressError, build_client_config, client_config_for,
                                             offered_services, parse_address, served_domain)
from gateway.autodiscover.published import MailService
from gateway.config import from_dict
from gateway.demo.procs import free_port
from gateway.xmlsafe import parse_untrusted

import gatewayproc
from gatewayproc import config_toml, stop_gateway, write_config

# Thunderbird's reader (readFromXML) takes these types and socket types and skips anything else.
INCOMING_TYPES = {"imap", "pop3", "exchange"}
SOCKET_TYPES = {"plain", "SSL", "STARTTLS"}
SERVER_CHILDREN = ["hostname", "port", "socketType", "authentication", "username"]

def start_gateway(root: Path, certs, dovecot, users: dict[str, str]):
    """A gateway for example.test (alias alias.test) publishing IMAP, POP3 and SMTP; bob submits elsewhere."""
    https = free_port()
    ports = {name: free_port() for name in ("imap", "imaps", "pop3", "pop3s")}
    users_text = "".join(
        f'[[user]]\naddress = "{a}"\nname = "{a.split("@")[0].title()} Example"\n'
        + ('smtp = "submit2"\n' if a.startswith("bob@") else "") for a in users)
    write_config(root, config_toml(certs, dovecot, https=https, **ports,
                                   server_extra=f'public_url = "https://mail.example.test:{https}"', extra="""
[backends.submit]
type = "smtp"
url = "smtp://smtp.example.test:587"
[backends.submit2]
type = "smtp"
url = "smtps://smtp2.example.test:465"
[domains."example.test"]
imap = "dovecot"
smtp = "submit"
aliases = ["alias.test"]
"""), users_text)
    proc = gatewayproc.start_gateway(root, [https, *ports.values()])
    return proc, https, ports


@pytest.fixture(scope="module")
def gateway(workdir, certs, dovecot, users):
    proc, https, ports = start_gateway(Path(workdir) / f"autoconfig-{free_port()}", certs, dovecot, users)
    try:
        yield f"https://127.0.0.1:{https}", https, ports
    finally:
        stop_gateway(proc)


def fetch(url: str, ca: Path, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def servers(doc, tag: str) -> list[tuple]:
    """Each server as (type, hostname, port, socketType, authentication, username), checked for Thunderbird."""
    out = []
    for s in doc.find("emailProvider").findall(tag):
        required = [c.tag for c in s][:5]
        assert sorted(required) == sorted(SERVER_CHILDREN), required
        port = int(s.findtext("port"))
        assert 1 <= port <= 65535 and s.findtext("socketType") in SOCKET_TYPES
        out.append((s.get("type"), s.findtext("hostname"), port, s.findtext("socketType"),
                    s.findtext("authentication"), s.findtext("username")))
    return out


# ---- the pure parts ----

@pytest.mark.parametrize("text, want", [
    ("alice@example.test", ("alice", "example.test")),
    ("  Alice.Smith+tag@EXAMPLE.Test ", ("Alice.Smith+tag", "example.test")),
    ("ann@bücher.test", ("ann", "xn--bcher-kva.test")),
])
def test_parse_address_accepts(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("text", [None, "", "   ", "alice", "@example.test", "alice@", "al ice@example.test",
                                  "alice@exa mple.test", "alice@-bad.test", "alice@bad-.test", "alice@a..test",
                                  "a<b>@example.test", "x" * 65 + "@example.test", "alice@" + "a" * 64 + ".test",
                                  "alice@exa_mple.test", "alice@\u2603\u2603.\x00"])
def test_parse_address_refuses(text):
    with pytest.raises(AddressError):
        parse_address(text)


def test_builder_writes_thunderbirds_format_in_order():
    services = [MailService("imap", "imap.example.test", 993, "implicit"),
                MailService("imap", "imap.example.test", 143, "starttls"),
                MailService("pop3", "pop.example.test", 110, "none"),
                MailService("smtp", "smtp.example.test", 465, "implicit")]
    doc = parse_untrusted(build_client_config("example.test", ["alias.test"], services,
                                              "https://mail.example.test/EWS/Exchange.asmx",
                                              "https://mail.example.test/Microsoft-Server-ActiveSync"))
    assert doc.tag == "clientConfig" and doc.get("version") == "1.1"
    provider = doc.find("emailProvider")
    assert provider.get("id") == "example.test"
    assert [d.text for d in provider.findall("domain")] == ["example.test", "alias.test"]
    user = "%EMAILADDRESS%"
    assert servers(doc, "incomingServer") == [
        ("imap", "imap.example.test", 993, "SSL", "password-cleartext", user),
        ("imap", "imap.example.test", 143, "STARTTLS", "password-cleartext", user),
        ("pop3", "pop.example.test", 110, "plain", "password-cleartext", user),
        ("exchange", "mail.example.test", 443, "SSL", "password-cleartext", user)]
    exchange = provider.findall("incomingServer")[-1]
    assert exchange.findtext("ewsURL") == "https://mail.example.test/EWS/Exchange.asmx"
    assert exchange.findtext("easURL") == "https://mail.example.test/Microsoft-Server-ActiveSync"
    assert servers(doc, "outgoingServer") == [
        ("smtp", "smtp.example.test", 465, "SSL", "password-cleartext", user)]


def test_builder_without_exchange_urls_has_no_exchange_entry():
    doc = parse_untrusted(build_client_config("example.test", [], [MailService("imap", "h.test", 993, "implicit")]))
    assert [s.get("type") for s in doc.find("emailProvider").findall("incomingServer")] == ["imap"]
    assert doc.find("emailProvider").find("outgoingServer") is None


def _config(**autodiscover):
    return from_dict({
        "server": {"public_url": "https://mail.example.test", "imap_port": 143, "imaps_port": 993,
                   "pop3_port": 110, "pop3s_port": 995},
        "autodiscover": autodiscover,
        "backends": {"dc": {"type": "imap", "url": "imaps://10.0.0.5:993"},
                     "sub": {"type": "smtp", "url": "smtp://smtp.example.test:587"}},
        "domains": {"Example.test": {"imap": "dc", "smtp": "sub", "aliases": ["Alias.test"]}}})


def test_offered_services_add_the_gateways_other_tls_flavour():
    got = [(s.kind, s.host, s.port, s.tls) for s in offered_services(_config(), "sub")]
    assert got == [("imap", "mail.example.test", 993, "implicit"), ("imap", "mail.example.test", 143, "starttls"),
                   ("pop3", "mail.example.test", 995, "implicit"), ("pop3", "mail.example.test", 110, "starttls"),
                   ("smtp", "smtp.example.test", 587, "starttls")]
    # A STARTTLS-first publication still lists implicit TLS first (RFC 8314).
    got = [(s.kind, s.port, s.tls) for s in offered_services(_config(imap_tls="starttls", protocols=["imap"]))]
    assert got == [("imap", 993, "implicit"), ("imap", 143, "starttls")]


def test_offered_services_respect_explicit_public_ports():
    # A port set in [autodiscover] is a balancer's: nothing is known of the other flavour there.
    cfg = _config(imap_port=10993, imap_host="imap.example.test", protocols=["imap", "smtp"])
    got = [(s.kind, s.host, s.port, s.tls) for s in offered_services(cfg, "sub")]
    assert got == [("imap", "imap.example.test", 10993, "implicit"), ("smtp", "smtp.example.test", 587, "starttls")]


def test_alias_domains_resolve_and_unknown_domains_do_not():
    cfg = _config()
    assert served_domain(cfg, "ALIAS.TEST")[0] == "Example.test"
    assert served_domain(cfg, "other.test") is None
    assert client_config_for(cfg, "other.test") is None
    doc = parse_untrusted(client_config_for(cfg, "alias.test"))
    assert [d.text for d in doc.find("emailProvider").findall("domain")] == ["example.test", "alias.test"]


# ---- the endpoint on a running gateway ----

@pytest.mark.parametrize("path", ["/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"])
def test_endpoint_answers_thunderbird(gateway, certs, path):
    base, https, ports = gateway
    status, headers, body = fetch(f"{base}{path}?emailaddress=alice%40example.test", certs.ca_cert)
    assert status == 200 and headers["Content-Type"].startswith("application/xml")
    doc = parse_untrusted(body)
    assert doc.tag == "clientConfig" and doc.get("version") == "1.1"
    provider = doc.find("emailProvider")
    assert provider.get("id") == "example.test"
    assert [d.text for d in provider.findall("domain")] == ["example.test", "alias.test"]
    user = "%EMAILADDRESS%"
    host = "mail.example.test"
    assert servers(doc, "incomingServer") == [
        ("imap", host, ports["imaps"], "SSL", "password-cleartext", user),
        ("imap", host, ports["imap"], "STARTTLS", "password-cleartext", user),
        ("pop3", host, ports["pop3s"], "SSL", "password-cleartext", user),
        ("pop3", host, ports["pop3"], "STARTTLS", "password-cleartext", user),
        ("exchange", host, https, "SSL", "password-cleartext", user)]
    assert {s.get("type") for s in provider.findall("incomingServer")} <= INCOMING_TYPES
    exchange = provider.findall("incomingServer")[-1]
    assert exchange.findtext("ewsURL") == f"https://{host}:{https}/EWS/Exchange.asmx"
    assert exchange.findtext("easURL") == f"https://{host}:{https}/Microsoft-Server-ActiveSync"
    assert servers(doc, "outgoingServer") == [("smtp", "smtp.example.test", 587, "STARTTLS",
                                               "password-cleartext", user)]


def test_published_ports_are_the_gateways_listeners(gateway, certs):
    base, _, _ = gateway
    _, _, body = fetch(f"{base}/mail/config-v1.1.xml?emailaddress=alice%40example.test", certs.ca_cert)
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    for kind, _, port, socket_type, _, _ in servers(parse_untrusted(body), "incomingServer"):
        if kind == "imap" and socket_type == "SSL":
            imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx).logout()
        elif kind == "imap":
            m = imaplib.IMAP4("127.0.0.1", port)
            assert "STARTTLS" in m.capabilities
            m.logout()
        elif kind == "pop3" and socket_type == "SSL":
            poplib.POP3_SSL("127.0.0.1", port, context=ctx).quit()
        elif kind == "pop3":
            p = poplib.POP3("127.0.0.1", port)
            assert "STLS" in p.capa()
            p.quit()


def test_answer_reveals_nothing_about_the_user(gateway, certs):
    base, _, _ = gateway
    answers = {fetch(f"{base}/mail/config-v1.1.xml?emailaddress={urllib.parse.quote(a)}", certs.ca_cert)[2]
               for a in ("alice@example.test", "bob@example.test", "nobody-at-all@example.test",
                         "Alice@EXAMPLE.TEST", "alice@alias.test")}
    assert len(answers) == 1
    (body,) = answers
    # bob's own submission server (a per-user override) is not the domain's, so it is not told.
    assert b"smtp2.example.test" not in body and b"alice" not in body.lower()


def test_unknown_domain_is_404(gateway, certs):
    base, _, _ = gateway
    for address in ("alice@example.org", "alice@sub.example.test", "ann@bücher.test"):
        status, _, _ = fetch(f"{base}/mail/config-v1.1.xml?emailaddress={urllib.parse.quote(address)}",
                             certs.ca_cert)
        assert status == 404, address


@pytest.mark.parametrize("query", ["", "?emailaddress=", "?emailaddress=alice", "?emailaddress=%40example.test",
                                   "?emailaddress=alice%40", "?emailaddress=al%20ice%40example.test",
                                   "?emailaddress=alice%40exa%20mple.test", "?emailaddress=alice%40-x.test",
                                   "?other=alice%40example.test"])
def test_malformed_address_is_400(gateway, certs, query):
    base, _, _ = gateway
    status, _, body = fetch(f"{base}/.well-known/autoconfig/mail/config-v1.1.xml{query}", certs.ca_cert)
    assert status == 400 and b"emailaddress" in body
