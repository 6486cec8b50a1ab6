"""Transcripts and fuzzing of the IMAP not-authenticated state: every argument form, literals, SASL, limits."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.imap.preauth import ImapPreAuth
from gateway.lineproto import FrontLimits, LoginRequest, Reply

CONT = Reply(b"+ Ready for literal\r\n")
SASL_CONT = Reply(b"+ \r\n")
ASTRING_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '(){%*"\\')


def login(tag: bytes, user: str, password: str) -> Reply:
    return Reply(b"", login=LoginRequest(tag, user, password))


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def tls_core(**kw) -> ImapPreAuth:
    return ImapPreAuth(tls_active=True, **kw)


def run(core: ImapPreAuth, chunks, reason: str = "auth") -> list[Reply]:
    """What a shell would see: every login is failed with ``reason`` and buffered input is then acted on.

    Stops at STARTTLS (what follows depends on the handshake) and at a close.
    """
    out: list[Reply] = []
    for chunk in chunks:
        queue = core.receive(chunk)
        while queue:
            reply = queue.pop(0)
            out.append(reply)
            assert isinstance(reply, Reply)
            if reply.starttls or reply.close:
                assert not queue
                return out
            if reply.login is not None:
                assert reply.data == b"" and not queue
                failed = core.login_failed(reply.login, reason)
                out.append(failed)
                if failed.close:
                    return out
                queue = core.receive(b"")
    return out


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def continuations(args: bytes) -> list[Reply]:
    """One "+ Ready for literal" per synchronizing literal."""
    return [CONT] * len(re.findall(rb"\{[0-9]+\}\r\n", args))


# --- capabilities -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, caps", [
    (dict(tls_active=False), "IMAP4rev1 LITERAL+ SASL-IR ID STARTTLS LOGINDISABLED"),
    (dict(tls_active=False, starttls_available=False), "IMAP4rev1 LITERAL+ SASL-IR ID LOGINDISABLED"),
    (dict(tls_active=True), "IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN"),
    (dict(tls_active=False, allow_plaintext=True), "IMAP4rev1 LITERAL+ SASL-IR ID STARTTLS AUTH=PLAIN"),
])
def test_greeting_and_capability(kw, caps):
    core = ImapPreAuth(**kw)
    assert core.greeting() == f"* OK [CAPABILITY {caps}] casgate ready\r\n".encode()
    assert core.receive(b"c CAPABILITY\r\n") == [Reply(f"* CAPABILITY {caps}\r\nc OK CAPABILITY completed\r\n".encode())]


def test_capability_changes_after_starttls():
    core = ImapPreAuth(tls_active=False)
    assert core.receive(b"s STARTTLS\r\n") == [Reply(b"s OK Begin TLS negotiation now\r\n", starttls=True)]
    core.tls_started()
    assert core.receive(b"c capability\r\n")[0].data.startswith(b"* CAPABILITY IMAP4rev1 LITERAL+ SASL-IR ID AUTH=PLAIN\r\n")


@pytest.mark.parametrize("line", [b"a CAPABILITY x", b"a NOOP ", b"a LOGOUT (", b"a STARTTLS now"])
def test_commands_without_arguments_refuse_arguments(line):
    [r] = tls_core().receive(line + b"\r\n")
    assert r.data.startswith(b"a BAD ") and not r.close and not r.starttls


def test_noop_and_logout():
    core = ImapPreAuth(tls_active=False)
    assert core.receive(b"n noop\r\nl Logout\r\nx NOOP\r\n") == [
        Reply(b"n OK NOOP completed\r\n"),
        Reply(b"* BYE casgate closing\r\nl OK LOGOUT completed\r\n", close=True)]
    assert core.receive(b"y NOOP\r\n") == []


# --- ID ---------------------------------------------------------------------------------------------------

ID_OK = b'* ID ("name" "casgate")\r\n'


@pytest.mark.parametrize("args", [b"NIL", b"nil", b"()", b'("name" "x")', b'("name" NIL "os" "linux \\"x\\"")',
                                  b'("name" {3}\r\nabc "v" {2+}\r\n\r\n)'])
def test_id_accepted_forms(args):
    replies = tls_core().receive(b"i ID " + args + b"\r\n")
    assert replies == continuations(args) + [Reply(ID_OK + b"i OK ID completed\r\n")]


@pytest.mark.parametrize("args", [b"", b" ", b"(", b'("name")', b"(name x)", b'("name" "x" )', b'( "name" "x")',
                                  b'("a" "b")("c" "d")', b"NIL NIL", b'"name"', b'("name" "x"',
                                  b'("' + b"f" * 31 + b'" "x")', b'("name" "' + b"v" * 1025 + b'")',
                                  b"(" + b" ".join([b'"f" "v"'] * 31) + b")"])
def test_id_malformed_is_bad(args):
    core = tls_core()
    [r] = core.receive(b"i ID" + (b" " + args if args else b"") + b"\r\n")
    assert r.data.startswith(b"i BAD ") and not r.close
    assert core.receive(b"n NOOP\r\n") == [Reply(b"n OK NOOP completed\r\n")]


def test_id_thirty_pairs_and_long_literal_value():
    pairs = b" ".join([b'"f" "v"'] * 30)
    assert tls_core().receive(b"i ID (" + pairs + b")\r\n")[-1].data.endswith(b"i OK ID completed\r\n")
    # A 31st field is refused before the client sends it.
    assert tls_core().receive(b"i ID (" + pairs + b" {1}\r\n") == [Reply(b"i BAD literal not expected here\r\n")]
    # A 1025-octet value cannot be worth a continuation.
    assert tls_core().receive(b'i ID ("name" {1025}\r\n') == [Reply(b"i BAD literal too large\r\n")]


# --- LOGIN ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, user, password", [
    (b"alice secret", "alice", "secret"),
    (b"alice@example.test p]a$s'w#!~", "alice@example.test", "p]a$s'w#!~"),
    (b'"alice" "sec ret"', "alice", "sec ret"),
    (b'"a\\"b\\\\c" "\\\\"', 'a"b\\c', "\\"),
    (b'"" ""', "", ""),
    (b"NIL nil", "NIL", "nil"),
    ('"jürgen" "пароль 密码"'.encode(), "jürgen", "пароль 密码"),
    (b'"tab\there" "ctl\x01"', "tab\there", "ctl\x01"),
])
def test_login_atoms_and_quoted(args, user, password):
    assert tls_core().receive(b"L1 LOGIN " + args + b"\r\n") == [login(b"L1", user, password)]


def test_login_command_name_is_case_insensitive_and_lf_only_works():
    assert tls_core().receive(b"a login x y\n") == [login(b"a", "x", "y")]
    assert tls_core().receive(b"a LoGiN x y\r\n") == [login(b"a", "x", "y")]
    # One CR belongs to the line end; another one is part of the line, and no IMAP token holds a bare CR.
    [r] = tls_core().receive(b"a LOGIN x y\r\r\n")
    assert r.data == b"a BAD syntax error in arguments\r\n"


def test_login_synchronizing_literals():
    core = tls_core()
    assert core.receive(b"a LOGIN {5}\r\n") == [CONT]
    assert core.receive(b"alice {11}\r\n") == [CONT]
    assert core.receive(b"pa ss\r\n\"w\\d\r\n") == [login(b"a", "alice", 'pa ss\r\n"w\\d')]


def test_login_non_synchronizing_literals_need_no_continuation():
    core = tls_core()
    assert core.receive(b"a LOGIN {5+}\r\nalice {0+}\r\n") == []
    assert core.receive(b"\r\n") == [login(b"a", "alice", "")]


@pytest.mark.parametrize("args", [b'alice {6}\r\nsecret', b'{5+}\r\nalice "secret"', b'"alice" {6+}\r\nsecret',
                                  b'{5}\r\nalice secret'])
def test_login_mixed_forms(args):
    replies = tls_core().receive(b"m LOGIN " + args + b"\r\n")
    assert replies == continuations(args) + [login(b"m", "alice", "secret")]


def test_login_literal_with_utf8_and_zero_length():
    pw = "ünïcode\tpass".encode()
    replies = tls_core().receive(b"a LOGIN {0}\r\n {%d+}\r\n" % len(pw) + pw + b"\r\n")
    assert replies == [CONT, login(b"a", "", "ünïcode\tpass")]


@pytest.mark.parametrize("line, why", [
    (b"a LOGIN", b"invalid arguments"),
    (b"a LOGIN alice", b"invalid arguments"),
    (b"a LOGIN alice secret extra", b"invalid arguments"),
    (b"a LOGIN alice  secret", b"invalid arguments"),
    (b"a LOGIN alice secret ", b"invalid arguments"),
    (b"a LOGIN (alice) secret", b"invalid arguments"),
    (b'a LOGIN "al\\ice" secret', b"syntax error"),
    (b'a LOGIN "alice secret', b"syntax error"),
    (b"a LOGIN al%ce secret", b"syntax error"),
    (b"a LOGIN al*ce secret", b"syntax error"),
    (b"a LOGIN j\xc3\xbcrgen secret", b"syntax error"),      # 8-bit is for quoted strings and literals only
    (b'a LOGIN "\xff\xfe" secret', b"syntax error"),          # ... and must be UTF-8 there
    (b"a LOGIN alice sec\x00ret", b"syntax error"),
    (b"a LOGIN alice sec\rret", b"syntax error"),
    (b"a LOGIN alice{6}", b"literal not expected"),           # no space before the literal
])
def test_login_malformed_is_bad(line, why):
    core = tls_core()
    [r] = core.receive(line + b"\r\n")
    assert r.data.startswith(b"a BAD ") and why in r.data and r.login is None


def test_login_literal_that_is_not_utf8_or_has_nul():
    core = tls_core()
    assert core.receive(b"a LOGIN {2+}\r\n\xff\xfe x\r\n") == [Reply(b"a BAD user name and password must be UTF-8\r\n")]
    assert core.receive(b"b LOGIN x {3+}\r\na\x00b\r\n") == [Reply(b"b BAD NUL octet in literal\r\n")]
    assert core.receive(b"c NOOP\r\n") == [Reply(b"c OK NOOP completed\r\n")]


def test_literal_in_a_command_that_takes_none():
    core = tls_core()
    # Synchronizing: refused at once; the client sends nothing more, so the next line is a new command.
    assert core.receive(b"a NOOP {3}\r\n") == [Reply(b"a BAD literal not expected here\r\n")]
    assert core.receive(b"b NOOP\r\n") == [Reply(b"b OK NOOP completed\r\n")]
    # Non-synchronizing: the octets come anyway and are skipped, even when they look like commands.
    assert core.receive(b"c NOOP {10+}\r\nd LOGOUT\r\n\r\ne NOOP\r\n") == [
        Reply(b"c BAD literal not expected here\r\n"), Reply(b"e OK NOOP completed\r\n")]
    assert core.receive(b"f AUTHENTICATE {5}\r\n") == [Reply(b"f BAD literal not expected here\r\n")]
    assert core.receive(b"g UNKNOWN {3+}\r\nabc rest\r\n") == [
        Reply(b"g BAD command unknown or not valid before login\r\n")]


def test_third_string_for_login_is_not_worth_a_continuation():
    core = tls_core()
    assert core.receive(b"a LOGIN x y {3}\r\n") == [Reply(b"a BAD literal not expected here\r\n")]
    assert core.receive(b"a LOGIN {1}\r\nx y {3}\r\n") == [CONT, Reply(b"a BAD literal not expected here\r\n")]


def test_login_pipelined_commands_are_kept_pending():
    core = tls_core()
    tail = b"b SELECT INBOX\r\nc APPEND INBOX {5+}\r\nhello\r\nd FET"
    assert core.receive(b"a LOGIN alice secret\r\n" + tail) == [login(b"a", "alice", "secret")]
    assert core.receive(b"CH 1 BODY[]\r\n") == []  # only buffered while the login is checked
    assert core.take_pending() == tail + b"CH 1 BODY[]\r\n"
    assert core.receive(b"e NOOP\r\n") == []      # handed over: the core is finished


def test_login_failed_then_buffered_commands_run():
    core = tls_core()
    assert core.receive(b"a LOGIN alice wrong\r\nb NOOP\r\n") == [login(b"a", "alice", "wrong")]
    assert core.receive(b"c NOOP\r\n") == []
    request = LoginRequest(b"a", "alice", "wrong")
    assert core.login_failed(request, "auth") == Reply(b"a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
    assert core.receive(b"") == [Reply(b"b OK NOOP completed\r\n"), Reply(b"c OK NOOP completed\r\n")]


@pytest.mark.parametrize("reason, text", [
    ("auth", b"x NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
    ("unavailable", b"x NO [UNAVAILABLE] mail store unavailable, try again later\r\n"),
    ("in-use", b"x NO [INUSE] mailbox in use, try again later\r\n"),
    ("something-new", b"x NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
])
def test_login_failed_reasons(reason, text):
    core = tls_core()
    [r] = core.receive(b"x LOGIN u p\r\n")
    assert core.login_failed(r.login, reason) == Reply(text)


def test_too_many_failed_logins_close():
    core = tls_core()
    for i in range(2):
        [r] = core.receive(b"a%d LOGIN u p\r\n" % i)
        assert not core.login_failed(r.login, "auth").close
    [r] = core.receive(b"a2 LOGIN u p\r\nb NOOP\r\n")
    assert core.login_failed(r.login, "unavailable") == Reply(
        b"a2 NO [UNAVAILABLE] mail store unavailable, try again later\r\n* BYE too many failed logins\r\n", close=True)
    assert core.receive(b"") == [] and core.receive(b"c NOOP\r\n") == []


def test_max_auth_attempts_is_configurable():
    core = tls_core(limits=FrontLimits(max_auth_attempts=1))
    [r] = core.receive(b"a AUTHENTICATE PLAIN " + b64(b"\0u\0p") + b"\r\n")
    assert r == login(b"a", "u", "p")
    assert core.login_failed(r.login, "auth").close


# --- AUTHENTICATE -----------------------------------------------------------------------------------------


def test_authenticate_plain_with_initial_response():
    core = tls_core()
    assert core.receive(b"a AUTHENTICATE PLAIN " + b64(b"\0alice\0s3cr3t") + b"\r\n") == [login(b"a", "alice", "s3cr3t")]


def test_authenticate_plain_with_continuation_and_pipelining():
    core = tls_core()
    assert core.receive(b"a authenticate plain\r\n") == [SASL_CONT]
    msg = "alice\0alice\0pässword".encode()
    assert core.receive(b64(msg)[:5]) == []
    assert core.receive(b64(msg)[5:] + b"\r\nb SELECT INBOX\r\n") == [login(b"a", "alice", "pässword")]
    assert core.take_pending() == b"b SELECT INBOX\r\n"


@pytest.mark.parametrize("mech", [b"plain", b"Plain", b"PLAIN"])
def test_authenticate_mechanism_is_case_insensitive(mech):
    assert tls_core().receive(b"a AUTHENTICATE " + mech + b" " + b64(b"\0u\0p") + b"\r\n") == [login(b"a", "u", "p")]


def test_authenticate_cancel_and_bad_base64():
    core = tls_core()
    assert core.receive(b"a AUTHENTICATE PLAIN\r\n*\r\n") == [SASL_CONT, Reply(b"a BAD AUTHENTICATE cancelled\r\n")]
    assert core.receive(b"b AUTHENTICATE PLAIN\r\n!!notbase64\r\n") == [
        SASL_CONT, Reply(b"b BAD invalid base64 in response\r\n")]
    assert core.receive(b"c AUTHENTICATE PLAIN AGEAYg\r\n") == [Reply(b"c BAD invalid base64 in initial response\r\n")]
    assert core.receive(b"d AUTHENTICATE PLAIN AGE-Yg==\r\n") == [Reply(b"d BAD invalid base64 in initial response\r\n")]
    assert core.receive(b"e NOOP\r\n") == [Reply(b"e OK NOOP completed\r\n")]


@pytest.mark.parametrize("message", [b"", b"alice\0secret", b"\0alice\0", b"\0\0secret", b"a\0b\0c\0d",
                                     b"\0al\xffice\0secret"])
def test_authenticate_malformed_plain_message(message):
    ir = b64(message) if message else b"="
    assert tls_core().receive(b"a AUTHENTICATE PLAIN " + ir + b"\r\n") == [Reply(b"a BAD malformed PLAIN response\r\n")]
    core = tls_core()
    assert core.receive(b"a AUTHENTICATE PLAIN\r\n" + b64(message) + b"\r\n") == [
        SASL_CONT, Reply(b"a BAD malformed PLAIN response\r\n")]


def test_authenticate_authzid_must_match():
    core = tls_core()
    assert core.receive(b"a AUTHENTICATE PLAIN " + b64(b"alice\0alice\0pw") + b"\r\n") == [login(b"a", "alice", "pw")]
    core = tls_core()
    [r] = core.receive(b"b AUTHENTICATE PLAIN " + b64(b"admin\0alice\0pw") + b"\r\n")
    assert r.data.startswith(b"b NO [AUTHORIZATIONFAILED] ") and r.login is None
    assert core.receive(b"c AUTHENTICATE PLAIN\r\n" + b64(b"Alice\0alice\0pw") + b"\r\n")[1].data.startswith(
        b"c NO [AUTHORIZATIONFAILED] ")


@pytest.mark.parametrize("line", [b"a AUTHENTICATE LOGIN", b"a AUTHENTICATE CRAM-MD5", b"a AUTHENTICATE XOAUTH2 abc=",
                                  b"a AUTHENTICATE SCRAM-SHA-256"])
def test_authenticate_other_mechanisms(line):
    assert tls_core().receive(line + b"\r\n") == [
        Reply(b"a NO [CANNOT] unsupported authentication mechanism, use PLAIN\r\n")]


@pytest.mark.parametrize("line", [b"a AUTHENTICATE", b"a AUTHENTICATE PLAIN a b", b'a AUTHENTICATE "PLAIN"',
                                  b"a AUTHENTICATE (PLAIN)", b"a AUTHENTICATE PLAIN "])
def test_authenticate_malformed_is_bad(line):
    [r] = tls_core().receive(line + b"\r\n")
    assert r.data.startswith(b"a BAD ") and r.login is None


# --- before TLS -------------------------------------------------------------------------------------------

PRIVACY = b" NO [PRIVACYREQUIRED] use STARTTLS first\r\n"


@pytest.mark.parametrize("line", [b"a LOGIN alice secret", b"a LOGIN", b"a login (", b"a AUTHENTICATE PLAIN",
                                  b"a AUTHENTICATE PLAIN " + b64(b"\0u\0p"), b"a AUTHENTICATE CRAM-MD5"])
def test_login_before_tls_is_refused(line):
    core = ImapPreAuth(tls_active=False)
    assert core.receive(line + b"\r\n") == [Reply(b"a" + PRIVACY)]  # no "+ " for AUTHENTICATE either


def test_login_before_tls_without_starttls_says_so():
    core = ImapPreAuth(tls_active=False, starttls_available=False)
    assert core.receive(b"a LOGIN u p\r\n") == [Reply(b"a NO [PRIVACYREQUIRED] login needs a TLS connection\r\n")]


def test_login_literal_before_tls():
    core = ImapPreAuth(tls_active=False)
    # Synchronizing: answered at once, no continuation; the client abandons the command.
    assert core.receive(b"a LOGIN {5}\r\n") == [Reply(b"a" + PRIVACY)]
    assert core.receive(b"b NOOP\r\n") == [Reply(b"b OK NOOP completed\r\n")]
    # Non-synchronizing: the password octets arrive anyway and are skipped, never run as commands.
    assert core.receive(b"c LOGIN alice {10+}\r\nd LOGOUT\r\n\r\ne NOOP\r\n") == [
        Reply(b"c" + PRIVACY), Reply(b"e OK NOOP completed\r\n")]
    assert core.receive(b"f LOGIN {1+}\r\nx {3}\r\n") == [Reply(b"f" + PRIVACY)]


def test_allow_plaintext_permits_login_without_tls():
    core = ImapPreAuth(tls_active=False, allow_plaintext=True)
    assert core.receive(b"a LOGIN alice secret\r\n") == [login(b"a", "alice", "secret")]
    core = ImapPreAuth(tls_active=False, allow_plaintext=True)
    assert core.receive(b"a AUTHENTICATE PLAIN\r\n" + b64(b"\0alice\0secret") + b"\r\n") == [
        SASL_CONT, login(b"a", "alice", "secret")]


# --- STARTTLS ---------------------------------------------------------------------------------------------


def test_starttls_discards_everything_pipelined():
    core = ImapPreAuth(tls_active=False)
    [r] = core.receive(b"s STARTTLS\r\na LOGIN {5+}\r\nalice bob\r\nb LOG")
    assert r.starttls
    assert core.receive(b"OUT\r\n") == []  # still before the handshake: dropped too
    core.tls_started()
    assert core.receive(b"c NOOP\r\n") == [Reply(b"c OK NOOP completed\r\n")]


def test_tls_started_in_the_middle_of_a_literal_forgets_it():
    core = ImapPreAuth(tls_active=False, allow_plaintext=True)
    assert core.receive(b"a LOGIN {10}\r\n") == [CONT]
    core.tls_started()
    assert core.receive(b"b NOOP\r\n") == [Reply(b"b OK NOOP completed\r\n")]


# --- tags -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"+ NOOP", b"* NOOP", b"a%b NOOP", b"a*b NOOP", b'"a" NOOP', b"a\\ NOOP",
                                  b"(a) NOOP", b"a\x01 NOOP", b"\xc3\xa4 NOOP", b"NOOP", b"", b" NOOP", b"a  NOOP",
                                  b"a (NOOP)"])
def test_bad_tags_and_untagged_lines(line):
    assert tls_core().receive(line + b"\r\n") == [Reply(b"* BAD malformed command\r\n")]


@pytest.mark.parametrize("tag", [b"a}", b"]", b"A001", b"x.y-z_1", b"!#$&'", b"~|", b"a[1]"])
def test_tags_per_rfc_are_echoed(tag):
    assert tls_core().receive(tag + b" NOOP\r\n") == [Reply(tag + b" OK NOOP completed\r\n")]


def test_bad_tag_with_literals_keeps_stream_in_sync():
    core = tls_core()
    assert core.receive(b"+ LOGIN {3}\r\n") == [Reply(b"* BAD malformed command\r\n")]
    assert core.receive(b"* LOGIN {3+}\r\na b {1+}\r\nc\r\nd NOOP\r\n") == [
        Reply(b"* BAD malformed command\r\n"), Reply(b"d OK NOOP completed\r\n")]


# --- limits -----------------------------------------------------------------------------------------------


def test_line_limit_boundary():
    limits = FrontLimits(max_line=20)
    line = b"a LOGIN " + b"u" * 10 + b" p"  # exactly 20 octets
    assert tls_core(limits=limits).receive(line + b"\r\n") == [login(b"a", "u" * 10, "p")]
    assert tls_core(limits=limits).receive(line + b"x\r\n") == [Reply(b"* BYE line too long\r\n", close=True)]
    core = tls_core(limits=limits)
    assert core.receive(line + b"\r") == []   # the LF may still come
    assert core.receive(b"x") == [Reply(b"* BYE line too long\r\n", close=True)]
    assert core.receive(b"\r\nb NOOP\r\n") == []


def test_line_limit_counts_all_text_of_a_command_but_not_literals():
    limits = FrontLimits(max_line=30, max_literal=100)
    core = tls_core(limits=limits)
    assert core.receive(b"a LOGIN {50+}\r\n" + b"u" * 50 + b" {3+}\r\npw!\r\n") == [login(b"a", "u" * 50, "pw!")]
    core = tls_core(limits=limits)
    # 17 + 5 + 5 + 5 octets of text: too long together though every piece is short.
    replies = core.receive(b"b NOOP x y z {1+}\r\n1 {1+}\r\n2 {1+}\r\n3 {1+}\r\n4\r\n")
    assert replies == [Reply(b"* BYE line too long\r\n", close=True)]


def test_literal_limit_synchronizing_is_bad_and_abandons_the_command():
    core = tls_core(limits=FrontLimits(max_literal=10))
    assert core.receive(b"a LOGIN {11}\r\n") == [Reply(b"a BAD literal too large\r\n")]
    assert core.receive(b"b LOGIN {10}\r\n") == [CONT]
    assert core.receive(b"0123456789 x\r\n") == [login(b"b", "0123456789", "x")]


def test_literal_limit_non_synchronizing_closes():
    core = tls_core(limits=FrontLimits(max_literal=10))
    assert core.receive(b"a LOGIN {11+}\r\n01234567890 x\r\n") == [Reply(b"* BYE literal too large\r\n", close=True)]
    assert core.receive(b"b NOOP\r\n") == []
    # Also when the command was already refused, and for absurd sizes.
    assert ImapPreAuth(tls_active=False, limits=FrontLimits(max_literal=10)).receive(b"a LOGIN {11+}\r\n") == [
        Reply(b"* BYE literal too large\r\n", close=True)]
    assert tls_core().receive(b"a LOGIN {" + b"9" * 5000 + b"+}\r\n") == [
        Reply(b"* BYE literal too large\r\n", close=True)]
    assert tls_core().receive(b"a LOGIN {" + b"9" * 5000 + b"}\r\n") == [Reply(b"a BAD literal too large\r\n")]


def test_command_limit():
    core = ImapPreAuth(tls_active=False, limits=FrontLimits(max_commands=3))
    assert core.receive(b"a NOOP\r\n\r\nb LOGIN {1}\r\n") == [
        Reply(b"a OK NOOP completed\r\n"), Reply(b"* BAD malformed command\r\n"), Reply(b"b" + PRIVACY)]
    assert core.receive(b"c NOOP\r\nd NOOP\r\n") == [Reply(b"* BYE too many commands\r\n", close=True)]


def test_command_limit_counts_commands_not_lines():
    core = tls_core(limits=FrontLimits(max_commands=2))
    assert core.receive(b"a LOGIN {1+}\r\nx {1+}\r\ny\r\n") == [login(b"a", "x", "y")]
    core.login_failed(LoginRequest(b"a", "x", "y"), "auth")
    assert core.receive(b"b AUTHENTICATE PLAIN\r\n*\r\n") == [SASL_CONT, Reply(b"b BAD AUTHENTICATE cancelled\r\n")]
    assert core.receive(b"c NOOP\r\n") == [Reply(b"* BYE too many commands\r\n", close=True)]


def test_default_command_limit_is_fifty():
    core = ImapPreAuth(tls_active=False)
    replies = core.receive(b"n NOOP\r\n" * 51)
    assert replies[:50] == [Reply(b"n OK NOOP completed\r\n")] * 50
    assert replies[50:] == [Reply(b"* BYE too many commands\r\n", close=True)]


def test_sasl_response_line_limit():
    core = tls_core(limits=FrontLimits(max_line=20, max_literal=30))
    assert core.receive(b"a AUTHENTICATE PLAIN\r\n") == [SASL_CONT]
    assert core.receive(b"A" * 41) == [Reply(b"* BYE line too long\r\n", close=True)]  # room: 4 * ceil(30 / 3)


# --- arbitrary splits -------------------------------------------------------------------------------------

SESSION = (b"a CAPABILITY\r\nb ID (\"name\" {3}\r\nabc)\r\nc LOGIN {5}\r\nal\r\nx {4+}\r\npw\r\n\r\n"
           b"d AUTHENTICATE PLAIN\r\n" + b64(b"\0bob\0pw") + b"\r\ne AUTHENTICATE plain =\r\nf NOOP {2+}\r\n{}\r\n"
           b"g LOGOUT\r\n")


def test_every_split_point_gives_the_same_transcript():
    expected = run(tls_core(), [SESSION])
    assert [r.login for r in expected if r.login] == [LoginRequest(b"c", "al\r\nx", "pw\r\n"),
                                                     LoginRequest(b"d", "bob", "pw")]
    assert expected[-1].close and len(expected) == 12
    for i in range(len(SESSION) + 1):
        assert run(tls_core(), [SESSION[:i], SESSION[i:]]) == expected, i
    assert run(tls_core(), bytewise(SESSION)) == expected


# --- fuzz -------------------------------------------------------------------------------------------------

_PIECES = [b"a LOGIN alice secret\r\n", b"b AUTHENTICATE PLAIN\r\n", b"AGFsaWNlAHNlY3JldA==\r\n", b"*\r\n",
           b"c AUTHENTICATE PLAIN AGEAYg==\r\n", b"d STARTTLS\r\n", b"e CAPABILITY\r\n", b"f NOOP\r\n",
           b"g LOGOUT\r\n", b"h ID NIL\r\n", b'h2 ID ("k" {1}\r\nv)\r\n', b"i LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n",
           b"j login \"a\\\"\" \"b\"\n", b"k LOGIN {3}\r\n", b"{2}\r\n", b"{1+}\r\n", b"{99+}\r\n", b"{99999999999}\r\n", b"\r\n",
           b"\n", b"\r", b"LOGIN", b"AUTHENTICATE PLAIN ", b" ", b'"', b"\\", b"(", b")", b"\x00", b"\xff", b"* OK",
           b"+ ", b"x" * 300]


def _stream(pieces: list[bytes]):
    blob = st.lists(st.one_of(st.sampled_from(pieces), st.binary(max_size=30)), max_size=30).map(b"".join)
    return blob.flatmap(lambda data: st.tuples(st.just(data), st.lists(st.integers(0, len(data)), max_size=12).map(
        lambda cuts: [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)])])))


def _plausible(data: bytes, request: LoginRequest) -> bool:
    """Independent of the core: the input holds this tag's LOGIN/AUTHENTICATE and these credentials, encoded."""
    low = data.lower()
    user, password = request.username.encode(), request.password.encode()

    def encoded(raw: bytes) -> bool:  # as an atom, a quoted string or a literal
        quoted = b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        literal = re.compile(rb"\{0*%d\+?\}\r?\n" % len(raw) + re.escape(raw))
        return (bool(raw) and raw in data) or quoted in data or literal.search(data) is not None

    if request.tag.lower() + b" login " in low:
        if encoded(user) and encoded(password):
            return True
    if request.tag.lower() + b" authenticate plain" in low:
        wanted = {b"\0" + user + b"\0" + password, user + b"\0" + user + b"\0" + password}
        for token in re.findall(rb"[A-Za-z0-9+/]+=*", data):
            try:
                if base64.b64decode(token, validate=True) in wanted:
                    return True
            except ValueError:
                pass
    return False


@settings(max_examples=400, deadline=None)
@given(stream=_stream(_PIECES), tls=st.booleans(), plain=st.booleans())
def test_fuzz_any_split_never_raises_and_logins_are_real(stream, tls, plain):
    data, chunks = stream
    limits = FrontLimits(max_line=200, max_literal=64, max_commands=40)
    core = ImapPreAuth(tls_active=tls, allow_plaintext=plain, limits=limits)
    replies = run(core, chunks)
    for r in replies:
        assert r.data.endswith(b"\r\n") or r.login is not None
        for line in r.data.split(b"\r\n")[:-1]:
            assert line.startswith((b"* CAPABILITY ", b"* BYE ", b"* ID ", b"* BAD ", b"+ ")) or \
                re.match(rb"[^ *+]+ (OK|NO|BAD) ", line), line
        if r.login is not None:
            assert tls or plain  # STARTTLS stops the transcript, so TLS was never started here
            assert _plausible(data, r.login), (data, r.login)
    assert [i for i, r in enumerate(replies) if r.close] in ([], [len(replies) - 1])
    # Splitting the same bytes differently changes nothing.
    assert run(ImapPreAuth(tls_active=tls, allow_plaintext=plain, limits=limits), [data]) == replies
    assert run(ImapPreAuth(tls_active=tls, allow_plaintext=plain, limits=limits), bytewise(data)) == replies


@settings(max_examples=300, deadline=None)
@given(stream=_stream(_PIECES), tls_after=st.sets(st.integers(0, 12), max_size=3))
def test_fuzz_tls_may_start_anywhere(stream, tls_after):
    _, chunks = stream
    core = ImapPreAuth(tls_active=False)
    for i, chunk in enumerate(chunks):
        for reply in core.receive(chunk):
            if reply.login is not None:
                assert core.tls_active
                core.login_failed(reply.login, "auth")
        if i in tls_after:
            core.tls_started()
        assert isinstance(core.receive(b""), list)


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
_QUOTABLE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"), max_size=20)
_ATOMIC = st.text(st.sampled_from(ASTRING_CHARS), min_size=1, max_size=20)


def _astring(text: str, form: str) -> tuple[bytes, int]:
    """The text as an IMAP astring in the given form, and how many continuations it costs."""
    raw = text.encode()
    if form == "atom":
        return raw, 0
    if form == "quoted":
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"', 0
    return b"{%d%s}\r\n" % (len(raw), b"+" if form == "literal+" else b"") + raw, form == "literal"


def _forms(text: str) -> list[str]:
    forms = ["literal", "literal+"]
    if not any(c in text for c in "\r\n"):
        forms.append("quoted")
    if text and all(c in ASTRING_CHARS for c in text):
        forms.append("atom")
    return forms


@settings(max_examples=400, deadline=None)
@given(user=st.one_of(_TEXT, _QUOTABLE, _ATOMIC), password=st.one_of(_TEXT, _QUOTABLE, _ATOMIC), data=st.data(),
       eol=st.sampled_from([b"\r\n", b"\n"]), tail=st.binary(max_size=30))
def test_fuzz_login_carries_exact_credentials(user, password, data, eol, tail):
    user_form = data.draw(st.sampled_from(_forms(user)))
    password_form = data.draw(st.sampled_from(_forms(password)))
    u, u_cont = _astring(user, user_form)
    p, p_cont = _astring(password, password_form)
    command = b"T1 LOGIN " + u + b" " + p + eol
    expected = [CONT] * (u_cont + p_cont) + [login(b"T1", user, password)]
    whole = tls_core()
    assert whole.receive(command + tail) == expected
    assert whole.take_pending() == tail
    one_by_one = tls_core()
    replies = []
    for b in bytewise(command + tail):
        replies += one_by_one.receive(b)
    assert replies == expected
    assert one_by_one.take_pending() == tail


@settings(max_examples=300, deadline=None)
@given(user=_TEXT.filter(bool), password=_TEXT.filter(bool), authzid=st.booleans(), initial=st.booleans(),
       tail=st.binary(max_size=30))
def test_fuzz_authenticate_carries_exact_credentials(user, password, authzid, initial, tail):
    message = (user if authzid else "").encode() + b"\0" + user.encode() + b"\0" + password.encode()
    if initial:
        command, expected = b"T2 AUTHENTICATE PLAIN " + b64(message) + b"\r\n", [login(b"T2", user, password)]
    else:
        command, expected = b"T2 AUTHENTICATE PLAIN\r\n" + b64(message) + b"\r\n", [SASL_CONT,
                                                                                      login(b"T2", user, password)]
    core = ImapPreAuth(tls_active=False, allow_plaintext=True)
    assert core.receive(command + tail) == expected
    assert core.take_pending() == tail
    core = ImapPreAuth(tls_active=False, allow_plaintext=True)
    assert sum((core.receive(b) for b in bytewise(command + tail)), []) == expected
    assert core.take_pending() == tail


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=1, max_size=20))
def test_fuzz_literal_bytes_login_only_when_utf8_without_nul(raw):
    replies = tls_core().receive(b"a LOGIN u {%d+}\r\n" % len(raw) + raw + b"\r\n")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        assert len(replies) == 1 and replies[0].data.startswith(b"a BAD ") and replies[0].login is None
    else:
        assert replies == [login(b"a", "u", text)]
