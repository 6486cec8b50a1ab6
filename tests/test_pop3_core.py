"""POP3 front end: the pre-login core as transcripts and fuzz, the dot-stuffer as properties, and the maildrop
session over real loopback streams against an in-memory MailStore."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.errors import BackendError, BackendUnavailable, NotFound
from adapters.interfaces import FolderStatus, MessageSummary
from gateway.lineproto import FrontLimits, LoginRequest, Reply
from gateway.pop3.dotstuff import DotStuffer
from gateway.pop3.maildrop import MaildropLocks, Pop3Maildrop
from gateway.pop3.preauth import Pop3PreAuth


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def _tls(**kw) -> Pop3PreAuth:
    return Pop3PreAuth(tls_active=True, **kw)


def _capa(core: Pop3PreAuth) -> list[bytes]:
    [r] = core.receive(b"CAPA\r\n")
    assert r.data.startswith(b"+OK") and r.data.endswith(b"\r\n.\r\n")
    return r.data.split(b"\r\n")[1:-2]


def _login(user: str, password: str) -> Reply:
    return Reply(b"", login=LoginRequest(b"", user, password))


# --- Pop3PreAuth: transcripts ------------------------------------------------------------------------------


def test_capa_lists_login_only_when_allowed():
    base = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
    assert _capa(Pop3PreAuth(tls_active=False)) == base + [b"STLS", b"IMPLEMENTATION casgate"]
    assert _capa(_tls()) == base + [b"USER", b"SASL PLAIN", b"IMPLEMENTATION casgate"]
    assert _capa(Pop3PreAuth(tls_active=False, allow_plaintext=True)) == \
        base + [b"USER", b"SASL PLAIN", b"STLS", b"IMPLEMENTATION casgate"]
    assert _capa(Pop3PreAuth(tls_active=False, stls_available=False)) == base + [b"IMPLEMENTATION casgate"]


def test_user_pass_makes_a_login_request():
    core = _tls()
    assert core.receive(b"USER alice@example.test\r\n") == [Reply(b"+OK send PASS\r\n")]
    assert core.receive(b"PASS correct horse  battery \r\n") == [_login("alice@example.test",
                                                                        "correct horse  battery ")]


def test_commands_are_case_insensitive_and_bare_lf_is_a_line_end():
    core = _tls()
    assert core.receive(b"user bob\n") == [Reply(b"+OK send PASS\r\n")]
    assert core.receive(b"pAsS s3cret\n") == [_login("bob", "s3cret")]


def test_pass_without_user_and_user_reset_after_pass():
    core = _tls()
    assert core.receive(b"PASS x\r\n") == [Reply(b"-ERR send USER first\r\n")]
    core.receive(b"USER carol\r\n")
    [r] = core.receive(b"PASS wrong\r\n")
    assert r.login == LoginRequest(b"", "carol", "wrong")
    assert core.login_failed(r.login, "auth") == Reply(b"-ERR [AUTH] Authentication failed\r\n")
    # RFC 1939: after a failed PASS the client starts again with USER.
    assert core.receive(b"PASS again\r\n") == [Reply(b"-ERR send USER first\r\n")]


@pytest.mark.parametrize("line", [b"USER", b"USER ", b"USER a\x00b", b"USER a\tb", b"USER \xff\xfe", b"USER a\x7f"])
def test_bad_user_names_are_refused(line):
    core = _tls()
    [r] = core.receive(line + b"\r\n")
    assert r.data.startswith(b"-ERR ") and r.login is None
    assert core.receive(b"PASS x\r\n") == [Reply(b"-ERR send USER first\r\n")]


@pytest.mark.parametrize("line", [b"PASS", b"PASS ", b"PASS a\x00b", b"PASS \xc3", b"PASS a\rb"])
def test_bad_passwords_are_refused_without_a_login_request(line):
    core = _tls()
    core.receive(b"USER alice\r\n")
    assert core.receive(line + b"\r\n") == [Reply(b"-ERR [AUTH] Authentication failed\r\n")]


def test_auth_without_argument_lists_mechanisms():
    assert _tls().receive(b"AUTH\r\n") == [Reply(b"+OK mechanisms follow\r\nPLAIN\r\n.\r\n")]


@pytest.mark.parametrize("raw, user, password", [
    (b"\x00alice\x00secret", "alice", "secret"),
    (b"alice\x00alice\x00pass word", "alice", "pass word"),
    ("\x00j\u00fcrgen\x00p\u00e4ss".encode(), "j\u00fcrgen", "p\u00e4ss"),
])
def test_auth_plain_with_initial_response(raw, user, password):
    assert _tls().receive(b"AUTH PLAIN " + _b64(raw) + b"\r\n") == [_login(user, password)]
    assert _tls().receive(b"auth plain " + _b64(raw) + b"\r\n") == [_login(user, password)]


def test_auth_plain_with_continuation_split_across_receives():
    core = _tls()
    assert core.receive(b"AUTH PLAIN\r\n") == [Reply(b"+ \r\n")]
    response = _b64(b"\x00alice\x00secret")
    assert core.receive(response[:5]) == []
    assert core.receive(response[5:] + b"\r") == []
    assert core.receive(b"\n") == [_login("alice", "secret")]


def test_auth_plain_cancel():
    core = _tls()
    assert core.receive(b"AUTH PLAIN\r\n*\r\n") == [Reply(b"+ \r\n"), Reply(b"-ERR authentication cancelled\r\n")]
    assert core.receive(b"NOOP\r\n") == [Reply(b"+OK\r\n")]


def test_continuation_line_is_never_taken_as_a_command():
    core = _tls()
    [cont, r] = core.receive(b"AUTH PLAIN\r\nQUIT\r\n")
    assert cont == Reply(b"+ \r\n")
    assert r == Reply(b"-ERR [AUTH] Authentication failed\r\n")  # "QUIT" is base64, but not of a PLAIN response
    [cont, r] = core.receive(b"AUTH PLAIN\r\nQUIT now\r\n")
    assert r == Reply(b"-ERR malformed base64\r\n")


def test_auth_plain_authzid_must_match():
    core = _tls()
    [r] = core.receive(b"AUTH PLAIN " + _b64(b"admin\x00alice\x00secret") + b"\r\n")
    assert r.data.startswith(b"-ERR [AUTH] ") and r.login is None


@pytest.mark.parametrize("response", [b"=", b"AGE", b"AGEAYg==AGE=", b"not base64!", _b64(b"alice\x00secret"),
                                      _b64(b"\x00\x00secret"), _b64(b"\x00alice\x00"), _b64(b"\x00a\x00b\x00c"),
                                      _b64(b"\x00\xff\x00pw")])
def test_auth_plain_malformed(response):
    for core, lines in ((_tls(), [b"AUTH PLAIN " + response]), (_tls(), [b"AUTH PLAIN", response])):
        replies = core.receive(b"".join(line + b"\r\n" for line in lines))
        assert replies[-1].data.startswith(b"-ERR ") and replies[-1].login is None
        assert not replies[-1].close


def test_other_mechanisms_and_apop_are_refused():
    core = _tls()
    for line in (b"AUTH LOGIN", b"AUTH CRAM-MD5 abc", b"AUTH XOAUTH2 abc",
                 b"APOP alice c4c9334bac560ecc979e58001b3e22fb"):
        [r] = core.receive(line + b"\r\n")
        assert r.data.startswith(b"-ERR ") and r.login is None


def test_login_before_tls_needs_stls_unless_plaintext_allowed():
    core = Pop3PreAuth(tls_active=False)
    plain = b"AUTH PLAIN " + _b64(b"\x00alice\x00secret") + b"\r\n"
    for line in (b"USER alice\r\n", b"PASS secret\r\n", plain, b"AUTH PLAIN\r\n", b"AUTH\r\n"):
        assert core.receive(line) == [Reply(b"-ERR [AUTH] use STLS first\r\n")]
    core = Pop3PreAuth(tls_active=False, stls_available=False)
    assert core.receive(b"USER alice\r\n") == [Reply(b"-ERR [AUTH] login requires TLS\r\n")]
    core = Pop3PreAuth(tls_active=False, allow_plaintext=True)
    assert core.receive(plain) == [_login("alice", "secret")]


def test_stls_forgets_what_came_before():
    core = Pop3PreAuth(tls_active=False, allow_plaintext=True)
    core.receive(b"USER mallory\r\n")
    [r] = core.receive(b"STLS\r\nPASS injected\r\n")
    assert r.starttls
    core.tls_started()
    assert core.receive(b"PASS x\r\n") == [Reply(b"-ERR send USER first\r\n")]


def test_stls_ends_a_pending_sasl_exchange():
    core = Pop3PreAuth(tls_active=False, allow_plaintext=True)
    assert core.receive(b"AUTH PLAIN\r\n") == [Reply(b"+ \r\n")]
    [r] = core.receive(b"STLS\r\n")  # taken as the (bad) SASL response, not as STLS
    assert not r.starttls and r.data.startswith(b"-ERR")
    assert core.receive(b"STLS\r\n")[0].starttls
    core.tls_started()
    assert core.receive(_b64(b"\x00a\x00b") + b"\r\n")[0].data.startswith(b"-ERR unknown command")


def test_pipelined_commands_after_login_are_kept_for_the_session():
    core = _tls()
    replies = core.receive(b"USER alice\r\nPASS pw\r\nSTAT\r\nLIST\r\nRET")
    assert replies == [Reply(b"+OK send PASS\r\n"), _login("alice", "pw")]
    assert core.receive(b"R 1\r\nQUIT\r\n") == []  # buffered while the login is checked
    assert core.take_pending() == b"STAT\r\nLIST\r\nRETR 1\r\nQUIT\r\n"
    assert core.receive(b"NOOP\r\n") == []  # the maildrop owns the connection now


def test_commands_buffered_during_a_failed_login_run_afterwards():
    core = _tls()
    [r] = core.receive(b"AUTH PLAIN " + _b64(b"\x00alice\x00bad") + b"\r\nNOOP\r\n")
    assert r.login == LoginRequest(b"", "alice", "bad")
    assert core.receive(b"CAPA\r\n") == []
    assert core.login_failed(r.login, "auth") == Reply(b"-ERR [AUTH] Authentication failed\r\n")
    [noop, capa] = core.receive(b"")
    assert noop == Reply(b"+OK\r\n") and capa.data.startswith(b"+OK capability list follows")


@pytest.mark.parametrize("reason, text", [
    ("auth", b"-ERR [AUTH] Authentication failed\r\n"),
    ("unavailable", b"-ERR [SYS/TEMP] mail store unavailable, try again later\r\n"),
    ("in-use", b"-ERR [IN-USE] maildrop already locked by another session\r\n"),
    ("something-new", b"-ERR [AUTH] Authentication failed\r\n"),
])
def test_login_failed_reasons(reason, text):
    core = _tls()
    [r] = core.receive(b"AUTH PLAIN " + _b64(b"\x00a\x00b") + b"\r\n")
    assert core.login_failed(r.login, reason) == Reply(text)


def test_failed_logins_close_at_the_limit():
    core = _tls(limits=FrontLimits(max_line=512, max_auth_attempts=2))
    [_, r] = core.receive(b"USER a\r\nPASS b\r\n")
    assert not core.login_failed(r.login, "auth").close
    [_, r] = core.receive(b"USER a\r\nPASS c\r\nNOOP\r\n")
    last = core.login_failed(r.login, "auth")
    assert last.close and last.data.startswith(b"-ERR [AUTH]")
    assert core.receive(b"") == [] and core.receive(b"NOOP\r\n") == []


def test_refusals_inside_the_core_count_as_failed_logins():
    core = _tls(limits=FrontLimits(max_line=512, max_auth_attempts=3))
    mismatch = b"AUTH PLAIN " + _b64(b"root\x00alice\x00pw") + b"\r\n"
    replies = core.receive(mismatch * 2 + b"USER a\r\nPASS\r\nNOOP\r\n")
    assert [r.close for r in replies] == [False, False, False, True]
    assert core.receive(b"NOOP\r\n") == []


def test_commands_before_login_are_limited():
    core = Pop3PreAuth(tls_active=False, limits=FrontLimits(max_line=512, max_commands=3))
    replies = core.receive(b"NOOP\r\nCAPA\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
    assert len(replies) == 4 and replies[-1].close and replies[-1].data.startswith(b"-ERR")
    assert not any(r.close for r in replies[:3])


def test_line_limit_comes_from_limits():
    core = _tls(limits=FrontLimits(max_line=64))
    assert core.receive(b"USER " + b"a" * 50 + b"\r\n") == [Reply(b"+OK send PASS\r\n")]
    [r] = core.receive(b"PASS " + b"p" * 70)
    assert r.close and r.data == b"-ERR line too long\r\n"


# --- Pop3PreAuth: fuzz -------------------------------------------------------------------------------------

_PIECES = [b"USER alice\r\n", b"USER bob\n", b"PASS secret\r\n", b"PASS two words\r\n", b"pass \r\n", b"AUTH PLAIN\r\n",
           b"AUTH PLAIN " + _b64(b"\x00carol\x00pw") + b"\r\n", b"AUTH PLAIN " + _b64(b"dave\x00dave\x00x y") + b"\n",
           b"AUTH PLAIN " + _b64(b"eve\x00frank\x00pw") + b"\r\n", _b64(b"\x00gina\x00pw") + b"\r\n", b"=\r\n",
           b"*\r\n", b"AUTH\r\n", b"AUTH LOGIN\r\n", b"APOP a b\r\n", b"STLS\r\n", b"CAPA\r\n", b"QUIT\r\n",
           b"NOOP\r\n", b"\r\n", b"\n", b"\r", b"USER", b"PASS", b"AUTH", b" ", b"\x00", b"\xff", b"x" * 100]


_LOGINS = [b"USER alice\r\nPASS secret\r\n", b"AUTH PLAIN\r\n" + _b64(b"\x00hal\x00pw") + b"\r\n",
           b"AUTH PLAIN " + _b64(b"ivy\x00ivy\x00pw") + b"\r\n"]


def _chunked(pieces: list[bytes]):
    parts = st.one_of(st.sampled_from(pieces), st.sampled_from(_LOGINS), st.binary(max_size=40))
    blob = st.lists(parts, max_size=30).map(b"".join)
    return blob.flatmap(lambda data: st.tuples(st.just(data), st.lists(st.integers(0, len(data)), max_size=12).map(
        lambda cuts: [data[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(data)])])))


def _candidates(chunks: list[bytes]) -> tuple[bool, set[tuple[str, str]]]:
    """What an independent reading of the input allows: is there any PASS or AUTH PLAIN line, and every
    (user, password) pair that USER x PASS lines or any PLAIN-looking base64 could carry.

    A line starts after a line end, or at a chunk boundary (STLS drops what was read before the handshake)."""
    data = b"".join(chunks)
    lines = data.split(b"\n")
    offset = 0
    for chunk in chunks:
        lines.append(data[offset:].split(b"\n", 1)[0])
        offset += len(chunk)
    users, passwords, pairs, any_login = set(), set(), set(), False
    for line in (raw.rstrip(b"\r") for raw in lines):
        cmd, _, rest = line.partition(b" ")
        text = rest.decode("utf-8", "replace")
        if cmd.upper() == b"USER":
            users.add(text)
        if cmd.upper() == b"PASS":
            any_login = True
            passwords.add(text)
        if cmd.upper() == b"AUTH" and rest[:5].upper() == b"PLAIN":
            any_login = True
        for b64 in (line, rest.partition(b" ")[2]):
            try:
                raw = base64.b64decode(b64, validate=True)
            except ValueError:
                continue
            fields = raw.split(b"\x00")
            if len(fields) == 3 and fields[0] in (b"", fields[1]):
                pairs.add((fields[1].decode("utf-8", "replace"), fields[2].decode("utf-8", "replace")))
    return any_login, pairs | {(u, p) for u in users for p in passwords}


@settings(max_examples=600, deadline=None)
@given(stream=_chunked(_PIECES), tls=st.booleans(), plaintext=st.booleans(),
       outcomes=st.lists(st.sampled_from(["auth", "unavailable", "in-use", "ok"]), min_size=8, max_size=8))
def test_fuzz_login_requests_only_for_credentials_sent(stream, tls, plaintext, outcomes):
    data, chunks = stream
    core = Pop3PreAuth(tls_active=tls, allow_plaintext=plaintext)
    any_login, allowed = _candidates(chunks)
    requests, fed, closed = [], 0, False
    for i, chunk in enumerate(chunks):
        fed += len(chunk)
        queue = core.receive(chunk)
        while queue:
            r = queue.pop(0)
            assert isinstance(r, Reply) and not closed
            closed = r.close
            if r.starttls:
                core.tls_started()
            if r.login is None:
                assert r.data.endswith(b"\r\n")
                continue
            assert r.data == b"" and not queue and not r.close
            requests.append(r.login)
            outcome = outcomes[len(requests) % len(outcomes)]
            if outcome == "ok":
                # Whatever follows the login line, and nothing else, goes on to the maildrop.
                rest = core.take_pending() + b"".join(chunks[i + 1:])
                assert data.endswith(rest) and data[:len(data) - len(rest)].endswith(b"\n")
                closed = True
                break
            failed = core.login_failed(r.login, outcome)
            assert failed.data.startswith(b"-ERR [")
            closed = failed.close
            queue = [] if closed else core.receive(b"")
        if closed:
            break
    assert fed <= len(data)
    if not any_login:
        assert requests == []
    for req in requests:
        assert req.tag == b"" and (req.username, req.password) in allowed, req


_USERS = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=16)
_PASSWORDS = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n"),
                     min_size=1, max_size=16)
_NOISE = [b"NOOP", b"CAPA", b"STAT", b"AUTH", b"AUTH PLAIN\r\n*", b"USER someone", b"AUTH PLAIN =", b"APOP x y"]


@st.composite
def _sessions(draw):
    """A well-formed client conversation: logins of every kind between harmless commands; bytes and the
    LoginRequests the core must produce, in order."""
    out, expected = [], []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["userpass", "plain", "plain-continued", "plain-authzid", "noise"]))
        eol = draw(st.sampled_from([b"\r\n", b"\n"]))
        if kind == "noise":
            out.append(draw(st.sampled_from(_NOISE)) + eol)
            continue
        user, password = draw(_USERS), draw(_PASSWORDS)
        expected.append(LoginRequest(b"", user, password))
        u, p = user.encode(), password.encode()
        if kind == "userpass":
            out.append(b"USER " + u + eol + b"PASS " + p + eol)
        else:
            response = _b64((u if kind == "plain-authzid" else b"") + b"\x00" + u + b"\x00" + p)
            out.append(b"AUTH PLAIN\r\n" + response + eol if kind == "plain-continued"
                       else b"AUTH PLAIN " + response + eol)
    data = b"".join(out)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])], expected


@settings(max_examples=400, deadline=None)
@given(session=_sessions())
def test_fuzz_login_requests_carry_exactly_the_credentials_sent(session):
    chunks, expected = session
    core = _tls(limits=FrontLimits(max_line=512, max_commands=1000, max_auth_attempts=1000))
    got = []
    for chunk in chunks:
        queue = core.receive(chunk)
        while queue:
            r = queue.pop(0)
            assert not r.close
            if r.login is not None:
                got.append(r.login)
                assert not core.login_failed(r.login, "auth").close
                queue = core.receive(b"")
    assert got == expected


# --- DotStuffer ---------------------------------------------------------------------------------------------


def _normalised(data: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def _undot(wire: bytes) -> bytes:
    """A client's reading of a multi-line body (RFC 1939 3): up to the "." line, one leading dot removed."""
    assert wire == b".\r\n" or wire.endswith(b"\r\n.\r\n"), wire[-20:]
    lines = wire[:-3].split(b"\r\n")
    assert lines[-1] == b""
    out = []
    for line in lines[:-1]:
        if line.startswith(b"."):
            assert line.startswith(b".."), line  # a lone "." would end the body early
            line = line[1:]
        out.append(line + b"\r\n")
    return b"".join(out)


def _run(stuffer: DotStuffer, chunks: list[bytes]) -> bytes:
    return b"".join(stuffer.feed(c) for c in chunks) + stuffer.finish()


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(c % (len(data) + 1) for c in cuts)
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


_MESSAGE_PARTS = [b"\r\n", b"\n", b"\r", b".", b"..", b".\r\n", b"a", b"Subject: x", b"\r\n\r\n", b"\n\n", b" "]
_MESSAGES = st.lists(st.one_of(st.sampled_from(_MESSAGE_PARTS), st.binary(max_size=20)), max_size=40).map(b"".join)


@settings(max_examples=800, deadline=None)
@given(message=_MESSAGES, cuts=st.lists(st.integers(0, 10_000), max_size=15))
def test_dotstuffer_round_trips_any_chunking(message, cuts):
    wire = _run(DotStuffer(), _cut(message, cuts))
    assert b"\n" not in wire.replace(b"\r\n", b"")  # no bare LF goes out
    expected = _normalised(message)
    if expected and not expected.endswith(b"\n"):
        expected += b"\r\n"
    assert _undot(wire) == expected


@pytest.mark.parametrize("chunks, wire", [
    ([b""], b".\r\n"),
    ([b".hidden\r\n..two\r\n.\r\nend"], b"..hidden\r\n...two\r\n..\r\nend\r\n.\r\n"),
    ([b"a\r", b"\n.b"], b"a\r\n..b\r\n.\r\n"),
    ([b"a\r\n", b".", b"b\n"], b"a\r\n..b\r\n.\r\n"),
    ([b"a\n", b"\n", b".\n"], b"a\r\n\r\n..\r\n.\r\n"),
    ([b"a\r", b"b\n"], b"a\rb\r\n.\r\n"),
    ([b"x\r"], b"x\r\r\n.\r\n"),
])
def test_dotstuffer_examples(chunks, wire):
    assert _run(DotStuffer(), chunks) == wire


def _top_reference(message: bytes, n: int) -> tuple[bytes, bool]:
    """TOP on a whole message: the lines up to the first blank one, then n more; whether there were enough."""
    lines = _normalised(message).splitlines(keepends=True)
    # splitlines also breaks at bare CR and other separators; rejoin so that only CRLF ends a line.
    joined, current = [], b""
    for piece in lines:
        current += piece
        if current.endswith(b"\r\n"):
            joined.append(current)
            current = b""
    if current:
        joined.append(current)
    for i, line in enumerate(joined):
        if line == b"\r\n":
            end = i + 1 + n
            complete = [x for x in joined[i + 1:end] if x.endswith(b"\r\n")]
            return b"".join(joined[:end]), len(complete) == n
    return b"".join(joined), False


@settings(max_examples=800, deadline=None)
@given(message=_MESSAGES, n=st.integers(0, 6), cuts=st.lists(st.integers(0, 10_000), max_size=15))
def test_top_limiter_matches_whole_message_reference(message, n, cuts):
    stuffer = DotStuffer(max_body_lines=n)
    out = []
    for chunk in _cut(message, cuts):
        was_done = stuffer.done
        out.append(stuffer.feed(chunk))
        if was_done:
            assert out[-1] == b""
    wire = b"".join(out) + stuffer.finish()
    expected, enough = _top_reference(message, n)
    if expected and not expected.endswith(b"\n"):
        expected += b"\r\n"
    assert _undot(wire) == expected
    assert stuffer.done == enough


def test_top_limiter_examples():
    message = b"From: a\r\nSubject: b\r\n\r\nline 1\r\n.line 2\r\nline 3\r\n"
    assert _run(DotStuffer(0), [message]) == b"From: a\r\nSubject: b\r\n\r\n.\r\n"
    assert _run(DotStuffer(2), [message]) == b"From: a\r\nSubject: b\r\n\r\nline 1\r\n..line 2\r\n.\r\n"
    assert _run(DotStuffer(9), [message]) == message.replace(b"\n.", b"\n..") + b".\r\n"
    stuffer = DotStuffer(1)
    assert stuffer.feed(b"H: 1\n\nbody\nmore\n") == b"H: 1\r\n\r\nbody\r\n" and stuffer.done
    assert stuffer.feed(b"anything") == b""
    # The blank line split between chunks as CR | LF is still the end of the headers.
    stuffer = DotStuffer(0)
    assert stuffer.feed(b"H: 1\r\n\r") == b"H: 1\r\n\r" and not stuffer.done
    assert stuffer.feed(b"\nbody") == b"\n" and stuffer.done


# --- Pop3Maildrop over loopback streams --------------------------------------------------------------------


@dataclass
class StreamRecord:
    uid: int
    chunks: int = 0
    finished: bool = False
    closed: bool = False
    buffered: list[int] = field(default_factory=list)  # the server transport's write buffer at each chunk


class FakeStore:
    """An in-memory INBOX with the MailStore calls POP3 uses; records how messages were streamed."""

    def __init__(self, messages: dict[int, bytes], uidvalidity: int = 1234) -> None:
        self.messages = dict(messages)
        self.uidvalidity = uidvalidity
        self.expunged: list[list[int]] = []
        self.streams: list[StreamRecord] = []
        self.probe = None                     # called at every chunk, e.g. to read a transport's buffer size
        self.fail_stream: BackendError | None = None
        self.fail_after_chunks: int | None = None
        self.fail_expunge: BackendError | None = None
        self.broken: dict[int, BackendError] = {}  # uid -> what streaming that message raises

    async def status(self, folder: str) -> FolderStatus:
        assert folder == "INBOX"
        return FolderStatus(len(self.messages), 0, max(self.messages, default=0) + 1, self.uidvalidity)

    async def list_messages(self, folder: str) -> list[MessageSummary]:
        # Deliberately not in UID order: message numbers must follow UIDs anyway.
        return [MessageSummary(uid, len(body), ()) for uid, body in sorted(self.messages.items(), reverse=True)]

    async def stream_message(self, folder: str, uid: int, chunk_size: int) -> AsyncIterator[bytes]:
        record = StreamRecord(uid)
        self.streams.append(record)
        try:
            if self.fail_stream is not None and self.fail_after_chunks is None:
                raise self.fail_stream
            if uid in self.broken:
                raise self.broken[uid]
            if uid not in self.messages:
                raise NotFound(f"uid {uid}")
            body = self.messages[uid]
            for offset in range(0, len(body), chunk_size):
                if self.fail_after_chunks is not None and record.chunks == self.fail_after_chunks:
                    raise self.fail_stream
                record.chunks += 1
                if self.probe:
                    record.buffered.append(self.probe())
                yield body[offset:offset + chunk_size]
            record.finished = True
        finally:
            record.closed = True

    async def expunge(self, folder: str, uids) -> None:
        if self.fail_expunge is not None:
            raise self.fail_expunge
        self.expunged.append(list(uids))
        for uid in uids:
            self.messages.pop(uid, None)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ended: asyncio.Future) -> None:
        self.reader, self.writer, self.ended = reader, writer, ended
        self.server_writer: asyncio.StreamWriter | None = None

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 5)

    async def cmd(self, command: bytes) -> bytes:
        self.writer.write(command + b"\r\n")
        return await self.line()

    async def body(self) -> bytes:
        """The rest of a multi-line reply, terminator included."""
        out = []
        while True:
            line = await self.line()
            assert line.endswith(b"\r\n"), line
            out.append(line)
            if line == b".\r\n":
                return b"".join(out)

    async def multi(self, command: bytes) -> tuple[bytes, bytes]:
        status = await self.cmd(command)
        assert status.startswith(b"+OK"), status
        return status, await self.body()

    async def end(self) -> str:
        return await asyncio.wait_for(asyncio.shield(self.ended), 5)


@asynccontextmanager
async def session(store: FakeStore, pending: bytes = b"", idle_timeout: float = 5.0, small_buffers: bool = False,
                  **options) -> AsyncIterator[Client]:
    """A loopback server whose connection handler does what the shell will: open, greet, serve."""
    maildrop = Pop3Maildrop(store, **options)
    greeting = await maildrop.open()
    ended: asyncio.Future = asyncio.get_running_loop().create_future()
    server_writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if small_buffers:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        server_writers.append(writer)
        try:
            writer.write(greeting)
            await writer.drain()
            ended.set_result(await maildrop.serve(reader, writer, pending, idle_timeout))
        except Exception as exc:  # noqa: BLE001 - handed to the test
            ended.set_exception(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sock = socket.socket()
    if small_buffers:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    client = Client(reader, writer, ended)
    try:
        assert await client.line() == greeting
        client.server_writer = server_writers[0]
        yield client
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
        if not ended.done():
            await asyncio.wait_for(asyncio.shield(ended), 5)
        ended.exception()  # consumed, so a failed serve() is not reported as never retrieved


_MESSAGES_3 = {
    17: b"From: a@example.test\r\nSubject: one\r\n\r\nfirst body\r\n",
    5: b"From: b@example.test\r\nSubject: two\r\n\r\nsecond\r\nbody\r\n",
    42: b"Subject: three\r\n\r\n.starts with a dot\r\n..two\r\n.\r\nlast line\r\n",
}
_SIZES = {uid: len(body) for uid, body in _MESSAGES_3.items()}
_TOTAL = sum(_SIZES.values())


async def test_open_numbers_messages_by_uid_and_lists():
    store = FakeStore(_MESSAGES_3)
    async with session(store) as c:
        assert await c.cmd(b"STAT") == b"+OK 3 %d\r\n" % _TOTAL
        status, body = await c.multi(b"LIST")
        assert status == b"+OK 3 messages (%d octets)\r\n" % _TOTAL
        assert body == b"1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % (_SIZES[5], _SIZES[17], _SIZES[42])
        status, body = await c.multi(b"UIDL")
        assert body == b"1 1234.5\r\n2 1234.17\r\n3 1234.42\r\n.\r\n"
        assert await c.cmd(b"LIST 2") == b"+OK 2 %d\r\n" % _SIZES[17]
        assert await c.cmd(b"uidl 3") == b"+OK 3 1234.42\r\n"
        for bad in (b"LIST 0", b"LIST 4", b"LIST x", b"LIST -1", b"LIST +1", b"LIST 1_0", b"LIST 1 2",
                    b"UIDL 99999999999", b"RETR", b"TOP 1", b"TOP 1 x", b"DELE", b"STAT 1", b"USER a", b"PASS b",
                    b"STLS", b"AUTH PLAIN", b"LAST", b"", b"\xff"):
            assert (await c.cmd(bad)).startswith(b"-ERR "), bad
        assert await c.cmd(b"NOOP") == b"+OK\r\n"
        assert await c.cmd(b"QUIT") == b"+OK casgate signing off (0 messages deleted)\r\n"
        assert await c.end() == "quit"
    assert store.expunged == []


async def test_open_greeting_counts_the_maildrop():
    maildrop = Pop3Maildrop(FakeStore(_MESSAGES_3))
    assert await maildrop.open() == b"+OK maildrop has 3 messages (%d octets)\r\n" % _TOTAL
    assert await Pop3Maildrop(FakeStore({})).open() == b"+OK maildrop has 0 messages (0 octets)\r\n"


async def test_capa_after_login():
    async with session(FakeStore(_MESSAGES_3)) as c:
        _, body = await c.multi(b"CAPA")
        assert body.split(b"\r\n")[:-2] == [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                                            b"IMPLEMENTATION casgate"]


async def test_dele_hides_rset_restores_quit_expunges_exactly_the_deleted():
    store = FakeStore(_MESSAGES_3)
    async with session(store) as c:
        assert await c.cmd(b"DELE 2") == b"+OK message 2 deleted\r\n"
        assert await c.cmd(b"STAT") == b"+OK 2 %d\r\n" % (_SIZES[5] + _SIZES[42])
        _, body = await c.multi(b"LIST")
        assert body == b"1 %d\r\n3 %d\r\n.\r\n" % (_SIZES[5], _SIZES[42])
        _, body = await c.multi(b"UIDL")
        assert body == b"1 1234.5\r\n3 1234.42\r\n.\r\n"
        for command in (b"DELE 2", b"LIST 2", b"UIDL 2", b"RETR 2", b"TOP 2 0"):
            assert await c.cmd(command) == b"-ERR message 2 already deleted\r\n", command
        assert await c.cmd(b"RSET") == b"+OK maildrop has 3 messages (%d octets)\r\n" % _TOTAL
        assert await c.cmd(b"LIST 2") == b"+OK 2 %d\r\n" % _SIZES[17]
        assert await c.cmd(b"DELE 3") == b"+OK message 3 deleted\r\n"
        assert await c.cmd(b"DELE 1") == b"+OK message 1 deleted\r\n"
        assert store.expunged == []  # nothing happens before QUIT
        assert await c.cmd(b"QUIT") == b"+OK casgate signing off (2 messages deleted)\r\n"
        assert await c.end() == "quit"
    assert store.expunged == [[5, 42]]
    assert set(store.messages) == {17}


async def test_eof_and_idle_timeout_delete_nothing():
    store = FakeStore(_MESSAGES_3)
    async with session(store) as c:
        await c.cmd(b"DELE 1")
        c.writer.close()
        assert await c.end() == "eof"
    async with session(store, idle_timeout=0.2) as c:
        await c.cmd(b"DELE 1")
        assert await c.end() == "idle-timeout"
        assert await c.reader.read() == b""  # the server hung up
    assert store.expunged == [] and len(store.messages) == 3


async def test_retr_stuffs_dots_and_ends_with_terminator():
    store = FakeStore(_MESSAGES_3)
    async with session(store) as c:
        status, body = await c.multi(b"RETR 3")
        assert status == b"+OK %d octets\r\n" % _SIZES[42]
        assert body == b"Subject: three\r\n\r\n..starts with a dot\r\n...two\r\n..\r\nlast line\r\n.\r\n"
        assert _undot(body) == _MESSAGES_3[42]
        assert await c.cmd(b"NOOP") == b"+OK\r\n"  # framing intact after the body


async def test_retr_normalises_bare_lf_and_unterminated_last_line():
    store = FakeStore({1: b"Subject: lf\n\nbody\nno end", 2: b""})
    async with session(store, chunk_size=3) as c:
        _, body = await c.multi(b"RETR 1")
        assert body == b"Subject: lf\r\n\r\nbody\r\nno end\r\n.\r\n"
        status, body = await c.multi(b"RETR 2")
        assert status == b"+OK 0 octets\r\n" and body == b".\r\n"


async def test_top_sends_headers_and_n_lines_and_stops_reading():
    lines = b"".join(b"body line %d\r\n" % i for i in range(2000))
    store = FakeStore({7: b"From: a\r\nSubject: big\r\n\r\n" + lines})
    async with session(store, chunk_size=64) as c:
        status, body = await c.multi(b"TOP 1 0")
        assert status.startswith(b"+OK") and body == b"From: a\r\nSubject: big\r\n\r\n.\r\n"
        _, body = await c.multi(b"TOP 1 3")
        assert body == b"From: a\r\nSubject: big\r\n\r\nbody line 0\r\nbody line 1\r\nbody line 2\r\n.\r\n"
        _, body = await c.multi(b"TOP 1 999999")
        assert _undot(body) == store.messages[7]
    top0, top3, whole = store.streams
    assert top0.closed and not top0.finished and top0.chunks == 1
    assert top3.closed and not top3.finished and top3.chunks <= 2
    assert whole.finished and whole.chunks == -(-len(store.messages[7]) // 64)


async def test_retr_of_a_large_message_streams_chunk_by_chunk_with_bounded_buffering():
    line = b"x" * 1022 + b"\r\n"
    message = b"Subject: big\r\n\r\n" + line * 1024
    message = message[:1 << 20]  # exactly 1 MiB
    store = FakeStore({1: message})
    async with session(store, small_buffers=True, chunk_size=16384) as c:
        store.probe = lambda: c.server_writer.transport.get_write_buffer_size()
        c.writer.write(b"RETR 1\r\n")
        await asyncio.sleep(0.3)  # a client that does not read yet: the server must wait, not buffer
        waiting = store.streams[0].chunks
        status = await c.line()
        assert status == b"+OK 1048576 octets\r\n"
        body = await c.body()
        assert _undot(body) == message + b"\r\n"  # the cut last line gets its CRLF
    record = store.streams[0]
    assert record.finished and record.closed and record.chunks == 64
    assert waiting < 16, waiting  # it stopped reading the store while the client did not read
    # After each drain the transport holds at most its high-water mark (64 KiB); never the message.
    assert max(record.buffered) <= 64 * 1024 + 16384, max(record.buffered)


async def test_client_that_stops_reading_mid_message_times_out():
    store = FakeStore({1: b"y" * (4 << 20), 2: b"small\r\n"})
    async with session(store, small_buffers=True, idle_timeout=0.3, chunk_size=16384) as c:
        await c.cmd(b"DELE 2")
        c.writer.write(b"RETR 1\r\n")  # and never read the answer
        assert await c.end() == "write-timeout"
    assert store.streams[0].closed and not store.streams[0].finished
    assert store.expunged == []


async def test_message_removed_meanwhile_keeps_the_session():
    store = FakeStore(_MESSAGES_3)
    async with session(store) as c:
        del store.messages[17]
        assert await c.cmd(b"RETR 2") == b"-ERR message was removed\r\n"
        assert await c.cmd(b"TOP 2 1") == b"-ERR message was removed\r\n"
        status, _ = await c.multi(b"RETR 1")
        assert await c.cmd(b"QUIT") == b"+OK casgate signing off (0 messages deleted)\r\n"
    assert all(r.closed for r in store.streams)


@pytest.mark.parametrize("error, text", [
    (BackendUnavailable(), b"-ERR [SYS/TEMP] mail store unavailable, try again later\r\n"),
    (BackendError("boom"), b"-ERR [SYS/TEMP] mail store error, try again later\r\n"),
])
async def test_backend_failure_before_a_body_ends_the_session(error, text):
    store = FakeStore(_MESSAGES_3)
    async with session(store) as c:
        store.fail_stream = error
        assert await c.cmd(b"RETR 1") == text
        assert await c.end() == "backend-error"
        assert await c.reader.read() == b""
    assert store.expunged == []


async def test_backend_failure_inside_a_body_closes_without_a_terminator():
    store = FakeStore({1: b"a" * 1000 + b"\r\n"})
    async with session(store, chunk_size=100) as c:
        store.fail_stream, store.fail_after_chunks = BackendUnavailable(), 3
        assert await c.cmd(b"RETR 1") == b"+OK 1002 octets\r\n"
        rest = await asyncio.wait_for(c.reader.read(), 5)
        assert rest == b"a" * 300  # cut off: the client sees a broken body, never a short "complete" one
        assert await c.end() == "backend-error"
    assert store.streams[0].closed


async def test_expunge_failure_at_quit():
    store = FakeStore(_MESSAGES_3)
    store.fail_expunge = BackendUnavailable()
    async with session(store) as c:
        await c.cmd(b"DELE 1")
        assert await c.cmd(b"QUIT") == b"-ERR [SYS/TEMP] some deleted messages not removed\r\n"
        assert await c.end() == "backend-error"


def _streamed(store: FakeStore) -> list[int]:
    return [r.uid for r in store.streams]


async def _settled(store: FakeStore) -> None:
    for _ in range(100):
        if all(r.closed for r in store.streams):
            return
        await asyncio.sleep(0.01)


async def test_read_ahead_fetches_the_next_message_while_the_client_reads():
    store = FakeStore(_MESSAGES_3)
    async with session(store, read_ahead=1000) as c:
        assert (await c.multi(b"RETR 1"))[1] == _MESSAGES_3[5] + b".\r\n"
        await _settled(store)
        assert _streamed(store) == [5, 17] and store.streams[1].finished  # before RETR 2 was sent
        assert (await c.multi(b"RETR 2"))[1] == _MESSAGES_3[17] + b".\r\n"
        assert (await c.multi(b"RETR 3"))[1] == (b"Subject: three\r\n\r\n..starts with a dot\r\n...two\r\n"
                                                  b"..\r\nlast line\r\n.\r\n")
        assert _streamed(store) == [5, 17, 42]  # each message fetched once
        assert await c.cmd(b"QUIT") == b"+OK casgate signing off (0 messages deleted)\r\n"
    assert all(r.closed for r in store.streams)


async def test_read_ahead_skips_deleted_and_large_messages_and_drops_stale_ones():
    store = FakeStore(_MESSAGES_3)
    async with session(store, read_ahead=_SIZES[42]) as c:
        await c.cmd(b"DELE 2")
        await c.multi(b"RETR 1")
        await _settled(store)
        assert _streamed(store) == [5, 42]  # message 2 is deleted: message 3 is read ahead
        await c.cmd(b"RSET")
        assert (await c.multi(b"RETR 2"))[1] == _MESSAGES_3[17] + b".\r\n"  # not the read-ahead one
        await c.multi(b"RETR 3")
        await c.cmd(b"DELE 3")
        assert await c.cmd(b"QUIT") == b"+OK casgate signing off (1 messages deleted)\r\n"
    assert store.expunged == [[42]]
    small = FakeStore(_MESSAGES_3)
    async with session(small, read_ahead=_SIZES[17] - 1) as c:
        await c.multi(b"RETR 1")
        await c.multi(b"TOP 1 0")
        assert _streamed(small) == [5, 5]  # message 2 is bigger than the read-ahead allows


async def test_read_ahead_failure_is_reported_by_the_retr_that_needs_it():
    store = FakeStore(_MESSAGES_3)
    store.broken[17] = BackendUnavailable("down")
    async with session(store, read_ahead=1000) as c:
        await c.multi(b"RETR 1")
        assert await c.cmd(b"RETR 2") == b"-ERR [SYS/TEMP] mail store unavailable, try again later\r\n"
        assert await c.end() == "backend-error"
    assert _streamed(store) == [5, 17, 17] and store.expunged == []


async def test_pending_bytes_are_served_first_and_pipelining_works():
    store = FakeStore(_MESSAGES_3)
    async with session(store, pending=b"STAT\r\nLIST 1\r\nDE") as c:
        assert await c.line() == b"+OK 3 %d\r\n" % _TOTAL
        assert await c.line() == b"+OK 1 %d\r\n" % _SIZES[5]
        c.writer.write(b"LE 1\r\nRETR 2\r\nUIDL\r\nQUIT\r\nNOOP\r\n")
        assert await c.line() == b"+OK message 1 deleted\r\n"
        assert (await c.line()).startswith(b"+OK")
        assert _undot(await c.body()) == _MESSAGES_3[17]
        assert await c.line() == b"+OK 2 messages (%d octets)\r\n" % (_SIZES[17] + _SIZES[42])
        assert await c.body() == b"2 1234.17\r\n3 1234.42\r\n.\r\n"
        assert (await c.line()).startswith(b"+OK casgate signing off")
        assert await c.end() == "quit"
        assert await c.reader.read() == b""  # the NOOP after QUIT was not answered
    assert store.expunged == [[5]]


async def test_overlong_line_ends_the_session():
    async with session(FakeStore(_MESSAGES_3), max_line=100) as c:
        assert await c.cmd(b"UIDL " + b"9" * 90) == b"-ERR invalid message number\r\n"  # long, not too long
        c.writer.write(b"LIST " + b"1" * 200)
        assert await c.line() == b"-ERR line too long\r\n"
        assert await c.end() == "line-too-long"


async def test_five_thousand_messages_list_quickly():
    body = b"Subject: s\r\n\r\nx\r\n"
    store = FakeStore({uid: body for uid in range(1, 10_001, 2)})
    started = time.perf_counter()
    async with session(store) as c:
        _, listing = await c.multi(b"LIST")
        _, uids = await c.multi(b"UIDL")
        for n in range(1, 5001, 2):
            c.writer.write(b"DELE %d\r\n" % n)
        for n in range(1, 5001, 2):
            assert await c.line() == b"+OK message %d deleted\r\n" % n
        assert await c.cmd(b"STAT") == b"+OK 2500 %d\r\n" % (2500 * len(body))
        assert await c.cmd(b"QUIT") == b"+OK casgate signing off (2500 messages deleted)\r\n"
    elapsed = time.perf_counter() - started
    assert listing.count(b"\r\n") == 5001 and listing.startswith(b"1 %d\r\n" % len(body))
    assert uids.split(b"\r\n")[4999] == b"5000 1234.9999"
    assert store.expunged == [list(range(1, 10_001, 4))]
    assert elapsed < 3, elapsed


# --- MaildropLocks --------------------------------------------------------------------------------------------


async def test_locks_one_session_per_user_across_nodes(state_opener, state_clock):
    node_a = MaildropLocks(await state_opener(), ttl=900)
    node_b = MaildropLocks(await state_opener(), ttl=900)
    assert await node_a.acquire("alice@example.test")
    assert not await node_a.acquire("alice@example.test")
    assert not await node_a.acquire("Alice@Example.TEST")
    assert not await node_b.acquire("alice@example.test")
    assert await node_b.acquire("bob@example.test")
    await node_b.release("alice@example.test")  # not node b's to give back
    assert not await node_a.acquire("alice@example.test")
    assert not await node_b.acquire("alice@example.test")
    await node_a.release("alice@example.test")
    assert await node_b.acquire("alice@example.test")
    await node_b.release("alice@example.test")
    assert await node_a.acquire("alice@example.test")


async def test_lock_of_a_crashed_node_expires(state_opener, state_clock):
    crashed = MaildropLocks(await state_opener(), ttl=900)
    survivor = MaildropLocks(await state_opener(), ttl=900)
    assert await crashed.acquire("carol@example.test")
    state_clock.advance(600)
    assert not await survivor.acquire("carol@example.test")  # refused tries do not extend the lock
    state_clock.advance(301)
    assert await survivor.acquire("carol@example.test")


async def test_held_locks_are_renewed_and_released_ones_are_not(state_opener, state_clock):
    node_a = MaildropLocks(await state_opener(), ttl=900)
    node_b = MaildropLocks(await state_opener(), ttl=900)
    assert await node_a.acquire("erin@example.test") and await node_a.acquire("frank@example.test")
    await node_a.release("frank@example.test")
    state_clock.advance(600)
    await node_a.renew()
    state_clock.advance(600)  # 1,200 s after it was taken, 600 s after the renewal
    assert not await node_b.acquire("erin@example.test")
    assert await node_b.acquire("frank@example.test")  # released: not renewed back into existence
    state_clock.advance(301)
    assert await node_b.acquire("erin@example.test")  # node a stopped renewing (say it crashed): it expires
    await node_a.release("erin@example.test")
    await node_b.release("erin@example.test")


async def test_a_node_renews_its_locks_by_itself():
    class CountingState:
        def __init__(self):
            self.sets: list[tuple[str, float]] = []

        async def kv_incr(self, ns, key, ttl=None):
            return 1

        async def kv_set(self, ns, key, value, ttl=None):
            self.sets.append((key, ttl))

        async def kv_delete(self, ns, key):
            return True

    state = CountingState()
    locks = MaildropLocks(state, ttl=0.06)
    assert await locks.acquire("gina@example.test")
    await asyncio.sleep(0.1)
    assert ("gina@example.test", 0.06) in state.sets
    await locks.release("gina@example.test")
    await asyncio.sleep(0.05)
    renewed = len(state.sets)
    await asyncio.sleep(0.1)
    assert len(state.sets) == renewed and locks._renewer.done()  # nothing held: the task ended


async def test_concurrent_acquires_on_one_node():
    class SlowState:
        def __init__(self):
            self.count = 0

        async def kv_incr(self, ns, key, ttl=None):
            await asyncio.sleep(0.01)
            self.count += 1
            return self.count

        async def kv_delete(self, ns, key):
            self.count = 0
            return True

    locks = MaildropLocks(SlowState())
    results = await asyncio.gather(*(locks.acquire("dave") for _ in range(5)))
    assert sorted(results) == [False, False, False, False, True]
