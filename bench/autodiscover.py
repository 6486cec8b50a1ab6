"""Benchmark "Autodiscover": Outlook POX requests/s with a warm credential cache vs aiohttp serving a static file."""

from __future__ import annotations

import base64
import ssl
import sys
import urllib.request
from contextlib import ExitStack

from gateway.demo.procs import free_port, stop_process

from .gateway_env import HOST, GatewayEnv
from .harness import ROOT, BenchError, Options, Progress, run_wrk, spawn, wait_http_ok
from .https_front import check_errors, summarise

NAME = "autodiscover"
TITLE = "Autodiscover (issue 4)"
BASELINE = "baseline (aiohttp static file)"
INTRO = ("`wrk` (1 thread, keep-alive, pinned to its own CPU) posting Outlook's POX autodiscover request "
         "(`POST /autodiscover/autodiscover.xml`, Basic auth, schema outlook/requestschema/2006) to casgate, "
         "after one request has warmed the credential cache, against aiohttp serving the very same response "
         "bytes as a static file (`web.FileResponse`). Each request to casgate checks the credentials against "
         "the cache, parses the XML safely, looks the user up and builds the answer. Target: ratio at least 0.5.")

POX = """<?xml version="1.0" encoding="utf-8"?>
<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
  <Request>
    <EMailAddress>{address}</EMailAddress>
    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
  </Request>
</Autodiscover>"""

MEASURES = [("pox", "POX autodiscover requests/s (keep-alive, warm credential cache)", False)]


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def run(env: GatewayEnv, opts: Options, progress: Progress) -> dict:
    address, password = next(iter(env.users.items()))
    body = POX.format(address=address)
    auth = base64.b64encode(f"{address}:{password}".encode()).decode()
    gw_url = f"{env.https_url}/autodiscover/autodiscover.xml"
    ctx = ssl.create_default_context(cafile=str(env.certs.ca_cert))
    req = urllib.request.Request(gw_url, data=body.encode(), method="POST", headers={
        "Authorization": f"Basic {auth}", "Content-Type": "text/xml"})
    with urllib.request.urlopen(req, context=ctx, timeout=20) as r:  # warms the credential cache
        answer = r.read()
    if b"<EwsUrl>" not in answer:
        raise BenchError(f"casgate's POX answer has no EwsUrl: {answer[:300]!r}")
    static = env.workdir / "autodiscover-answer.xml"
    static.write_bytes(answer)
    lua = ('wrk.method = "POST"\nwrk.body = ' + _lua_string(body) + '\n'
           f'wrk.headers["Authorization"] = "Basic {auth}"\nwrk.headers["Content-Type"] = "text/xml"\n')
    with ExitStack() as stack:
        port = free_port(HOST)
        log = env.workdir / "baseline-static.log"
        proc = spawn([sys.executable, "-m", "bench.baseline_app", "--host", HOST, "--port", str(port),
                      "--cert", str(env.certs.cert), "--key", str(env.certs.key), "--static", str(static)],
                     opts.server_cpu, log, cwd=ROOT)
        stack.callback(stop_process, proc)
        base_url = f"https://{HOST}:{port}/static"
        wait_http_ok(base_url, env.certs.ca_cert, proc, log, "baseline app")
        targets = {"casgate": (gw_url, lua, env.proc.pid), "baseline": (base_url, "", proc.pid)}
        raw: list[dict] = []
        total = opts.rounds * len(targets)
        for rnd in range(opts.rounds):
            order = ["casgate", "baseline"] if rnd % 2 == 0 else ["baseline", "casgate"]
            for i, who in enumerate(order):
                url, script, pid = targets[who]
                progress.show(f"{TITLE}: [{rnd * 2 + i + 1}/{total}] round {rnd + 1}: {who} ({opts.seconds} s)")
                r = run_wrk(url, opts, opts.seconds, server_pid=pid, request_lua=script)
                env.check_alive()
                check_errors(r, who, "pox", rnd + 1, progress)
                raw.append({"round": rnd + 1, "measure": "pox", "server": who, "url": url, **r})
    progress.clear()
    rows = [summarise(raw, key, label) for key, label, _ in MEASURES]
    met = rows[0]["ratio"] is not None and rows[0]["ratio"] >= 0.5
    rows[0]["metric"] += f" (target ratio >= 0.5: {'met' if met else 'NOT met'})"
    return {"name": NAME, "title": TITLE, "intro": INTRO, "baseline_label": BASELINE, "rows": rows,
            "settings": {"seconds": opts.seconds, "rounds": opts.rounds, "connections": opts.connections,
                         "wrk_threads": 1, "server_cpu": opts.server_cpu, "client_cpu": opts.client_cpu,
                         "response_bytes": len(answer)},
            "raw": raw}
