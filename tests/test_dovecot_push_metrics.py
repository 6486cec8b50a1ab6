"""casgate_dovecot_push_notifications counts every POST to /casgate/dovecot-push by result, on /metrics."""

from __future__ import annotations

import re
from contextlib import AsyncExitStack

import aiohttp
from aiohttp import web

from gateway.config import load
from gateway.context import open_context
from gateway.demo.procs import free_port
from gateway.http.app import build_app
from gateway.http.dovecot_push import PATH
from gateway.services.pushhub import channel

USER = "metered@example.test"
SECRET = "metrics-push-secret-7"


def _counts(text: str) -> dict[str, float]:
    """result -> value of casgate_dovecot_push_notifications_total in a Prometheus text exposition."""
    found = re.findall(r'^casgate_dovecot_push_notifications_total\{result="(\w+)"\} (\S+)$', text, re.M)
    return {result: float(value) for result, value in found}


async def test_metrics_count_notifications_by_result(tmp_path, certs):
    (tmp_path / "users.toml").write_text(f'[[user]]\naddress = "{USER}"\n')
    (tmp_path / "push.secret").write_text(SECRET + "\n")
    (tmp_path / "casgate.toml").write_text(
        f'[tls]\ncert = "{certs.cert}"\nkey = "{certs.key}"\n'
        '[directory]\nusers_file = "users.toml"\n[state]\nbackend = "sqlite"\npath = "state.db"\n'
        # A back end is required of every user; nothing here contacts it.
        '[backends.dovecot]\ntype = "imap"\nurl = "imap://127.0.0.1:9"\n[domains."example.test"]\nimap = "dovecot"\n'
        '[activesync]\ndovecot_push_from = ["127.0.0.1"]\ndovecot_push_secret_file = "push.secret"\n')
    async with AsyncExitStack() as stack:
        ctx = await open_context(load(tmp_path / "casgate.toml"), stack)
        heard: list[str] = []
        await ctx.bus.subscribe(channel(USER), heard.append)
        runner = web.AppRunner(build_app(ctx))
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async def metrics() -> dict[str, float]:
                async with http.get(f"{base}/metrics") as r:
                    assert r.status == 200
                    return _counts(await r.text())

            async def post(secret: str, **kw) -> int:
                async with http.post(base + PATH, headers={"Authorization": f"Bearer {secret}"}, **kw) as r:
                    return r.status

            assert await metrics() == {}  # nothing counted before the first notification
            assert await post(SECRET, json={"user": USER, "folder": "INBOX", "event": "MessageAppend"}) == 204
            assert heard == ["INBOX"]
            assert await metrics() == {"accepted": 1.0}
            assert await post(SECRET, json={"user": USER, "folder": "Sent", "event": "MessageNew"}) == 204
            assert await post("wrong", json={"user": USER}) == 403
            assert await post(SECRET, data=b"[not json") == 400
            assert await post(SECRET, json={"user": USER, "event": "MailboxSubscribe"}) == 204
            assert heard == ["INBOX", "Sent"]
            assert await metrics() == {"accepted": 2.0, "refused": 1.0, "bad": 1.0, "ignored": 1.0}
