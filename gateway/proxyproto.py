"""The HAProxy PROXY protocol (v1 text, v2 binary): who the client really is, as told by a trusted load balancer.

``parse_proxy_header`` is the pure core (bytes in, ``ProxyInfo`` and a length
out); ``read_proxy_header`` is the shell that takes exactly the header off a
freshly accepted socket and leaves whatever follows (a TLS ClientHello, an
IMAP command) in the kernel buffer for the transport created afterwards.
The builders serve tests and benchmark clients that play the load balancer.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MAX_HEADER", "ProxyHeaderError", "ProxyInfo", "build_v1", "build_v2", "parse_proxy_header",
           "read_proxy_header", "trusted"]

MAX_HEADER = 4096  # we refuse v2 headers whose total length exceeds this

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LINE = 107  # spec 2.1: the longest line ("PROXY UNKNOWN" + two full IPv6 + ports), CRLF included
_V2_FIXED = 16     # signature, version/command, family/transport, length

_LOCAL, _PROXY = 0x20, 0x21  # version 2 in the high nibble, command in the low one
# family/transport byte -> address bytes it needs, for the PROXY command.  AF_UNSPEC (0x00) and
# UNIX stream (0x31) are accepted with no addresses: the spec lets a receiver fall back to UNSPEC.
_V2_ADDRESS_LEN = {0x00: 0, 0x11: 12, 0x21: 36, 0x31: 216}
_V2_DGRAM = {0x12, 0x22, 0x32}
_V1_PROTOCOLS = (b"TCP4", b"TCP6", b"UNKNOWN")
_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")  # decimal, no heading zeroes (spec 2.1)


class ProxyHeaderError(ValueError):
    """Malformed or unsupported PROXY header; the connection must be dropped."""


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """The original connection's endpoints; addresses are None when the proxy sent none we use
    (v1 UNKNOWN, v2 LOCAL, AF_UNSPEC, AF_UNIX): the socket's own peer then stands."""

    source: str | None
    source_port: int | None
    destination: str | None
    destination_port: int | None
    version: int


_NO_ADDRESS_V1 = ProxyInfo(None, None, None, None, 1)
_NO_ADDRESS_V2 = ProxyInfo(None, None, None, None, 2)


# --- the pure core ----------------------------------------------------------------------------------------


def parse_proxy_header(buf: bytes) -> tuple[ProxyInfo, int] | None:
    """Parse a PROXY header at the start of buf. Return (info, number of bytes it occupies) when complete,
    None when buf is a valid prefix that needs more bytes, raise ProxyHeaderError when buf cannot start a
    valid header."""
    if buf.startswith(V2_SIGNATURE):
        return _parse_v2(buf)
    if buf.startswith(V1_SIGNATURE):
        return _parse_v1(buf)
    if V2_SIGNATURE.startswith(buf) or V1_SIGNATURE.startswith(buf):
        return None
    raise ProxyHeaderError(f"not a PROXY protocol header (first byte 0x{buf[0]:02x})")


def _parse_v1(buf: bytes) -> tuple[ProxyInfo, int] | None:
    end = buf.find(b"\r\n", 0, V1_MAX_LINE)
    if end < 0:
        _check_v1_prefix(buf[:V1_MAX_LINE])
        # CRLF must end by byte 107: a longer buffer is hopeless, and so is one of 106 unless its
        # last byte is the CR.
        if len(buf) >= V1_MAX_LINE or (len(buf) == V1_MAX_LINE - 1 and not buf.endswith(b"\r")):
            raise ProxyHeaderError(f"PROXY v1 line without CRLF in its first {V1_MAX_LINE} bytes")
        return None
    line = buf[:end]
    if _NOT_PRINTABLE.search(line):
        raise ProxyHeaderError("PROXY v1 line holds a bare CR/LF or a byte that is not printable US-ASCII")
    parts = line.split(b" ")
    if parts[1] == b"UNKNOWN":  # the spec says to ignore the rest of the line
        return _NO_ADDRESS_V1, end + 2
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyHeaderError("PROXY v1 line is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT' with single spaces")
    version = 4 if parts[1] == b"TCP4" else 6
    return ProxyInfo(_v1_address(parts[2], version), _v1_port(parts[4]),
                     _v1_address(parts[3], version), _v1_port(parts[5]), 1), end + 2


def _check_v1_prefix(head: bytes) -> None:
    """Reject an unfinished v1 line as soon as it cannot become valid: a client that is not a proxy
    should learn so from its first bytes rather than after the timeout."""
    body = head[:-1] if head.endswith(b"\r") else head  # that CR may yet be followed by its LF
    if _NOT_PRINTABLE.search(body):
        raise ProxyHeaderError("PROXY v1 line holds a bare CR/LF or a byte that is not printable US-ASCII")
    word, space, _ = body[len(V1_SIGNATURE):].partition(b" ")
    if not any(p == word if space else p.startswith(word) for p in _V1_PROTOCOLS):
        raise ProxyHeaderError("PROXY v1 protocol is not TCP4, TCP6 or UNKNOWN")


def _v1_address(text: bytes, version: int) -> str:
    try:
        # IPv6Address would take a scope ("fe80::1%eth0"), which no proxy may send.
        addr = ipaddress.ip_address(text.decode("ascii")) if b"%" not in text else None
    except ValueError:
        addr = None
    if addr is None or addr.version != version:
        raise ProxyHeaderError(f"PROXY v1 address {text!r} is not an IPv{version} address")
    return str(addr)


def _v1_port(text: bytes) -> int:
    if _PORT.fullmatch(text) is None or int(text) > 0xFFFF:
        raise ProxyHeaderError(f"PROXY v1 port {text!r} is not a decimal number from 0 to 65535")
    return int(text)


def _parse_v2(buf: bytes) -> tuple[ProxyInfo, int] | None:
    have = len(buf)
    if have > 12 and buf[12] not in (_LOCAL, _PROXY):
        if buf[12] >> 4 != 2:
            raise ProxyHeaderError(f"PROXY v2 signature with version {buf[12] >> 4}, not 2")
        raise ProxyHeaderError(f"PROXY v2 command 0x{buf[12] & 0xF:x} is neither LOCAL nor PROXY")
    proxy = have > 12 and buf[12] == _PROXY
    if proxy and have > 13 and buf[13] not in _V2_ADDRESS_LEN:
        if buf[13] in _V2_DGRAM:
            raise ProxyHeaderError("PROXY v2 header for a datagram connection on a stream listener")
        raise ProxyHeaderError(f"PROXY v2 family/transport 0x{buf[13]:02x} is not supported")
    if have < _V2_FIXED:
        return None
    length = int.from_bytes(buf[14:16], "big")
    total = _V2_FIXED + length
    if total > MAX_HEADER:
        raise ProxyHeaderError(f"PROXY v2 header of {total} bytes exceeds our limit of {MAX_HEADER}")
    if proxy and length < _V2_ADDRESS_LEN[buf[13]]:
        raise ProxyHeaderError(f"PROXY v2 address block of {length} bytes is too short for family "
                               f"0x{buf[13]:02x}")
    if have < total:
        return None
    # The spec says LOCAL ignores the family; TLVs after the addresses are skipped with the length.
    if not proxy or buf[13] in (0x00, 0x31):
        return _NO_ADDRESS_V2, total
    if buf[13] == 0x11:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", buf, _V2_FIXED)
    else:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", buf, _V2_FIXED)
    return ProxyInfo(str(ipaddress.ip_address(src)), sport, str(ipaddress.ip_address(dst)), dport, 2), total


# --- senders (tests and benchmark clients) ---------------------------------------------------------------


def build_v1(source: str, source_port: int, destination: str, destination_port: int) -> bytes:
    """The v1 line a proxy would send for a TCP connection from source to destination."""
    src, dst = _pair(source, destination)
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {_port(source_port)} {_port(destination_port)}\r\n".encode("ascii")


def build_v2(source: str | None, source_port: int = 0, destination: str | None = None,
             destination_port: int = 0, tlvs: bytes = b"") -> bytes:
    """A v2 header: PROXY over TCP for the given endpoints, or LOCAL (a health check) when source is None.
    ``tlvs`` is appended raw after the addresses."""
    if source is None:
        command, family, block = _LOCAL, 0x00, b""
    else:
        if destination is None:
            raise ValueError("build_v2 needs a destination along with a source")
        src, dst = _pair(source, destination)
        command, family = _PROXY, 0x11 if src.version == 4 else 0x21
        block = src.packed + dst.packed + struct.pack("!HH", _port(source_port), _port(destination_port))
    body = block + tlvs
    if len(body) > 0xFFFF:
        raise ValueError(f"PROXY v2 body of {len(body)} bytes does not fit its 16-bit length")
    return V2_SIGNATURE + bytes((command, family)) + len(body).to_bytes(2, "big") + body


def _pair(source: str, destination: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    if src.version != dst.version:
        raise ValueError(f"{source} and {destination} are not of the same address family")
    if any(getattr(a, "scope_id", None) for a in (src, dst)):
        raise ValueError("the PROXY protocol carries no IPv6 scope")
    return src, dst


def _port(port: int) -> int:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is not from 0 to 65535")
    return port


def trusted(peer_ip: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether a peer may send a PROXY header: its address lies in one of networks.  An IPv4-mapped
    IPv6 peer (a dual-stack listener's view of an IPv4 client) is also matched against IPv4 networks."""
    try:
        addr = ipaddress.ip_address(peer_ip)
    except ValueError:  # an AF_UNIX peer, say: not an address a network can vouch for
        return False
    candidates = [addr]
    if addr.version == 6 and addr.ipv4_mapped is not None:
        candidates.append(addr.ipv4_mapped)
    return any(a in net for net in networks for a in candidates)


# --- the asyncio shell ------------------------------------------------------------------------------------


async def read_proxy_header(sock: socket.socket, timeout: float = 5.0) -> ProxyInfo:
    """Take the PROXY header off a freshly accepted non-blocking socket and nothing after it.

    ``timeout`` bounds the whole header, however many reads it takes.  Raises ProxyHeaderError on a
    malformed header, on EOF before a complete one and on timeout; other socket errors propagate.
    """
    if sock.getblocking():
        raise ValueError("read_proxy_header needs a non-blocking socket")
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await _take_header(sock)
    except TimeoutError:
        if deadline.expired():
            raise ProxyHeaderError(f"timed out: no complete PROXY header within {timeout:g} s") from None
        raise


async def _take_header(sock: socket.socket) -> ProxyInfo:
    loop = asyncio.get_running_loop()
    taken = b""  # bytes already consumed: all of them belong to the unfinished header
    while True:
        try:
            peeked = sock.recv(MAX_HEADER - len(taken), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock.fileno())
            continue
        if not peeked:
            raise ProxyHeaderError(f"connection closed after {len(taken)} bytes of an incomplete PROXY header")
        buf = taken + peeked
        parsed = parse_proxy_header(buf)
        if parsed is None:
            # Peeked bytes stay readable, so peeking again would spin; as they are all header, take them.
            _consume(sock, len(peeked))
            taken = buf
            continue
        info, size = parsed
        _consume(sock, size - len(taken))
        return info


def _consume(sock: socket.socket, count: int) -> None:
    while count > 0:  # the bytes were peeked, so they are there and recv cannot block
        chunk = sock.recv(count)
        if not chunk:
            raise ProxyHeaderError("connection closed while its PROXY header was being taken")
        count -= len(chunk)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    waiter = loop.create_future()
    loop.add_reader(fd, _wake, waiter)
    try:
        await waiter
    finally:
        loop.remove_reader(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
