"""Autodiscover cores without sockets: POX requests and answers read the way Outlook, Evolution-EWS, Thunderbird and
phones read them; the SOAP core fed exchangelib's own request bytes and its answer parsed by exchangelib's parser;
the published URLs and mail servers; JSON v1; whose address a caller may ask about."""

from __future__ import annotations

import datetime as dt

import pytest
from lxml import etree

from gateway.autodiscover import json_v1, pox, soap
from gateway.autodiscover.published import mail_services, mailbox_of, ownership, public_base_url, published
from gateway.autodiscover.user_settings import cas_version, domain_values, supported_schemas, user_values
from gateway.config import ConfigError, from_dict
from gateway.services.directory import StaticDirectory, parse_users

OUT = {"r": pox.RESPONSE, "o": pox.RESPONSE_OUTLOOK, "m": pox.RESPONSE_MOBILE}
CONFIG = {
    "server": {"public_url": "https://mail.example.test", "imap_port": 1143, "imaps_port": 1993},
    "backends": {"dovecot": {"type": "imap", "url": "imaps://127.0.0.1:993"},
                 "relay": {"type": "smtp", "url": "smtp://smtp.example.test:587"},
                 "relay465": {"type": "smtp", "url": "smtps://smtps.example.test"}},
    "domains": {"example.test": {"imap": "dovecot", "smtp": "relay", "aliases": ["example.org"]}},
}
USERS = {"user": [{"address": "alice@example.test", "name": "Alice Example", "login": "alice",
                   "aliases": ["a.example@example.test"]},
                  {"address": "bob@example.test", "smtp": "relay465"}]}


@pytest.fixture()
def org():
    cfg = from_dict(CONFIG)
    directory = StaticDirectory(cfg, parse_users(cfg, USERS))
    return cfg, directory, directory.find("alice@example.test")


def request(email: str, schema: str = pox.RESPONSE_OUTLOOK, ns: str = pox.REQUEST_OUTLOOK) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{ns}"><Request>'
            f"<EMailAddress>{email}</EMailAddress><AcceptableResponseSchema>{schema}</AcceptableResponseSchema>"
            f"</Request></Autodiscover>").encode()


def local_tree(data: bytes) -> dict:
    """Namespace-blind reading, the way Thunderbird's JXON and Evolution's libxml2 name checks see a document."""
    def walk(el):
        kids = [c for c in el if isinstance(c.tag, str)]
        return (etree.QName(el).localname, (el.text or "").strip(), [walk(c) for c in kids], dict(el.attrib))
    return walk(etree.fromstring(data))


def child(node, name):
    return next(c for c in node[2] if c[0] == name)


def children(node, name):
    return [c for c in node[2] if c[0] == name]


def text(node, name):
    return child(node, name)[1]


# --- POX requests -----------------------------------------------------------------------------------------


def test_outlook_and_mobile_requests_parse():
    req = pox.parse_request(request(" alice@example.test "), 4096)
    assert req.email == "alice@example.test" and not req.mobile
    req = pox.parse_request(request("bob@example.test", pox.RESPONSE_MOBILE, pox.REQUEST_MOBILE), 4096)
    assert req.mobile and req.email == "bob@example.test"


@pytest.mark.parametrize("data, code, status", [
    (request("a@example.test", ns="urn:wrong"), 600, 200),
    (b'<Autodiscover xmlns="%s"><Nothing/></Autodiscover>' % pox.REQUEST_OUTLOOK.encode(), 600, 200),
    (request(""), 600, 200),
    (request("a@example.test", schema="http://schemas.microsoft.com/exchange/autodiscover/outlook/"
                                      "responseschema/2006"), 601, 200),
    (request("a@example.test", schema=""), 601, 200),
    (b"<Autodiscover><Request>", 600, 400),
    (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
     + request("&e;").split(b"?>", 1)[1], 600, 400),
    (request("x" * 5000 + "@example.test"), 600, 413),
])
def test_bad_requests_get_the_schema_error_and_status(data, code, status):
    with pytest.raises(pox.PoxError) as info:
        pox.parse_request(data, 4096)
    assert (info.value.code, info.value.status) == (code, status)


def test_error_document_is_in_the_generic_namespace():
    when = dt.datetime(2031, 1, 2, 3, 4, 5, 123456)
    root = etree.fromstring(pox.error_response(601, "Requested schema version not supported", "mail.example.test",
                                               when))
    err = root.find("r:Response/r:Error", OUT)
    assert err.findtext("r:ErrorCode", namespaces=OUT) == "601"
    assert err.findtext("r:Message", namespaces=OUT) == "Requested schema version not supported"
    assert err.get("Time") == "03:04:05.1234560" and err.get("Id").isdigit()


# --- POX answers ------------------------------------------------------------------------------------------


def test_server_version_encodes_exchange_2010_sp3():
    value = int(pox.server_version_hex(), 16)
    assert pox.server_version_hex() == "7383807B"
    assert ((value >> 22) & 0x3F, (value >> 16) & 0x3F, value & 0x7FFF) == (14, 3, 123)


def test_outlook_answer_has_the_elements_outlook_reads(org):
    cfg, directory, alice = org
    view = published(cfg, directory.route(alice, "smtp"))
    root = etree.fromstring(pox.outlook_settings(mailbox_of(alice), view))
    assert root.tag == f"{{{pox.RESPONSE}}}Autodiscover"
    user = root.find("o:Response/o:User", OUT)
    assert user.findtext("o:DisplayName", namespaces=OUT) == "Alice Example"
    assert user.findtext("o:AutoDiscoverSMTPAddress", namespaces=OUT) == "alice@example.test"
    assert user.findtext("o:LegacyDN", namespaces=OUT).startswith("/o=")
    assert len(user.findtext("o:DeploymentId", namespaces=OUT)) == 36
    account = root.find("o:Response/o:Account", OUT)
    assert account.findtext("o:AccountType", namespaces=OUT) == "email"
    assert account.findtext("o:Action", namespaces=OUT) == "settings"
    protocols = {p.findtext("o:Type", namespaces=OUT): p for p in account.findall("o:Protocol", OUT)}
    assert list(protocols) == ["EXCH", "EXPR", "WEB", "IMAP", "POP3", "SMTP"]
    ews = "https://mail.example.test/EWS/Exchange.asmx"
    for kind in ("EXCH", "EXPR"):
        p = protocols[kind]
        assert [p.findtext(f"o:{n}", namespaces=OUT) for n in ("ASUrl", "EwsUrl", "OOFUrl")] == [ews] * 3
        assert p.findtext("o:EcpUrl", namespaces=OUT) == "https://mail.example.test/ecp/"
        assert p.find("o:OABUrl", OUT) is None and p.find("o:UMUrl", OUT) is None
    assert protocols["EXCH"].findtext("o:ServerVersion", namespaces=OUT) == "7383807B"
    owa = protocols["WEB"].find("o:External/o:OWAUrl", OUT)
    assert owa.text == "https://mail.example.test/owa/" and owa.get("AuthenticationMethod") == "Basic"


def test_characters_xml_cannot_carry_are_dropped_not_fatal(org):
    cfg, _, alice = org
    mailbox = mailbox_of(alice)
    odd = type(mailbox)(mailbox.address, "Ali\x01ce\ufffe", mailbox.login, mailbox.legacy_dn)
    root = etree.fromstring(pox.outlook_settings(odd, published(cfg)))
    assert root.findtext("o:Response/o:User/o:DisplayName", namespaces=OUT) == "Alice"


def test_thunderbird_reads_the_mail_protocols(org):
    """Thunderbird's Exchange autodiscover reader ignores namespaces, maps Encryption (else SSL) to socket types."""
    cfg, directory, alice = org
    tree = local_tree(pox.outlook_settings(mailbox_of(alice), published(cfg, directory.route(alice, "smtp"))))
    account = child(child(tree, "Response"), "Account")
    found = {}
    for p in children(account, "Protocol"):
        kind = text(p, "Type")
        if kind in ("IMAP", "POP3", "SMTP"):
            socket = {"ssl": "SSL", "tls": "STARTTLS", "none": "plain"}[text(p, "Encryption").lower()]
            found[kind] = (text(p, "Server"), int(text(p, "Port")), socket, text(p, "LoginName"), text(p, "SPA"))
        elif kind in ("EXCH", "EXPR"):
            found[kind] = text(p, "EwsUrl")
    assert found == {
        "EXCH": "https://mail.example.test/EWS/Exchange.asmx", "EXPR": "https://mail.example.test/EWS/Exchange.asmx",
        "IMAP": ("mail.example.test", 1993, "SSL", "alice", "off"),
        "POP3": ("mail.example.test", 1995, "SSL", "alice", "off"),
        "SMTP": ("smtp.example.test", 587, "STARTTLS", "alice", "off"),
    }


def test_evolution_finds_asurl_in_exch_or_expr(org):
    """Evolution-EWS takes ASUrl from the Account's direct EXPR (preferred) or EXCH Protocol; OABUrl is optional."""
    cfg, _, alice = org
    tree = local_tree(pox.outlook_settings(mailbox_of(alice), published(cfg)))
    assert tree[0] == "Autodiscover"
    account = child(child(tree, "Response"), "Account")
    urls = {text(p, "Type"): text(p, "ASUrl") for p in children(account, "Protocol")
            if text(p, "Type") in ("EXCH", "EXPR")}
    assert urls["EXPR"] == urls["EXCH"] == "https://mail.example.test/EWS/Exchange.asmx"
    assert not [c for c in account[2] if c[0] in ("RedirectAddr", "RedirectUrl")]


def test_smtp_follows_the_users_own_back_end(org):
    cfg, directory, _ = org
    bob = directory.find("bob@example.test")
    smtp = published(cfg, directory.route(bob, "smtp")).service("smtp")
    assert (smtp.host, smtp.port, smtp.tls) == ("smtps.example.test", 465, "implicit")
    root = etree.fromstring(pox.outlook_settings(mailbox_of(bob), published(cfg, "relay465")))
    p = next(p for p in root.iterfind(".//o:Protocol", OUT) if p.findtext("o:Type", namespaces=OUT) == "SMTP")
    assert (p.findtext("o:SSL", namespaces=OUT), p.findtext("o:Encryption", namespaces=OUT)) == ("on", "SSL")


def test_outlook_redirect_and_not_found(org):
    root = etree.fromstring(pox.outlook_redirect("alice@example.test"))
    account = root.find("o:Response/o:Account", OUT)
    assert account.findtext("o:Action", namespaces=OUT) == "redirectAddr"
    assert account.findtext("o:RedirectAddr", namespaces=OUT) == "alice@example.test"
    err = etree.fromstring(pox.outlook_not_found("mail.example.test")).find("o:Response/o:Error", OUT)
    assert err.findtext("o:ErrorCode", namespaces=OUT) == "500"


def test_mobile_answers(org):
    cfg, _, alice = org
    view = published(cfg)
    root = etree.fromstring(pox.mobile_settings(mailbox_of(alice), view))
    response = root.find("m:Response", OUT)
    assert response.findtext("m:Culture", namespaces=OUT) == "en:us"
    assert response.findtext("m:User/m:DisplayName", namespaces=OUT) == "Alice Example"
    assert response.findtext("m:User/m:EMailAddress", namespaces=OUT) == "alice@example.test"
    server = response.find("m:Action/m:Settings/m:Server", OUT)
    eas = "https://mail.example.test/Microsoft-Server-ActiveSync"
    assert [server.findtext(f"m:{n}", namespaces=OUT) for n in ("Type", "Url", "Name")] == ["MobileSync", eas, eas]
    redirect = etree.fromstring(pox.mobile_redirect("alice@example.org", "alice@example.test", "de:de"))
    assert redirect.findtext("m:Response/m:Action/m:Redirect", namespaces=OUT) == "alice@example.test"
    assert redirect.findtext("m:Response/m:Culture", namespaces=OUT) == "de:de"
    missing = etree.fromstring(pox.mobile_not_found("x@example.test", "en:us"))
    assert missing.findtext("m:Response/m:Action/m:Error/m:Status", namespaces=OUT) == "2"


# --- what is published, and for whom ----------------------------------------------------------------------


def test_public_urls_and_ports():
    assert public_base_url(from_dict({"server": {"listen": "10.0.0.5", "https_port": 443}})) == "https://10.0.0.5"
    cfg = from_dict({"server": {"https_port": 8443}, "autodiscover": {"public_host": "cas.example.test"}})
    assert public_base_url(cfg) == "https://cas.example.test:8443"
    assert public_base_url(from_dict({"server": {"public_url": "https://x.example.test/gw/"}})) == \
        "https://x.example.test/gw"
    cfg = from_dict({"server": {"imaps_port": 0, "pop3_port": 110},
                     "autodiscover": {"pop3_tls": "starttls", "imap_host": "imap.example.test",
                                      "protocols": ["imap", "pop3", "smtp"]}})
    assert [(s.kind, s.host, s.port, s.tls) for s in mail_services(cfg)] == [("pop3", "127.0.0.1", 110, "starttls")]
    cfg = from_dict({"autodiscover": {"protocols": ["smtp"], "smtp_host": "out.example.test", "smtp_port": 2525}})
    assert [(s.kind, s.port, s.tls) for s in mail_services(cfg)] == [("smtp", 2525, "starttls")]


@pytest.mark.parametrize("section, key", [
    ({"culture": "english"}, "autodiscover.culture"),
    ({"public_host": "https://mail.example.test"}, "autodiscover.public_host"),
    ({"imap_host": "mail.example.test:993"}, "autodiscover.imap_host"),
    ({"imap_tls": "ssl"}, "autodiscover.imap_tls"),
    ({"smtp_tls": "tls"}, "autodiscover.smtp_tls"),
    ({"protocols": ["imap", "jmap"]}, "autodiscover.protocols"),
    ({"http_port": 70000}, "autodiscover.http_port"),
])
def test_bad_autodiscover_settings_name_their_key(section, key):
    with pytest.raises(ConfigError) as info:
        from_dict({"autodiscover": section})
    assert info.value.key == key
    assert from_dict({"autodiscover": {"public_host": "2001:db8::1"}}).autodiscover.public_host == "2001:db8::1"


def test_ownership_hides_whether_others_exist(org):
    cfg, directory, alice = org
    kinds = {a: ownership(cfg, directory, alice, a) for a in (
        "alice@example.test", "A.Example@example.test", "ALICE@EXAMPLE.ORG", "bob@example.test",
        "nobody@example.test", "bob@example.org", "alice", "")}
    assert kinds["alice@example.test"].kind == kinds["A.Example@example.test"].kind == "settings"
    assert (kinds["ALICE@EXAMPLE.ORG"].kind, kinds["ALICE@EXAMPLE.ORG"].target) == ("redirect", "alice@example.test")
    assert {kinds[a].kind for a in ("bob@example.test", "nobody@example.test", "bob@example.org", "alice", "")} == \
        {"unknown"}


def test_json_v1_lookup(org):
    cfg, directory, _ = org
    view = published(cfg)
    assert json_v1.lookup("x@example.org", "activesync", view, directory.is_local_domain) == \
        {"Protocol": "ActiveSync", "Url": "https://mail.example.test/Microsoft-Server-ActiveSync"}
    assert json_v1.lookup("x@example.test", "AutodiscoverV1", view, directory.is_local_domain)["Url"] == \
        "https://mail.example.test/autodiscover/autodiscover.xml"
    for email, protocol, status, code in (("x@example.test", "Rest", 400, "InvalidProtocol"),
                                          ("x@example.test", None, 400, "InvalidProtocol"),
                                          ("not an address", "EWS", 400, "InvalidRequest"),
                                          ("x@elsewhere.test", "EWS", 404, "InvalidDomain")):
        with pytest.raises(json_v1.JsonError) as info:
            json_v1.lookup(email, protocol, view, directory.is_local_domain)
        assert (info.value.status, info.value.body()["ErrorCode"]) == (status, code)


# --- SOAP core, against exchangelib's own request and parser ----------------------------------------------


def exchangelib_request(users: list[str], settings: list[str] | None = None) -> bytes:
    from exchangelib.autodiscover.protocol import AutodiscoverProtocol
    from exchangelib.configuration import Configuration
    from exchangelib.properties import UserResponse
    from exchangelib.services import GetUserSettings
    protocol = AutodiscoverProtocol(config=Configuration(
        service_endpoint="https://autodiscover.example.test/autodiscover/autodiscover.svc"))
    service = GetUserSettings(protocol=protocol)
    names = settings or sorted(UserResponse.SETTINGS_MAP)
    return service.wrap(content=service.get_payload(users=users, settings=names),
                        api_version=protocol.config.version.api_version)


def answer(org, data: bytes) -> bytes:
    cfg, directory, alice = org
    req = soap.parse_request(data, 128 * 1024)
    view = published(cfg, directory.route(alice, "smtp"))
    outcomes = []
    for name in req.names:
        own = ownership(cfg, directory, alice, name)
        values = user_values(req.settings, mailbox_of(alice), view) if own.kind == "settings" else ()
        outcomes.append(soap.UserOutcome(name, own.kind, own.target, values))
    return soap.user_settings_response(req, outcomes)


def test_exchangelib_reads_our_user_settings(org):
    from exchangelib.errors import ErrorNonExistentMailbox
    from exchangelib.properties import UserResponse
    data = exchangelib_request(["alice@example.test", "bob@example.test", "alice@example.org"])
    req = soap.parse_request(data, 128 * 1024)
    assert (req.operation, req.requested_version, req.error) == ("GetUserSettings", "Exchange2016", None)
    root = etree.fromstring(answer(org, data))
    ns = {"a": soap.ANS, "w": soap.WSA, "s": soap.SOAP_NS}
    assert root.findtext("s:Header/w:Action", namespaces=ns) == soap.ACTION_BASE + "GetUserSettingsResponse"
    assert root.findtext("s:Header/a:ServerVersionInfo/a:MajorVersion", namespaces=ns) == "14"
    replies = [UserResponse.from_xml(e, None) for e in root.iterfind(".//a:UserResponse", ns)]
    mine, bobs, alias = replies
    mine.raise_errors()  # every error left is one exchangelib accepts as harmless
    assert mine.ews_url == "https://mail.example.test/EWS/Exchange.asmx"
    assert mine.autodiscover_smtp_address == "alice@example.test"
    assert mine.version.api_version == "Exchange2010_SP2" and mine.version.build.major_version == 14
    assert mine.user_settings["user_display_name"] == "Alice Example"
    assert mine.user_settings["cas_version"] == cas_version() == "14.03.0123.004"
    assert mine.user_settings["ews_supported_schemas"] == supported_schemas()
    assert mine.user_settings_errors["internal_oab_url"][0] == "SettingIsNotAvailable"
    assert mine.user_settings_errors["grouping_information"][0] == "InvalidSetting"
    with pytest.raises(ErrorNonExistentMailbox):
        bobs.raise_errors()
    assert alias.redirect_address == "alice@example.test"


def test_collection_settings_and_unknown_names(org):
    data = exchangelib_request(["alice@example.test"], ["external_imap4_connections", "external_web_client_urls",
                                                         "alternate_mailboxes", "external_smtp_connections"])
    data = data.replace(b"<a:Setting>AlternateMailboxes</a:Setting>",
                        b"<a:Setting>AlternateMailboxes</a:Setting><a:Setting>NoSuchSetting</a:Setting>")
    root = etree.fromstring(answer(org, data))
    ns = {"a": soap.ANS, "i": soap.XSI}
    settings = {s.findtext("a:Name", namespaces=ns): s for s in root.iterfind(".//a:UserSetting", ns)}
    imap = settings["ExternalImap4Connections"]
    assert imap.get(f"{{{soap.XSI}}}type") == "ProtocolConnectionCollectionSetting"
    conn = imap.find("a:ProtocolConnections/a:ProtocolConnection", ns)
    assert [conn.findtext(f"a:{n}", namespaces=ns) for n in ("Hostname", "Port", "EncryptionMethod")] == \
        ["mail.example.test", "1993", "SSL"]
    assert settings["ExternalSmtpConnections"].findtext(".//a:EncryptionMethod", namespaces=ns) == "TLS"
    assert settings["ExternalWebClientUrls"].findtext(".//a:Url", namespaces=ns) == "https://mail.example.test/owa/"
    assert settings["AlternateMailboxes"].find("a:AlternateMailboxes", ns) is not None
    errors = {e.findtext("a:SettingName", namespaces=ns): e.findtext("a:ErrorCode", namespaces=ns)
              for e in root.iterfind(".//a:UserSettingError", ns)}
    assert errors == {"NoSuchSetting": "InvalidSetting"}


@pytest.mark.parametrize("mutate, fault", [
    (lambda d: d.replace(b"/Autodiscover/GetUserSettings<", b"/Autodiscover/GetDomainSettings<"),
     "a:ActionNotSupported"),
    (lambda d: d.replace(b"GetUserSettingsRequestMessage", b"GetFederationInformationRequestMessage"),
     "a:ActionNotSupported"),
    (lambda d: d[:-40], "s:Client"),
    (lambda d: d.replace(b"<s:Envelope", b"<!DOCTYPE x [<!ENTITY a 'b'>]><s:Envelope", 1).replace(
        b"<?xml version='1.0' encoding='utf-8'?>", b""), "s:Client"),
])
def test_soap_requests_refused_as_a_whole(mutate, fault):
    with pytest.raises(soap.SoapFault) as info:
        soap.parse_request(mutate(exchangelib_request(["alice@example.test"])), 128 * 1024)
    assert info.value.code == fault
    body = etree.fromstring(soap.fault_envelope(info.value))
    assert body.findtext(".//faultcode") == fault


def test_soap_request_level_errors(org):
    data = exchangelib_request(["alice@example.test"]).replace(b">Exchange2016<", b">Exchange2007_SP1<")
    req = soap.parse_request(data, 128 * 1024)
    root = etree.fromstring(soap.user_settings_response(req, []))
    ns = {"a": soap.ANS}
    assert root.findtext(".//a:Response/a:ErrorCode", namespaces=ns) == "InvalidRequest"
    many = exchangelib_request([f"u{i}@example.test" for i in range(101)], ["user_display_name"])
    assert "at most 100" in soap.parse_request(many, 128 * 1024).error


def test_domain_settings(org):
    cfg, directory, _ = org
    ns = {"a": soap.ANS, "s": soap.SOAP_NS, "w": soap.WSA}
    data = f"""<s:Envelope xmlns:s="{soap.SOAP_NS}" xmlns:a="{soap.ANS}" xmlns:wsa="{soap.WSA}"><s:Header>
<a:RequestedServerVersion>Exchange2013</a:RequestedServerVersion>
<wsa:Action>{soap.ACTION_BASE}GetDomainSettings</wsa:Action><wsa:MessageID>urn:uuid:1</wsa:MessageID></s:Header>
<s:Body><a:GetDomainSettingsRequestMessage><a:Request><a:Domains><a:Domain>example.org</a:Domain>
<a:Domain>elsewhere.test</a:Domain></a:Domains><a:RequestedSettings><a:Setting>ExternalEwsUrl</a:Setting>
<a:Setting>ExternalEwsVersion</a:Setting><a:Setting>Bogus</a:Setting></a:RequestedSettings></a:Request>
</a:GetDomainSettingsRequestMessage></s:Body></s:Envelope>""".encode()
    req = soap.parse_request(data, 128 * 1024)
    served = {d: domain_values(published(cfg)) for d in req.names if directory.is_local_domain(d)}
    root = etree.fromstring(soap.domain_settings_response(req, served))
    assert root.findtext("s:Header/w:RelatesTo", namespaces=ns) == "urn:uuid:1"
    ours, other = root.findall(".//a:DomainResponse", ns)
    values = {s.findtext("a:Name", namespaces=ns): s.findtext("a:Value", namespaces=ns)
              for s in ours.iterfind(".//a:DomainSetting", ns)}
    assert values == {"ExternalEwsUrl": "https://mail.example.test/EWS/Exchange.asmx",
                      "ExternalEwsVersion": "14.03.0123.004"}
    assert ours.findtext(".//a:DomainSettingError/a:SettingName", namespaces=ns) == "Bogus"
    assert other.findtext("a:ErrorCode", namespaces=ns) == "InvalidDomain"
