"""Out-of-office through ManageSieve: the pure script and response code, fake servers, and the real Dovecot."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.message
import email.policy
import json
import re
import smtplib
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.errors import (AuthenticationFailed, BackendError, BackendUnavailable, InvalidData, PermissionDenied,
                             QuotaExceeded)
from adapters.interfaces import Credentials
from adapters.sieve import (MARKER, SCRIPT_NAME, Atom, ManageSieve, OofSettings, ResponseParser, SieveDataError,
                            SieveEndpoint, SieveOof, build_script, final_response, parse_script, sieve_string,
                            validated)
from gateway import tls
from gateway.demo.procs import free_port

CAROL = "carol@example.test"
UTC = dt.timezone.utc
NOW = dt.datetime(2024, 5, 1, 8, 30, 15, 123456, tzinfo=UTC)
TEXT = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=300)
TRICKY = 'Über "quotes" \\ back\\slash\r\n.\r\n..\nlone\rCR\ttab \\" end\\'


# ---- pure: validation, script building and parsing -----------------------------------------------------------

@pytest.mark.parametrize("bad", [
    OofSettings(3), OofSettings(True), OofSettings("1"),  # type: ignore[arg-type]
    OofSettings(2, NOW, None), OofSettings(2, None, NOW), OofSettings(2, NOW, NOW),
    OofSettings(1, NOW, NOW - dt.timedelta(seconds=1)), OofSettings(1, external_audience="friends"),
    OofSettings(1, internal_message="a\0b"), OofSettings(1, external_message="\ud800"),
    OofSettings(1, subject=None),  # type: ignore[arg-type]
    OofSettings(1, internal_message="x" * (64 * 1024 + 1)),
    OofSettings(1, start="2024-05-01"),  # type: ignore[arg-type]
])
def test_bad_settings_raise_the_module_error(bad: OofSettings) -> None:
    with pytest.raises(SieveDataError) as info:
        validated(bad)
    assert isinstance(info.value, InvalidData) and isinstance(info.value, ValueError)


def test_times_are_kept_in_utc_and_naive_means_utc() -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    s = validated(OofSettings(2, dt.datetime(2024, 5, 1, 10, 0), dt.datetime(2024, 5, 1, 13, 0, tzinfo=plus2)))
    assert s.start == dt.datetime(2024, 5, 1, 10, 0, tzinfo=UTC) and s.start.tzinfo is UTC
    assert s.end is not None and s.end.hour == 11 and s.end.tzinfo is UTC


def test_script_for_time_based_oof_with_an_included_script() -> None:
    s = OofSettings(2, NOW, NOW + dt.timedelta(days=2), TRICKY, "ext", "all", 'Away\r\n"now"')
    text = build_script(s, ["carol@example.test", "c@example.test"], 'my "rules"', None)
    assert text.startswith(MARKER) and text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    assert 'require ["vacation", "include", "date", "relational"];' in text
    assert ('currentdate :zone "+0000" :value "ge" "iso8601" "2024-05-01T08:30:15", '
            'currentdate :zone "+0000" :value "le" "iso8601" "2024-05-03T08:30:15"') in text
    assert ':days 1 :subject "Away \\"now\\"" :addresses ["carol@example.test", "c@example.test"]' in text
    assert sieve_string(TRICKY) in text and 'include :personal :optional "my \\"rules\\"";' in text
    assert text.index("vacation :days") < text.index("include :personal")
    assert parse_script(text) == (validated(s), 'my "rules"')


def test_sieve_string_escapes_and_uses_crlf() -> None:
    assert sieve_string('a"b\\c\nd\re\r\nf') == '"a\\"b\\\\c\r\nd\r\ne\r\nf"'


def test_disabled_script_has_no_rule_and_audience_limits_to_own_domains() -> None:
    off = build_script(OofSettings(0, internal_message="kept"), ["carol@example.test"], None, frozenset())
    assert "vacation" not in off.split("\r\n", 1)[1] and "require" not in off
    assert parse_script(off)[0].internal_message == "kept"
    internal = build_script(OofSettings(1, internal_message="hi", external_audience="none"),
                            ["carol@Example.TEST", "c@other.test"], None, frozenset({"vacation"}))
    assert 'if allof(address :domain :is "from" ["example.test", "other.test"]) {' in internal
    nobody = build_script(OofSettings(1, internal_message="hi", external_audience="known"), [], None, None)
    assert "vacation :days" not in nobody


def test_missing_extensions() -> None:
    with pytest.raises(PermissionDenied):
        build_script(OofSettings(1, internal_message="x"), [], "theirs", frozenset({"vacation"}))
    with pytest.raises(SieveDataError, match="date"):
        build_script(OofSettings(2, NOW, NOW + dt.timedelta(1)), [], None, frozenset({"vacation", "relational"}))
    with pytest.raises(SieveDataError, match="vacation"):
        build_script(OofSettings(1), [], None, frozenset({"include"}))


SETTINGS = st.builds(
    OofSettings, st.sampled_from([0, 1, 2]),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(5000, 1, 1), timezones=st.just(UTC)),
    st.datetimes(min_value=dt.datetime(5000, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(UTC)),
    TEXT, TEXT, st.sampled_from(["none", "known", "all"]), TEXT)


@settings(max_examples=200, deadline=None)
@given(s=SETTINGS, previous=st.none() | st.text(min_size=1, max_size=30))
def test_script_round_trips_any_settings(s: OofSettings, previous: str | None) -> None:
    text = build_script(s, ["carol@example.test"], previous if s.state else None, None)
    assert parse_script(text) == (s, previous if s.state else None)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.text(max_size=200).map(lambda t: MARKER + t),
                 st.dictionaries(st.sampled_from(["version", "state", "start", "end", "internal_message",
                                                  "external_message", "external_audience", "subject", "previous"]),
                                 st.none() | st.integers(-1, 3) | st.text(max_size=30) | st.booleans())
                 .map(lambda d: MARKER + json.dumps({"version": 1, **d}))))
def test_parse_script_raises_only_the_module_error(text: str) -> None:
    try:
        s, previous = parse_script(text)
    except SieveDataError:
        return
    assert validated(s) == s and (previous is None or isinstance(previous, str))


# ---- pure: ManageSieve responses -----------------------------------------------------------------------------

def test_parser_reads_codes_quoted_strings_and_literals() -> None:
    p = ResponseParser()
    assert p.feed_line(b'NO (QUOTA/MAXSIZE "x\\"y") {5}') == 5
    p.feed_literal("héllo".encode()[:5])
    assert p.feed_line(b"") is None
    r = final_response(p.tokens)
    assert r is not None and r.status == "NO" and r.code == ("QUOTA/MAXSIZE", 'x"y') and r.text == "héll"
    p = ResponseParser()
    assert p.feed_line(b'"casgate-oof" ACTIVE') is None
    assert p.tokens == ["casgate-oof", "ACTIVE"] and isinstance(p.tokens[1], Atom)
    assert final_response(p.tokens) is None


@pytest.mark.parametrize("line", [b'"open', b'"bad \\x escape"', b"(a", b"a)", b"{12", b"{5}x", b"{99999999}",
                                  b"{2000000}", b"caf\xc3\xa9", b"\x01", b'"\xff"'])
def test_parser_refuses_garbage(line: bytes) -> None:
    with pytest.raises(SieveDataError):
        ResponseParser().feed_line(line)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=60), min_size=1, max_size=4), st.binary(max_size=20))
def test_parser_raises_only_the_module_error(lines: list[bytes], literal: bytes) -> None:
    parser = ResponseParser()
    try:
        for line in lines:
            if parser.feed_line(line) is not None:
                parser.feed_literal(literal)
        final_response(parser.tokens)
    except SieveDataError:
        pass


# ---- fake servers: protocol errors without a real Dovecot ----------------------------------------------------

CAPS = b'"IMPLEMENTATION" "fake"\r\n"SASL" "PLAIN"\r\n"SIEVE" "vacation relational"\r\n"VERSION" "1.0"\r\n'


class FakeSieve:
    """A scripted ManageSieve server: a greeting, then one canned answer per command verb."""

    def __init__(self, greeting: bytes | None, answers: dict[str, bytes] | None = None) -> None:
        self.greeting, self.commands = greeting, []
        self.answers = {"CAPABILITY": CAPS + b"OK\r\n", "LISTSCRIPTS": b"OK\r\n", **(answers or {})}

    async def __aenter__(self) -> SieveEndpoint:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return SieveEndpoint("127.0.0.1", self.server.sockets[0].getsockname()[1], "none", timeout=0.5)

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.greeting is None:  # a server that accepts and then says nothing
                await reader.read()
                return
            writer.write(self.greeting)
            while line := await reader.readline():
                while m := re.search(rb"\{(\d+)\+\}\r\n$", line):
                    line += await reader.readexactly(int(m.group(1))) + await reader.readline()
                verb = line.split(b" ", 1)[0].strip().decode()
                self.commands.append(verb)
                writer.write(self.answers.get(verb, b'OK "done"\r\n'))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def _creds() -> Credentials:
    return Credentials("u@example.test", "pw")


@pytest.mark.parametrize("greeting, answers, expected", [
    (b"HELLO there\r\n", {}, SieveDataError),
    (b'"' + b"x" * 20000 + b'"\r\nOK\r\n', {}, SieveDataError),
    (b'"SIEVE" {2000000}\r\n', {}, SieveDataError),
    (None, {}, BackendUnavailable),
    (b'BYE "going down"\r\n', {}, BackendUnavailable),
    (CAPS + b"OK\r\n", {"AUTHENTICATE": b'NO (TRYLATER) "busy"\r\n'}, BackendUnavailable),
    (CAPS + b"OK\r\n", {"AUTHENTICATE": b'NO "nope"\r\n'}, AuthenticationFailed),
    (CAPS + b"OK\r\n", {"AUTHENTICATE": b'NO (ENCRYPT-NEEDED) "tls first"\r\n'}, AuthenticationFailed),
    (CAPS.replace(b"PLAIN", b"GSSAPI") + b"OK\r\n", {}, AuthenticationFailed),
    (CAPS + b"OK\r\n", {"PUTSCRIPT": b'NO (QUOTA/MAXSIZE) "too big"\r\n'}, QuotaExceeded),
    (CAPS + b"OK\r\n", {"PUTSCRIPT": b'NO {21}\r\nline 1: syntax error\n\r\n'}, SieveDataError),
    (CAPS + b"OK\r\n", {"LISTSCRIPTS": b'"a" PASSIVE\r\nOK\r\n'}, SieveDataError),
    (CAPS + b"OK\r\n", {"LISTSCRIPTS": b"BYE\r\n"}, BackendUnavailable),
])
async def test_fake_server_errors(greeting: bytes | None, answers: dict[str, bytes], expected: type) -> None:
    async with FakeSieve(greeting, answers) as ep:
        with pytest.raises(expected) as info:
            await SieveOof(ep, _creds()).set(OofSettings(1, internal_message="away"))
    assert isinstance(info.value, BackendError)


async def test_starttls_missing_is_refused_before_sending_the_password() -> None:
    fake = FakeSieve(CAPS + b"OK\r\n")
    async with fake as ep:
        with pytest.raises(BackendUnavailable, match="STARTTLS"):
            await SieveOof(SieveEndpoint(ep.host, ep.port, "starttls", timeout=0.5), _creds()).get()
    assert "AUTHENTICATE" not in fake.commands


async def test_other_active_script_without_include_is_not_replaced() -> None:
    fake = FakeSieve(CAPS + b"OK\r\n", {"LISTSCRIPTS": b'"mine" ACTIVE\r\nOK\r\n'})
    async with fake as ep:
        with pytest.raises(PermissionDenied, match="existing sieve script"):
            await SieveOof(ep, _creds()).set(OofSettings(1, internal_message="away"))
    assert "PUTSCRIPT" not in fake.commands and "SETACTIVE" not in fake.commands


async def test_time_based_oof_without_date_extension_is_invalid() -> None:
    fake = FakeSieve(CAPS + b"OK\r\n")
    async with fake as ep:
        with pytest.raises(InvalidData, match="date"):
            await SieveOof(ep, _creds()).set(OofSettings(2, NOW, NOW + dt.timedelta(1), "away"))
    assert "PUTSCRIPT" not in fake.commands


async def test_bad_input_fails_before_connecting() -> None:
    ep = SieveEndpoint("127.0.0.1", free_port(), "none", timeout=1)
    with pytest.raises(SieveDataError):
        await SieveOof(ep, _creds()).set(OofSettings(2, NOW, None))
    with pytest.raises(SieveDataError):
        SieveOof(ep, _creds(), ["not an address"])
    with pytest.raises(SieveDataError):
        SieveEndpoint("127.0.0.1", 1, "implicit")


# ---- the real Dovecot ----------------------------------------------------------------------------------------

@pytest.fixture
def endpoint(dovecot, certs) -> SieveEndpoint:
    return SieveEndpoint("127.0.0.1", dovecot.managesieve_port, "starttls", tls.client_context(certs.ca_cert), 5)


async def _wipe(endpoint: SieveEndpoint, creds: Credentials) -> None:
    async with ManageSieve.connect(endpoint, creds) as ms:
        await ms.setactive("")
        for name in await ms.listscripts():
            await ms.deletescript(name)


@pytest.fixture
async def carol(endpoint: SieveEndpoint, users: dict[str, str]):
    """Carol's credentials; she has no Sieve scripts before and after each test."""
    creds = Credentials(CAROL, users[CAROL])
    await _wipe(endpoint, creds)
    yield creds
    await _wipe(endpoint, creds)


def _deliver(dovecot, sender: str, subject: str) -> list[email.message.EmailMessage]:
    """Deliver one message to Carol by LMTP; the replies Dovecot sent meanwhile, parsed."""
    before = set(dovecot.outbox.glob("*.eml"))
    msg = email.message.EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, CAROL, subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@elsewhere.test>"
    msg.set_content("Are you there?")
    with smtplib.LMTP("127.0.0.1", dovecot.lmtp_port) as lmtp:
        lmtp.send_message(msg)
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in sorted(set(dovecot.outbox.glob("*.eml")) - before)]


def _sender(domain: str = "elsewhere.test") -> str:
    return f"sender-{uuid.uuid4().hex[:10]}@{domain}"


async def test_round_trip_of_states_0_1_2(endpoint, carol) -> None:
    oof = SieveOof(endpoint, carol, [CAROL])
    assert await oof.get() == OofSettings(0)
    for s in (OofSettings(1, None, None, "in", "out", "known", "Away"),
              OofSettings(2, NOW, NOW + dt.timedelta(days=3), "", "only external", "all", ""),
              OofSettings(0, None, None, "kept while off", "", "none", "s")):
        await oof.set(s)
        assert await oof.get() == s
    async with ManageSieve.connect(endpoint, carol) as ms:
        assert await ms.listscripts() == {SCRIPT_NAME: False}
        assert {"vacation", "include", "date", "relational"} <= ms.extensions


async def test_vacation_reply_is_sent(endpoint, carol, dovecot) -> None:
    await SieveOof(endpoint, carol, [CAROL]).set(OofSettings(1, internal_message=TRICKY, subject="Out: back Monday"))
    sender = _sender()
    [reply] = _deliver(dovecot, sender, "lunch?")
    assert reply["X-Casgate-Sendmail-Args"] == f"-i -f <> -- {sender}"
    assert reply["To"].addresses[0].addr_spec == sender and reply["From"].addresses[0].addr_spec == CAROL
    assert reply["Subject"] == "Out: back Monday" and reply["Auto-Submitted"].startswith("auto-replied")
    assert reply.get_content().replace("\r\n", "\n").rstrip("\n") == re.sub(r"\r\n|\r", "\n", TRICKY)  # dots too
    assert _deliver(dovecot, sender, "again?") == []  # :days 1: one reply per sender and day


async def test_time_based_and_audience(endpoint, carol, dovecot) -> None:
    oof = SieveOof(endpoint, carol, [CAROL])
    now = dt.datetime.now(UTC)
    await oof.set(OofSettings(2, now - dt.timedelta(hours=1), now + dt.timedelta(hours=1), "", "in the window"))
    [reply] = _deliver(dovecot, _sender(), "now")
    assert "in the window" in reply.get_content()
    await oof.set(OofSettings(2, now + dt.timedelta(hours=1), now + dt.timedelta(hours=2), "", "later"))
    assert _deliver(dovecot, _sender(), "too early") == []
    await oof.set(OofSettings(2, now - dt.timedelta(hours=2), now - dt.timedelta(minutes=1), "", "over"))
    assert _deliver(dovecot, _sender(), "too late") == []
    await oof.set(OofSettings(1, internal_message="colleagues only", external_audience="none"))
    assert _deliver(dovecot, _sender(), "outside") == []
    [reply] = _deliver(dovecot, _sender("example.test"), "inside")
    assert "colleagues only" in reply.get_content()
    await oof.set(OofSettings(0, internal_message="colleagues only"))
    assert _deliver(dovecot, _sender("example.test"), "off") == []


async def test_existing_script_is_included_and_reactivated(endpoint, carol, dovecot) -> None:
    marker = f"junk-{uuid.uuid4().hex[:8]}"
    mine = (f'require "fileinto";\r\nif header :contains "subject" "{marker}" {{\r\n'
            '  fileinto "Junk";\r\n  stop;\r\n}\r\n')
    async with ManageSieve.connect(endpoint, carol) as ms:
        await ms.putscript("my rules", mine)
        await ms.setactive("my rules")
    oof = SieveOof(endpoint, carol, [CAROL])
    await oof.set(OofSettings(1, internal_message="first"))
    await oof.set(OofSettings(1, internal_message="second"))  # setting again must not forget their script
    async with ManageSieve.connect(endpoint, carol) as ms:
        assert await ms.listscripts() == {"my rules": False, SCRIPT_NAME: True}
        assert 'include :personal :optional "my rules";' in await ms.getscript(SCRIPT_NAME)
    [reply] = _deliver(dovecot, _sender(), f"about {marker}")
    assert "second" in reply.get_content()
    junk = Path(dovecot.mail_dir) / "example.test" / "carol" / "Maildir" / ".Junk"
    assert any(marker in p.read_text(errors="replace") for p in junk.glob("*/*"))  # their filter still ran
    await oof.set(OofSettings(0, internal_message="second"))
    async with ManageSieve.connect(endpoint, carol) as ms:
        assert await ms.listscripts() == {"my rules": True, SCRIPT_NAME: False}
        assert await ms.getscript("my rules") == mine
    assert await oof.get() == OofSettings(0, internal_message="second")


async def test_wrong_password_and_unreachable_server(endpoint, carol, dovecot) -> None:
    with pytest.raises(AuthenticationFailed):
        await SieveOof(endpoint, Credentials(CAROL, "wrong"), client_ip="192.0.2.60").get()
    # XCLIENT put Dovecot's brute-force penalty on the phone's address, not on ours.
    t0 = time.monotonic()
    assert await SieveOof(endpoint, carol, client_ip="192.0.2.61").get() == OofSettings(0)
    assert await SieveOof(endpoint, carol).get() == OofSettings(0)
    assert time.monotonic() - t0 < 1.5
    with pytest.raises(SieveDataError):
        await SieveOof(endpoint, carol, client_ip="not-an-ip").get()
    with pytest.raises(BackendUnavailable):
        await SieveOof(SieveEndpoint("127.0.0.1", free_port(), timeout=2), Credentials(CAROL, "x")).get()
    untrusted = SieveEndpoint("127.0.0.1", dovecot.managesieve_port, "starttls", tls.client_context(None), 5)
    with pytest.raises(BackendUnavailable):
        await SieveOof(untrusted, Credentials(CAROL, "x")).get()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(message=TRICKY, subject='"quoted" \\ subject\r\nfolded')
@example(message=".\r\n.\r\n", subject="")
@example(message="日本語 🎉 \u2028 \x7f \x0b", subject="😀")
@given(message=TEXT, subject=TEXT)
async def test_any_text_round_trips_through_the_server(endpoint, carol, message: str, subject: str) -> None:
    s = OofSettings(1, None, None, message, message[::-1], "all", subject)
    oof = SieveOof(endpoint, carol, [CAROL])
    await oof.set(s)
    assert await oof.get() == s
