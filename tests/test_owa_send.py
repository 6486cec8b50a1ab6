"""Sending from the web app through the user's SMTP back end (the demo's submission server relaying to the session's
Dovecot): the recipient's INBOX gets it once, Bcc stays out of what was sent, Sent keeps a copy, and a second click
on the same form sends nothing more."""

from __future__ import annotations

import asyncio
import email
import imaplib
import re
import ssl
import uuid

import requests

from gateway.demo.procs import free_port
from gatewayproc import config_toml, start_gateway, stop_gateway, users_toml, write_config

USER, TO, HIDDEN = "carol@example.test", "bob@example.test", "alice@example.test"


def _imap(dovecot, certs, who: str, users) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port,
                          ssl_context=ssl.create_default_context(cafile=str(certs.ca_cert)))
    m.login(who, users[who])
    return m


def _found(m: imaplib.IMAP4_SSL, folder: str, marker: str) -> list[bytes]:
    m.select(folder)
    hits = m.search(None, "SUBJECT", f'"{marker}"')[1][0].split()
    return [m.fetch(n, "(BODY.PEEK[])")[1][0][1] for n in hits]


async def test_send_reaches_the_inbox_once_with_a_sent_copy_and_no_bcc(workdir, certs, dovecot, users, submission):
    root = workdir / f"owa-send-{free_port()}"
    https = free_port()
    extra = (f'[backends.submission]\ntype = "smtp"\nurl = "smtp://127.0.0.1:{submission.port}"\ntls = "starttls"\n'
             '[domains."example.test"]\nimap = "dovecot"\nsmtp = "submission"\n')
    write_config(root, config_toml(certs, dovecot, https=https, extra=extra), users_toml([USER, TO, HIDDEN]))
    proc = await asyncio.to_thread(start_gateway, root, [https])
    base = f"https://127.0.0.1:{https}"
    marker = "owa send " + uuid.uuid4().hex[:8]
    try:
        def browser_side() -> tuple[requests.Response, ...]:
            s = requests.Session()
            s.verify, s.trust_env = str(certs.ca_cert), False
            form = s.get(base + "/owa/signin")
            token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
            s.post(base + "/owa/signin", data={"csrf": token, "address": USER, "password": users[USER]})
            page = s.get(base + "/owa/compose")
            fields = dict(re.findall(r'<input type="hidden" name="(csrf|draft)" value="([^"]+)"', page.text))
            assert page.status_code == 200 and set(fields) == {"csrf", "draft"}
            nobody = s.post(base + "/owa/send", allow_redirects=False, data={
                **fields, "draft": fields["draft"] + "x", "to": "not an address", "subject": "x", "body": "x"})
            message = {**fields, "to": TO, "bcc": HIDDEN, "subject": marker + "\r\nX-Injected: 1",
                       "body": "Hello Bob,\nfrom the web.\n" + "A long letter. " * 3000}  # past the 16 KB of a small form
            first = s.post(base + "/owa/send", data=message, allow_redirects=False)
            again = s.post(base + "/owa/send", data=message, allow_redirects=False)  # a second click
            forged = s.post(base + "/owa/send", data={**message, "csrf": "forged"}, allow_redirects=False)
            return first, again, forged, nobody
        first, again, forged, nobody = await asyncio.to_thread(browser_side)
        assert first.status_code == 303 and again.status_code == 303 and forged.status_code == 403
        assert nobody.status_code == 422 and "cannot be sent" in nobody.text and "not an address" in nobody.text
        bob, carol, alice = (_imap(dovecot, certs, who, users) for who in (TO, USER, HIDDEN))
        for _ in range(50):
            if _found(bob, "INBOX", marker) and _found(alice, "INBOX", marker):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # time for a duplicate to show, if there were one
        received = _found(bob, "INBOX", marker)
        assert len(received) == 1 and len(_found(alice, "INBOX", marker)) == 1  # once each, Bcc delivered
        msg = email.message_from_bytes(received[0])
        assert USER in msg["From"] and msg["Bcc"] is None and msg["X-Injected"] is None
        assert "from the web." in msg.get_payload(decode=True).decode()
        sent = _found(carol, "Sent", marker)
        assert len(sent) == 1 and HIDDEN.encode() in sent[0]  # the Sent copy keeps the Bcc
        for m in (bob, carol, alice):
            m.logout()
    finally:
        await asyncio.to_thread(stop_gateway, proc)
