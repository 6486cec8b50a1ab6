"""POP3 after login: open the user's mail store, lock the maildrop, serve the transaction through the MailStore."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from adapters.errors import BackendError, BackendUnavailable
from adapters.interfaces import Credentials, UserRecord

from ..context import GatewayContext
from ..lineproto import LoginRequest
from ..mailfront import ClientSession, checked_login
from .maildrop import MaildropLocks, Pop3Maildrop

log = logging.getLogger("casgate.session")


class Pop3Service:
    """The POP3 login handler: the login is checked by opening the user's mail store with it."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.settings = ctx.config.pop3
        self.locks = MaildropLocks(ctx.state, ttl=self.settings.idle_timeout + 300)

    async def login(self, session: ClientSession, request: LoginRequest) -> bool:
        async with AsyncExitStack() as stack:

            async def attempt(user: UserRecord, backend: str, creds: Credentials):
                store = self.ctx.backends.mail_store(backend, creds, session.client_ip)
                await store.start(stack)
                return store

            opened = await checked_login(session, request, lambda: self.ctx.auth.login_with(
                request.username, request.password, session.client_ip, attempt))
            if opened is None:
                return False
            user, store = opened
            if not await self.locks.acquire(user.address):
                session.end = "in-use"
                return False
            stack.push_async_callback(self.locks.release, user.address)
            session.user = user.address
            maildrop = Pop3Maildrop(store, folder=self.settings.folder, max_line=self.settings.max_line,
                                    on_update=lambda: self.locks.release(user.address),
                                    read_ahead=self.settings.read_ahead)
            try:
                greeting = await maildrop.open()
            except (BackendUnavailable, BackendError) as exc:
                self._unavailable(session, user.address, exc)
                return False
            session.writer.write(greeting)
            session.end = await maildrop.serve(session.reader, session.writer, session.pending_input(),
                                               idle_timeout=self.settings.idle_timeout)
            return True

    def _unavailable(self, session: ClientSession, who: str, exc: Exception) -> None:
        log.warning("back end unavailable", extra={"event": "backend-unavailable", "client": session.client_ip,
                                                    "user": who[:200], "error": str(exc)[:200]})
        session.end = "unavailable"
