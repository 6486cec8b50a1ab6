"""The PROXY protocol: the pure parser against the spec's examples and properties, then the socket shell."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxyproto import (
    MAX_HEADER,
    ProxyHeaderError,
    ProxyInfo,
    build_v1,
    build_v2,
    parse_proxy_header,
    read_proxy_header,
    trusted,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
FFFF6 = ":".join(["ffff"] * 8)


def _v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    """A v2 header written byte by byte, independently of build_v2."""
    return SIG + bytes((ver_cmd, fam)) + struct.pack("!H", len(body) if length is None else length) + body


# --- version 1: the spec's examples ---------------------------------------------------------------------


def test_v1_tcp4_spec_example_stops_at_crlf():
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    info, size = parse_proxy_header(line + b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n")
    assert info == ProxyInfo("192.168.0.1", 56324, "192.168.0.11", 443, 1)
    assert size == len(line) == 47


def test_v1_tcp6_longest_line_and_normalisation():
    line = f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(line) == 104
    assert parse_proxy_header(line) == (ProxyInfo(FFFF6, 65535, FFFF6, 65535, 1), 104)
    info, _ = parse_proxy_header(b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::FFFF:10.0.0.1 0 1\r\n")
    assert (info.source, info.destination) == ("2001:db8::1", "::ffff:a00:1")
    assert (info.source_port, info.destination_port) == (0, 1)


def test_v1_unknown_short_and_worst_case():
    assert parse_proxy_header(b"PROXY UNKNOWN\r\nA1 CAPABILITY\r\n") == (ProxyInfo(None, None, None, None, 1), 15)
    worst = f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode()
    assert len(worst) == 107
    assert parse_proxy_header(worst + b"x") == (ProxyInfo(None, None, None, None, 1), 107)
    # "the receiver must ignore anything presented before the CRLF"
    assert parse_proxy_header(b"PROXY UNKNOWN whatever the proxy likes\r\n")[1] == 40


def test_v1_no_crlf_within_107_bytes():
    start = b"PROXY UNKNOWN "  # 14 bytes
    assert parse_proxy_header(start + b"x" * 91) is None                 # 105 bytes: CRLF may end at 107
    assert parse_proxy_header(start + b"x" * 91 + b"\r") is None         # 106th is CR: its LF is the 107th
    assert parse_proxy_header(start + b"x" * 91 + b"\r\n") == (ProxyInfo(None, None, None, None, 1), 107)
    for hopeless in (start + b"x" * 92,                                  # 106 bytes and no CR: too late
                     start + b"x" * 92 + b"\r",                          # CRLF would end at byte 108
                     start + b"x" * 92 + b"\r\n",
                     start + b"x" * 200):
        with pytest.raises(ProxyHeaderError, match="107"):
            parse_proxy_header(hopeless)


@pytest.mark.parametrize("line", [
    b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",          # two spaces
    b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",          # trailing space
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",             # missing port
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",         # extra field
    b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",               # family mismatch
    b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
    b"PROXY TCP6 ::1 ::1 1 2 \r\n",
    b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",          # heading zero in an octet
    b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",          # scope
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",       # port range
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",         # heading zero in a port
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 0x10 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xd9\xa1\r\n",   # ARABIC-INDIC DIGIT ONE: int() would take it
    b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY UNKNOWNX\r\n",
    b"PROXY \r\n",
    b"PROXY UNKNOWN \x00\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",             # bare LF
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
    b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
])
def test_v1_malformed(line: bytes):
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(line)


@pytest.mark.parametrize("head", [
    b"A1 LOGIN", b"\x16\x03\x01\x02\x00", b"proxy ", b"PROXX", b"PROXY_", b"\r\n\r\n\x01", b"\r\r",
    b"PROXY TCP7", b"PROXY TCP4X", b"PROXY UNKNOWNX", b"PROXY TCP4 1.2.3.4\n", b"PROXY TCP4 1.2\r.3",
    b"PROXY UNKNOWN \xff",
])
def test_not_a_header_is_rejected_before_any_crlf(head: bytes):
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(head)


def test_first_byte_decides():
    for b in range(256):
        if b in b"P\r":
            assert parse_proxy_header(bytes([b])) is None
        else:
            with pytest.raises(ProxyHeaderError, match="not a PROXY"):
                parse_proxy_header(bytes([b]))
    assert parse_proxy_header(b"") is None


# --- version 2 ---------------------------------------------------------------------------------------------


def test_v2_proxy_ipv4():
    body = bytes([192, 168, 0, 1, 192, 168, 0, 11]) + struct.pack("!HH", 56324, 993)
    header = _v2(0x21, 0x11, body)
    assert len(header) == 28
    assert parse_proxy_header(header + b"\x16\x03\x01") == (ProxyInfo("192.168.0.1", 56324, "192.168.0.11", 993, 2), 28)


def test_v2_proxy_ipv6():
    src, dst = ipaddress.IPv6Address("2001:db8::7"), ipaddress.IPv6Address("2001:db8:0:1::1")
    header = _v2(0x21, 0x21, src.packed + dst.packed + struct.pack("!HH", 1, 65535))
    assert len(header) == 52
    assert parse_proxy_header(header) == (ProxyInfo("2001:db8::7", 1, "2001:db8:0:1::1", 65535, 2), 52)


def test_v2_tlvs_are_skipped_by_length():
    tlvs = b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.org" + b"\x04\x00\x00"  # ALPN, AUTHORITY, NOOP
    body = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 1000, 143) + tlvs
    header = _v2(0x21, 0x11, body)
    info, size = parse_proxy_header(header + b"A1 CAPABILITY\r\n")
    assert info == ProxyInfo("10.0.0.1", 1000, "10.0.0.2", 143, 2)
    assert size == len(header) == 16 + 12 + len(tlvs)
    v6 = _v2(0x21, 0x21, bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HH", 5, 6) + tlvs)
    assert parse_proxy_header(v6 + b"tail") == (ProxyInfo("::1", 5, "::2", 6, 2), len(v6))


def test_v2_local_ignores_family_and_skips_its_block():
    assert parse_proxy_header(_v2(0x20, 0x00, b"") + b"rest") == (ProxyInfo(None, None, None, None, 2), 16)
    # "must not assume zero is presented for LOCAL connections"; the family is ignored too
    block = bytes(12) + b"\x03\x00\x01x"
    assert parse_proxy_header(_v2(0x20, 0x11, block) + b"rest") == (ProxyInfo(None, None, None, None, 2), 32)
    assert parse_proxy_header(_v2(0x20, 0xFF, b"abc")) == (ProxyInfo(None, None, None, None, 2), 19)


def test_v2_unspec_and_unix_give_no_addresses():
    assert parse_proxy_header(_v2(0x21, 0x00, b"")) == (ProxyInfo(None, None, None, None, 2), 16)
    unix = b"/run/a.sock".ljust(108, b"\x00") + b"/run/b.sock".ljust(108, b"\x00")
    assert parse_proxy_header(_v2(0x21, 0x31, unix + b"\x04\x00\x00")) == (ProxyInfo(None, None, None, None, 2), 235)


@pytest.mark.parametrize(("header", "message"), [
    (_v2(0x11, 0x11, bytes(12)), "version 1"),
    (_v2(0x31, 0x11, bytes(12)), "version 3"),
    (_v2(0x22, 0x11, bytes(12)), "command"),
    (_v2(0x2F, 0x11, bytes(12)), "command"),
    (_v2(0x21, 0x12, bytes(12)), "datagram"),
    (_v2(0x21, 0x22, bytes(36)), "datagram"),
    (_v2(0x21, 0x32, bytes(216)), "datagram"),
    (_v2(0x21, 0x41, bytes(12)), "0x41"),
    (_v2(0x21, 0x13, bytes(12)), "0x13"),
    (_v2(0x21, 0x10, bytes(12)), "0x10"),
    (_v2(0x21, 0x01, bytes(12)), "0x01"),
    (_v2(0x21, 0x11, bytes(11)), "too short"),
    (_v2(0x21, 0x21, bytes(35)), "too short"),
    (_v2(0x21, 0x21, bytes(12)), "too short"),
    (_v2(0x21, 0x31, bytes(215)), "too short"),
])
def test_v2_malformed(header: bytes, message: str):
    with pytest.raises(ProxyHeaderError, match=message):
        parse_proxy_header(header)


def test_v2_errors_come_as_soon_as_the_byte_that_shows_them():
    with pytest.raises(ProxyHeaderError, match="version"):
        parse_proxy_header(SIG + b"\x11")
    with pytest.raises(ProxyHeaderError, match="datagram"):
        parse_proxy_header(SIG + b"\x21\x12")
    with pytest.raises(ProxyHeaderError, match="too short"):
        parse_proxy_header(SIG + b"\x21\x11\x00\x04")   # 16 bytes: the length alone condemns it


def test_v2_total_length_limit():
    limit = MAX_HEADER - 16
    assert parse_proxy_header(_v2(0x21, 0x11, b"", length=limit)) is None  # exactly MAX_HEADER: wait
    with pytest.raises(ProxyHeaderError, match=str(MAX_HEADER)):
        parse_proxy_header(_v2(0x21, 0x11, b"", length=limit + 1))
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(_v2(0x20, 0x00, b"", length=0xFFFF))
    full = _v2(0x21, 0x11, bytes(12) + b"\x04" + struct.pack("!H", limit - 15) + bytes(limit - 15))
    assert len(full) == MAX_HEADER
    assert parse_proxy_header(full + b"x") == (ProxyInfo("0.0.0.0", 0, "0.0.0.0", 0, 2), MAX_HEADER)


# --- incremental feeding -----------------------------------------------------------------------------------

HEADERS = [
    build_v1("192.168.0.1", 56324, "192.168.0.11", 443),
    f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
    b"PROXY UNKNOWN\r\n",
    f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
    build_v2("10.1.2.3", 40000, "10.0.0.1", 993),
    build_v2("2001:db8::1", 1, "2001:db8::2", 2, tlvs=b"\x05\x00\x04uid1"),
    build_v2(None),
    build_v2(None, tlvs=b"\x04\x00\x00"),
]


@pytest.mark.parametrize("header", HEADERS)
def test_byte_at_a_time(header: bytes):
    stream = header + b"\x16\x03\x01\x00\xa5\x01"
    for k in range(len(header)):
        assert parse_proxy_header(stream[:k]) is None, k
    for k in range(len(header), len(stream) + 1):
        parsed = parse_proxy_header(stream[:k])
        assert parsed is not None and parsed[1] == len(header)


# --- properties --------------------------------------------------------------------------------------------

ports = st.integers(0, 65535)


@st.composite
def endpoints(draw):
    version = draw(st.sampled_from([4, 6]))
    return draw(st.ip_addresses(v=version)), draw(ports), draw(st.ip_addresses(v=version)), draw(ports)


@given(endpoints(), st.binary(max_size=64))
def test_v1_round_trip(ends, tail: bytes):
    src, sport, dst, dport = ends
    header = build_v1(str(src), sport, str(dst), dport)
    assert len(header) <= 104
    info, size = parse_proxy_header(header + tail)
    assert info == ProxyInfo(str(src), sport, str(dst), dport, 1)
    assert size == len(header)


@given(endpoints(), st.binary(max_size=300), st.binary(max_size=64))
def test_v2_round_trip(ends, tlvs: bytes, tail: bytes):
    src, sport, dst, dport = ends
    header = build_v2(str(src), sport, str(dst), dport, tlvs=tlvs)
    info, size = parse_proxy_header(header + tail)
    assert info == ProxyInfo(str(src), sport, str(dst), dport, 2)
    assert ipaddress.ip_address(info.source) == src and ipaddress.ip_address(info.destination) == dst
    assert size == len(header) == 16 + (12 if src.version == 4 else 36) + len(tlvs)


@given(st.binary(max_size=64), st.binary(max_size=64))
def test_v2_local_round_trip(tlvs: bytes, tail: bytes):
    header = build_v2(None, tlvs=tlvs)
    assert parse_proxy_header(header + tail) == (ProxyInfo(None, None, None, None, 2), 16 + len(tlvs))


@st.composite
def mutated_headers(draw):
    """A valid header with a few bytes changed, cut or extended: near misses reach deep into the parser."""
    buf = bytearray(draw(st.sampled_from(HEADERS)))
    for _ in range(draw(st.integers(0, 3))):
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(buf[:draw(st.integers(0, len(buf)))]) + draw(st.binary(max_size=40))


fuzz = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=300).map(lambda b: SIG + b),
    st.text(alphabet="PROXYTCP46UNKW0123456789.:abcdef%- \r\n\x00", max_size=120).map(lambda s: b"PROXY " + s.encode()),
    mutated_headers(),
)


@settings(max_examples=500)
@given(fuzz)
def test_parse_arbitrary_bytes(buf: bytes):
    try:
        parsed = parse_proxy_header(buf)
    except ProxyHeaderError:
        return
    if parsed is None:
        return
    info, size = parsed
    assert 0 < size <= len(buf)
    assert info.version in (1, 2)
    assert parse_proxy_header(buf[:size]) == parsed          # the header alone says the same
    assert (info.source is None) == (info.destination is None) == (info.source_port is None)


# --- senders and trust ---------------------------------------------------------------------------------------


def test_build_exact_bytes():
    assert build_v1("::1", 1, "::2", 2) == b"PROXY TCP6 ::1 ::2 1 2\r\n"
    assert build_v2(None) == SIG + b"\x20\x00\x00\x00"
    assert build_v2("1.2.3.4", 258, "5.6.7.8", 2) == SIG + b"\x21\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x01\x02\x00\x02"


@pytest.mark.parametrize("call", [
    lambda: build_v1("1.2.3.4", 1, "::1", 2),
    lambda: build_v1("1.2.3.4", 65536, "5.6.7.8", 2),
    lambda: build_v1("1.2.3.4", 1, "5.6.7.8", -1),
    lambda: build_v1("fe80::1%eth0", 1, "fe80::2", 2),
    lambda: build_v1("example.org", 1, "5.6.7.8", 2),
    lambda: build_v2("::1", 1, "1.2.3.4", 2),
    lambda: build_v2("1.2.3.4", 1),
    lambda: build_v2("1.2.3.4", 1, "5.6.7.8", 2, tlvs=bytes(0x10000)),
])
def test_build_refuses_what_it_cannot_express(call):
    with pytest.raises(ValueError):
        call()


NETS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")]


@pytest.mark.parametrize(("peer", "expected"), [
    ("10.0.0.1", True),
    ("10.255.255.255", True),
    ("11.0.0.1", False),
    ("::ffff:10.0.0.1", True),       # a dual-stack listener's view of an IPv4 proxy
    ("::ffff:11.0.0.1", False),
    ("2001:db8::5", True),
    ("2001:db9::5", False),
    ("::a00:1", False),              # IPv4-compatible, not mapped: not IPv4
    ("", False),
    ("not-an-address", False),
])
def test_trusted(peer: str, expected: bool):
    assert trusted(peer, NETS) is expected


def test_trusted_never_mixes_versions():
    # Only a mapped address crosses families: 10.0.0.1 and ::a00:1 share an integer, not a network.
    assert not trusted("10.0.0.1", [ipaddress.ip_network("::/96")])
    assert not trusted("::a00:1", [ipaddress.ip_network("0.0.0.0/0")])
    assert not trusted("10.0.0.1", [])
    assert trusted("::ffff:10.0.0.1", [ipaddress.ip_network("::ffff:0:0/96")])


# --- the socket shell ----------------------------------------------------------------------------------------


@pytest.fixture
def tcp_pair():
    """(accepted non-blocking server socket, blocking client socket) over loopback TCP."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    yield server, client
    server.close()
    client.close()


async def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while len(data) < count:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, count - len(data)), 2)
        assert chunk, "EOF"
        data += chunk
    return data


def _no_reader_left(sock: socket.socket) -> bool:
    return asyncio.get_running_loop().remove_reader(sock.fileno()) is False


TRAILER = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + bytes(range(256))  # a ClientHello's first bytes


@pytest.mark.parametrize("header", HEADERS[:1] + HEADERS[3:6])
async def test_socket_takes_only_the_header(tcp_pair, header: bytes):
    server, client = tcp_pair
    client.sendall(header + TRAILER)
    await asyncio.sleep(0.05)  # all of it in the kernel buffer before the first peek
    info = await read_proxy_header(server)
    assert info == parse_proxy_header(header)[0]
    assert await _recv_exactly(server, len(TRAILER)) == TRAILER
    assert _no_reader_left(server)


async def test_transport_created_afterwards_sees_the_trailer(tcp_pair):
    server, client = tcp_pair
    client.sendall(build_v2("203.0.113.9", 51000, "192.0.2.1", 993) + TRAILER)
    info = await read_proxy_header(server)
    assert (info.source, info.source_port) == ("203.0.113.9", 51000)

    loop = asyncio.get_running_loop()
    received = bytearray()
    done = loop.create_future()

    class Collect(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.extend(data)
            if len(received) >= len(TRAILER) and not done.done():
                done.set_result(None)

    transport, _ = await loop.connect_accepted_socket(Collect, server)
    try:
        await asyncio.wait_for(done, 2)
        assert bytes(received) == TRAILER
    finally:
        transport.close()


async def test_socket_split_writes(tcp_pair):
    server, client = tcp_pair
    header = build_v1("198.51.100.7", 4242, "192.0.2.1", 143)
    client.sendall(header[:9])
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, client.sendall, header[9:30])
    loop.call_later(0.2, client.sendall, header[30:] + b"A1 CAPABILITY\r\n")
    started = time.monotonic()
    info = await read_proxy_header(server, timeout=3)
    assert time.monotonic() - started >= 0.15
    assert info == ProxyInfo("198.51.100.7", 4242, "192.0.2.1", 143, 1)
    assert await _recv_exactly(server, 15) == b"A1 CAPABILITY\r\n"
    assert _no_reader_left(server)


async def test_socket_byte_at_a_time(tcp_pair):
    server, client = tcp_pair
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = build_v2("2001:db8::42", 1234, "2001:db8::1", 995, tlvs=b"\x02\x00\x03a.b")

    async def trickle() -> None:
        for i in range(len(header)):
            client.sendall(header[i:i + 1])
            await asyncio.sleep(0.002)
        client.sendall(b"USER x\r\n")

    writer = asyncio.create_task(trickle())
    info = await read_proxy_header(server, timeout=5)
    await writer
    assert info == ProxyInfo("2001:db8::42", 1234, "2001:db8::1", 995, 2)
    assert await _recv_exactly(server, 8) == b"USER x\r\n"


async def test_socket_timeout(tcp_pair):
    server, client = tcp_pair
    client.sendall(b"PROXY TCP4 1.2.3.4 ")
    started = time.monotonic()
    with pytest.raises(ProxyHeaderError, match="timed out"):
        await read_proxy_header(server, timeout=0.2)
    assert 0.15 <= time.monotonic() - started < 2
    assert _no_reader_left(server)


async def test_socket_silent_client_times_out(tcp_pair):
    server, _ = tcp_pair
    with pytest.raises(ProxyHeaderError, match="timed out"):
        await read_proxy_header(server, timeout=0.1)
    assert _no_reader_left(server)


@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 1.2.3.4 5.6", build_v2("1.2.3.4", 1, "5.6.7.8", 2)[:20]])
async def test_socket_eof_before_complete_header(tcp_pair, sent: bytes):
    server, client = tcp_pair
    client.sendall(sent)
    client.shutdown(socket.SHUT_WR)
    with pytest.raises(ProxyHeaderError, match="closed"):
        await read_proxy_header(server, timeout=2)
    assert _no_reader_left(server)


async def test_socket_not_a_proxy_is_refused_at_once(tcp_pair):
    server, client = tcp_pair
    client.sendall(b"A1 LOGIN alice secret\r\n")
    started = time.monotonic()
    with pytest.raises(ProxyHeaderError, match="not a PROXY"):
        await read_proxy_header(server, timeout=5)
    assert time.monotonic() - started < 1


async def test_socket_cancellation_removes_the_reader(tcp_pair):
    server, _ = tcp_pair
    task = asyncio.create_task(read_proxy_header(server, timeout=5))
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _no_reader_left(server)


async def test_socket_must_be_non_blocking(tcp_pair):
    server, _ = tcp_pair
    server.setblocking(True)
    with pytest.raises(ValueError, match="non-blocking"):
        await read_proxy_header(server)
