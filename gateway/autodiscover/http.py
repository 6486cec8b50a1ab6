"""The autodiscover endpoints on the HTTPS app (POX, SOAP, JSON; any letter case) and the plain-HTTP redirect app."""

from __future__ import annotations

import logging

from aiohttp import web

from adapters.interfaces import UserRecord

from ..http.app import CTX, observe
from ..http.basic_auth import authenticate
from . import json_v1, pox, soap
from .published import Published, mailbox_of, ownership, public_base_url, public_host, published
from .user_settings import domain_values, user_values

__all__ = ["MAX_BODY", "register", "build_redirect_app"]

log = logging.getLogger("casgate.autodiscover")
MAX_BODY = 128 * 1024  # real requests are well under 4 KiB; SOAP may name up to 100 users
XML = "text/xml; charset=utf-8"
_PATHS = {"xml": r"autodiscover/autodiscover\.xml", "svc": r"autodiscover/autodiscover\.svc",
          "json": r"autodiscover/autodiscover\.json"}
_SOAP_PAGE = "casgate: SOAP Autodiscover service. POST GetUserSettings or GetDomainSettings requests here.\n"


def _routes(app: web.Application, kind: str, handler) -> None:
    # The exact spelling gets its own route so metrics name it plainly; clients use every letter case.
    app.router.add_route("*", "/" + _PATHS[kind].replace("\\", ""), handler)
    app.router.add_route("*", r"/{ad_path:(?i:" + _PATHS[kind] + ")}", handler)


_VIEWS = web.AppKey("autodiscover_views", dict)


def register(app: web.Application) -> None:
    """Mount POX (/autodiscover/autodiscover.xml), SOAP (.svc) and JSON (.json and .json/v1.0/<address>)."""
    app[_VIEWS] = {}
    _routes(app, "xml", handle_pox)
    _routes(app, "svc", handle_soap)
    _routes(app, "json", handle_json)
    app.router.add_route("*", r"/{ad_path:(?i:" + _PATHS["json"] + r"/v1\.0)}/{email}", handle_json)


def _xml(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": XML, "Cache-Control": "no-store"})


def _not_allowed(use: str, allow: str) -> web.Response:
    return web.Response(status=405, text=f"use {use}\n", headers={"Allow": allow})


async def _read_body(request: web.Request) -> bytes | None:
    """The body, or None as soon as it is known to be larger than MAX_BODY (the rest is never read)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        return None
    data = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        data += chunk
        if len(data) > MAX_BODY:
            return None
    return bytes(data)


def _view(ctx, user: UserRecord, views: dict[str, Published]) -> Published:
    # The config never changes while the app runs, so each SMTP routing's view is built once.
    smtp = ctx.directory.route(user, "smtp") or ""
    if smtp not in views:
        views[smtp] = published(ctx.config, smtp)
    return views[smtp]



async def handle_pox(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    if request.method not in ("POST", "GET", "HEAD"):
        return _not_allowed("POST", "GET, HEAD, POST")
    # Outlook sends its first request without credentials and expects the 401 challenge.
    user, _ = await authenticate(request, ctx.auth)
    host = public_host(ctx.config)
    if request.method != "POST":
        return _xml(200, pox.error_response(600, "Invalid Request", host))
    data = await _read_body(request)
    if data is None:
        return _xml(413, pox.error_response(600, "Invalid Request", host))
    try:
        req = pox.parse_request(data, MAX_BODY)
    except pox.PoxError as exc:
        log.info("autodiscover", extra={"event": "autodiscover", "kind": "pox", "user": user.address,
                                        "result": exc.code})
        return _xml(exc.status, pox.error_response(exc.code, exc.message, host))
    view, mailbox = _view(ctx, user, request.app[_VIEWS]), mailbox_of(user)
    # Outlook may ask by legacy DN alone; only the caller's own DN names anyone here.
    address = req.email or (user.address if req.legacy_dn == mailbox.legacy_dn else "")
    own = ownership(ctx.config, ctx.directory, user, address)
    requested = req.email or req.legacy_dn
    if own.kind == "settings":
        body = pox.mobile_settings(mailbox, view) if req.mobile else pox.outlook_settings(mailbox, view)
    elif own.kind == "redirect":
        body = pox.mobile_redirect(requested, own.target, view.culture) if req.mobile \
            else pox.outlook_redirect(own.target)
    else:
        body = pox.mobile_not_found(requested, view.culture) if req.mobile else pox.outlook_not_found(host)
    log.info("autodiscover", extra={"event": "autodiscover", "kind": "mobile" if req.mobile else "outlook",
                                    "user": user.address, "result": own.kind})
    return _xml(200, body)


def _user_outcomes(ctx, user: UserRecord, req: soap.SoapRequest, view: Published) -> list[soap.UserOutcome]:
    mailbox = mailbox_of(user)
    outcomes = []
    for name in req.names:
        own = ownership(ctx.config, ctx.directory, user, name)
        values = user_values(req.settings, mailbox, view) if own.kind == "settings" else ()
        outcomes.append(soap.UserOutcome(name, own.kind, own.target, values))
    return outcomes


async def handle_soap(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    if request.method not in ("POST", "GET", "HEAD"):
        return _not_allowed("POST", "GET, HEAD, POST")
    user, _ = await authenticate(request, ctx.auth)
    if request.method != "POST":
        return web.Response(text=_SOAP_PAGE)
    data = await _read_body(request)
    if data is None:
        fault = soap.SoapFault("s:Client", f"The request is larger than {MAX_BODY} bytes.", 413)
        return _xml(413, soap.fault_envelope(fault))
    try:
        req = soap.parse_request(data, MAX_BODY)
    except soap.SoapFault as fault:
        log.info("autodiscover", extra={"event": "autodiscover", "kind": "soap", "user": user.address,
                                        "result": fault.code})
        return _xml(fault.status, soap.fault_envelope(fault))
    view = _view(ctx, user, request.app[_VIEWS])
    if req.operation == "GetUserSettings":
        outcomes = [] if req.error else _user_outcomes(ctx, user, req, view)
        body = soap.user_settings_response(req, outcomes)
        result = req.error and "InvalidRequest" or ",".join(sorted({o.kind for o in outcomes}))
    else:
        served = {d.lower(): domain_values(view) for d in req.names if ctx.directory.is_local_domain(d.lower())}
        body = soap.domain_settings_response(req, served)
        result = req.error and "InvalidRequest" or f"{len(served)}/{len(req.names)} domains"
    log.info("autodiscover", extra={"event": "autodiscover", "kind": req.operation, "user": user.address,
                                    "result": result})
    return _xml(200, body)


def _query(request: web.Request, name: str) -> str | None:
    # Microsoft's clients write Email and Protocol; others lower-case them.
    return next((v for k, v in request.query.items() if k.lower() == name), None)


async def handle_json(request: web.Request) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        return _not_allowed("GET", "GET, HEAD")
    ctx = request.app[CTX]
    email = request.match_info.get("email") or _query(request, "email")
    try:
        body = json_v1.lookup(email, _query(request, "protocol"), published(ctx.config),
                              ctx.directory.is_local_domain)
    except json_v1.JsonError as exc:
        return web.json_response(exc.body(), status=exc.status, headers={"Cache-Control": "no-store"})
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def redirect_to_https(request: web.Request) -> web.StreamResponse:
    """Exchange's HTTP redirect method: plain-HTTP GET of the autodiscover path is sent to its HTTPS URL."""
    if request.method not in ("GET", "HEAD"):
        return _not_allowed("GET", "GET, HEAD")
    raise web.HTTPFound(public_base_url(request.app[CTX].config) + "/" + request.match_info["ad_path"])


def build_redirect_app(ctx) -> web.Application:
    """The plain-HTTP application for ``autodiscover.http_port``: the redirect and nothing else."""
    app = web.Application(middlewares=[observe], client_max_size=64 * 1024)
    app[CTX] = ctx
    for kind in ("xml", "svc"):
        app.router.add_route("*", r"/{ad_path:(?i:" + _PATHS[kind] + ")}", redirect_to_https)
    return app
