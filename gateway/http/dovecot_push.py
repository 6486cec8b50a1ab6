"""``POST /casgate/dovecot-push``: where Dovecot's push_notification plugin reports a changed folder.

Only peers in ``[activesync] dovecot_push_from`` get in (and only with the
shared secret when one is set); the route does not exist when that list is
empty. A request relayed by a proxy (one that says so in Forwarded or
X-Forwarded-For) is refused whatever its peer address: Dovecot talks to the
gateway directly, and a proxy on the same host must not open this door to
the world.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..services.dovecot_push import MAX_BODY, DovecotPush, NotificationError, Senders
from .app import CTX

__all__ = ["PATH", "RECEIVER", "register", "receiver_for"]

log = logging.getLogger("casgate.push.dovecot")
PATH = "/casgate/dovecot-push"
RECEIVER = web.AppKey("dovecot_push", DovecotPush)
_RELAYED = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def receiver_for(app: web.Application) -> DovecotPush:
    """The app's receiver, made from its context's config."""
    ctx = app[CTX]
    cfg = ctx.config.activesync
    return DovecotPush(ctx.bus, Senders(cfg.dovecot_push_from, cfg.dovecot_push_secret_value(ctx.config)),
                       on_result=lambda result: ctx.metrics.dovecot_push.labels(result).inc())


def register(app: web.Application, receiver: DovecotPush | None = None) -> None:
    if receiver is None and not app[CTX].config.activesync.dovecot_push_from:
        return  # off: nothing of it is built (an app for EWS tests has no bus)
    receiver = receiver if receiver is not None else receiver_for(app)
    if not receiver.senders.enabled:
        return
    app[RECEIVER] = receiver
    app.router.add_post(PATH, notify)


async def notify(request: web.Request) -> web.Response:
    receiver = request.app[RECEIVER]
    if any(h in request.headers for h in _RELAYED) or not receiver.senders.allows(
            request.remote, request.headers.get("Authorization", "")):
        receiver.refused()
        log.warning("push notification refused", extra={"event": "dovecot-push", "client": request.remote or "-"})
        raise web.HTTPForbidden(text="not an allowed sender\n")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
    body = await request.content.read(MAX_BODY + 1)
    try:
        await receiver.receive(body)
    except NotificationError as exc:
        raise web.HTTPBadRequest(text=f"{exc}\n") from None
    return web.Response(status=204)
