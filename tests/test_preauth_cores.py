"""Transcripts against the pure IMAP and POP3 pre-login cores: bytes in, Reply objects out, no sockets."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.imap.preauth import MAX_LINE as IMAP_MAX_LINE
from gateway.imap.preauth import ImapPreAuth
from gateway.lineproto import LoginRequest, Reply
from gateway.pop3.preauth import MAX_LINE as POP3_MAX_LINE
from gateway.pop3.preauth import Pop3PreAuth


def _data(replies: list[Reply]) -> bytes:
    return b"".join(r.data for r in replies)


def _caps(core: ImapPreAuth) -> set[str]:
    replies = core.receive(b"c1 CAPABILITY\r\n")
    assert len(replies) == 1
    lines = replies[0].data.split(b"\r\n")
    assert lines[0].startswith(b"* CAPABILITY ")
    assert lines[1].startswith(b"c1 OK ")
    return set(lines[0][len(b"* CAPABILITY "):].decode().split())


# --- IMAP -------------------------------------------------------------------------------------------------


def test_imap_greeting_before_tls():
    g = ImapPreAuth(tls_active=False).greeting()
    assert g.startswith(b"* OK [CAPABILITY IMAP4rev1 ") and g.endswith(b"\r\n")
    assert b"STARTTLS" in g and b"LOGINDISABLED" in g and b"AUTH=" not in g


def test_imap_greeting_on_implicit_tls():
    g = ImapPreAuth(tls_active=True).greeting()
    assert g.startswith(b"* OK ") and b"AUTH=PLAIN" in g
    assert b"STARTTLS" not in g and b"LOGINDISABLED" not in g


def test_imap_capability_before_and_after_starttls():
    core = ImapPreAuth(tls_active=False)
    before = _caps(core)
    assert {"IMAP4rev1", "STARTTLS", "LOGINDISABLED"} <= before
    assert not any(c.startswith("AUTH=") for c in before)
    [reply] = core.receive(b"t1 STARTTLS\r\n")
    assert reply.starttls and not reply.close
    assert reply.data == b"t1 OK Begin TLS negotiation now\r\n"
    core.tls_started()
    after = _caps(core)
    assert "AUTH=PLAIN" in after and "IMAP4rev1" in after
    assert "STARTTLS" not in after and "LOGINDISABLED" not in after


def test_imap_starttls_discards_pipelined_input():
    core = ImapPreAuth(tls_active=False)
    replies = core.receive(b"t1 STARTTLS\r\nt2 LOGOUT\r\nt3 CAPABILITY\r\n")
    assert len(replies) == 1 and replies[0].starttls
    assert b"t2" not in _data(replies)
    core.tls_started()
    # Nothing injected before the handshake runs afterwards, and the session is still open.
    assert core.receive(b"") == []
    assert core.receive(b"t4 NOOP\r\n") == [Reply(b"t4 OK NOOP completed\r\n")]


def test_imap_starttls_discards_partial_line_in_same_packet():
    core = ImapPreAuth(tls_active=False)
    [reply] = core.receive(b"t1 STARTTLS\r\nt2 LOG")
    assert reply.starttls
    core.tls_started()
    # "OUT\r\n" alone is not a command: the half line sent in plaintext must not have been kept.
    [bad] = core.receive(b"OUT\r\n")
    assert bad.data.startswith(b"* BAD") and not bad.close


def test_imap_starttls_when_tls_active_or_unavailable():
    core = ImapPreAuth(tls_active=True)
    [r] = core.receive(b"a STARTTLS\r\n")
    assert r.data.startswith(b"a BAD ") and not r.starttls
    core = ImapPreAuth(tls_active=False, starttls_available=False)
    assert "STARTTLS" not in _caps(core)
    [r] = core.receive(b"a STARTTLS\r\n")
    assert r.data.startswith(b"a NO ") and not r.starttls


def test_imap_second_starttls_is_refused():
    core = ImapPreAuth(tls_active=False)
    assert core.receive(b"a STARTTLS\r\n")[0].starttls
    core.tls_started()
    [r] = core.receive(b"b STARTTLS\r\n")
    assert r.data.startswith(b"b BAD ") and not r.starttls


@pytest.mark.parametrize("command", [b"LOGIN alice secret", b"login alice secret", b"AUTHENTICATE PLAIN",
                                     b"AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA=="])
def test_imap_login_before_tls_needs_privacy(command):
    core = ImapPreAuth(tls_active=False)
    [r] = core.receive(b"a1 " + command + b"\r\n")
    assert r.data.startswith(b"a1 NO [PRIVACYREQUIRED]")
    assert not r.close and not r.starttls


@pytest.mark.parametrize("command", [b"LOGIN alice secret", b"AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==",
                                     b"Authenticate PLAIN\r\nAGFsaWNlAHNlY3JldA=="])
def test_imap_login_after_tls_goes_to_the_shell(command):
    core = ImapPreAuth(tls_active=False)
    core.receive(b"a0 STARTTLS\r\n")
    core.tls_started()
    replies = core.receive(b"a1 " + command + b"\r\n")
    assert replies[-1] == Reply(b"", login=LoginRequest(b"a1", "alice", "secret"))
    assert [r.data for r in replies[:-1]] == ([b"+ \r\n"] if b"\r\n" in command else [])


def test_imap_logout_closes_and_nothing_after():
    core = ImapPreAuth(tls_active=True)
    replies = core.receive(b"z LOGOUT\r\nz2 NOOP\r\n")
    assert len(replies) == 1
    assert replies[0].close
    assert replies[0].data == b"* BYE casgate closing\r\nz OK LOGOUT completed\r\n"
    assert core.receive(b"z3 NOOP\r\n") == []


def test_imap_noop_id_and_errors():
    core = ImapPreAuth(tls_active=False)
    replies = core.receive(b"n1 NOOP\r\nn2 ID NIL\r\nn3 SELECT INBOX\r\n\r\nbad\r\n")
    assert [r.data for r in replies] == [
        b"n1 OK NOOP completed\r\n",
        b'* ID ("name" "casgate")\r\nn2 OK ID completed\r\n',
        b"n3 BAD command unknown or not valid before login\r\n",
        b"* BAD malformed command\r\n",
        b"* BAD malformed command\r\n",
    ]
    assert not any(r.close for r in replies)


@pytest.mark.parametrize("tag", [b"+", b"*", b"%", b"a+b", b"(", b"{1}", b'"a"', b"a\\"])
def test_imap_invalid_tag_is_answered_untagged_bad(tag):
    # Echoing such a tag would make the reply read as a continuation ("+") or untagged ("*") response.
    core = ImapPreAuth(tls_active=False)
    for command in (b" NOOP\r\n", b" LOGIN a b\r\n"):
        assert core.receive(tag + command) == [Reply(b"* BAD malformed command\r\n")]


@pytest.mark.parametrize("tag", [b"A001", b"a.b-c_d", b"]", b"x[1]", b"!#$&'", b"~|"])
def test_imap_valid_tags_are_echoed(tag):
    core = ImapPreAuth(tls_active=False)
    assert core.receive(tag + b" NOOP\r\n") == [Reply(tag + b" OK NOOP completed\r\n")]


def test_imap_bare_lf_line_endings_accepted():
    core = ImapPreAuth(tls_active=False)
    assert core.receive(b"a NOOP\n") == [Reply(b"a OK NOOP completed\r\n")]


def test_imap_command_split_across_receives():
    core = ImapPreAuth(tls_active=False)
    assert core.receive(b"a1 CAPA") == []
    assert core.receive(b"BILITY") == []
    assert core.receive(b"\r") == []
    [r] = core.receive(b"\na2 NO")
    assert r.data.startswith(b"* CAPABILITY ") and r.data.endswith(b"a1 OK CAPABILITY completed\r\n")
    assert core.receive(b"OP\r\n") == [Reply(b"a2 OK NOOP completed\r\n")]


def test_imap_byte_by_byte():
    core = ImapPreAuth(tls_active=False)
    out = []
    for b in b"x1 NOOP\r\nx2 LOGIN a b\r\nx3 LOGOUT\r\n":
        out += core.receive(bytes([b]))
    assert [r.data.split(b" ", 2)[:2] for r in out] == [[b"x1", b"OK"], [b"x2", b"NO"], [b"*", b"BYE"]]
    assert out[-1].close


def test_imap_overlong_line_closes():
    core = ImapPreAuth(tls_active=False)
    assert core.receive(b"a " + b"x" * (IMAP_MAX_LINE - 10)) == []
    replies = core.receive(b"y" * 100)
    assert replies[-1].close and replies[-1].data.startswith(b"* BYE")
    assert core.receive(b"\r\nb NOOP\r\n") == []


def test_imap_overlong_line_after_good_commands():
    core = ImapPreAuth(tls_active=False)
    replies = core.receive(b"a NOOP\r\n" + b"A" * (IMAP_MAX_LINE + 1))
    assert replies[0].data == b"a OK NOOP completed\r\n"
    assert replies[-1].close


# --- POP3 -------------------------------------------------------------------------------------------------


def _capa(core: Pop3PreAuth) -> list[bytes]:
    [r] = core.receive(b"CAPA\r\n")
    assert r.data.startswith(b"+OK") and r.data.endswith(b"\r\n.\r\n")
    return r.data.split(b"\r\n")[1:-2]


def test_pop3_greeting():
    assert Pop3PreAuth(tls_active=False).greeting().startswith(b"+OK ")
    assert Pop3PreAuth(tls_active=False).greeting().endswith(b"\r\n")


def test_pop3_capa_before_and_after_stls():
    core = Pop3PreAuth(tls_active=False)
    assert b"STLS" in _capa(core)
    assert b"PIPELINING" in _capa(core)
    assert b"USER" not in _capa(core) and b"SASL PLAIN" not in _capa(core)
    [r] = core.receive(b"STLS\r\n")
    assert r.starttls and r.data.startswith(b"+OK")
    core.tls_started()
    assert b"STLS" not in _capa(core)
    assert b"USER" in _capa(core) and b"SASL PLAIN" in _capa(core)
    [r] = core.receive(b"STLS\r\n")
    assert r.data.startswith(b"-ERR") and not r.starttls


def test_pop3_implicit_tls_has_no_stls():
    core = Pop3PreAuth(tls_active=True)
    assert b"STLS" not in _capa(core)
    assert not core.receive(b"stls\r\n")[0].starttls


def test_pop3_stls_discards_pipelined_input():
    core = Pop3PreAuth(tls_active=False)
    replies = core.receive(b"STLS\r\nQUIT\r\nCAPA\r\nUSE")
    assert len(replies) == 1 and replies[0].starttls
    core.tls_started()
    [r] = core.receive(b"R alice\r\n")  # the "USE" half line did not survive the handshake
    assert r.data.startswith(b"-ERR unknown command")
    assert core.receive(b"NOOP\r\n") == [Reply(b"+OK\r\n")]
    assert not core.receive(b"CAPA\r\n")[0].close


@pytest.mark.parametrize("command", [b"USER alice", b"PASS secret", b"AUTH PLAIN", b"AUTH", b"user x"])
def test_pop3_login_before_tls(command):
    core = Pop3PreAuth(tls_active=False)
    [r] = core.receive(command + b"\r\n")
    assert r.data == b"-ERR [AUTH] use STLS first\r\n"
    assert not r.close and r.login is None


def test_pop3_apop_is_refused_with_or_without_tls():
    for tls in (False, True):
        [r] = Pop3PreAuth(tls_active=tls).receive(b"APOP alice 0123\r\n")
        assert r.data.startswith(b"-ERR ") and r.login is None


def test_pop3_login_after_tls():
    core = Pop3PreAuth(tls_active=False)
    core.receive(b"STLS\r\n")
    core.tls_started()
    assert core.receive(b"PASS secret\r\n") == [Reply(b"-ERR send USER first\r\n")]
    assert core.receive(b"AUTH\r\n") == [Reply(b"+OK mechanisms follow\r\nPLAIN\r\n.\r\n")]
    assert core.receive(b"USER alice\r\n") == [Reply(b"+OK send PASS\r\n")]
    [r] = core.receive(b"PASS secret\r\n")
    assert r == Reply(b"", login=LoginRequest(b"", "alice", "secret"))


def test_pop3_quit_closes():
    core = Pop3PreAuth(tls_active=False)
    replies = core.receive(b"quit\r\nCAPA\r\n")
    assert len(replies) == 1 and replies[0].close and replies[0].data.startswith(b"+OK")
    assert core.receive(b"CAPA\r\n") == []


def test_pop3_split_across_receives():
    core = Pop3PreAuth(tls_active=False)
    assert core.receive(b"CA") == []
    assert core.receive(b"PA\r") == []
    [r] = core.receive(b"\nQU")
    assert r.data.startswith(b"+OK capability list follows")
    [q] = core.receive(b"IT\r\n")
    assert q.close


def test_pop3_overlong_line_closes():
    core = Pop3PreAuth(tls_active=False)
    replies = core.receive(b"USER " + b"a" * POP3_MAX_LINE)
    assert len(replies) == 1 and replies[0].close and replies[0].data.startswith(b"-ERR")
    assert core.receive(b"\r\nCAPA\r\n") == []


# --- fuzz -------------------------------------------------------------------------------------------------

# The only tagged OK texts the IMAP core may produce, and the only +OK texts of the POP3 core.
_IMAP_OK = {b"CAPABILITY completed", b"NOOP completed", b"LOGOUT completed", b"ID completed",
            b"Begin TLS negotiation now"}
_POP3_OK = {b"+OK capability list follows", b"+OK casgate signing off", b"+OK begin TLS negotiation", b"+OK",
            b"+OK send PASS", b"+OK mechanisms follow"}
_TAGGED = re.compile(rb"^(\S+) (OK|NO|BAD) (.*)$", re.S)

_IMAP_PIECES = [b"a LOGIN alice secret\r\n", b"b AUTHENTICATE PLAIN\r\n", b"c AUTHENTICATE PLAIN AGEAYg==\r\n",
                b"d STARTTLS\r\n", b"e CAPABILITY\r\n", b"f NOOP\r\n", b"g LOGOUT\r\n", b"h ID NIL\r\n",
                b"i LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n", b"j login \"a\" \"b\"\n", b"\r\n", b"\n", b"\r",
                b"LOGIN", b" ", b"k", b"\x00", b"\xff", b"* OK", b"+ ", b"x" * 300]
_POP3_PIECES = [b"USER alice\r\n", b"PASS secret\r\n", b"AUTH PLAIN\r\n", b"AUTH PLAIN AGEAYg==\r\n",
                b"APOP a b\r\n", b"STLS\r\n", b"CAPA\r\n", b"QUIT\r\n", b"NOOP\r\n", b"\r\n", b"\n", b"USER",
                b"PASS", b" ", b"\x00", b"\xff", b"+OK", b"x" * 100]


def _stream(pieces: list[bytes]):
    """Byte chunks built from protocol-shaped pieces and noise, then cut at arbitrary points."""
    blob = st.lists(st.one_of(st.sampled_from(pieces), st.binary(max_size=40)), max_size=30).map(b"".join)
    return blob.flatmap(lambda data: st.lists(st.integers(0, len(data)), max_size=12).map(
        lambda cuts: [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)])]))


def _feed(core, chunks: list[bytes], tls: bool, tls_after: set[int]) -> list[Reply]:
    """Feed like the shell: logins (only ever over TLS here) are failed, then buffered input is acted on."""
    out: list[Reply] = []
    for i, chunk in enumerate(chunks):
        queue = core.receive(chunk)
        assert isinstance(queue, list) and all(isinstance(r, Reply) for r in queue)
        while queue:
            r = queue.pop(0)
            if r.login is not None:
                assert tls and r.data == b"" and not queue
                failed = core.login_failed(r.login, "auth")
                out.append(failed)
                queue = [] if failed.close else core.receive(b"")
                continue
            out.append(r)
            if r.starttls:
                core.tls_started()
                tls = True
        if i in tls_after:
            core.tls_started()
            tls = True
    return out


@settings(max_examples=500, deadline=None)
@given(chunks=_stream(_IMAP_PIECES), tls=st.booleans(), tls_after=st.sets(st.integers(0, 12), max_size=2))
def test_imap_fuzz_never_raises_never_says_ok_to_a_login(chunks, tls, tls_after):
    """Logins go to the shell (answered here as failed); the core itself never says OK to one."""
    core = ImapPreAuth(tls_active=tls)
    replies = _feed(core, chunks, tls, tls_after)
    closed_at = [i for i, r in enumerate(replies) if r.close]
    assert closed_at in ([], [len(replies) - 1])  # nothing is answered after a close
    for r in replies:
        assert r.data.endswith(b"\r\n")
        for line in r.data.split(b"\r\n")[:-1]:
            if line.startswith(b"+"):  # continuation requests: a literal, or AUTHENTICATE's empty challenge
                assert line in (b"+ Ready for literal", b"+ "), line
            if line.startswith(b"*"):
                assert line.startswith((b"* CAPABILITY ", b"* BYE ", b"* ID ", b"* BAD ")), line
            m = _TAGGED.match(line)
            if m and m.group(1) != b"*" and m.group(2) == b"OK":
                assert m.group(3) in _IMAP_OK, line


@settings(max_examples=500, deadline=None)
@given(chunks=_stream(_IMAP_PIECES))
def test_imap_fuzz_every_login_line_before_tls_gets_no(chunks):
    """Replayed line by line before TLS, each LOGIN/AUTHENTICATE line is answered NO with its own tag.

    Literals are taken out ("{" becomes "("), so that every line is a whole command.
    """
    core = ImapPreAuth(tls_active=False)
    data = b"".join(chunks).replace(b"{", b"(")
    for line in data.split(b"\n")[:-1]:
        if len(line) > IMAP_MAX_LINE:
            break
        replies = core.receive(line + b"\n")
        (r,) = replies
        assert r.login is None and not r.data.startswith(b"+")
        if r.starttls or r.close:
            break
        m = re.match(rb"^(\S+) (LOGIN|AUTHENTICATE)(?: |$)", line.rstrip(b"\r"), re.I)
        if m and not r.data.startswith(b"* BAD"):
            assert r.data == m.group(1) + b" NO [PRIVACYREQUIRED] use STARTTLS first\r\n", (line, r)


@settings(max_examples=500, deadline=None)
@given(chunks=_stream(_POP3_PIECES), tls=st.booleans(), tls_after=st.sets(st.integers(0, 12), max_size=2))
def test_pop3_fuzz_never_raises_never_grants_login(chunks, tls, tls_after):
    """Logins go to the shell (answered here as failed); the core itself never says +OK to one."""
    core = Pop3PreAuth(tls_active=tls)
    replies: list[Reply] = []
    for i, chunk in enumerate(chunks):
        queue = core.receive(chunk)
        while queue:
            r = queue.pop(0)
            replies.append(r)
            if r.login is not None:
                assert r.data == b"" and not queue
                failed = core.login_failed(r.login, "auth")
                replies.append(failed)
                queue = [] if failed.close else core.receive(b"")
            elif r.starttls:
                core.tls_started()
        if i in tls_after:
            core.tls_started()
    replies = [r for r in replies if r.login is None]
    closed_at = [i for i, r in enumerate(replies) if r.close]
    assert closed_at in ([], [len(replies) - 1])
    for r in replies:
        first = r.data.split(b"\r\n", 1)[0]
        assert first.startswith((b"+OK", b"-ERR")) or first == b"+ ", r
        if first.startswith(b"+OK"):
            assert first in _POP3_OK, r


@settings(max_examples=300, deadline=None)
@given(chunks=_stream(_POP3_PIECES))
def test_pop3_fuzz_every_login_line_before_tls_gets_err(chunks):
    core = Pop3PreAuth(tls_active=False)
    for line in b"".join(chunks).split(b"\n")[:-1]:
        if len(line) > POP3_MAX_LINE:
            break
        replies = core.receive(line + b"\n")
        if not replies:
            break
        (r,) = replies
        assert r.login is None
        if line.split(b" ", 1)[0].rstrip(b"\r").upper() in (b"USER", b"PASS", b"AUTH", b"APOP"):
            assert r.data.startswith(b"-ERR "), (line, r)
        if r.starttls or r.close:
            break
