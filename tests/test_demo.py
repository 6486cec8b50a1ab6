"""`casgate demo` end to end: real back ends, seeded users, the gateway, endpoints.json, clean Ctrl-C."""

from __future__ import annotations

import email
import imaplib
import json
import os
import random
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
        proc.kill()
        proc.wait()


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
