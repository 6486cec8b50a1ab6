"""The IMAP client core: response parsing, framing, command transcripts, streaming, names and dates."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.errors import (AuthenticationFailed, BackendError, BackendUnavailable, Conflict, InvalidData, NotFound,
                             PermissionDenied, QuotaExceeded)
from adapters.imap import wire
from adapters.imap.wire import (Answer, Continuation, Data, ImapConnection, Literal, ResponseReader, Status, astring,
                                decode_mailbox, encode_mailbox, flag_list, internal_date, mailbox, parse_response,
                                status_error)


def reader_with(data: bytes, eof: bool = True) -> ResponseReader:
    stream = asyncio.StreamReader(limit=wire.MAX_LINE + 2)
    stream.feed_data(data)
    if eof:
        stream.feed_eof()
    return ResponseReader(stream)


EOF = b"<eof>"


class Server:
    """A scripted IMAP server behind a fake writer: each expected client message releases its reply.

    A reply of EOF closes the server's side instead.
    """

    def __init__(self, steps: list[tuple[bytes, bytes]]) -> None:
        self.stream = asyncio.StreamReader(limit=wire.MAX_LINE + 2)
        self.steps = list(steps)
        self.unexpected = b""
        self.closed = False
        self._pending = b""

    def write(self, data: bytes) -> None:
        self._pending += data
        while self.steps and self._pending.startswith(self.steps[0][0]):
            expected, reply = self.steps.pop(0)
            self._pending = self._pending[len(expected):]
            if reply is EOF:
                self.stream.feed_eof()
            else:
                self.stream.feed_data(reply)
        if self.steps and not self.steps[0][0].startswith(self._pending[:len(self.steps[0][0])]):
            self.unexpected += self._pending
            self._pending = b""

    def writelines(self, parts) -> None:
        self.write(b"".join(parts))

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def done(self) -> bool:
        return not self.steps and not self.unexpected and not self._pending


def connect(steps, caps: str = "IMAP4REV1 LITERAL+", timeout: float = 2.0) -> tuple[ImapConnection, Server]:
    server = Server(steps)
    conn = ImapConnection(server.stream, server, timeout=timeout)
    conn.capabilities = frozenset(caps.split())
    return conn, server


# -- parsing -----------------------------------------------------------------------------------------------------

def test_status_responses_keep_code_and_text():
    r = parse_response([b"cg7 OK [APPENDUID 38505 3955] APPEND completed"])
    assert r == Status(b"cg7", "OK", "APPENDUID 38505 3955", "APPEND completed")
    assert r.code_name == "APPENDUID"
    assert parse_response([b"* BYE shutting down"]) == Status(b"*", "BYE", None, "shutting down")
    assert parse_response([b"* ok [ALERT] mixed case"]).kind == "OK"


def test_continuations():
    assert parse_response([b"+ go ahead"]) == Continuation(b"go ahead")
    assert parse_response([b"+"]) == Continuation(b"")


def test_fetch_items_nest_and_unquote():
    r = parse_response([b'* 12 FETCH (UID 40 FLAGS (\\Seen $Work) INTERNALDATE "01-Jan-2024 00:00:00 +0000" '
                        b'BODY[HEADER.FIELDS (SUBJECT FROM)]<0> "a \\"b\\" \\\\c" X NIL)'])
    assert r == Data("FETCH", 12, ((b"UID", b"40", b"FLAGS", (b"\\Seen", b"$Work"), b"INTERNALDATE",
                                    b"01-Jan-2024 00:00:00 +0000", b"BODY[HEADER.FIELDS (SUBJECT FROM)]<0>",
                                    b'a "b" \\c', b"X", None),))
    assert r.attrs()[b"UID"] == b"40" and r.attrs()[b"X"] is None


def test_list_with_nil_delimiter_and_quoted_nil():
    r = parse_response([b'* LIST (\\Noselect) NIL "NIL"'])
    assert r.items == ((b"\\Noselect",), None, b"NIL")


def test_literal_segments_become_items():
    r = parse_response([b"* 1 FETCH (UID 5 BODY[] ", b"a (b) \"c\r\n", b" X ", None, b")"])
    assert r.items == ((b"UID", b"5", b"BODY[]", b"a (b) \"c\r\n", b"X", None),)
    with pytest.raises(InvalidData):  # a literal marker anywhere but at the end of a line is not an atom
        parse_response([b"* 1 FETCH (X {2} Y)"])


@pytest.mark.parametrize("line", [
    b"* 1 FETCH (UID 1", b"* 1 FETCH UID 1)", b'* 1 FETCH ("open', b"* 1 FETCH (\x01)", b"garbage",
    b"cg1 FETCH (UID 1)", b"* 1", b"* (x)", b"* " + b"9" * 30 + b" EXISTS", b" OK no tag",
    b"* X " + b"(" * (wire.MAX_DEPTH + 1) + b")" * (wire.MAX_DEPTH + 1),
])
def test_malformed_responses_are_invalid_data(line):
    with pytest.raises(InvalidData):
        parse_response([line])


def test_depth_just_within_the_limit_parses():
    r = parse_response([b"* X " + b"(" * wire.MAX_DEPTH + b"a" + b")" * wire.MAX_DEPTH])
    depth, item = 0, r.items[0]
    while type(item) is tuple:
        depth, item = depth + 1, item[0]
    assert depth == wire.MAX_DEPTH and item == b"a"


# -- framing -----------------------------------------------------------------------------------------------------

async def test_reader_reads_literals_of_every_form():
    r = reader_with(b"* 1 FETCH (BODY[] {5}\r\nab\r\nc BINARY[] ~{3}\r\n\x00\x01\x02 X {2+}\r\nhi)\r\n")
    resp = await r.read()
    assert resp.attrs() == {b"BODY[]": b"ab\r\nc", b"BINARY[]": b"\x00\x01\x02", b"X": b"hi"}


async def test_status_line_ending_like_a_literal_is_just_text():
    r = reader_with(b"* OK see {5}\r\ncg1 NO quota {3}\r\n")
    assert (await r.read()).text == "see {5}"
    assert (await r.read()).text == "quota {3}"


async def test_a_5000_line_fetch_parses_without_recursion():
    lines = b"".join(b"* %d FETCH (UID %d RFC822.SIZE 10 FLAGS (\\Seen))\r\n" % (i, i) for i in range(1, 5001))
    r = reader_with(lines)
    got = [await r.read() for _ in range(5000)]
    assert [d.number for d in got] == list(range(1, 5001))
    assert got[-1].attrs()[b"UID"] == b"5000"


async def test_over_long_line_is_invalid_data():
    with pytest.raises(InvalidData):
        await reader_with(b"* OK " + b"x" * (wire.MAX_LINE + 10) + b"\r\n").read()


async def test_line_of_exactly_max_line_is_accepted():
    line = b"* OK " + b"x" * (wire.MAX_LINE - 5)
    assert len((await reader_with(line + b"\r\n").read()).text) == wire.MAX_LINE - 5


async def test_huge_announced_literal_is_refused_before_reading():
    with pytest.raises(InvalidData):
        await reader_with(b"* 1 FETCH (BODY[] {%d}\r\n" % (wire.MAX_LITERAL + 1)).read()
    with pytest.raises(InvalidData):
        await reader_with(b"* 1 FETCH (BODY[] {99999999999999999999}\r\n").read()


@pytest.mark.parametrize("data", [b"* 1 FETCH (BODY[] {10}\r\nabc", b"* OK no end", b""])
async def test_eof_is_backend_unavailable(data):
    with pytest.raises(BackendUnavailable):
        await reader_with(data).read()


_SOUP = st.lists(st.sampled_from(
    [b"(", b")", b'"', b'"q"', b"\\", b"{3}", b"~{2}", b"{1+}", b"{0}", b"\r\n", b"NIL", b"[", b"]", b" ", b"\x00",
     b"\n", b"BODY[] ", b"{999999999999}", b"1", b"UID", b"x"]) | st.binary(max_size=4), max_size=25).map(b"".join)
_LINE = st.tuples(st.sampled_from([b"* ", b"* 3 ", b"* " + b"9" * 5000 + b" ", b"cg1 ", b"+ ", b"", b"*"]),
                  st.sampled_from([b"FETCH ", b"LIST ", b"X ", b"OK ", b"BYE ", b"", b"ok ["]),
                  _SOUP, st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"", b"\n"])).map(b"".join)


async def _read_all(data: bytes) -> None:
    r = reader_with(data)
    for _ in range(200):
        await r.read()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_server_bytes_raise_only_adapter_errors(data):
    with pytest.raises(BackendError):  # at the latest, the end of the data
        asyncio.run(_read_all(data))


@settings(max_examples=1000, deadline=None)
@given(st.lists(_LINE, min_size=1, max_size=6).map(b"".join))
def test_response_shaped_bytes_raise_only_adapter_errors(data):
    with pytest.raises(BackendError):
        asyncio.run(_read_all(data))


_ATOM = st.text(alphabet="abcXYZ019.$\\-_]", min_size=1, max_size=8).filter(lambda a: a.upper() != "NIL")
_ITEM = st.recursive(
    _ATOM.map(lambda a: ("atom", a.encode())) | st.binary(max_size=20).filter(lambda b: b"\r" not in b and
                                                                              b"\n" not in b).map(lambda b: ("q", b))
    | st.binary(max_size=30).map(lambda b: ("lit", b)) | st.just(("nil", None)),
    lambda inner: st.lists(inner, max_size=5).map(lambda xs: ("list", xs)), max_leaves=30)


def _render(item) -> tuple[bytes, object]:
    kind, value = item
    if kind == "atom":
        return value, value
    if kind == "nil":
        return b"NIL", None
    if kind == "q":
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"', value
    if kind == "lit":
        return b"{%d}\r\n" % len(value) + value, value
    parts = [_render(x) for x in value]
    return b"(" + b" ".join(p for p, _ in parts) + b")", tuple(v for _, v in parts)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ITEM, max_size=6))
def test_rendered_items_parse_back(items):
    parts = [_render(x) for x in items]
    wire_bytes = b"* 7 FETCH " + b" ".join(p for p, _ in parts) + b"\r\n"
    async def read():
        return await reader_with(wire_bytes).read()
    resp = asyncio.run(read())
    assert resp == Data("FETCH", 7, tuple(v for _, v in parts))


# -- commands ----------------------------------------------------------------------------------------------------

async def test_tags_are_unique_and_untagged_responses_collected():
    conn, server = connect([
        (b"cg1 NOOP\r\n", b"* 3 EXISTS\r\n* OK [UIDNEXT 9] next\r\ncg1 OK done\r\n"),
        (b"cg2 NOOP\r\n", b"cg2 OK done\r\n"),
    ])
    first = await conn.command(b"NOOP")
    assert first.data("EXISTS")[0].number == 3 and first.code("UIDNEXT") == ["9"]
    await conn.command(b"NOOP")
    assert server.done()


async def test_no_and_bad_map_to_adapter_errors():
    conn, server = connect([
        (b'cg1 SELECT "Gone"\r\n', b"cg1 NO [NONEXISTENT] Mailbox doesn't exist\r\n"),
        (b"cg2 FROB\r\n", b"cg2 BAD unknown command\r\n"),
        (b"cg3 NOOP\r\n", b"cg3 NO [UNAVAILABLE] later\r\n"),
    ])
    with pytest.raises(NotFound):
        await conn.command(b"SELECT", mailbox("Gone"))
    with pytest.raises(InvalidData):
        await conn.command(b"FROB")
    assert (await conn.command(b"NOOP", check=False)).done.kind == "NO"
    assert server.done() and not conn.broken


@pytest.mark.parametrize("status, error", [
    (b"NO [NONEXISTENT] x", NotFound), (b"NO [TRYCREATE] x", NotFound), (b"NO [OVERQUOTA] x", QuotaExceeded),
    (b"NO [ALREADYEXISTS] x", Conflict), (b"NO [NOPERM] x", PermissionDenied),
    (b"NO [SERVERBUG] x", BackendUnavailable), (b"BAD x", InvalidData), (b"NO x", BackendError),
])
def test_status_error_table(status, error):
    assert type(status_error(parse_response([b"cg1 " + status]))) is error


async def test_synchronising_literal_waits_for_go_ahead():
    conn, server = connect([
        (b'cg1 APPEND "INBOX" {5}\r\n', b"+ go ahead\r\n"),
        (b"hello\r\n", b"cg1 OK [APPENDUID 1 7] done\r\n"),
    ], caps="IMAP4REV1")
    answer = await conn.command(b"APPEND", mailbox("INBOX"), Literal(b"hello"))
    assert answer.code("APPENDUID") == ["1", "7"] and server.done()


async def test_refused_literal_is_never_sent():
    conn, server = connect([(b'cg1 APPEND "INBOX" {5}\r\n', b"cg1 NO [OVERQUOTA] too big\r\n")], caps="IMAP4REV1")
    with pytest.raises(QuotaExceeded):
        await conn.command(b"APPEND", mailbox("INBOX"), Literal(b"hello"))
    assert server.done() and not conn.broken


@pytest.mark.parametrize("caps, size, marker", [
    ("LITERAL+", 5000, b"{5000+}"), ("LITERAL-", 4096, b"{4096+}"),
])
async def test_non_synchronising_literals(caps, size, marker):
    data = b"x" * size
    conn, server = connect([(b'cg1 APPEND "INBOX" ' + marker + b"\r\n" + data + b"\r\n", b"cg1 OK done\r\n")],
                           caps=caps)
    await conn.command(b"APPEND", mailbox("INBOX"), Literal(data))
    assert server.done()


async def test_literal_minus_above_4096_synchronises():
    data = b"x" * 4097
    conn, server = connect([(b'cg1 APPEND "INBOX" {4097}\r\n', b"+ ok\r\n"), (data + b"\r\n", b"cg1 OK done\r\n")],
                           caps="LITERAL-")
    await conn.command(b"APPEND", mailbox("INBOX"), Literal(data))
    assert server.done()


async def test_line_breaks_in_arguments_are_refused_without_breaking_the_connection():
    conn, server = connect([])
    with pytest.raises(InvalidData):
        await conn.command(b"SELECT", b'"a"\r\ncg9 DELETE "INBOX"')
    assert server.unexpected == b"" and not conn.broken


async def test_malformed_untagged_response_fails_the_command_but_not_the_connection():
    conn, server = connect([
        (b"cg1 NOOP\r\n", b"* 1 FETCH (UID \x01)\r\ncg1 OK done\r\n"),
        (b"cg2 NOOP\r\n", b"cg2 OK done\r\n"),
    ])
    with pytest.raises(InvalidData):
        await conn.command(b"NOOP")
    await conn.command(b"NOOP")
    assert server.done()


@pytest.mark.parametrize("reply, error", [
    (b"zz9 OK not yours\r\n", InvalidData),
    (b"+ what?\r\n", InvalidData),
    (b"cg1 WHATEVER\r\n", InvalidData),
    (EOF, BackendUnavailable),
])
async def test_protocol_violations_break_the_connection(reply, error):
    conn, server = connect([(b"cg1 NOOP\r\n", reply)])
    with pytest.raises(error):
        await conn.command(b"NOOP")
    assert conn.broken and server.closed
    with pytest.raises(BackendUnavailable):
        await conn.command(b"NOOP")


async def test_a_silent_server_times_out():
    conn, server = connect([(b"cg1 NOOP\r\n", b"* 1 EXISTS\r\n")], timeout=0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(BackendUnavailable):
        await conn.command(b"NOOP")
    assert loop.time() - t0 < 1.0 and conn.broken


async def test_commands_run_one_at_a_time():
    conn, server = connect([
        (b"cg1 A\r\n", b"* 1 EXISTS\r\n"),  # the rest of cg1's answer comes only when cg2 is written
        (b"cg2 B\r\n", b""),
    ])
    first = asyncio.create_task(conn.command(b"A"))
    second = asyncio.create_task(conn.command(b"B"))
    await asyncio.sleep(0.05)
    assert server.steps  # cg2 has not been written while cg1 is open
    server.stream.feed_data(b"cg1 OK a\r\n")
    await first
    await asyncio.sleep(0)
    server.stream.feed_data(b"cg2 OK b\r\n")
    await second
    assert server.done()


# -- login -------------------------------------------------------------------------------------------------------

def _plain(authz: str, user: str, pw: str) -> bytes:
    return base64.b64encode(f"{authz}\0{user}\0{pw}".encode())


async def test_login_sends_id_then_sasl_ir_and_takes_new_capabilities():
    conn, server = connect([
        (b'cg1 ID ("x-originating-ip" "192.0.2.7")\r\n', b"* ID NIL\r\ncg1 OK ID completed\r\n"),
        (b"cg2 AUTHENTICATE PLAIN " + _plain("", "bob", "pw") + b"\r\n",
         b"cg2 OK [CAPABILITY IMAP4rev1 UIDPLUS MOVE] Logged in\r\n"),
    ], caps="IMAP4REV1 ID SASL-IR AUTH=PLAIN")
    await conn.login("bob", "pw", client_ip="192.0.2.7")
    assert conn.capabilities == {"IMAP4REV1", "UIDPLUS", "MOVE"} and server.done()


async def test_login_with_continuation_and_authzid():
    conn, server = connect([
        (b"cg1 AUTHENTICATE PLAIN\r\n", b"+ \r\n"),
        (_plain("bob", "master", "pw") + b"\r\n", b"cg1 OK Logged in\r\n"),
        (b"cg2 CAPABILITY\r\n", b"* CAPABILITY IMAP4rev1 IDLE\r\ncg2 OK done\r\n"),
    ], caps="IMAP4REV1 AUTH=PLAIN")
    await conn.login("master", "pw", authzid="bob", client_ip="not an address")
    assert conn.capabilities == {"IMAP4REV1", "IDLE"} and server.done()


async def test_second_challenge_is_cancelled():
    conn, server = connect([
        (b"cg1 AUTHENTICATE PLAIN\r\n", b"+ \r\n"),
        (_plain("", "bob", "pw") + b"\r\n", b"+ more?\r\n"),
        (b"*\r\n", b"cg1 BAD cancelled\r\n"),
    ], caps="IMAP4REV1")
    with pytest.raises(AuthenticationFailed):
        await conn.login("bob", "pw")
    assert server.done()


@pytest.mark.parametrize("reply, error", [
    (b"cg1 NO [AUTHENTICATIONFAILED] no\r\n", AuthenticationFailed),
    (b"cg1 NO [UNAVAILABLE] later\r\n", BackendUnavailable),
    (b"cg1 NO [SERVERBUG] oops\r\n", BackendUnavailable),
    (b"cg1 BAD what\r\n", AuthenticationFailed),
])
async def test_login_failures(reply, error):
    conn, server = connect([(b"cg1 AUTHENTICATE PLAIN " + _plain("", "bob", "pw") + b"\r\n", reply)],
                           caps="SASL-IR")
    with pytest.raises(error):
        await conn.login("bob", "pw")


async def test_login_disabled_without_plain_is_unavailable():
    conn, server = connect([], caps="IMAP4REV1 LOGINDISABLED STARTTLS")
    with pytest.raises(BackendUnavailable):
        await conn.login("bob", "pw")


# -- streaming a literal -----------------------------------------------------------------------------------------

def _wants_body(segments) -> bool:
    return segments[-1].endswith(b"BODY[] ")


BODY = bytes(range(256)) * 40  # 10240 octets


async def test_literal_streams_in_bounded_chunks():
    conn, server = connect([(b"cg1 UID FETCH 5 BODY.PEEK[]\r\n",
                             b"* 1 FETCH (UID 5 BODY[] {%d}\r\n" % len(BODY) + BODY + b")\r\ncg1 OK done\r\n")])
    async with conn.literal(b"UID FETCH 5 BODY.PEEK[]", want=_wants_body) as body:
        assert body.size == len(BODY)
        chunks = [c async for c in body.chunks(4000)]
    assert b"".join(chunks) == BODY and [len(c) for c in chunks] == [4000, 4000, 2240]
    assert not conn.broken


async def test_without_a_wanted_literal_the_answer_is_yielded():
    conn, server = connect([(b"cg1 UID FETCH 5 BODY.PEEK[]\r\n",
                             b'* 1 FETCH (UID 5 BODY[] "tiny")\r\ncg1 OK done\r\n')])
    async with conn.literal(b"UID FETCH 5 BODY.PEEK[]", want=_wants_body) as body:
        assert type(body) is Answer and body.data("FETCH")[0].attrs()[b"BODY[]"] == b"tiny"


async def test_abandoned_literal_is_drained_and_the_connection_reused():
    conn, server = connect([
        (b"cg1 UID FETCH 5 BODY.PEEK[]\r\n",
         b"* 1 FETCH (UID 5 BODY[] {%d}\r\n" % len(BODY) + BODY + b" FLAGS (\\Seen))\r\ncg1 OK done\r\n"),
        (b"cg2 NOOP\r\n", b"cg2 OK done\r\n"),
    ])
    with pytest.raises(RuntimeError):
        async with conn.literal(b"UID FETCH 5 BODY.PEEK[]", want=_wants_body) as body:
            async for _ in body.chunks(100):
                raise RuntimeError("consumer gave up")
    await conn.command(b"NOOP")
    assert server.done() and not conn.broken


async def test_abandoned_literal_past_the_drain_limit_drops_the_connection(monkeypatch):
    monkeypatch.setattr(wire, "DRAIN_LIMIT", 1000)
    conn, server = connect([(b"cg1 UID FETCH 5 BODY.PEEK[]\r\n", b"* 1 FETCH (BODY[] {%d}\r\n" % len(BODY) + BODY)])
    with pytest.raises(RuntimeError):
        async with conn.literal(b"UID FETCH 5 BODY.PEEK[]", want=_wants_body) as body:
            async for _ in body.chunks(100):
                raise RuntimeError("consumer gave up")
    assert conn.broken and server.closed


async def test_no_after_the_literal_is_raised():
    conn, server = connect([(b"cg1 UID FETCH 5 BODY.PEEK[]\r\n",
                             b"* 1 FETCH (BODY[] {3}\r\nabc)\r\ncg1 NO [SERVERBUG] half\r\n")])
    with pytest.raises(BackendUnavailable):
        async with conn.literal(b"UID FETCH 5 BODY.PEEK[]", want=_wants_body) as body:
            assert b"".join([c async for c in body.chunks()]) == b"abc"


# -- names, flags, dates -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, encoded", [
    ("INBOX", b"INBOX"), ("Entwürfe", b"Entw&APw-rfe"), ("A&B", b"A&-B"),
    ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"), ("😀", b"&2D3eAA-"),
])
def test_modified_utf7_vectors(name, encoded):
    assert encode_mailbox(name) == encoded and decode_mailbox(encoded) == name


@given(st.text(max_size=30))
def test_modified_utf7_round_trips(name):
    encoded = encode_mailbox(name)
    assert encoded.isascii() and decode_mailbox(encoded) == name


def test_non_conforming_names_are_kept():
    assert decode_mailbox("Entwürfe".encode()) == "Entwürfe"
    assert decode_mailbox(b"bad&AAA") == "bad&AAA" and decode_mailbox(b"odd&A-") == "odd&A-"


def test_string_arguments_quote_or_go_literal():
    assert mailbox('a "b" \\c') == b'"a \\"b\\" \\\\c"'
    assert mailbox("line\r\nbreak") == b'"line&AA0ACg-break"'  # modified UTF-7 leaves only printable ASCII
    assert astring(b"caf\xc3\xa9") == Literal(b"caf\xc3\xa9") and astring(b"a\nb") == Literal(b"a\nb")


def test_flags_must_be_atoms():
    assert flag_list(["\\Seen", "$Label", "Junk"]) == b"(\\Seen $Label Junk)"
    for bad in ["\\Seen)", "a b", "x\r\ny", "", "\\*", "ü"]:
        with pytest.raises(InvalidData):
            flag_list([bad])


def test_internal_date():
    when = dt.datetime(2024, 3, 5, 14, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30)))
    assert internal_date(when) == b'"05-Mar-2024 14:00:00 -0330"'
    with pytest.raises(InvalidData):
        internal_date(dt.datetime(2024, 3, 5))


# -- the store over a scripted server: what Dovecot never does ---------------------------------------------------

async def test_store_without_uidplus_or_literal_plus(monkeypatch):
    from contextlib import AsyncExitStack

    from adapters.imap import ImapEndpoint, ImapMailStore
    from adapters.interfaces import Credentials

    conn, server = connect([
        (b"cg1 AUTHENTICATE PLAIN " + _plain("", "bob", "pw") + b"\r\n", b"cg1 OK [CAPABILITY IMAP4rev1] in\r\n"),
        (b'cg2 APPEND "INBOX" (\\Seen) {5}\r\n', b"+ go\r\n"),
        (b"hello\r\n", b"cg2 OK appended\r\n"),
        (b'cg3 SELECT "INBOX"\r\n', b"* 3 EXISTS\r\ncg3 OK [READ-WRITE] selected\r\n"),
        (b"cg4 UID STORE 1:3,7 +FLAGS.SILENT (\\Deleted)\r\n", b"cg4 OK stored\r\n"),
        (b"cg5 EXPUNGE\r\n", b"* 1 EXPUNGE\r\ncg5 OK expunged\r\n"),
        (b"cg6 LOGOUT\r\n", b"* BYE bye\r\ncg6 OK out\r\n"),
    ], caps="IMAP4REV1 SASL-IR AUTH=PLAIN")

    async def scripted_open(cls, endpoint):
        return conn

    monkeypatch.setattr(ImapConnection, "open", classmethod(scripted_open))
    async with AsyncExitStack() as stack:
        store = ImapMailStore(ImapEndpoint("mail.example.test", 143, "none"), Credentials("bob", "pw"))
        await store.start(stack)
        assert store.capabilities == {"IMAP4REV1"}
        assert await store.append("INBOX", b"hello", flags=["\\Seen"]) is None
        await store.expunge("INBOX", [3, 1, 7, 2, 2])
    assert server.done() and server.closed
