"""Apple .mobileconfig profiles: the plist, stable UUIDs, no password, CMS signature, and who may fetch one."""

from __future__ import annotations

import base64
import plistlib
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7

from gateway.autodiscover.mobileconfig import (CONTENT_TYPE, ProfileError, build_profile, payload_uuid,
                                               profile_response, sign_profile)
from gateway.autodiscover.published import MailService
from gateway.config import from_dict
from gateway.demo.procs import free_port
from test_autoconfig import fetch, start_gateway

UUID = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")
EAS_URL = "https://mail.example.test:8443/Microsoft-Server-ActiveSync"
SERVICES = [MailService("imap", "mail.example.test", 993, "implicit"),
            MailService("imap", "mail.example.test", 143, "starttls"),
            MailService("smtp", "smtp.example.test", 587, "starttls")]


def profile(protocol: str = "eas", address: str = "alice@example.test", eas_url: str = EAS_URL,
            services=SERVICES) -> dict:
    return plistlib.loads(build_profile(address, address, "Alice Example", "example.test", protocol, services,
                                        eas_url))


def all_keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in all_keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in all_keys(v)}
    return set()


# ---- the pure parts ----

def test_activesync_profile():
    p = profile("eas")
    assert p["PayloadType"] == "Configuration" and p["PayloadVersion"] == 1
    assert p["PayloadIdentifier"].startswith("test.example.mail.casgate.") and "@" not in p["PayloadIdentifier"]
    assert UUID.match(p["PayloadUUID"]) and p["PayloadOrganization"] == "example.test"
    (eas,) = p["PayloadContent"]
    assert eas["PayloadType"] == "com.apple.eas.account" and eas["PayloadVersion"] == 1
    assert UUID.match(eas["PayloadUUID"]) and eas["PayloadUUID"] != p["PayloadUUID"]
    assert eas["PayloadIdentifier"].startswith(p["PayloadIdentifier"].rsplit(".", 1)[0])
    assert eas["EmailAddress"] == "alice@example.test" and eas["UserName"] == "alice@example.test"
    assert eas["Host"] == "mail.example.test:8443" and eas["SSL"] is True
    # The standard port is left out; the device adds the ActiveSync path itself.
    standard = profile("eas", eas_url="https://mail.example.test/Microsoft-Server-ActiveSync")
    assert standard["PayloadContent"][0]["Host"] == "mail.example.test"


def test_imap_profile_is_the_alternative():
    p = profile("imap")
    (mail,) = p["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed" and mail["EmailAccountType"] == "EmailTypeIMAP"
    assert (mail["IncomingMailServerHostName"], mail["IncomingMailServerPortNumber"],
            mail["IncomingMailServerUseSSL"]) == ("mail.example.test", 993, True)
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"],
            mail["OutgoingMailServerUseSSL"]) == ("smtp.example.test", 587, True)
    assert mail["IncomingMailServerAuthentication"] == mail["OutgoingMailServerAuthentication"] == "EmailAuthPassword"
    assert mail["IncomingMailServerUsername"] == mail["OutgoingMailServerUsername"] == "alice@example.test"
    assert mail["EmailAccountName"] == "Alice Example" and mail["OutgoingPasswordSameAsIncomingPassword"] is True
    assert p["PayloadUUID"] != profile("eas")["PayloadUUID"]  # the two profiles can live side by side


def test_uuids_are_stable_per_address_and_host():
    a, b = profile("eas"), profile("eas")
    assert a["PayloadUUID"] == b["PayloadUUID"]
    assert a["PayloadContent"][0]["PayloadUUID"] == b["PayloadContent"][0]["PayloadUUID"]
    other_user = profile("eas", address="bob@example.test")
    other_host = profile("eas", eas_url="https://mx.example.test/Microsoft-Server-ActiveSync")
    assert len({a["PayloadUUID"], other_user["PayloadUUID"], other_host["PayloadUUID"]}) == 3
    assert payload_uuid("Alice@Example.test", "MAIL.example.test", "x") == payload_uuid("alice@example.test",
                                                                                        "mail.example.test", "x")


def test_no_password_key_anywhere():
    for protocol in ("eas", "imap"):
        keys = all_keys(profile(protocol))
        assert not {k for k in keys if "password" in k.lower() and k != "OutgoingPasswordSameAsIncomingPassword"}


def test_impossible_profiles_are_refused():
    with pytest.raises(ProfileError):
        profile("pop3")
    with pytest.raises(ProfileError):  # IMAP without a submission server cannot send
        profile("imap", services=SERVICES[:2])


def _openssl_verify(signed: bytes, ca: Path, tmp: Path) -> subprocess.CompletedProcess:
    (tmp / "signed.der").write_bytes(signed)
    # -purpose any: the gateway's certificate is a TLS server certificate, not an S/MIME one.
    return subprocess.run(["openssl", "cms", "-verify", "-inform", "DER", "-in", str(tmp / "signed.der"),
                           "-CAfile", str(ca), "-purpose", "any", "-binary", "-out", str(tmp / "content")],
                          capture_output=True, text=True)


def test_signed_profile_verifies_against_our_ca(certs, tmp_path):
    plist = build_profile("alice@example.test", "alice", "Alice", "example.test", "eas", SERVICES, EAS_URL)
    signed = sign_profile(plist, certs.cert, certs.key)
    r = _openssl_verify(signed, certs.ca_cert, tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "content").read_bytes() == plist  # byte for byte: no CRLF conversion
    (signer,) = pkcs7.load_der_pkcs7_certificates(signed)
    assert signer == x509.load_pem_x509_certificate(certs.cert.read_bytes())


def test_tampered_or_foreign_signatures_fail(certs, tmp_path):
    plist = build_profile("alice@example.test", "alice", "Alice", "example.test", "eas", SERVICES, EAS_URL)
    signed = bytearray(sign_profile(plist, certs.cert, certs.key))
    at = bytes(signed).index(b"alice@example.test")
    signed[at] = ord("m")  # a changed address inside the signed content
    assert _openssl_verify(bytes(signed), certs.ca_cert, tmp_path).returncode != 0
    # A certificate from another CA is not trusted by ours.
    from gateway import tls
    other, _ = tls.init_certs(tmp_path / "other", "other.test")
    good = sign_profile(plist, other.cert, other.key)
    assert _openssl_verify(good, certs.ca_cert, tmp_path).returncode != 0
    assert _openssl_verify(good, other.ca_cert, tmp_path).returncode == 0


def test_response_is_signed_only_when_asked(certs, tmp_path):
    cfg = from_dict({"tls": {"cert": str(certs.cert), "key": str(certs.key)}})
    plist = build_profile("alice@example.test", "alice", "Alice", "example.test", "eas", SERVICES, EAS_URL)
    plain = profile_response(cfg, plist, "example.test-eas.mobileconfig", sign=False)
    assert plain.body == plist and plain.headers["Content-Type"] == CONTENT_TYPE
    assert plain.headers["Content-Disposition"] == 'attachment; filename="example.test-eas.mobileconfig"'
    signed = profile_response(cfg, plist, "example.test-eas.mobileconfig", sign=True)
    assert signed.body != plist and signed.headers["Content-Type"] == CONTENT_TYPE
    r = _openssl_verify(signed.body, certs.ca_cert, tmp_path)
    assert r.returncode == 0 and (tmp_path / "content").read_bytes() == plist


# ---- the endpoint on a running gateway ----

@pytest.fixture(scope="module")
def gateway(workdir, certs, dovecot, users):
    proc, https, ports = start_gateway(Path(workdir) / f"mobileconfig-{free_port()}", certs, dovecot, users)
    try:
        yield f"https://127.0.0.1:{https}", https
    finally:
        proc.terminate()
        proc.wait(15)


def get(gateway, certs, query: str, login: str | None, password: str | None):
    base, _ = gateway
    headers = {}
    if login is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()
    return fetch(f"{base}/mobileconfig{query}", certs.ca_cert, headers)


def test_owner_gets_an_activesync_profile(gateway, certs, users):
    _, https = gateway
    password = users["alice@example.test"]
    status, headers, body = get(gateway, certs, "?emailaddress=alice%40example.test", "alice@example.test",
                                password)
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE
    assert "private" in headers["Cache-Control"] and ".mobileconfig" in headers["Content-Disposition"]
    assert password.encode() not in body
    p = plistlib.loads(body)
    (eas,) = p["PayloadContent"]
    assert eas["PayloadType"] == "com.apple.eas.account"
    assert (eas["EmailAddress"], eas["UserName"], eas["Host"], eas["SSL"]) == \
        ("alice@example.test", "alice@example.test", f"mail.example.test:{https}", True)
    # Without emailaddress the caller's own address is meant; the same profile comes back.
    assert get(gateway, certs, "", "alice@example.test", password)[2] == body


def test_imap_profile_follows_the_users_routing(gateway, certs, users):
    status, _, body = get(gateway, certs, "?emailaddress=bob%40example.test&protocol=imap", "bob@example.test",
                          users["bob@example.test"])
    assert status == 200
    (mail,) = plistlib.loads(body)["PayloadContent"]
    assert mail["PayloadType"] == "com.apple.mail.managed"
    assert mail["IncomingMailServerHostName"] == "mail.example.test"
    # bob submits through his own smtps back end, not the domain's.
    assert (mail["OutgoingMailServerHostName"], mail["OutgoingMailServerPortNumber"]) == ("smtp2.example.test", 465)


def test_alias_domain_address_gets_the_primary_address(gateway, certs, users):
    status, _, body = get(gateway, certs, "?emailaddress=alice%40alias.test", "alice@example.test",
                          users["alice@example.test"])
    assert status == 200
    assert plistlib.loads(body)["PayloadContent"][0]["EmailAddress"] == "alice@example.test"


def test_credentials_are_required(gateway, certs, users):
    status, headers, _ = get(gateway, certs, "?emailaddress=alice%40example.test", None, None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    status, _, body = get(gateway, certs, "?emailaddress=alice%40example.test", "alice@example.test", "wrong")
    assert status == 401 and b"PayloadContent" not in body


def test_other_peoples_addresses_are_403_whether_they_exist_or_not(gateway, certs, users):
    password = users["alice@example.test"]
    answers = []
    for address in ("bob@example.test", "nobody@example.test", "carol@alias.test", "alice@example.org"):
        status, _, body = get(gateway, certs, "?emailaddress=" + urllib.parse.quote(address),
                              "alice@example.test", password)
        answers.append((status, body))
    assert {a for a in answers} == {(403, answers[0][1])}


@pytest.mark.parametrize("query", ["?emailaddress=alice", "?emailaddress=alice%40exa%20mple.test",
                                   "?emailaddress=alice%40example.test&protocol=pop3"])
def test_bad_requests_are_400(gateway, certs, users, query):
    status, _, _ = get(gateway, certs, query, "alice@example.test", users["alice@example.test"])
    assert status == 400
