"""Autodiscover over real TLS from a running gateway, with logins checked by Dovecot: the 401 challenge, POX for
Outlook and phones, others' addresses, bad input, SOAP, JSON v1 and the plain-HTTP redirect listener.

Failed logins use an unknown user, which never reaches Dovecot, so its per-address penalty slows no other test.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import ssl
from pathlib import Path

import pytest
from lxml import etree

from gateway.autodiscover import pox, soap
from gateway.demo.procs import free_port
from gatewayproc import config_toml, start_gateway, stop_gateway, users_toml, write_config

ALICE = "alice@example.test"
OUT = {"r": pox.RESPONSE, "o": pox.RESPONSE_OUTLOOK, "m": pox.RESPONSE_MOBILE, "a": soap.ANS}


@pytest.fixture(scope="module")
def gateway(workdir, certs, dovecot, users):
    root = Path(workdir) / f"autodiscover-{free_port()}"
    https, plain = free_port(), free_port()
    write_config(root, config_toml(certs, dovecot, https=https, imaps=1993, extra=f"""
[autodiscover]
http_port = {plain}
public_host = "mail.example.test"
culture = "de:de"
[backends.relay]
type = "smtp"
url = "smtp://submit.example.test:587"
[domains."example.test"]
imap = "dovecot"
smtp = "relay"
aliases = ["example.org"]
"""), users_toml(users))
    proc = start_gateway(root, [https, plain])
    try:
        yield {"https": https, "http": plain, "proc": proc, "ca": str(certs.ca_cert)}
    finally:
        stop_gateway(proc)


def call(gw, method: str, path: str, body: bytes | None = None, login: tuple[str, str] | None = None,
         headers: dict | None = None) -> tuple[int, dict, bytes]:
    ctx = ssl.create_default_context(cafile=gw["ca"])
    conn = http.client.HTTPSConnection("127.0.0.1", gw["https"], context=ctx, timeout=60)
    hdrs = {"Content-Type": "text/xml; charset=utf-8", **(headers or {})}
    if login:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def pox_request(email: str, mobile: bool = False) -> bytes:
    kind = "mobilesync" if mobile else "outlook"
    answer = pox.RESPONSE_MOBILE if mobile else pox.RESPONSE_OUTLOOK
    return (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/'
            f'autodiscover/{kind}/requestschema/2006"><Request><EMailAddress>{email}</EMailAddress>'
            f"<AcceptableResponseSchema>{answer}</AcceptableResponseSchema></Request></Autodiscover>").encode()


def test_pox_challenges_before_anything_else(gateway, users):
    status, headers, _ = call(gateway, "POST", "/autodiscover/autodiscover.xml", pox_request(ALICE))
    assert status == 401 and headers["www-authenticate"].startswith("Basic realm=")
    status, headers, _ = call(gateway, "POST", "/Autodiscover/Autodiscover.xml", pox_request(ALICE),
                              login=("nobody@example.test", "guess"))
    assert status == 401 and "www-authenticate" in headers
    status, headers, _ = call(gateway, "POST", "/autodiscover/autodiscover.svc", b"<x/>")
    assert status == 401 and headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("path", ["/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml",
                                  "/AUTODISCOVER/AUTODISCOVER.XML"])
def test_outlook_gets_its_settings_at_every_spelling(gateway, users, path):
    status, headers, body = call(gateway, "POST", path, pox_request("Alice@Example.test"),
                                 login=(ALICE, users[ALICE]))
    assert status == 200 and headers["content-type"].startswith("text/xml")
    root = etree.fromstring(body)
    assert root.findtext("o:Response/o:User/o:AutoDiscoverSMTPAddress", namespaces=OUT) == ALICE
    types = {p.findtext("o:Type", namespaces=OUT): p for p in root.iterfind("o:Response/o:Account/o:Protocol", OUT)}
    base = f"https://mail.example.test:{gateway['https']}"
    assert types["EXPR"].findtext("o:EwsUrl", namespaces=OUT) == base + "/EWS/Exchange.asmx"
    assert (types["IMAP"].findtext("o:Server", namespaces=OUT), types["IMAP"].findtext("o:Port", namespaces=OUT)) \
        == ("mail.example.test", "1993")
    assert types["SMTP"].findtext("o:Server", namespaces=OUT) == "submit.example.test"
    assert "POP3" not in types  # the gateway's POP3 ports are off, so nothing is published


def test_phone_gets_the_activesync_url_and_alias_domain_is_redirected(gateway, users):
    login = (ALICE, users[ALICE])
    status, _, body = call(gateway, "POST", "/autodiscover/autodiscover.xml", pox_request(ALICE, True), login=login)
    root = etree.fromstring(body)
    assert status == 200 and root.findtext("m:Response/m:Culture", namespaces=OUT) == "de:de"
    assert root.findtext("m:Response/m:Action/m:Settings/m:Server/m:Url", namespaces=OUT) == \
        f"https://mail.example.test:{gateway['https']}/Microsoft-Server-ActiveSync"
    _, _, body = call(gateway, "POST", "/autodiscover/autodiscover.xml", pox_request("alice@example.org", True),
                      login=login)
    assert etree.fromstring(body).findtext("m:Response/m:Action/m:Redirect", namespaces=OUT) == ALICE
    _, _, body = call(gateway, "POST", "/autodiscover/autodiscover.xml", pox_request("alice@example.org"),
                      login=login)
    assert etree.fromstring(body).findtext("o:Response/o:Account/o:RedirectAddr", namespaces=OUT) == ALICE


@pytest.mark.parametrize("mobile", [False, True])
def test_someone_elses_address_looks_like_nobodys(gateway, users, mobile):
    def ask(address):
        status, _, body = call(gateway, "POST", "/autodiscover/autodiscover.xml", pox_request(address, mobile),
                               login=(ALICE, users[ALICE]))
        return status, re.sub(rb'Time="[^"]*"', b"", body).replace(address.encode(), b"ADDRESS")
    other, nobody = ask("bob@example.test"), ask("nobody@example.test")
    assert other == nobody and other[0] == 200
    assert b"Bob" not in other[1] and (b"<ErrorCode>500</ErrorCode>" in other[1] or b"<Status>2</Status>"
                                       in other[1])


@pytest.mark.parametrize("body, status, code", [
    (b"<Autodiscover><Request>", 400, b"600"),
    ((b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
      b"<Autodiscover>&b;</Autodiscover>"), 400, b"600"),
    (pox_request(ALICE).replace(b"outlook/requestschema", b"other/requestschema"), 200, b"600"),
    (pox_request(ALICE).replace(b"responseschema/2006a", b"responseschema/2099"), 200, b"601"),
    (b"<x>" + b"A" * (10 * 1024 * 1024) + b"</x>", 413, b"600"),
])
def test_bad_input_gets_the_right_status_and_the_gateway_keeps_serving(gateway, users, body, status, code):
    login = (ALICE, users[ALICE])
    got_status, _, got = call(gateway, "POST", "/autodiscover/autodiscover.xml", body, login=login)
    assert got_status == status
    assert etree.fromstring(got).findtext(".//r:Error/r:ErrorCode", namespaces=OUT) == code.decode()
    assert gateway["proc"].poll() is None
    ok, _, _ = call(gateway, "POST", "/autodiscover/autodiscover.xml", pox_request(ALICE), login=login)
    assert ok == 200


def test_get_on_pox_is_an_invalid_request(gateway, users):
    status, _, body = call(gateway, "GET", "/autodiscover/autodiscover.xml", login=(ALICE, users[ALICE]))
    assert status == 200 and etree.fromstring(body).findtext(".//r:ErrorCode", namespaces=OUT) == "600"


def soap_request(mailboxes: list[str], settings: list[str], version: str = "Exchange2010_SP2") -> bytes:
    users = "".join(f"<a:User><a:Mailbox>{m}</a:Mailbox></a:User>" for m in mailboxes)
    names = "".join(f"<a:Setting>{s}</a:Setting>" for s in settings)
    return f"""<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:a="{soap.ANS}" xmlns:wsa="{soap.WSA}"><s:Header><a:RequestedServerVersion>{version}</a:RequestedServerVersion>
<wsa:Action>{soap.ACTION_BASE}GetUserSettings</wsa:Action>
<wsa:To>https://mail.example.test/autodiscover/autodiscover.svc</wsa:To></s:Header>
<s:Body><a:GetUserSettingsRequestMessage><a:Request><a:Users>{users}</a:Users>
<a:RequestedSettings>{names}</a:RequestedSettings></a:Request></a:GetUserSettingsRequestMessage></s:Body>
</s:Envelope>""".encode()


def test_soap_user_settings(gateway, users):
    login = (ALICE, users[ALICE])
    body = soap_request([ALICE, "bob@example.test"], ["ExternalEwsUrl", "UserDisplayName", "ExternalOABUrl"])
    status, _, got = call(gateway, "POST", "/Autodiscover/Autodiscover.svc", body, login=login)
    assert status == 200
    mine, bobs = etree.fromstring(got).findall(".//a:UserResponse", OUT)
    values = {s.findtext("a:Name", namespaces=OUT): s.findtext("a:Value", namespaces=OUT)
              for s in mine.iterfind("a:UserSettings/a:UserSetting", OUT)}
    assert values == {"ExternalEwsUrl": f"https://mail.example.test:{gateway['https']}/EWS/Exchange.asmx",
                      "UserDisplayName": "Alice Example"}
    assert mine.findtext("a:UserSettingErrors/a:UserSettingError/a:ErrorCode", namespaces=OUT) == \
        "SettingIsNotAvailable"
    assert bobs.findtext("a:ErrorCode", namespaces=OUT) == "InvalidUser"
    status, _, got = call(gateway, "POST", "/autodiscover/autodiscover.svc", b"<s:Envelope", login=login)
    assert status == 400 and b"faultcode" in got
    status, _, got = call(gateway, "GET", "/autodiscover/autodiscover.svc", login=login)
    assert status == 200 and b"SOAP Autodiscover" in got


def test_json_v1_needs_no_login(gateway):
    status, headers, body = call(gateway, "GET", "/autodiscover/autodiscover.json?Email=someone@example.test"
                                                 "&Protocol=ActiveSync")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"Protocol": "ActiveSync",
                                "Url": f"https://mail.example.test:{gateway['https']}/Microsoft-Server-ActiveSync"}
    status, _, body = call(gateway, "GET", "/Autodiscover/Autodiscover.json/v1.0/alice@example.org?Protocol=EWS")
    assert status == 200 and json.loads(body)["Url"].endswith("/EWS/Exchange.asmx")
    status, _, body = call(gateway, "GET", "/autodiscover/autodiscover.json?Email=a@example.test&Protocol=Rest")
    assert status == 400 and json.loads(body)["ErrorCode"] == "InvalidProtocol"


def test_plain_http_listener_redirects_to_https(gateway):
    def plain(method, path):
        conn = http.client.HTTPConnection("127.0.0.1", gateway["http"], timeout=10)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.getheader("Location"), r.read()
        finally:
            conn.close()
    base = f"https://mail.example.test:{gateway['https']}"
    assert plain("GET", "/Autodiscover/Autodiscover.xml")[:2] == (302, base + "/Autodiscover/Autodiscover.xml")
    assert plain("GET", "/autodiscover/autodiscover.svc")[:2] == (302, base + "/autodiscover/autodiscover.svc")
    assert plain("POST", "/autodiscover/autodiscover.xml")[0] == 405
    assert plain("GET", "/EWS/Exchange.asmx")[0] == 404
