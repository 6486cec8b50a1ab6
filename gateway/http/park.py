"""Parking a long-held HTTP request: its connection leaves aiohttp while the answer waits.

A held ActiveSync Ping waits up to an hour, and a gateway holds tens of
thousands of them. Inside aiohttp each keeps its request objects, header
parser, handler task and coroutine frames: about 10 KB, most of a held
Ping's cost. Parked, a connection keeps only its transport and a small
protocol object (``Parked``). When the answer is ready it is written as a
plain HTTP/1.1 response, and when the client keeps the connection alive a
fresh aiohttp handler takes the connection back for its next request, as if
it had never left.

Parking needs aiohttp's handler to let the connection go without closing it:
``park`` swaps the transport's protocol, then tells the handler the
connection is gone (its transport detached first, so nothing is closed).
Where that cannot be done safely (the client pipelined another request
behind this one, the transport is not swappable) ``park`` says so and the
caller holds the request the ordinary way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from email.utils import formatdate
from typing import TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("casgate.http")

__all__ = ["Parked", "park", "parked_response", "response_bytes"]

#: Bytes a client may send on a parked connection before its answer (a pipelined next request), kept for
#: the handler that takes the connection back; more than this closes the connection.
EARLY_MAX = 64 * 1024


class _Gone(web.StreamResponse):
    """What the handler returns for a parked request: aiohttp writes nothing, the connection is elsewhere."""

    async def prepare(self, request: web.BaseRequest) -> None:  # type: ignore[override]
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def parked_response() -> web.StreamResponse:
    """What a handler returns for the request it has just parked."""
    return _Gone(status=200)


P = TypeVar("P", bound="Parked")


class Parked(asyncio.Protocol):
    """A connection waiting for its answer outside aiohttp."""

    __slots__ = ("_transport", "_server", "_keep_alive", "_http10", "_on_lost", "_early")

    def __init__(self, transport: asyncio.Transport, server: Callable[[], RequestHandler], keep_alive: bool,
                 http10: bool) -> None:
        self._transport: asyncio.Transport | None = transport
        self._server = server
        self._keep_alive = keep_alive
        self._http10 = http10
        self._on_lost: Callable[[], None] | None = None
        self._early: bytearray | None = None

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        """``callback`` runs once if the client goes away before the answer is sent."""
        self._on_lost = callback

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    # asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        if self._early is None:
            self._early = bytearray()
        self._early += data
        if len(self._early) > EARLY_MAX and self._transport is not None:
            self._transport.close()

    def eof_received(self) -> bool:
        return False  # the client has stopped sending: nobody waits for this answer any more; close

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        callback, self._on_lost = self._on_lost, None
        if callback is not None:
            callback()

    def send(self, response: web.Response) -> None:
        """Write ``response``; then hand the connection back to aiohttp (keep-alive) or close it."""
        transport, self._transport = self._transport, None
        self._on_lost = None
        if transport is None or transport.is_closing():
            return
        transport.write(response_bytes(response, self._keep_alive, self._http10))
        if not self._keep_alive:
            transport.close()
            return
        handler = self._server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._early:
            handler.data_received(bytes(self._early))
        self._early = None

    def close(self) -> None:
        """Drop the connection unanswered (the gateway is stopping)."""
        self._on_lost = None
        if self._transport is not None:
            self._transport.close()


def park(request: web.BaseRequest, make: type[P]) -> P | None:
    """Take ``request``'s connection out of aiohttp into a new ``make`` (Parked or a subclass of it), or None
    when that cannot be done safely (the request is then held the ordinary way). The handler must return ``parked_response()`` at once (no await in between) after a
    successful park; the answer goes out later through ``Parked.send``."""
    handler, transport = request.protocol, request.transport
    if type(handler) is not RequestHandler or transport is None or transport.is_closing():
        return None
    if not hasattr(transport, "set_protocol") or getattr(handler, "_messages", True) \
            or getattr(handler, "_message_tail", b"") or getattr(handler, "_upgraded", True):
        return None  # another request is queued behind this one, or aiohttp's internals are not as known
    server = getattr(handler, "_manager", None)
    if server is None or not _body_read(request):
        return None
    parked = make(transport, server, request.keep_alive, request.version < (1, 1))
    transport.set_protocol(parked)
    handler.transport = None  # so that aiohttp's goodbye below does not close the connection
    handler.connection_lost(None)
    return parked


def _body_read(request: web.BaseRequest) -> bool:
    try:
        return request.content.at_eof()
    except Exception:  # noqa: BLE001 - any doubt means: do not park
        return False


def response_bytes(response: web.Response, keep_alive: bool, http10: bool = False) -> bytes:
    """``response`` (a complete web.Response) as HTTP/1.1 bytes, with the framing headers aiohttp would add."""
    body = response.body or b""
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError("only a web.Response with a bytes body can be sent on a parked connection")
    lines = [f"HTTP/1.1 {response.status} {response.reason}"]
    skip = {"content-length", "connection", "transfer-encoding", "date", "server"}
    for name, value in response.headers.items():
        if name.lower() not in skip:
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    lines.append(f"Date: {formatdate(usegmt=True)}")
    if not keep_alive:
        lines.append("Connection: close")
    elif http10:
        lines.append("Connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + bytes(body)
