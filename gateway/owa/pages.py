"""The web app's pages: sign-in and sign-out, and the mailbox's folder tree with unread counts.

Every answer under /owa/ carries a strict Content-Security-Policy (nothing
inline, nothing from elsewhere, no framing) and is not cached; every
state-changing request carries a CSRF token (the session's, or before sign-in
a double-submit cookie), and sign-in goes through the authentication service,
so its back-off applies here as everywhere.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
from pathlib import Path
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import jinja2
from aiohttp import web

from adapters.errors import AuthenticationFailed, BackendError, BackendUnavailable, NotFound
from adapters.imap import ImapMailStore
from adapters.interfaces import Credentials, Envelope

from ..http.app import CTX
from ..http.basic_auth import client_ip
from ..services.auth import LoginThrottled
from ..services.mailsessions import MailSessions
from . import reading_pages, sending
from .sessions import WebSession, WebSessions

log = logging.getLogger("casgate.owa")
HERE = Path(__file__).parent
COOKIE = "casgate-owa"
PRE_COOKIE = "casgate-owa-signin"  # the sign-in form's double-submit CSRF token
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'")
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                          trim_blocks=True, lstrip_blocks=True)
OWA = web.AppKey("owa", object)
_MAX_FORM = 16 * 1024
PAGE_SIZE = 50  # messages per page of a message list


class _Owa:
    def __init__(self, app: web.Application) -> None:
        ctx = app[CTX]
        cfg = ctx.config.owa
        self.ctx = ctx
        self.sessions = WebSessions(ctx.state, cfg.session_idle, cfg.session_lifetime)
        self.mail = MailSessions(ctx.backends, ctx.config.activesync.mail_idle_close)


def register(app: web.Application) -> None:
    if not app[CTX].config.owa.enabled:
        return
    app[OWA] = _Lazy()
    app.on_cleanup.append(_stop)
    app.middlewares.append(_headers)
    app.router.add_get("/owa", _to_home)
    app.router.add_get("/owa/", home)
    app.router.add_get("/owa/signin", signin_form)
    app.router.add_post("/owa/signin", signin)
    app.router.add_post("/owa/signout", signout)
    app.router.add_get("/owa/message", reading_pages.message)
    app.router.add_get("/owa/message/body", reading_pages.body)
    app.router.add_post("/owa/message/action", reading_pages.act)
    app.router.add_post("/owa/message/trust", reading_pages.trust_sender)
    app.router.add_get("/owa/compose", sending.compose_form)
    app.router.add_post("/owa/send", sending.send)
    app.router.add_get("/owa/attachment", reading_pages.attachment)
    app.router.add_static("/owa/static/", HERE / "static", append_version=False)


async def _to_home(request: web.Request) -> web.Response:
    return _redirect("/owa/")


class _Lazy:
    """The web app's services, made at its first request (test apps that never serve /owa/ need none)."""

    def __init__(self) -> None:
        self.made: _Owa | None = None

    def get(self, app: web.Application) -> _Owa:
        if self.made is None:
            self.made = _Owa(app)
        return self.made


def _owa(request: web.Request) -> _Owa:
    return request.app[OWA].get(request.app)


async def _stop(app: web.Application) -> None:
    if app[OWA].made is not None:
        await app[OWA].made.mail.close()


@web.middleware
async def _headers(request: web.Request, handler) -> web.StreamResponse:
    if not request.path.startswith("/owa"):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
        _secure(response, request.path)
        raise
    _secure(response, request.path)
    return response


def _secure(response: web.StreamResponse, path: str) -> None:
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("X-Frame-Options", "DENY")
    if not path.startswith("/owa/static/"):
        h.setdefault("Cache-Control", "no-store")


def render(template: str, status: int = 200, **values) -> web.Response:
    return web.Response(status=status, text=_ENV.get_template(template).render(**values),
                        content_type="text/html", charset="utf-8")


def _redirect(to: str) -> web.Response:
    return web.Response(status=303, headers={"Location": to})


see = _redirect  # for the other page modules


async def _session(request: web.Request) -> WebSession | None:
    return await _owa(request).sessions.get(request.cookies.get(COOKIE))


async def form(request: web.Request, limit: int = _MAX_FORM) -> dict[str, str]:
    """A posted form's fields (at most ``limit`` bytes of it; more is refused with 413)."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    raw = b""
    while len(raw) <= limit and (chunk := await request.content.read(limit + 1 - len(raw))):
        raw += chunk
    if len(raw) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(raw))
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20))
    except (UnicodeDecodeError, ValueError):
        raise web.HTTPBadRequest(text="the form could not be read\n") from None


# --- sign-in and sign-out ------------------------------------------------------------------------------------

async def signin_form(request: web.Request) -> web.Response:
    if await _session(request) is not None:
        return _redirect("/owa/")
    return _signin_page(request)


def _signin_page(request: web.Request, error: str = "", address: str = "", status: int = 200) -> web.Response:
    token = secrets.token_urlsafe(24)
    response = render("signin.html", status, csrf=token, error=error, address=address)
    response.set_cookie(PRE_COOKIE, token, path="/owa/signin", secure=True, httponly=True, samesite="Strict")
    return response


async def signin(request: web.Request) -> web.Response:
    fields = await form(request)
    sent, expected = fields.get("csrf", ""), request.cookies.get(PRE_COOKIE, "")
    if not sent or not expected or not secrets.compare_digest(sent, expected):
        return _signin_page(request, "Your sign-in form had expired. Please try again.", status=403)
    address, password = fields.get("address", "").strip(), fields.get("password", "")
    if not address or not password or len(address) > 320 or len(password) > 1024:
        return _signin_page(request, "Enter your e-mail address and password.", address[:320], 400)
    ctx = request.app[CTX]
    try:
        result = await ctx.auth.authenticate(address, password, client_ip(request))
    except LoginThrottled as exc:
        response = _signin_page(request, f"Too many failed sign-ins. Try again in {exc.retry_after} seconds.",
                                address, 429)
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    except AuthenticationFailed:
        return _signin_page(request, "The e-mail address or password is not right.", address, 401)
    except BackendUnavailable:
        return _signin_page(request, "Your mailbox cannot be reached right now. Try again later.", address, 503)
    user = result.user
    cookie, _ = await _owa(request).sessions.create(user.address, user.login, password)
    log.info("owa sign-in", extra={"event": "owa", "user": user.address, "client": client_ip(request)})
    response = _redirect("/owa/")
    response.set_cookie(COOKIE, cookie, path="/owa/", secure=True, httponly=True, samesite="Lax")
    response.del_cookie(PRE_COOKIE, path="/owa/signin")
    return response


async def signout(request: web.Request) -> web.Response:
    session = await _session(request)
    fields = await form(request)
    if session is None:
        return _redirect("/owa/signin")
    if not session.csrf_ok(fields.get("csrf")):
        raise web.HTTPForbidden(text="the request did not carry this session's token\n")
    await _owa(request).sessions.end(session.id)
    log.info("owa sign-out", extra={"event": "owa", "user": session.address})
    response = _redirect("/owa/signin")
    response.del_cookie(COOKIE, path="/owa/")
    return response


# --- mail ------------------------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def mailbox(request: web.Request) -> AsyncIterator[tuple[WebSession, ImapMailStore]]:
    """The signed-in user's session and logged-in mail store; no session (or a password the back end no
    longer takes) sends the browser to sign in; a back end that cannot be reached answers 503."""
    session = await _session(request)
    if session is None:
        raise web.HTTPSeeOther("/owa/signin")
    owa = _owa(request)
    user = owa.ctx.directory.find(session.address)
    if user is None:
        await owa.sessions.end(session.id)
        raise web.HTTPSeeOther("/owa/signin")
    backend = owa.ctx.directory.route(user, "imap")
    try:
        store = await owa.mail.store(user, backend, Credentials(session.login, session.password), client_ip(request))
        yield session, store
    except AuthenticationFailed:
        await owa.sessions.end(session.id)
        raise web.HTTPSeeOther("/owa/signin") from None
    except NotFound:
        raise web.HTTPNotFound(text="there is no such message or folder\n") from None
    except BackendError as exc:
        log.warning("owa mail failed", extra={"event": "owa", "user": session.address, "error": str(exc)[:200]})
        raise web.HTTPServiceUnavailable(text="your mailbox cannot be reached right now\n",
                                         headers={"Retry-After": "30"}) from None


async def home(request: web.Request) -> web.Response:
    current = request.query.get("folder", "INBOX")
    page = _page_number(request.query.get("page", "0"))
    async with mailbox(request) as (session, store):
        folders = await store.list_folders()
        unseen = {f.name: (await store.status(f.name)).unseen for f in folders
                  if "\\Noselect" not in f.flags and "\\NonExistent" not in f.flags}
        if current not in unseen:
            raise web.HTTPNotFound(text="there is no such folder\n")
        total, messages = await store.page(current, page * PAGE_SIZE, PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))
    return render("mail.html", address=session.address, csrf=session.csrf, current=current,
                 folders=_tree([(f.name, f.delimiter, unseen.get(f.name, 0)) for f in folders]),
                 messages=[_row(m) for m in messages], total=total, page=page, pages=pages,
                 first=page * PAGE_SIZE + 1 if messages else 0, last=page * PAGE_SIZE + len(messages))


def _page_number(text: str) -> int:
    return min(int(text), 10_000_000) if text.isdigit() else 0


def _row(m: Envelope) -> dict:
    flags = {f.lower() for f in m.flags}
    return {"uid": m.uid, "subject": m.subject or "(no subject)", "sender": m.sender_name or m.sender_address,
            "sender_address": m.sender_address, "when": _when(m.internaldate), "unread": "\\seen" not in flags,
            "flagged": "\\flagged" in flags, "answered": "\\answered" in flags}


def _when(internaldate: str | None) -> str:
    """An IMAP INTERNALDATE ("17-Jul-1996 02:44:25 -0700") as "1996-07-17 02:44", or as it came."""
    if not internaldate:
        return ""
    try:
        return dt.datetime.strptime(internaldate, "%d-%b-%Y %H:%M:%S %z").strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return internaldate


def _tree(folders: list[tuple[str, str, int]]) -> list[dict]:
    """Nested nodes (name, label, unseen, children, selectable) from flat folder names, INBOX first, then by
    name; a parent the server does not list (it only holds folders) is shown, not linked."""
    roots: list[dict] = []
    nodes: dict[str, dict] = {}

    def place(name: str, delimiter: str, unseen: int, selectable: bool) -> dict:
        if name in nodes:
            if selectable:  # listed after a child made a holder for it
                nodes[name].update(unseen=unseen, selectable=True)
            return nodes[name]
        parent, _, label = name.rpartition(delimiter) if delimiter else ("", "", name)
        node = {"name": name, "label": label or name, "unseen": unseen, "children": [], "selectable": selectable}
        nodes[name] = node
        (place(parent, delimiter, 0, False)["children"] if parent else roots).append(node)
        return node

    for name, delimiter, unseen in sorted(folders, key=lambda f: (f[0].upper() != "INBOX", f[0].lower())):
        place(name, delimiter, unseen, True)
    return roots
