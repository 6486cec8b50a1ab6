"""Listeners: HTTPS, IMAP and POP3 sockets with TLS (implicit or upgraded), graceful start and stop.

The listeners know no protocol grammar: they hand each connection to a
front end's shell.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass, field

from aiohttp import web

from .context import GatewayContext
from .http.app import build_app
from .imap.preauth import ImapPreAuth
from .lineproto import LineShell
from .pop3.preauth import Pop3PreAuth

log = logging.getLogger("casgate.server")


class StartupError(Exception):
    """A listener could not be opened; the message says which and why."""


def install_event_loop(ssl_read_buffer: int = 16384) -> str:
    """Use uvloop where it installs; otherwise shrink stock asyncio's per-connection TLS read buffer.

    Stock asyncio allocates a 256 KiB buffer for every TLS connection, which
    dominates the cost of a held connection (a phone's Ping lasts up to an hour).
    """
    try:
        import uvloop
    except ImportError:
        from asyncio import sslproto
        sslproto.SSLProtocol.max_size = ssl_read_buffer
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


@dataclass
class Listeners:
    """The gateway's open sockets."""

    ctx: GatewayContext
    runner: web.AppRunner | None = None
    redirect_runner: web.AppRunner | None = None  # plain-HTTP autodiscover redirect, when configured
    servers: list[asyncio.AbstractServer] = field(default_factory=list)
    bound: dict[str, int] = field(default_factory=dict)

    async def start(self) -> None:
        cfg = self.ctx.config.server
        host = cfg.listen
        try:
            self.runner = web.AppRunner(build_app(self.ctx), access_log=None, handle_signals=False,
                                        shutdown_timeout=cfg.shutdown_grace)
            await self.runner.setup()
            site = web.TCPSite(self.runner, host, cfg.https_port, ssl_context=self.ctx.ssl_context,
                               backlog=1024, reuse_address=True)
            await self._bind("https", cfg.https_port, site.start())
            self.bound["https"] = _port_of(site._server) or cfg.https_port  # type: ignore[attr-defined]
            if http_port := self.ctx.config.autodiscover.http_port:
                from .autodiscover import build_redirect_app
                self.redirect_runner = web.AppRunner(build_redirect_app(self.ctx), access_log=None,
                                                     handle_signals=False, shutdown_timeout=2)
                await self.redirect_runner.setup()
                plain = web.TCPSite(self.redirect_runner, host, http_port, reuse_address=True)
                await self._bind("autodiscover-http", http_port, plain.start(), "autodiscover.http_port")
                self.bound["autodiscover_http"] = _port_of(plain._server) or http_port  # type: ignore[attr-defined]
            line_listeners = [
                ("imap", cfg.imap_port, lambda tls_on: ImapPreAuth(tls_on), False),
                ("imaps", cfg.imaps_port, lambda tls_on: ImapPreAuth(tls_on), True),
                ("pop3", cfg.pop3_port, lambda tls_on: Pop3PreAuth(tls_on), False),
                ("pop3s", cfg.pop3s_port, lambda tls_on: Pop3PreAuth(tls_on), True),
            ]
            for name, port, make_core, implicit in line_listeners:
                if not port:
                    continue
                shell = LineShell(name, make_core, self.ctx.ssl_context, self.ctx.metrics, implicit_tls=implicit)
                server = await self._bind(name, port, asyncio.start_server(
                    shell, host, port, ssl=self.ctx.ssl_context if implicit else None, backlog=1024,
                    reuse_address=True, limit=64 * 1024))
                self.servers.append(server)
                self.bound[name] = _port_of(server) or port
        except BaseException:
            await self.stop()
            raise
        log.info("listening", extra={"event": "listening", "host": host,
                                     **{f"{k}_port": v for k, v in self.bound.items()}})

    async def _bind(self, name: str, port: int, coro, key: str = ""):
        try:
            return await coro
        except OSError as exc:
            host = self.ctx.config.server.listen
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"cannot listen for {name} on {host}:{port}: the port is already in use "
                                   f"(set {key or f'server.{name}_port'}, or --port-base for the demo)") from None
            if exc.errno == errno.EACCES:
                raise StartupError(f"cannot listen for {name} on {host}:{port}: permission denied") from None
            raise StartupError(f"cannot listen for {name} on {host}:{port}: {exc.strerror}") from None

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass
        self.servers.clear()
        if self.redirect_runner is not None:
            await self.redirect_runner.cleanup()
            self.redirect_runner = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def _port_of(server) -> int | None:
    try:
        return server.sockets[0].getsockname()[1]
    except (AttributeError, IndexError, TypeError):
        return None


async def serve_until(ctx: GatewayContext, stop: asyncio.Event) -> None:
    """Open the listeners, wait for ``stop``, close them."""
    listeners = Listeners(ctx)
    await listeners.start()
    try:
        await stop.wait()
    finally:
        await listeners.stop()
