"""Writing and sending mail from the web app: the compose form, and sending through the user's SMTP back end with
a copy in Sent Items.

The message is built here and then goes through the same composer as ActiveSync's SendMail (Bcc kept out of what
is sent, recipients checked, a Sent copy that keeps them). A form is sent at most once: its draft id is claimed
in the state store before sending, so a second click, or a browser resending the POST, sends nothing more.
"""

from __future__ import annotations

import logging
import re
import secrets
from email.message import EmailMessage
from email.policy import SMTP

from aiohttp import web

from adapters.errors import AuthenticationFailed, BackendError, BackendUnavailable, QuotaExceeded
from adapters.interfaces import Credentials

from ..activesync.compose import ComposeError, compose
from ..http.basic_auth import client_ip
from . import pages

log = logging.getLogger("casgate.owa")
_SENT_NS = "owa-sent"
_SENT_TTL = 7 * 24 * 3600.0
_FIELDS = ("to", "cc", "bcc", "subject", "body")
_MAX_MESSAGE_FORM = 4 * 1024 * 1024  # a long letter, with room for URL-encoding
_LINE_BREAKS = re.compile(r"[\r\n]+")


async def compose_form(request: web.Request) -> web.Response:
    async with pages.mailbox(request) as (session, _):
        return _form(session, {})


def _form(session, values: dict[str, str], error: str = "", status: int = 200) -> web.Response:
    return pages.render("compose.html", status, address=session.address, csrf=session.csrf, error=error,
                        draft=values.get("draft") or secrets.token_urlsafe(16),
                        **{name: values.get(name, "") for name in _FIELDS})


async def send(request: web.Request) -> web.Response:
    fields = await pages.form(request, limit=_MAX_MESSAGE_FORM)
    async with pages.mailbox(request) as (session, store):
        if not session.csrf_ok(fields.get("csrf")):
            raise web.HTTPForbidden(text="the request did not carry this session's token\n")
        draft = fields.get("draft", "")
        if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", draft):
            raise web.HTTPBadRequest(text="the form is not one of ours\n")
        ctx = request.app[pages.CTX]
        claim = f"{session.address}\x1f{draft}"
        if await ctx.state.kv_get(_SENT_NS, claim) is not None:
            return pages.see("/owa/")  # sent already: a second click or a resent POST sends nothing more
        user = ctx.directory.find(session.address)
        smtp = ctx.directory.route(user, "smtp") if user is not None else None
        if not smtp:
            return _form(session, fields, "No mail submission server is set up for your mailbox.", 503)
        try:
            outgoing = compose(_mime(fields), user_address=session.address,
                               display_name=user.display_name if user is not None else "")
        except ComposeError as exc:
            return _form(session, fields, f"The message cannot be sent: {exc}", 422)
        except ValueError:
            return _form(session, fields, "The message cannot be sent: check the addresses.", 422)
        await ctx.state.kv_set(_SENT_NS, claim, b"sending", ttl=_SENT_TTL)
        try:
            await ctx.backends.submission(smtp, Credentials(session.login, session.password)).send(
                outgoing.sender, outgoing.recipients, outgoing.message)
        except (BackendError, AuthenticationFailed) as exc:
            await ctx.state.kv_delete(_SENT_NS, claim)  # not sent: the same form may try again
            log.warning("owa send failed", extra={"event": "owa", "user": session.address, "error": str(exc)[:200]})
            why = ("your mailbox is over its quota" if isinstance(exc, QuotaExceeded) else
                   "the mail server cannot be reached; try again in a moment" if isinstance(
                       exc, BackendUnavailable) else f"the mail server refused it ({str(exc)[:200]})")
            return _form(session, fields, f"The message was not sent: {why}.", 502)
        log.info("owa mail sent", extra={"event": "owa-sent", "user": session.address, "client": client_ip(request),
                                         "recipients": len(outgoing.recipients), "bytes": len(outgoing.message)})
        try:  # sent: from here nothing may fail the request (the user would send it again)
            sent = next((f.name for f in await store.list_folders() if f.special_use == "\\Sent"), None)
            if sent is not None:
                await store.append(sent, outgoing.sent_copy, ["\\Seen"])
        except BackendError as exc:
            log.warning("owa sent copy failed", extra={"event": "owa", "user": session.address,
                                                       "error": str(exc)[:200]})
    return pages.see("/owa/")


def _mime(fields: dict[str, str]) -> bytes:
    """The message as the user wrote it (header fields on one line each, the text as UTF-8)."""
    msg = EmailMessage()
    for name in ("to", "cc", "bcc"):
        if value := _LINE_BREAKS.sub(" ", fields.get(name, "")).strip():
            msg[name.capitalize()] = value
    msg["Subject"] = _LINE_BREAKS.sub(" ", fields.get("subject", "")).strip()
    msg.set_content(fields.get("body", "").replace("\r\n", "\n"))
    return msg.as_bytes(policy=SMTP)
