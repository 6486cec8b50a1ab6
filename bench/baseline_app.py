"""Baseline server: the smallest aiohttp app (GET / -> 200 "ok") over TLS, with the gateway's loop and TLS settings."""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web

from gateway import tls
from gateway.server import install_event_loop


async def ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    p = argparse.ArgumentParser(description="Serve a static 200 'ok' at / over TLS until SIGINT/SIGTERM; "
                                            "the baseline bench/run.py compares casgate with.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", type=Path, required=True, help="PEM certificate chain (the gateway's)")
    p.add_argument("--key", type=Path, required=True, help="its private key")
    p.add_argument("--static", type=Path, help="also serve this file at GET /static (aiohttp's FileResponse)")
    args = p.parse_args()
    loop_kind = install_event_loop()  # the same choice `casgate serve` makes: uvloop when importable
    app = web.Application()
    app.router.add_get("/", ok)
    if args.static:
        static = args.static
        app.router.add_get("/static", lambda _request: web.FileResponse(static))
    print(f"baseline: loop={loop_kind} listening on {args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, ssl_context=tls.server_context(args.cert, args.key),
                backlog=1024, access_log=None, print=None, shutdown_timeout=1.0)


if __name__ == "__main__":
    main()
