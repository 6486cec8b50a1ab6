"""The ActiveSync endpoint (MS-ASHTTP): /Microsoft-Server-ActiveSync in any letter case.

The shell around the commands: Basic authentication, the request line,
protocol version, gzip and WBXML both ways, the device partnership and its
provisioning state, and the mapping of back-end failures to HTTP. Each
command lives in ``commands/`` and gets an ``EasCall``.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time

from aiohttp import web

from adapters.errors import AuthenticationFailed, BackendUnavailable
from adapters.interfaces import UserRecord

from ..http.app import CTX
from ..http.basic_auth import authenticate, client_ip
from ..http.body import read_limited
from ..http.park import Parked, park, parked_response
from . import wbxml
from .commands.ping import Hold
from .commands import COMMANDS, EasCall, EasError, EasServices, root_of, version_tuple
from .devices import DeviceRegistry, provisioning_status
from .request import RequestError, parse_request

__all__ = ["EAS_PATH", "register"]

log = logging.getLogger("casgate.activesync")
EAS_PATH = "/Microsoft-Server-ActiveSync"
WBXML_TYPE = "application/vnd.ms-sync.wbxml"
SERVER_VERSION = "14.3"  # what Exchange 2010 SP3 reports in MS-Server-ActiveSync
SERVICES = web.AppKey("eas_services", object)
_GZIP_MIN = 1024  # smaller responses go out uncompressed: gzip would not pay for itself


def register(app: web.Application) -> None:
    app[SERVICES] = _Services()
    app.on_cleanup.append(_close)
    app.router.add_route("*", EAS_PATH, handle)
    app.router.add_route("*", r"/{eas_path:(?i:microsoft-server-activesync)}", handle)


class _Services:
    """The ActiveSync services, made at the first ActiveSync request (most test apps never need them)."""

    def __init__(self) -> None:
        self.made: EasServices | None = None

    def get(self, app: web.Application) -> EasServices:
        if self.made is None:
            self.made = EasServices.build(app[CTX])
        return self.made


async def _close(app: web.Application) -> None:
    if (services := app[SERVICES].made) is not None:
        await services.close()


def _protocol_headers(versions: list[str]) -> dict[str, str]:
    implemented = ",".join(name for name in COMMANDS)
    return {"MS-Server-ActiveSync": SERVER_VERSION, "MS-ASProtocolVersions": ",".join(versions),
            "MS-ASProtocolCommands": implemented, "Allow": "OPTIONS,POST", "Public": "OPTIONS,POST",
            "Cache-Control": "private"}


def _text(status: int, text: str, **headers: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers={"Cache-Control": "private", **headers})


def _user_matches(named: str, user: UserRecord) -> bool:
    """The query's User names the account that authenticated (as a login, address, alias or DOMAIN\\login)."""
    if not named:
        return True  # some clients leave it out of the base64 form; the credentials decide
    name = named.rpartition("\\")[2].strip().lower()
    known = {user.login.lower(), user.address.lower(), *(a.lower() for a in user.aliases)}
    known |= {x.partition("@")[0] for x in list(known)}
    return name in known


def _wants_gzip(request: web.Request) -> bool:
    return "gzip" in request.headers.get("Accept-Encoding", "").lower()


async def handle(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    cfg = ctx.config.activesync
    if request.method not in ("POST", "OPTIONS"):
        return _text(405, "ActiveSync takes OPTIONS and POST", Allow="OPTIONS,POST")
    user, creds = await authenticate(request, ctx.auth)
    if request.method == "OPTIONS":
        return web.Response(status=200, headers=_protocol_headers(cfg.versions))
    try:
        req = parse_request(request.query_string, request.headers)
    except RequestError as exc:
        return _text(exc.status, str(exc))
    if req.version is None:
        return _text(400, "MS-ASProtocolVersion is missing", **_protocol_headers(cfg.versions))
    if req.version not in cfg.versions:
        return _text(400, f"protocol version {req.version} is not offered here", **_protocol_headers(cfg.versions))
    if not _user_matches(req.user, user):
        log.warning("user mismatch", extra={"event": "eas", "user": user.address, "named": req.user[:100],
                                            "client": client_ip(request)})
        return _text(403, "the User parameter does not name the account that logged in")
    command = COMMANDS.get(req.command)
    if command is None:
        return _text(501, f"{req.command} is not implemented")
    raw = await read_limited(request, cfg.max_request_bytes)
    if raw is None:
        return _text(413, f"the request is larger than {cfg.max_request_bytes} bytes")
    body = None
    wbxml_body = command.wbxml_body if command.wbxml_body is not None else version_tuple(req.version) >= (14, 0)
    if raw and wbxml_body:
        try:
            body = wbxml.decode(raw)
        except wbxml.WbxmlError as exc:
            return _text(400, f"the WBXML body is malformed: {str(exc)[:200]}")
    services = request.app[SERVICES].get(request.app)
    t0 = time.perf_counter()
    result = "ok"
    try:
        agent = request.headers.get("User-Agent", "")
        device = await services.devices.seen(user, req, agent)
        refused = _refusal(device, req.policy_key, cfg.require_provisioning and command.needs_policy,
                           services.policy_digest)
        call = EasCall(services, req, user, creds, device, req.version, body, raw, client_ip(request))
        raw = body = None  # only the call holds the request now, so a held Ping can let it go
        if refused is not None:
            result = f"refused-{refused[0]}"
            return _status_or_http(request, call, *refused)
        answer = await command.run(call)
        if isinstance(answer, Hold):
            if request.transport is None or request.transport.is_closing():
                answer.lost()  # the phone has gone already: nobody to hold it for
                result = "gone"
                return parked_response()
            parked = park(request, _ParkedPing)
            if parked is not None:
                parked.gzip, parked.user, parked.device = _wants_gzip(request), user.address, req.device_id
                parked.since = time.monotonic()
                parked.on_lost(answer.lost)
                answer.start(parked)
                result = "held"
                return parked_response()
            answer = await _hold_here(answer)
    except (EasError, AuthenticationFailed, BackendUnavailable) as exc:
        result, response = _failure(exc, user.address, req.command)
        return response
    finally:
        ctx.metrics.eas_commands.labels(req.command, result.split("-")[0]).inc()
        log.info("eas", extra={"event": "eas", "command": req.command, "user": user.address,
                               "device": req.device_id, "version": req.version, "result": result,
                               "ms": round((time.perf_counter() - t0) * 1000, 2)})
    if isinstance(answer, web.StreamResponse):
        return answer
    if answer is None:
        return web.Response(status=200, headers={"Cache-Control": "private",
                                                 "MS-Server-ActiveSync": SERVER_VERSION})
    return _reply(answer, _wants_gzip(request))


def _failure(exc: Exception, user: str, command: str) -> tuple[str, web.Response]:
    """(result for the log and metrics, HTTP answer) of a command that failed with ``exc``."""
    if isinstance(exc, EasError):
        if exc.http_status:
            return f"status-{exc.status}", _text(exc.http_status, exc.message)
        return f"status-{exc.status}", _status_reply(command, exc.status, False)
    if isinstance(exc, AuthenticationFailed):
        return "auth", _text(401, "the mail store refused the credentials", **{
            "WWW-Authenticate": 'Basic realm="casgate", charset="UTF-8"'})
    if isinstance(exc, BackendUnavailable):
        log.warning("back end unavailable", extra={"event": "eas", "user": user, "error": str(exc)[:200]})
        return "unavailable", _text(503, "the mail store is unavailable; try again later",
                                    **{"Retry-After": str(exc.retry_after)})
    log.error("command failed", exc_info=exc, extra={"event": "eas", "command": command, "user": user})
    return "error", _text(500, "internal error")


async def _hold_here(hold: Hold) -> wbxml.Element:
    """Hold the request inside aiohttp (when its connection cannot be parked)."""
    link = _Waiting()
    hold.start(link)
    try:
        result = await link.future
    finally:
        hold.lost()  # a no-op once answered; after a cancellation, stop waiting
    if isinstance(result, Exception):
        raise result
    return result


class _Waiting:
    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()

    def deliver(self, result: wbxml.Element | Exception) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def close(self) -> None:
        if not self.future.done():
            self.future.cancel()


class _ParkedPing(Parked):
    """A parked Ping's connection, which writes its answer (and logs it, as the shell logs a command)."""

    __slots__ = ("gzip", "user", "device", "since")

    def deliver(self, result: wbxml.Element | Exception) -> None:
        if isinstance(result, Exception):
            outcome, response = _failure(result, self.user, "Ping")
        else:
            outcome, response = "ok", _reply(result, self.gzip)
        log.info("eas held answer", extra={"event": "eas", "command": "Ping", "user": self.user,
                                           "device": self.device, "result": outcome, "http": response.status,
                                           "held_s": round(time.monotonic() - self.since, 1)})
        self.send(response)


def _refusal(device, policy_key: int | None, check_policy: bool, digest: str) -> tuple[int, int] | None:
    """(EAS status, pre-14 HTTP status) refusing this request, or None."""
    blocked = DeviceRegistry.access(device)
    if blocked is not None:
        return blocked, 403
    if check_policy and (status := provisioning_status(device, policy_key, digest)) is not None:
        return status, 449
    return None


def _status_or_http(request: web.Request, call: EasCall, status: int, http_status: int) -> web.Response:
    """Before 14.0 a device learns it must provision (or is blocked) from an HTTP status; from 14.0 on from a
    Status in the command's own response (MS-ASHTTP 3.2.5.1, MS-ASCMD 2.2.2)."""
    if call.version_tuple < (14, 0):
        return _text(http_status, "provisioning is required" if http_status == 449 else "device not allowed")
    return _status_reply(call.request.command, status, _wants_gzip(request))


def _status_reply(command: str, status: int, gzip_ok: bool) -> web.Response:
    """The command's own response element holding just a Status."""
    ns, name = root_of(command)
    return _reply(wbxml.Element(ns, name, [wbxml.Element(ns, "Status", text=str(status))]), gzip_ok)


def _reply(element: wbxml.Element, gzip_ok: bool) -> web.Response:
    data = wbxml.encode(element)
    headers = {"Content-Type": WBXML_TYPE, "Cache-Control": "private", "MS-Server-ActiveSync": SERVER_VERSION}
    if len(data) >= _GZIP_MIN and gzip_ok:
        data = gzip.compress(data, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return web.Response(status=200, body=data, headers=headers)
