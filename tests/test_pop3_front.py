"""POP3 through the gateway, translated onto the user's INBOX in the real Dovecot: sizes, UIDL, TOP, DELE/RSET/QUIT,
IN-USE, STLS, errors, and UIDLs that survive a gateway restart."""

from __future__ import annotations

import base64
import imaplib
import poplib
import uuid

import pytest

from gatewayproc import start_gateway, stop_gateway

from fixtures_mailfront import POP_USER, PROXY_FROM


def _seed(dovecot, users, bodies: list[bytes]) -> None:
    """Make POP_USER's INBOX hold exactly these messages (through Dovecot directly)."""
    m = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10)
    m.login(POP_USER, users[POP_USER])
    if int(m.select("INBOX")[1][0]):
        m.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
        m.expunge()
    for body in bodies:
        assert m.append("INBOX", None, None, body)[0] == "OK"
    m.logout()


def _inbox_subjects(dovecot, users) -> list[str]:
    m = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=10)
    m.login(POP_USER, users[POP_USER])
    m.select("INBOX")
    typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    m.logout()
    if data == [None]:
        return []
    return sorted(part[1].decode().split(":", 1)[1].strip() for part in data if isinstance(part, tuple))


def _msg(subject: str, body: str) -> bytes:
    return f"From: x@example.test\r\nTo: {POP_USER}\r\nSubject: {subject}\r\n\r\n{body}".encode()


def _pop3s(gw) -> poplib.POP3_SSL:
    return poplib.POP3_SSL("127.0.0.1", gw.ports["pop3s"], context=gw.tls_context(), timeout=10)


@pytest.fixture
def maildrop(dovecot, users):
    bodies = [_msg("one", "first line\r\n.leading dot\r\n..two dots\r\nlast\r\n"),
              _msg("two", "line 1\r\nline 2\r\nline 3\r\nline 4\r\n"),
              _msg("three", ("y" * 70 + "\r\n") * 30000)]  # ~2 MB: streamed through in chunks
    _seed(dovecot, users, bodies)
    return bodies


def test_full_session_sizes_uidl_top_retr_dele_quit(mailfront, users, dovecot, maildrop):
    p = _pop3s(mailfront)
    p.user(POP_USER)
    assert p.pass_(users[POP_USER]).startswith(b"+OK")
    count, total = p.stat()
    assert count == 3 and total == sum(len(b) for b in maildrop)
    resp, listing, _ = p.list()
    sizes = {int(n): int(s) for n, s in (x.split() for x in listing)}
    assert sizes == {1: len(maildrop[0]), 2: len(maildrop[1]), 3: len(maildrop[2])}
    for n, body in enumerate(maildrop, 1):
        resp, lines, octets = p.retr(n)
        assert b"\r\n".join(lines) + b"\r\n" == body  # exact bytes: poplib un-stuffs the dots
    resp, lines, _ = p.top(2, 2)
    assert lines[-3:] == [b"", b"line 1", b"line 2"]
    resp, lines, _ = p.top(1, 0)
    assert lines[-1] == b"" and b"Subject: one" in lines
    resp, uidls, _ = p.uidl()
    ids = [x.split()[1] for x in uidls]
    assert len(set(ids)) == 3 and all(b"." in i for i in ids)
    p.dele(1)
    p.dele(3)
    with pytest.raises(poplib.error_proto):
        p.retr(1)  # deleted in this session
    assert p.stat() == (1, len(maildrop[1]))
    assert _inbox_subjects(dovecot, users) == ["one", "three", "two"]  # nothing removed before QUIT
    p.quit()
    assert _inbox_subjects(dovecot, users) == ["two"]


def test_read_ahead_never_serves_a_deleted_or_other_message(mailfront, users, dovecot, maildrop):
    p = _pop3s(mailfront)
    p.user(POP_USER)
    p.pass_(users[POP_USER])

    def retr(n: int) -> bytes:
        return b"\r\n".join(p.retr(n)[1]) + b"\r\n"

    assert retr(1) == maildrop[0]  # message 2 is now read ahead
    p.dele(2)
    with pytest.raises(poplib.error_proto, match="deleted"):
        p.retr(2)
    p.rset()
    assert retr(2) == maildrop[1]  # the read-ahead was dropped at DELE time or discarded now: streamed again
    assert retr(1) == maildrop[0]  # message 2 read ahead again, then message 1 asked for instead
    assert p.top(2, 1)[1][-1] == b"line 1"
    assert retr(2) == maildrop[1]
    assert retr(3) == maildrop[2]  # too big to read ahead: streamed
    p.dele(3)
    p.quit()
    assert _inbox_subjects(dovecot, users) == ["one", "two"]


def test_rset_undoes_and_a_dropped_connection_deletes_nothing(mailfront, users, dovecot, maildrop):
    p = _pop3s(mailfront)
    p.user(POP_USER)
    p.pass_(users[POP_USER])
    p.dele(2)
    p.rset()
    assert p.stat()[0] == 3
    p.dele(1)
    p.close()  # no QUIT: the UPDATE state never happens
    assert _inbox_subjects(dovecot, users) == ["one", "three", "two"]


def test_second_session_is_in_use(mailfront, users, maildrop):
    first = _pop3s(mailfront)
    first.user(POP_USER)
    first.pass_(users[POP_USER])
    second = _pop3s(mailfront)
    second.user(POP_USER)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(users[POP_USER])
    first.quit()
    second.user(POP_USER)
    assert second.pass_(users[POP_USER]).startswith(b"+OK")  # free again once the first one left
    second.quit()


def test_auth_plain_and_stls(mailfront, users, maildrop):
    p = poplib.POP3("127.0.0.1", mailfront.ports["pop3"], timeout=10)
    caps = p.capa()
    assert "STLS" in caps and "SASL" not in caps and "USER" not in caps
    with pytest.raises(poplib.error_proto, match="STLS"):
        p.user(POP_USER)
    p.stls(context=mailfront.tls_context())
    caps = p.capa()
    assert "STLS" not in caps and "PLAIN" in caps.get("SASL", [])
    blob = base64.b64encode(b"\0" + POP_USER.encode() + b"\0" + users[POP_USER].encode())
    assert p._shortcmd("AUTH PLAIN " + blob.decode()).startswith(b"+OK")
    assert p.stat()[0] == 3
    p.quit()


def test_wrong_password_and_back_end_down(mailfront, users):
    c = mailfront.connect("pop3s", source=PROXY_FROM, header=b"PROXY TCP4 192.0.2.62 127.0.0.1 5000 995\r\n")
    assert c.line().startswith(b"+OK")
    c.send(b"USER %s\r\nPASS not-the-password\r\n" % POP_USER.encode())
    assert c.line().startswith(b"+OK")
    assert c.line().startswith(b"-ERR [AUTH]")
    c.send(b"USER dan@example.test\r\nPASS anything\r\n")
    assert c.line().startswith(b"+OK")
    assert c.line().startswith(b"-ERR [SYS/TEMP]")
    c.close()


def test_uidls_survive_a_gateway_restart(mailfront, users, maildrop):
    def uidls() -> list[bytes]:
        p = _pop3s(mailfront)
        p.user(POP_USER)
        p.pass_(users[POP_USER])
        ids = p.uidl()[1]
        p.quit()
        return ids

    before = uidls()
    stop_gateway(mailfront.proc)
    mailfront.proc = start_gateway(mailfront.root, mailfront.ports.values())
    assert uidls() == before and len(before) == 3


def test_strict_pop3_idle_timeout(strict_mailfront, users, maildrop):
    c = strict_mailfront.connect("pop3")  # plain text allowed from loopback on this gateway
    c.line()
    c.send(b"USER %s\r\nPASS %s\r\n" % (POP_USER.encode(), users[POP_USER].encode()))
    assert c.line().startswith(b"+OK") and c.line().startswith(b"+OK")
    c.sock.settimeout(5)
    assert c.closed() and c.buf == b""  # RFC 1939: the autologout timer closes without a response
