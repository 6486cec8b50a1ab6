"""Listeners: HTTPS, IMAP and POP3 sockets with TLS (implicit or upgraded), graceful start and stop.

The listeners know no protocol grammar: they hand each connection to a
front end's shell.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from dataclasses import dataclass, field

from aiohttp import web

from .context import GatewayContext
from .http.app import build_app
from .imap.preauth import ImapPreAuth
from .imap.proxy import ImapProxy
from .mailfront import MailFront
from .pop3.preauth import Pop3PreAuth
from .pop3.session import Pop3Service

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


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one: each held connection (a phone's Ping lasts up to an
    hour) is a file, and the usual soft limit of 1,024 would refuse connections long before memory runs out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit", extra={"event": "limits", "soft": soft, "hard": hard,
                                                                    "error": str(exc)})
            return soft
        log.info("open files limit raised", extra={"event": "limits", "was": soft, "now": hard})
        return hard
    return soft


@dataclass
class Listeners:
    """The gateway's open sockets."""

    ctx: GatewayContext
    runner: web.AppRunner | None = None
    redirect_runner: web.AppRunner | None = None  # plain-HTTP autodiscover redirect, when configured
    fronts: list[MailFront] = field(default_factory=list)
    imap_proxy: ImapProxy | None = None
    bound: dict[str, int] = field(default_factory=dict)

    async def start(self) -> None:
        cfg = self.ctx.config.server
        host = cfg.listen
        raise_open_files_limit()
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
            await self._start_mail_fronts(host)
        except BaseException:
            await self.stop()
            raise
        log.info("listening", extra={"event": "listening", "host": host,
                                     **{f"{k}_port": v for k, v in self.bound.items()}})

    async def _start_mail_fronts(self, host: str) -> None:
        cfg, ctx = self.ctx.config, self.ctx
        self.imap_proxy = ImapProxy(ctx)
        imap = MailFront(cfg.imap, lambda tls_on, limits, plain: ImapPreAuth(
            tls_on, limits=limits, allow_plaintext=plain), self.imap_proxy.login, ctx.ssl_context, ctx.metrics)
        pop3 = MailFront(cfg.pop3, lambda tls_on, limits, plain: Pop3PreAuth(
            tls_on, limits=limits, allow_plaintext=plain), Pop3Service(ctx).login, ctx.ssl_context, ctx.metrics)
        self.fronts += [imap, pop3]
        for name, front, port, implicit in [("imap", imap, cfg.server.imap_port, False),
                                            ("imaps", imap, cfg.server.imaps_port, True),
                                            ("pop3", pop3, cfg.server.pop3_port, False),
                                            ("pop3s", pop3, cfg.server.pop3s_port, True)]:
            if port:
                self.bound[name] = await self._bind(name, port, front.listen(name, host, port, implicit))

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
        if self.imap_proxy is not None:
            self.imap_proxy.close_all()
        for front in self.fronts:
            await front.close()
        self.fronts.clear()
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
