"""The web app in Debian's Chromium, driven by Playwright (the system browser, no download): sign in, the message
list, and hostile mail opened in the reading pane, where no script may run and nothing may leave the message frame.
Screenshots of each view are kept in tests/artifacts/."""

from __future__ import annotations

import imaplib
import shutil
import ssl
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from gateway.demo.procs import free_port
from gatewayproc import config_toml, start_gateway, stop_gateway, users_toml, write_config

USER = "carol@example.test"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"

# Each tries to run script or to reach beyond its frame; a success would set top.pwned or raise a dialog.
HOSTILE_HTML = (
    "<p id=greeting>Dear customer</p>"
    "<script>top.pwned = 'script'; alert('script')</script>"
    "<img src=x onerror=\"top.pwned='onerror'; alert('onerror')\">"
    "<svg onload=\"top.pwned='svg'\"><script>top.pwned='svg-script'</script></svg>"
    "<math><mtext><table><mglyph><style><img src=x onerror=\"top.pwned='math'\"></style></mglyph></table></mtext>"
    "</math>"
    "<a id=js href=\"javascript:top.pwned='link'\">click me</a>"
    "<a id=top href=\"https://evil.example/\" target=_top>escape</a>"
    "<form action=https://evil.example/><input name=p></form>"
    "<iframe src=\"javascript:top.pwned='iframe'\"></iframe>"
    "<meta http-equiv=refresh content=\"0;url=https://evil.example/\">"
    "<base href=https://evil.example/>"
    "<div style=\"background-image:url(https://tracker.example/p.gif)\">styled</div>"
    "<img src=https://tracker.example/pixel.gif width=1 height=1>"
    "<img src=https://images.example/banner.png width=300>"
)


@pytest.fixture(scope="module")
def web(workdir, certs, dovecot, users):
    root = workdir / f"owa-browser-{free_port()}"
    https = free_port()
    write_config(root, config_toml(certs, dovecot, https=https, extra='[domains."example.test"]\nimap = "dovecot"\n'),
                 users_toml([USER]))
    proc = start_gateway(root, [https])
    yield {"base": f"https://127.0.0.1:{https}", "password": users[USER]}
    stop_gateway(proc)


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _deliver_hostile(dovecot, certs, password: str) -> str:
    folder = "Hostile" + uuid.uuid4().hex[:6]
    m = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port,
                          ssl_context=ssl.create_default_context(cafile=str(certs.ca_cert)))
    m.login(USER, password)
    assert m.create(folder)[0] == "OK"
    msg = (f"From: Bank <bank@example.test>\r\nTo: {USER}\r\nSubject: Your account\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: text/html; charset=utf-8\r\n\r\n{HOSTILE_HTML}\r\n")
    assert m.append(folder, None, None, msg.encode())[0] == "OK"
    m.logout()
    return folder


def test_sign_in_list_and_read_hostile_mail_in_chromium(web, browser, dovecot, certs):
    folder = _deliver_hostile(dovecot, certs, web["password"])
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1200, "height": 800})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    answered: list[str] = []   # requests that got an answer from somewhere
    blocked: dict[str, str] = {}  # requests the browser refused to make, and why
    page.on("response", lambda r: answered.append(r.url))
    page.on("requestfailed", lambda r: blocked.__setitem__(r.url, r.failure or ""))

    page.goto(web["base"] + "/owa/")
    assert page.url.endswith("/owa/signin")
    page.screenshot(path=str(ARTIFACTS / "owa-signin.png"))
    page.get_by_label("E-mail address").fill(USER)
    page.get_by_label("Password").fill(web["password"])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(web["base"] + "/owa/")
    assert page.get_by_role("navigation", name="Folders").is_visible()
    page.get_by_role("link", name=folder).click()
    page.wait_for_selector("table.messages")
    page.screenshot(path=str(ARTIFACTS / "owa-message-list.png"))
    page.get_by_role("link", name="Your account").click()
    page.wait_for_selector("iframe.body")
    frame = page.frame_locator("iframe.body")
    assert frame.get_by_text("Dear customer").is_visible()
    page.wait_for_timeout(1000)  # let anything that could run, run
    page.screenshot(path=str(ARTIFACTS / "owa-reading-hostile.png"))

    assert dialogs == []
    assert page.evaluate("() => window.pwned === undefined")
    assert page.evaluate("() => document.querySelectorAll('script').length") == 0
    inner = page.frames[1]
    assert inner.evaluate("() => document.body.querySelectorAll("
                          "'script, iframe, form, svg, math, meta, base, link, style').length") == 0
    assert inner.evaluate("() => document.head.children.length") == 2  # only the gateway's own two <meta>
    assert inner.evaluate("() => document.querySelectorAll('[onerror], [onload], [onclick]').length") == 0
    frame.get_by_text("click me").click()  # its javascript: link was removed: clicking does nothing
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.pwned === undefined") and dialogs == []
    # Nothing was fetched from anywhere but the gateway: the remote image was refused by the frame's policy, and
    # the tracking pixel was not even asked for (the cleaner removed it).
    assert answered and all(url.startswith(web["base"]) for url in answered), answered
    assert blocked.get("https://images.example/banner.png") == "csp", blocked
    assert "https://tracker.example/pixel.gif" not in blocked
    assert page.url.startswith(web["base"] + "/owa/message")  # still here: no refresh, no escape
    context.close()
