"""The EWS endpoint on the aiohttp app: /EWS/Exchange.asmx in any letter case, Basic auth, a body limit, dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Any

from aiohttp import web

from adapters.errors import BackendUnavailable
from adapters.interfaces import Credentials, UserRecord

from ..http.app import CTX
from ..http.basic_auth import authenticate
from ..http.body import read_limited
from . import soap
from .operations import Operation, registry
from .zone_rules import windows_ids

__all__ = ["EWS_PATH", "CONTENT_TYPE", "OPERATIONS", "USER", "register", "answer"]

log = logging.getLogger("casgate.ews")
EWS_PATH = "/EWS/Exchange.asmx"
CONTENT_TYPE = "text/xml; charset=utf-8"
OPERATIONS = web.AppKey("ews_operations", dict)
# Request key of the authenticated UserRecord, for whatever runs after auth (RequestKey since aiohttp 3.12).
USER = web.RequestKey("ews_user", UserRecord) if hasattr(web, "RequestKey") else "casgate.ews.user"
_WARM_UP = web.AppKey("ews_warm_up", asyncio.Future)
_SERVICE_PAGE = "casgate: Exchange Web Services. POST SOAP 1.1 requests to this URL.\n"


def register(app: web.Application) -> None:
    """Mount the EWS endpoint; the exact spelling gets its own route so metrics name it plainly."""
    app[OPERATIONS] = registry()
    app.router.add_route("*", EWS_PATH, handle)
    # Clients spell the path every way (/ews/exchange.asmx, /EWS/exchange.asmx); IIS never minded.
    app.router.add_route("*", r"/{ews_path:(?i:ews/exchange\.asmx)}", handle)
    app.on_startup.append(_warm_up)
    app.on_cleanup.append(_warmed)


async def _warm_up(app: web.Application) -> None:
    # The CLDR table and every zone's rules take about a second to build: do it in a thread now,
    # without holding up start-up, rather than on the event loop at the first time zone request.
    app[_WARM_UP] = asyncio.ensure_future(asyncio.to_thread(windows_ids))


async def _warmed(app: web.Application) -> None:
    with contextlib.suppress(Exception):  # a thread cannot be cancelled; let it finish before the loop goes
        await app[_WARM_UP]


async def answer(ctx: Any, operations: dict[str, Operation], user: UserRecord, credentials: Credentials | None,
                 data: bytes) -> tuple[int, bytes, dict[str, str]]:
    """(HTTP status, SOAP reply, extra headers) for one request body; never raises for what a peer sends."""
    try:
        req = soap.parse_envelope(data)
        op = operations.get(req.operation)
        if op is None:
            log.info("ews", extra={"event": "ews", "operation": req.operation, "user": user.address,
                                   "result": "not-implemented"})
            return 200, soap.envelope(soap.not_implemented(req.operation)), {}
        if req.server_version is not None and not soap.version_at_least(req.server_version, op.since):
            raise soap.SoapFault("ErrorInvalidServerVersion", "The specified server version is invalid.")
        element = await op.handler(ctx, user, dataclasses.replace(req, credentials=credentials))
        log.info("ews", extra={"event": "ews", "operation": req.operation, "user": user.address, "result": "ok"})
        return 200, soap.envelope(element), {}
    except soap.SoapFault as fault:
        log.info("ews", extra={"event": "ews", "result": fault.response_code, "reason": fault.message[:200]})
        return fault.status, soap.fault_envelope(fault), {}
    except BackendUnavailable as exc:
        log.warning("ews back end unavailable: %s", exc, extra={"event": "ews", "result": "ErrorServerBusy"})
        fault = soap.SoapFault("ErrorServerBusy", "A back end is unavailable; try again later.", status=503)
        return 503, soap.fault_envelope(fault), {"Retry-After": str(exc.retry_after)}
    except Exception:
        log.exception("ews operation failed", extra={"event": "ews", "result": "ErrorInternalServerError"})
        fault = soap.SoapFault("ErrorInternalServerError", "An internal server error occurred. The operation failed.")
        return 500, soap.fault_envelope(fault), {}


async def handle(request: web.Request) -> web.StreamResponse:
    if request.method not in ("POST", "GET", "HEAD"):
        return web.Response(status=405, text="use POST\n", headers={"Allow": "GET, HEAD, POST"})
    user, creds = await authenticate(request, request.app[CTX].auth)
    request[USER] = user
    if request.method != "POST":
        return web.Response(text=_SERVICE_PAGE)
    data = await read_limited(request, soap.MAX_REQUEST_BYTES)
    if data is None:
        fault = soap.SoapFault("ErrorRequestStreamTooBig", f"The request is larger than "
                                                           f"{soap.MAX_REQUEST_BYTES} bytes.", status=413)
        # The unread rest of the body makes aiohttp close this connection after the reply, as it should.
        return web.Response(status=413, body=soap.fault_envelope(fault), headers={"Content-Type": CONTENT_TYPE})
    status, payload, headers = await answer(request.app[CTX], request.app[OPERATIONS], user, creds, data)
    return web.Response(status=status, body=payload, headers={"Content-Type": CONTENT_TYPE, **headers})
