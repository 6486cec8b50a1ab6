"""The aiohttp application: operational endpoints, request logging and metrics; front ends mount here."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from ..context import GatewayContext
from ..metrics import CONTENT_TYPE
from ..services.backends import Probe

log = logging.getLogger("casgate.http")
CTX = web.AppKey("ctx", GatewayContext)
PROBE_TTL = 2.0  # seconds a health result is reused, so /healthz polling never hammers the back ends


class HealthCache:
    """Latest back-end probes; concurrent callers share one refresh."""

    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self._probes: list[Probe] = []
        self._at = -1e9
        self._refresh: asyncio.Task | None = None

    async def get(self) -> list[Probe]:
        if time.monotonic() - self._at < PROBE_TTL:
            return self._probes
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._refresh)

    async def _run(self) -> list[Probe]:
        probes = await self.ctx.backends.probe_all()
        for p in probes:
            self.ctx.metrics.backend_up.labels(p.name, p.type).set(1 if p.ok else 0)
            self.ctx.metrics.backend_probe_seconds.labels(p.name, p.type).set(p.seconds)
        self._probes, self._at = probes, time.monotonic()
        return probes


HEALTH = web.AppKey("health", HealthCache)


async def healthz(request: web.Request) -> web.Response:
    probes = await request.app[HEALTH].get()
    ok = all(p.ok for p in probes)
    body = {"status": "ok" if ok else "degraded",
            "backends": {p.name: {"type": p.type, "ok": p.ok, "detail": p.detail,
                                  "ms": round(p.seconds * 1000, 1)} for p in probes}}
    return web.json_response(body, status=200 if ok else 503, headers={"Cache-Control": "no-store"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[CTX].metrics.render(), headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def observe(request: web.Request, handler) -> web.StreamResponse:
    """One log line and one metric sample per request; unexpected errors become a bare 500."""
    t0 = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499
        raise
    except Exception:
        log.exception("request failed", extra={"event": "http-error", "path": request.path})
        raise web.HTTPInternalServerError(text="internal error\n") from None
    finally:
        elapsed = time.perf_counter() - t0
        m = request.app[CTX].metrics
        m.http_requests.labels(route, request.method, str(status)).inc()
        m.http_latency.labels(route).observe(elapsed)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        log.info("request", extra={"event": "http", "method": request.method, "path": request.path,
                                   "status": status, "ms": round(elapsed * 1000, 2),
                                   "client": peer[0] if peer else "-",
                                   "ua": request.headers.get("User-Agent", "")[:120]})


def build_app(ctx: GatewayContext) -> web.Application:
    """The HTTPS application; later front ends (ActiveSync, EWS, autodiscover, web app) add routes here."""
    app = web.Application(middlewares=[observe], client_max_size=36 * 1024 * 1024)
    app[CTX] = ctx
    app[HEALTH] = HealthCache(ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    # Imported here: the front ends import CTX from this module.
    from ..autodiscover import autoconfig, mobileconfig
    from ..autodiscover import register as register_autodiscover
    from ..ews.http import register as register_ews
    from ..activesync.http import register as register_activesync
    from .freebusy_url import register as register_freebusy_url
    from .dovecot_push import register as register_dovecot_push
    from ..owa import register as register_owa
    register_ews(app)
    register_autodiscover(app)
    autoconfig.register_extra(app)
    mobileconfig.register_extra(app)
    register_freebusy_url(app)
    register_activesync(app)
    register_dovecot_push(app)
    register_owa(app)
    return app
