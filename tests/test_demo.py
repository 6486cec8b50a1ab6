"""`casgate demo` end to end: real back ends, seeded users, the gateway, endpoints.json, clean Ctrl-C."""

from __future__ import annotations

import email
import imaplib
import json
import random
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import caldav
import pytest

from gateway.demo.run import DEFAULT_PORTS
from gateway.demo.sample_data import PDF_NAME


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _port_base() -> int:
    for _ in range(100):
        base = random.randrange(20000, 40000, 100)
        if all(_free(p + base) for p in DEFAULT_PORTS.values()):
            return base
    raise RuntimeError("no free port range")


@pytest.fixture(scope="module")
def demo():
    state = Path(tempfile.mkdtemp(prefix="casgate-demo-", dir="/var/tmp"))
    base = _port_base()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--state-dir", str(state),
                             "--port-base", str(base), "--certs-dir", str(state / "certs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    endpoints = state / "endpoints.json"
    deadline = time.monotonic() + 120
    while not endpoints.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"demo did not come up:\n{out}\n{err[-3000:]}")
        time.sleep(0.2)
    data = json.loads(endpoints.read_text())
    yield proc, data, state, base
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # lets the demo stop its back ends; a kill would rely on PDEATHSIG
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(state, ignore_errors=True)


def _ctx(data) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=data["ca_cert"])


def _pw(data, address):
    return next(u["password"] for u in data["users"] if u["address"] == address)


def test_endpoints_json_shape(demo):
    _, data, state, base = demo
    assert data["domain"] == "example.test"
    assert data["https_url"] == f"https://127.0.0.1:{8443 + base}"
    assert data["imap"] == {"host": "127.0.0.1", "port": 1143 + base, "tls_port": 1993 + base}
    assert data["pop3"] == {"host": "127.0.0.1", "port": 1110 + base, "tls_port": 1995 + base}
    assert Path(data["ca_cert"]).is_absolute() and Path(data["ca_cert"]).exists()
    assert [u["address"] for u in data["users"]] == ["alice@example.test", "bob@example.test", "carol@example.test"]
    assert all(len(u["password"]) >= 12 for u in data["users"])
    b = data["backends"]
    assert b["imap"]["host"] == "127.0.0.1" and b["imap"]["port"] > 0
    assert b["caldav_url"].startswith("https://127.0.0.1:")
    assert b["smtp"]["port"] > 0


def test_gateway_is_healthy_over_tls(demo):
    _, data, _, _ = demo
    with urllib.request.urlopen(data["https_url"] + "/healthz", context=_ctx(data), timeout=10) as r:
        health = json.loads(r.read())
    assert health["status"] == "ok"
    assert {v["type"] for v in health["backends"].values()} == {"imap", "caldav", "carddav", "smtp"}


def test_gateway_imap_and_pop3_listen(demo):
    _, data, _, _ = demo
    m = imaplib.IMAP4_SSL("127.0.0.1", data["imap"]["tls_port"], ssl_context=_ctx(data))
    assert m.welcome.startswith(b"* OK") and b"casgate" in m.welcome
    m.logout()
    with socket.create_connection(("127.0.0.1", data["pop3"]["port"])) as s:
        assert s.recv(100).startswith(b"+OK")


def test_seeded_mail_is_in_the_store(demo):
    _, data, _, _ = demo
    m = imaplib.IMAP4_SSL("127.0.0.1", data["backends"]["imap"]["port"], ssl_context=_ctx(data))
    m.login("alice@example.test", _pw(data, "alice@example.test"))
    typ, count = m.select("INBOX", readonly=True)
    assert typ == "OK" and int(count[0]) >= 10
    typ, hits = m.search(None, "TEXT", f'"{PDF_NAME}"')
    assert hits[0].split(), "an attachment was seeded"
    typ, hits = m.search(None, "HEADER", "In-Reply-To", "@")
    assert hits[0].split(), "a threaded reply was seeded"
    typ, hits = m.search(None, "FLAGGED")
    assert len(hits[0].split()) == 1
    typ, sent = m.select("Sent", readonly=True)
    assert int(sent[0]) >= 1
    m.logout()


def test_seeded_calendar_and_contacts(demo):
    _, data, _, _ = demo
    client = caldav.DAVClient(data["backends"]["caldav_url"], username="bob@example.test",
                              password=_pw(data, "bob@example.test"), ssl_verify_cert=data["ca_cert"])
    calendars = client.principal().calendars()
    assert calendars
    texts = [e.data for e in calendars[0].events()]
    assert len(texts) >= 8
    assert any("RRULE" in t and "RECURRENCE-ID" in t and "EXDATE" in t for t in texts)
    assert any("VALUE=DATE" in t for t in texts)
    assert any("TZID=Europe/Berlin" in t for t in texts)


def test_mail_sent_by_one_user_arrives_for_another(demo):
    _, data, _, _ = demo
    subject = f"demo delivery {uuid.uuid4()}"
    smtp = smtplib.SMTP("127.0.0.1", data["backends"]["smtp"]["port"], timeout=10)
    smtp.starttls(context=_ctx(data))
    smtp.login("carol@example.test", _pw(data, "carol@example.test"))
    smtp.sendmail("carol@example.test", ["bob@example.test"],
                  f"From: carol@example.test\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\nhi\r\n")
    smtp.quit()
    m = imaplib.IMAP4_SSL("127.0.0.1", data["backends"]["imap"]["port"], ssl_context=_ctx(data))
    m.login("bob@example.test", _pw(data, "bob@example.test"))
    m.select("INBOX", readonly=True)
    for _ in range(50):
        typ, hits = m.search(None, "SUBJECT", f'"{subject}"')
        if hits[0]:
            break
        time.sleep(0.1)
    assert len(hits[0].split()) == 1
    typ, msg = m.fetch(hits[0], "(BODY.PEEK[])")
    assert email.message_from_bytes(msg[0][1])["Subject"] == subject
    m.logout()


def _push_counts(data) -> dict[str, float]:
    with urllib.request.urlopen(data["https_url"] + "/metrics", context=_ctx(data), timeout=10) as r:
        text = r.read().decode()
    return {result: float(value) for result, value in
            re.findall(r'^casgate_dovecot_push_notifications_total\{result="(\w+)"\} (\S+)$', text, re.M)}


def test_dovecot_tells_the_gateway_of_each_change(demo):
    """The demo's Dovecot runs the push hook: an APPEND straight into Dovecot is a notification the gateway accepts
    (with the secret, from loopback) within moments."""
    _, data, _, _ = demo
    before = _push_counts(data)
    m = imaplib.IMAP4_SSL("127.0.0.1", data["backends"]["imap"]["port"], ssl_context=_ctx(data))
    m.login("carol@example.test", _pw(data, "carol@example.test"))
    typ, _ = m.append("INBOX", None, None, b"Subject: pushed\r\n\r\nhello\r\n")
    m.logout()
    assert typ == "OK"
    for _ in range(50):
        after = _push_counts(data)
        if after.get("accepted", 0) > before.get("accepted", 0):
            break
        time.sleep(0.1)
    assert after.get("accepted", 0) > before.get("accepted", 0)
    assert after.get("refused", 0) == 0 and after.get("bad", 0) == 0


def test_free_busy_of_demo_users_through_ews(demo, monkeypatch):
    """exchangelib asks the demo gateway for bob's and carol's free/busy; every seeded single, timed, opaque,
    confirmed event (read back from Radicale) shows as busy in the merged string."""
    import datetime as dt

    import icalendar
    from exchangelib import DELEGATE, Account, Configuration, Credentials, EWSDateTime, EWSTimeZone
    from exchangelib.transport import BASIC

    _, data, _, _ = demo
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", data["ca_cert"])
    config = Configuration(service_endpoint=data["ews_url"], auth_type=BASIC,
                           credentials=Credentials("alice@example.test", _pw(data, "alice@example.test")))
    account = Account("alice@example.test", config=config, autodiscover=False, access_type=DELEGATE)
    utc = EWSTimeZone("UTC")
    start = EWSDateTime.now(utc).replace(minute=0, second=0, microsecond=0) - dt.timedelta(days=1)
    end = start + dt.timedelta(days=20)
    for address in ("bob@example.test", "carol@example.test"):
        client = caldav.DAVClient(data["backends"]["caldav_url"], username=address, password=_pw(data, address),
                                  ssl_verify_cert=data["ca_cert"])
        simple = []
        for item in client.principal().calendars()[0].events():
            for ev in icalendar.Calendar.from_ical(item.data).walk("VEVENT"):
                if any(k in ev for k in ("RRULE", "RECURRENCE-ID")) or not isinstance(ev["DTSTART"].dt, dt.datetime):
                    continue
                if ev.get("TRANSP") == "TRANSPARENT" or ev.get("STATUS") in ("TENTATIVE", "CANCELLED"):
                    continue
                s, e = ev["DTSTART"].dt.astimezone(dt.timezone.utc), ev["DTEND"].dt.astimezone(dt.timezone.utc)
                if s >= start and e <= end:
                    simple.append((s, e))
        assert simple, f"{address} has seeded single events in the window"
        (view,) = account.protocol.get_free_busy_info([(address, "Required", False)], start, end,
                                                       merged_free_busy_interval=30, requested_view="MergedOnly")
        for s, e in simple:
            first = int((s - start).total_seconds() // 1800)
            last = int(((e - start).total_seconds() - 1) // 1800)
            assert all(view.merged[i] in "23" for i in range(first, last + 1)), (address, s, e)


# Last: it stops the demo that the tests above share.
def test_ctrl_c_stops_everything(demo):
    proc, data, state, _ = demo
    backend_ports = [data["backends"]["imap"]["port"], data["backends"]["smtp"]["port"],
                     int(data["backends"]["caldav_url"].rsplit(":", 1)[1].strip("/")),
                     data["imap"]["tls_port"], int(data["https_url"].rsplit(":", 1)[1])]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    for port in backend_ports:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not (state / "endpoints.json").exists()
    assert "alice@example.test" in out  # the summary named the users


def test_back_ends_do_not_outlive_a_killed_demo():
    """Even SIGKILL, which allows no clean-up, must not leave Dovecot or Radicale running."""
    state = Path(tempfile.mkdtemp(prefix="casgate-demo-kill-", dir="/var/tmp"))
    endpoints = state / "endpoints.json"
    for _attempt in range(3):  # a port found free may be taken by another job before the demo binds it
        with open(state / "demo.err", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--state-dir", str(state), "--no-seed",
                                     "--port-base", str(_port_base()), "--certs-dir", str(state / "certs")],
                                    stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        while not endpoints.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if endpoints.exists() or proc.poll() is None:
            break
    assert endpoints.exists(), (state / "demo.err").read_text(errors="replace")[-2000:]
    data = json.loads(endpoints.read_text())
    ports = [data["backends"]["imap"]["port"], int(data["backends"]["caldav_url"].rsplit(":", 1)[1].strip("/"))]
    proc.kill()
    proc.wait()
    for port in ports:
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"a back end still listens on {port} after the demo was killed")
    shutil.rmtree(state, ignore_errors=True)
