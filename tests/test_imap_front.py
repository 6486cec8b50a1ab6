"""IMAP through the gateway to the session's real Dovecot: logins in every form, the byte relay (select, fetch,
store, search, append, IDLE, COMPRESS), master users, errors, limits and the PROXY protocol."""

from __future__ import annotations

import asyncio
import base64
import email.message
import imaplib
import smtplib
import time
import uuid
import zlib

import aioimaplib
import pytest

from gateway.proxyproto import build_v1, build_v2

from fixtures_mailfront import IMAP_USER, PROXY_FROM


def _imaps(gw) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL("127.0.0.1", gw.ports["imaps"], ssl_context=gw.tls_context(), timeout=10)


def _message(subject: str, body: str = "hello\r\n", size: int = 0) -> bytes:
    text = body if not size else ("x" * 76 + "\r\n") * (size // 78)
    return (f"From: a@example.test\r\nTo: {IMAP_USER}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{uuid.uuid4()}@example.test>\r\n\r\n{text}").encode()


def _direct(dovecot, user, password) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10)
    m.login(user, password)
    return m


def test_login_select_append_search_fetch_store(mailfront, users):
    subject = f"relay-{uuid.uuid4().hex[:8]}"
    m = _imaps(mailfront)
    try:
        typ, data = m.login(IMAP_USER, users[IMAP_USER])  # the password has spaces and quotes: a quoted string
        assert typ == "OK"
        typ, data = m.append("INBOX", "(\\Flagged)", None, _message(subject))
        assert typ == "OK" and b"APPENDUID" in data[0]
        typ, data = m.select("INBOX")
        assert typ == "OK" and int(data[0]) >= 1
        typ, data = m.uid("SEARCH", None, "SUBJECT", subject)
        (uid,) = data[0].split()
        typ, data = m.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")
        assert typ == "OK" and b"\\Flagged" in data[0][0] and subject.encode() in data[0][1]
        typ, _ = m.uid("STORE", uid, "+FLAGS.SILENT", "(\\Seen)")
        assert typ == "OK"
        typ, data = m.uid("FETCH", uid, "(FLAGS)")
        assert b"\\Seen" in data[0]
    finally:
        m.logout()


def test_tagged_ok_carries_the_back_ends_capabilities(mailfront, users):
    c = mailfront.connect("imaps")
    greeting = c.line()
    assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1") and b"AUTH=PLAIN" in greeting
    assert b"STARTTLS" not in greeting  # already on TLS
    blob = base64.b64encode(b"\0" + IMAP_USER.encode() + b"\0" + users[IMAP_USER].encode())
    c.send(b"a1 AUTHENTICATE PLAIN " + blob + b"\r\n")  # SASL-IR
    ok = c.line()
    assert ok.startswith(b"a1 OK [CAPABILITY ") and b"IMAP4rev1" in ok
    assert b"CONDSTORE" in ok and b"QRESYNC" in ok and b"IDLE" in ok  # Dovecot's post-login set
    c.send(b"a2 ENABLE QRESYNC\r\na3 SELECT INBOX (QRESYNC (1 1))\r\n")
    assert any(b"ENABLED" in x for x in c.until(b"a2 "))
    assert c.until(b"a3 ")[-1].startswith(b"a3 OK")
    c.send(b"a4 LOGOUT\r\n")
    assert c.until(b"a4 ")[-1].startswith(b"a4 OK")
    c.close()


def _spares(gw) -> dict[str, float]:
    import re
    import ssl
    import urllib.request
    ctx = ssl.create_default_context(cafile=str(gw.certs.ca_cert))
    with urllib.request.urlopen(f"https://127.0.0.1:{gw.ports['https']}/metrics", context=ctx, timeout=10) as r:
        text = r.read().decode()
    found = re.findall(r'^casgate_imap_backend_spares_total\{result="(hit|miss)"\} (\S+)$', text, re.M)
    return {k: float(v) for k, v in found}


def test_back_to_back_logins_use_spare_back_end_connections(mailfront, users):
    before = _spares(mailfront)
    for i in range(3):
        m = _imaps(mailfront)
        m.login(IMAP_USER, users[IMAP_USER])
        assert m.select("INBOX")[0] == "OK"
        m.logout()
        time.sleep(0.2)  # time for the spare to be opened behind the login
    after = _spares(mailfront)
    assert after.get("hit", 0) - before.get("hit", 0) >= 2
    assert after.get("hit", 0) + after.get("miss", 0) - before.get("hit", 0) - before.get("miss", 0) == 3


def test_authenticate_plain_with_continuation_and_cancel(mailfront, users):
    c = mailfront.connect("imaps")
    c.line()
    c.send(b"a1 AUTHENTICATE PLAIN\r\n")
    assert c.line().startswith(b"+")
    c.send(b"*\r\n")
    assert c.line().startswith(b"a1 BAD")
    c.send(b"a2 AUTHENTICATE PLAIN\r\n")
    assert c.line().startswith(b"+")
    c.send(base64.b64encode(b"\0" + IMAP_USER.encode() + b"\0" + users[IMAP_USER].encode()) + b"\r\n")
    assert c.line().startswith(b"a2 OK")
    c.send(b"a3 NOOP\r\n")
    assert c.until(b"a3 ")[-1].startswith(b"a3 OK")
    c.close()


def test_login_with_synchronising_and_non_synchronising_literals(mailfront, users):
    user, password = IMAP_USER.encode(), users[IMAP_USER].encode()
    c = mailfront.connect("imaps")
    c.line()
    c.send(b"a1 LOGIN {%d}\r\n" % len(user))
    assert c.line().startswith(b"+")
    c.send(user + b" {%d+}\r\n" % len(password) + password + b"\r\n")
    assert c.line().startswith(b"a1 OK")
    c.close()


def test_commands_pipelined_behind_login_reach_the_back_end(mailfront, users):
    c = mailfront.connect("imaps")
    c.line()
    user, password = IMAP_USER.encode(), users[IMAP_USER].encode()
    c.send(b"a1 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\na2 SELECT INBOX\r\na3 LOGOUT\r\n"
           % (len(user), user, len(password), password))
    assert c.line().startswith(b"a1 OK")
    assert c.until(b"a2 ")[-1].startswith(b"a2 OK [READ-WRITE]")
    assert c.until(b"a3 ")[-1].startswith(b"a3 OK")
    assert c.closed()


def test_starttls_port_refuses_login_until_tls(mailfront, users):
    m = imaplib.IMAP4("127.0.0.1", mailfront.ports["imap"], timeout=10)
    try:
        assert "LOGINDISABLED" in m.capabilities and "STARTTLS" in m.capabilities
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            m.login(IMAP_USER, users[IMAP_USER])
        m.starttls(ssl_context=mailfront.tls_context())
        assert "LOGINDISABLED" not in m.capabilities and "AUTH=PLAIN" in m.capabilities
        assert m.login(IMAP_USER, users[IMAP_USER])[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
    finally:
        m.logout()


def test_wrong_password_is_authenticationfailed(mailfront):
    c = mailfront.connect("imaps", source=PROXY_FROM, header=build_v1("192.0.2.61", 40000, "127.0.0.1", 993))
    c.line()
    c.send(b'a1 LOGIN "%s" "Wr0ng-Passw0rd-zz"\r\n' % IMAP_USER.encode())
    assert c.line().startswith(b"a1 NO [AUTHENTICATIONFAILED]")
    c.send(b"a2 NOOP\r\n")  # the connection stays usable for another attempt
    assert c.line().startswith(b"a2 OK")
    c.close()
    assert "192.0.2.61" in mailfront.log  # the PROXY header's client address is the one logged
    assert "Wr0ng-Passw0rd-zz" not in mailfront.log  # no password in the log


def test_back_end_down_is_unavailable(mailfront):
    c = mailfront.connect("imaps")
    c.line()
    c.send(b"a1 LOGIN dan@example.test whatever\r\n")
    assert c.line().startswith(b"a1 NO [UNAVAILABLE]")
    c.close()


def test_master_user_logs_in_as_the_user(mailfront, users, dovecot):
    subject = f"master-{uuid.uuid4().hex[:8]}"
    m = _imaps(mailfront)
    try:
        assert m.login("carol@example.test", users["carol@example.test"])[0] == "OK"
        assert m.append("INBOX", None, None, _message(subject))[0] == "OK"
    finally:
        m.logout()
    direct = _direct(dovecot, "carol@example.test", users["carol@example.test"])
    try:
        direct.select("INBOX")
        assert direct.search(None, "SUBJECT", subject)[1][0].split()  # landed in carol's own INBOX
    finally:
        direct.logout()
    m = _imaps(mailfront)
    try:  # the master account never stands in for a wrong user password
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            m.login("carol@example.test", "not-carols-password")
    finally:
        m.shutdown()


async def test_idle_sees_a_message_delivered_by_lmtp(mailfront, users, dovecot):
    client = aioimaplib.IMAP4_SSL("127.0.0.1", mailfront.ports["imaps"], ssl_context=mailfront.tls_context(),
                                  timeout=10)
    await client.wait_hello_from_server()
    assert (await client.login(IMAP_USER, users[IMAP_USER])).result == "OK"
    assert (await client.select("INBOX")).result == "OK"
    idle = await client.idle_start(timeout=20)
    await client.wait_server_push()  # "+ idling"
    subject = f"pushed-{uuid.uuid4().hex[:8]}"
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "x@example.test", IMAP_USER, subject
    msg.set_content("delivered while idling")
    t0 = time.monotonic()
    await asyncio.to_thread(lambda: smtplib.LMTP("127.0.0.1", dovecot.lmtp_port).send_message(msg))
    pushed = await asyncio.wait_for(client.wait_server_push(), 10)
    assert any(b"EXISTS" in (x if isinstance(x, bytes) else str(x).encode()) for x in pushed)
    assert time.monotonic() - t0 < 5
    client.idle_done()
    await asyncio.wait_for(idle, 10)
    await client.logout()


def test_compress_deflate_end_to_end(mailfront, users):
    c = mailfront.connect("imaps")
    c.line()
    c.send(b"a1 AUTHENTICATE PLAIN " + base64.b64encode(
        b"\0" + IMAP_USER.encode() + b"\0" + users[IMAP_USER].encode()) + b"\r\n")
    ok = c.line()
    assert b"COMPRESS=DEFLATE" in ok
    c.send(b"a2 COMPRESS DEFLATE\r\n")
    assert c.line().startswith(b"a2 OK")
    deflate, inflate = zlib.compressobj(wbits=-15), zlib.decompressobj(wbits=-15)
    c.send(deflate.compress(b"a3 SELECT INBOX\r\na4 NOOP\r\n") + deflate.flush(zlib.Z_SYNC_FLUSH))
    got = b""
    while b"a4 OK" not in got:
        chunk = c.sock.recv(65536)
        assert chunk
        got += inflate.decompress(chunk)
    assert b"a3 OK" in got
    c.close()


def test_proxy_protocol_v2_and_untrusted_senders(mailfront, users):
    c = mailfront.connect("imaps", source=PROXY_FROM, header=build_v2("2001:db8::7", 5555, "::1", 993))
    assert c.line().startswith(b"* OK")
    c.send(b"a1 LOGIN nobody@example.test nothing\r\n")
    assert c.line().startswith(b"a1 NO [AUTHENTICATIONFAILED]")
    c.close()
    assert "2001:db8::7" in mailfront.log
    # The balancer must send a header; a bare connection from it is dropped before any greeting.
    c = mailfront.connect("imap", source=PROXY_FROM, header=b"a1 CAPABILITY\r\n")
    assert c.closed() and c.buf == b""
    # Anyone else's PROXY header is just a bad command: it names no client address.
    c = mailfront.connect("imap", header=build_v1("198.51.100.99", 1, "127.0.0.1", 143))
    assert c.line().startswith(b"* OK")
    assert b"BAD" in c.line()
    c.close()
    assert "198.51.100.99" not in mailfront.log


def test_connections_per_client_address_are_limited(mailfront):
    header = build_v1("203.0.113.9", 1000, "127.0.0.1", 143)
    held = [mailfront.connect("imap", source=PROXY_FROM, header=header) for _ in range(20)]
    try:
        for c in held:
            assert c.line().startswith(b"* OK")
        extra = mailfront.connect("imap", source=PROXY_FROM, header=header)
        assert extra.line().startswith(b"* BYE [UNAVAILABLE]")
        assert extra.closed()
        other = mailfront.connect("imap", source=PROXY_FROM, header=build_v1("203.0.113.10", 1, "127.0.0.1", 143))
        assert other.line().startswith(b"* OK")  # another address is not affected
        other.close()
    finally:
        for c in held:
            c.close()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_slow_reader_does_not_make_the_gateway_buffer(mailfront, users):
    folder = f"Big{uuid.uuid4().hex[:6]}"
    m = _imaps(mailfront)
    m.login(IMAP_USER, users[IMAP_USER])
    m.create(folder)
    big = _message("big", size=16 * 1024 * 1024)
    assert m.append(folder, None, None, big)[0] == "OK"
    m.logout()
    c = mailfront.connect("imaps")
    c.line()
    c.send(b'a1 LOGIN "%s" {%d+}\r\n%s\r\n' % (IMAP_USER.encode(), len(users[IMAP_USER].encode()),
                                              users[IMAP_USER].encode()))
    assert c.line().startswith(b"a1 OK")
    c.send(b"a2 SELECT %s\r\n" % folder.encode())
    c.until(b"a2 OK")
    before = _rss_kb(mailfront.proc.pid)
    c.send(b"a3 FETCH 1 BODY.PEEK[]\r\n")
    time.sleep(2)  # the client reads nothing: Dovecot must be made to wait, not the gateway's memory to grow
    during = _rss_kb(mailfront.proc.pid)
    assert during - before < 4096, (before, during)
    head = c.line()
    assert head.endswith(b"{%d}" % len(big))
    assert c.exactly(len(big)) == big
    assert c.until(b"a3 ")[-1].startswith(b"a3 OK")
    c.close()


def test_strict_limits_and_timeouts(strict_mailfront, users):
    gw = strict_mailfront
    c = gw.connect("imap")  # plain text allowed from loopback by this gateway's config
    greeting = c.line()
    assert b"AUTH=PLAIN" in greeting and b"LOGINDISABLED" not in greeting
    c.send(b"a1 LOGIN nobody@example.test x\r\n")
    assert c.line().startswith(b"a1 NO [AUTHENTICATIONFAILED]")
    c.send(b"a2 LOGIN nobody@example.test y\r\n")
    lines = [c.line(), c.line()]
    assert lines[0].startswith(b"a2 NO") or lines[1].startswith(b"a2 NO")
    assert any(x.startswith(b"* BYE") for x in lines) and c.closed()
    c = gw.connect("imap")
    c.line()
    c.send(b"".join(b"n%d NOOP\r\n" % i for i in range(6)))
    assert any(x.startswith(b"* BYE") for x in [c.line() for _ in range(6)])
    c = gw.connect("imap")
    c.line()
    time.sleep(1.5)
    assert c.line().startswith(b"* BYE") and c.closed()  # pre-login idle timeout
    c = gw.connect("imap")
    c.line()
    c.send(b'a1 LOGIN "%s" {%d+}\r\n%s\r\n' % (IMAP_USER.encode(), len(users[IMAP_USER].encode()),
                                              users[IMAP_USER].encode()))
    assert c.line().startswith(b"a1 OK")
    c.sock.settimeout(5)
    assert c.line().startswith(b"* BYE")  # idle after login: closed within the (1 s) timeout plus a sweep
    assert c.closed()
