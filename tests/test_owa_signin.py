"""The web app's sign-in, session and folder tree, against a real gateway and the session's Dovecot (HTTP over TLS
with requests; the browser tests drive Chromium separately)."""

from __future__ import annotations

import imaplib
import re
import sqlite3
import ssl
import time
import uuid

import pytest
import requests

from gateway.demo.procs import free_port
from gatewayproc import config_toml, start_gateway, stop_gateway, users_toml, write_config

USER = "carol@example.test"


@pytest.fixture(scope="module")
def web(workdir, certs, dovecot, users):
    root = workdir / f"owa-{free_port()}"
    https = free_port()
    extra = '[domains."example.test"]\nimap = "dovecot"\n[owa]\nsession_idle = 4\n'
    write_config(root, config_toml(certs, dovecot, https=https, extra=extra), users_toml([USER]))
    proc = start_gateway(root, [https])
    yield {"base": f"https://127.0.0.1:{https}", "ca": str(certs.ca_cert), "root": root,
           "password": users[USER]}
    stop_gateway(proc)
    log = (root / "gateway.log").read_text()
    assert users[USER] not in log  # the password never reaches the log
    assert "Traceback" not in log, log[-3000:]


def _browser(web) -> requests.Session:
    s = requests.Session()
    s.verify = web["ca"]
    s.trust_env = False
    return s


def _imap(web, dovecot, certs) -> imaplib.IMAP4_SSL:
    m = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port,
                          ssl_context=ssl.create_default_context(cafile=str(certs.ca_cert)))
    m.login(USER, web["password"])
    return m


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def _sign_in(web, s: requests.Session, password: str | None = None) -> requests.Response:
    form = s.get(web["base"] + "/owa/signin")
    return s.post(web["base"] + "/owa/signin", allow_redirects=False,
                  data={"csrf": _csrf(form.text), "address": USER, "password": password or web["password"]})


def test_sign_in_gives_a_locked_down_session_and_the_folder_tree_with_unread_counts(web, dovecot, certs):
    s = _browser(web)
    first = s.get(web["base"] + "/owa/", allow_redirects=False)
    assert first.status_code == 303 and first.headers["Location"] == "/owa/signin"
    page = s.get(web["base"] + "/owa/signin")
    assert page.status_code == 200 and 'type="password"' in page.text and '<label for="address">' in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["Cache-Control"] == "no-store"
    assert "<script" not in page.text and not re.search(r"<[^>]*\son\w+=", page.text)  # nothing inline

    # An unread message in a subfolder with a non-ASCII name, to count.
    folder = "Projekte/Ärger " + uuid.uuid4().hex[:4]
    m = _imap(web, dovecot, certs)
    from adapters.imap.wire import mailbox
    quoted = mailbox(folder).decode()
    assert m.create(quoted)[0] == "OK"
    assert m.append(quoted, None, None, b"Subject: unread\r\n\r\nhello\r\n")[0] == "OK"

    signed = _sign_in(web, s)
    assert signed.status_code == 303 and signed.headers["Location"] == "/owa/"
    cookie = next(c for c in signed.cookies if c.name == "casgate-owa")
    raw_cookie = signed.headers["Set-Cookie"]
    assert cookie.secure and "HttpOnly" in raw_cookie and "SameSite=Lax" in raw_cookie and cookie.path == "/owa/"
    home = s.get(web["base"] + "/owa/")
    assert home.status_code == 200 and USER in home.text
    assert 'aria-label="Folders"' in home.text and ">INBOX<" in home.text
    leaf = folder.rpartition("/")[2]
    assert re.search(rf">{re.escape(leaf)}</span>\s*<span class=\"unseen\" aria-label=\"1 unread\">1</span>",
                     home.text), home.text
    # The parent, shown (not linked: the server holds no messages there) with the child nested under it.
    assert re.search(r'<span class="name holder">Projekte</span>\s*<ul>\s*<li>\s*<a href="/owa/\?folder=Projekte',
                     home.text), home.text
    m.delete(quoted)
    m.logout()

    # The state store holds the session sealed: no password in it.
    db = sqlite3.connect(web["root"] / "state.db")
    blobs = [bytes(v) for (v,) in db.execute("SELECT value FROM kv WHERE ns = 'owa-session'")]
    db.close()
    assert blobs and all(web["password"].encode() not in b and USER.encode() not in b for b in blobs)

    # Sign-out needs the session's token; then the cookie is worthless.
    refused = s.post(web["base"] + "/owa/signout", data={"csrf": "forged"}, allow_redirects=False)
    assert refused.status_code == 403
    assert s.get(web["base"] + "/owa/", allow_redirects=False).status_code == 200
    out = s.post(web["base"] + "/owa/signout", data={"csrf": _csrf(home.text)}, allow_redirects=False)
    assert out.status_code == 303 and out.headers["Location"] == "/owa/signin"
    replay = _browser(web)
    replay.cookies.set("casgate-owa", cookie.value, domain=cookie.domain, path="/owa/")
    assert replay.get(web["base"] + "/owa/", allow_redirects=False).status_code == 303


def test_wrong_password_forged_form_and_tampered_cookie_get_nowhere(web):
    s = _browser(web)
    wrong = _sign_in(web, s, password="not-the-password")
    assert wrong.status_code == 401 and "not right" in wrong.text and "casgate-owa" not in wrong.cookies
    forged = _browser(web).post(web["base"] + "/owa/signin", allow_redirects=False,
                                data={"csrf": "x", "address": USER, "password": web["password"]})
    assert forged.status_code == 403 and "casgate-owa" not in forged.cookies  # no double-submit cookie
    signed = _sign_in(web, s)
    assert signed.status_code == 303
    value = s.cookies.get("casgate-owa")
    sid, _, key = value.partition(".")
    for bad in (sid + "." + key[::-1], sid[::-1] + "." + key, sid, "", "a.b.c"):
        other = _browser(web)
        other.cookies.set("casgate-owa", bad, path="/owa/")
        assert other.get(web["base"] + "/owa/", allow_redirects=False).status_code == 303


def test_an_idle_session_expires(web):
    s = _browser(web)
    assert _sign_in(web, s).status_code == 303
    assert s.get(web["base"] + "/owa/", allow_redirects=False).status_code == 200
    time.sleep(5)  # session_idle = 4
    assert s.get(web["base"] + "/owa/", allow_redirects=False).status_code == 303


def test_the_message_list_pages_newest_first_with_marks_and_escapes_what_mail_says(web, dovecot, certs):
    folder = "List" + uuid.uuid4().hex[:6]
    m = _imap(web, dovecot, certs)
    assert m.create(folder)[0] == "OK"
    for i in range(57):
        subject = f"note {i:02d}"
        if i == 56:
            subject = "=?utf-8?q?Gr=C3=BC=C3=9Fe_<script>alert(1)</script>?="
        msg = (f'From: "Zoë <b>Bold</b>" <zoe{i}@example.test>\r\nTo: {USER}\r\nSubject: {subject}\r\n'
               f"Date: Fri, 27 Nov 2026 10:{i:02d}:00 +0000\r\n\r\nbody {i}\r\n")
        flags = "(\\Flagged)" if i == 55 else "(\\Seen)" if i == 54 else None
        assert m.append(folder, flags, None, msg.encode())[0] == "OK"
    m.logout()
    s = _browser(web)
    assert _sign_in(web, s).status_code == 303
    first = s.get(web["base"] + "/owa/", params={"folder": folder})
    assert first.status_code == 200
    rows = re.findall(r'<tr class="(unread|read)">(.*?)</tr>', first.text, re.S)
    assert len(rows) == 50 and "1-50 of 57" in first.text and "Page 1 of 2" in first.text
    newest = rows[0][1]
    assert "Grüße &lt;script&gt;alert(1)&lt;/script&gt;" in newest and "<script>" not in first.text
    assert "Zoë &lt;b&gt;Bold&lt;/b&gt;" in newest and 'title="zoe56@example.test"' in newest
    assert rows[1][0] == "unread" and 'aria-label="flagged"' in rows[1][1]  # note 55
    assert rows[2][0] == "read" and "note 54" in rows[2][1]
    assert "note 07" in rows[-1][1]
    older = s.get(web["base"] + "/owa/", params={"folder": folder, "page": "1"})
    rows2 = re.findall(r'<tr class="(?:unread|read)">(.*?)</tr>', older.text, re.S)
    assert len(rows2) == 7 and "note 06" in rows2[0] and "note 00" in rows2[-1] and "51-57 of 57" in older.text
    assert 'rel="prev"' in older.text and 'rel="next"' not in older.text
    beyond = s.get(web["base"] + "/owa/", params={"folder": folder, "page": "99"})
    assert beyond.status_code == 200 and not re.findall(r'<tr class="(?:unread|read)">', beyond.text)
    missing = s.get(web["base"] + "/owa/", params={"folder": "No such " + folder})
    assert missing.status_code == 404 and missing.headers["Content-Security-Policy"]


def test_reading_a_message_shows_it_safely_and_downloads_its_attachment(web, dovecot, certs):
    folder = "Read" + uuid.uuid4().hex[:6]
    pdf = b"%PDF-1.4 fake " + bytes(range(256))
    import base64
    raw = (f"From: Mallory <mallory@example.test>\r\nTo: {USER}\r\nSubject: invoice <b>now</b>\r\n"
           "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
           "Content-Type: text/html; charset=utf-8\r\n\r\n<p>Pay <b>now</b></p><script>steal()</script>"
           "<img src=https://tracker.example/p.gif onerror=steal()>\r\n--B\r\nContent-Type: text/html\r\n"
           "Content-Disposition: attachment; filename=\"inv\\\"oice.html\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.b64encode(pdf).decode() + "\r\n--B--\r\n").encode()
    m = _imap(web, dovecot, certs)
    assert m.create(folder)[0] == "OK"
    assert m.append(folder, None, None, raw)[0] == "OK"
    s = _browser(web)
    assert _sign_in(web, s).status_code == 303
    listing = s.get(web["base"] + "/owa/", params={"folder": folder}).text
    link = re.search(r'<a href="(/owa/message\?[^"]+)">invoice &lt;b&gt;now&lt;/b&gt;</a>', listing).group(1)
    page = s.get(web["base"] + link.replace("&amp;", "&"))
    assert page.status_code == 200 and "invoice &lt;b&gt;now&lt;/b&gt;" in page.text and "Mallory" in page.text
    frame = re.search(r"<iframe[^>]*>", page.text, re.S).group(0)
    assert re.search(r"\ssandbox[\s>]", frame) and "allow-scripts" not in frame and "allow-same-origin" not in frame
    assert "Remote images in this message were blocked." in page.text and "<script" not in page.text
    body_url = re.search(r'src="(/owa/message/body\?[^"]+)"', frame).group(1).replace("&amp;", "&")
    body = s.get(web["base"] + body_url)
    assert body.status_code == 200 and "Pay <b>now</b>" in body.text
    assert "script" not in body.text and "onerror" not in body.text
    assert "default-src 'none'" in body.headers["Content-Security-Policy"]
    assert "img-src 'none'" in body.headers["Content-Security-Policy"]
    download = re.search(r'<a href="(/owa/attachment\?[^"]+)"\s+download>([^<]+)</a>', page.text)
    assert download.group(2) == "inv_oice.html"
    got = s.get(web["base"] + download.group(1).replace("&amp;", "&"))
    assert got.status_code == 200 and got.content == pdf
    assert got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    assert got.headers["Content-Disposition"].startswith('attachment; filename="inv_oice.html"')
    # Remote images: shown for this message when asked, or for every message of a sender the reader trusts.
    show = re.search(r'<a href="(/owa/message\?[^"]+images=1)">Show images</a>', page.text).group(1)
    shown = s.get(web["base"] + show.replace("&amp;", "&"))
    assert "were blocked" not in shown.text and "&amp;images=1" in re.search(r"<iframe[^>]*>", shown.text, re.S).group(0)
    with_images = s.get(web["base"] + body_url + "&images=1")
    assert "img-src https: http: data:" in with_images.headers["Content-Security-Policy"]
    assert "script-src" not in with_images.headers["Content-Security-Policy"]
    trust = {"folder": folder, "uid": "1", "sender": "mallory@example.test"}
    assert s.post(web["base"] + "/owa/message/trust", data={**trust, "csrf": "forged"},
                  allow_redirects=False).status_code == 403
    assert "were blocked" in s.get(web["base"] + link.replace("&amp;", "&")).text
    assert s.post(web["base"] + "/owa/message/trust", data={**trust, "csrf": _csrf(page.text)},
                  allow_redirects=False).status_code == 303
    trusted = s.get(web["base"] + link.replace("&amp;", "&"))
    assert "were blocked" not in trusted.text and "&amp;images=1" in trusted.text
    # Opened: the message is read now, for every client of the mailbox.
    m.select(folder)
    assert b"\\Seen" in m.fetch("1", "(FLAGS)")[1][0]
    assert s.get(web["base"] + "/owa/message", params={"folder": folder, "uid": "x"}).status_code == 400
    assert s.get(web["base"] + "/owa/message", params={"folder": folder, "uid": "999"}).status_code == 404
    assert _browser(web).get(web["base"] + body_url, allow_redirects=False).status_code == 303  # not signed in
    m.delete(folder)
    m.logout()


def test_mark_unread_flag_and_delete_to_deleted_items_then_for_good(web, dovecot, certs):
    folder = "Act" + uuid.uuid4().hex[:6]
    m = _imap(web, dovecot, certs)
    assert m.create(folder)[0] == "OK"
    marker = "act " + uuid.uuid4().hex[:8]
    assert m.append(folder, None, None, f"Subject: {marker}\r\n\r\nhi\r\n".encode())[0] == "OK"
    s = _browser(web)
    assert _sign_in(web, s).status_code == 303
    page = s.get(web["base"] + "/owa/message", params={"folder": folder, "uid": "1"})
    token = _csrf(page.text)
    assert 'value="unread">Mark unread<' in page.text and 'value="flag">Flag<' in page.text

    def flags() -> bytes:
        m.select(folder)
        return m.fetch("1", "(FLAGS)")[1][0]

    def act(action: str, csrf: str = token, where: str = folder) -> requests.Response:
        return s.post(web["base"] + "/owa/message/action", allow_redirects=False,
                      data={"csrf": csrf, "folder": where, "uid": "1", "action": action})
    assert b"\\Seen" in flags()
    refused = act("unread", csrf="forged")
    assert refused.status_code == 403 and b"\\Seen" in flags()  # nothing changed
    assert act("explode").status_code == 400
    done = act("unread")
    assert done.status_code == 303 and "keep=unread" in done.headers["Location"] and b"\\Seen" not in flags()
    again = s.get(web["base"] + done.headers["Location"])
    assert 'value="read">Mark read<' in again.text and b"\\Seen" not in flags()  # looking does not mark it read
    assert act("flag").status_code == 303 and b"\\Flagged" in flags()
    assert 'value="unflag">Clear flag<' in s.get(web["base"] + done.headers["Location"]).text
    assert act("unflag").status_code == 303 and b"\\Flagged" not in flags()
    gone = act("delete")
    assert gone.status_code == 303 and gone.headers["Location"] == f"/owa/?folder={folder}"
    m.select(folder)
    assert m.search(None, "ALL")[1] == [b""]
    m.select("Trash")
    found = m.search(None, "SUBJECT", f'"{marker}"')[1][0].split()
    assert len(found) == 1
    uid = m.fetch(found[0], "(UID)")[1][0].split()[-1].rstrip(b")").decode()
    forever = s.post(web["base"] + "/owa/message/action", allow_redirects=False,
                     data={"csrf": token, "folder": "Trash", "uid": uid, "action": "delete"})
    assert forever.status_code == 303
    m.select("Trash")
    assert m.search(None, "SUBJECT", f'"{marker}"')[1] == [b""]  # deleted in Deleted Items: gone for good
    m.delete(folder)
    m.logout()


def test_move_a_message_to_another_folder_and_nowhere_else(web, dovecot, certs):
    source, target = "MoveFrom" + uuid.uuid4().hex[:6], "MoveTo" + uuid.uuid4().hex[:6]
    m = _imap(web, dovecot, certs)
    for name in (source, target):
        assert m.create(name)[0] == "OK"
    marker = "move " + uuid.uuid4().hex[:8]
    assert m.append(source, None, None, f"Subject: {marker}\r\n\r\nhi\r\n".encode())[0] == "OK"
    s = _browser(web)
    assert _sign_in(web, s).status_code == 303
    page = s.get(web["base"] + "/owa/message", params={"folder": source, "uid": "1"})
    assert f'<option value="{target}">' in page.text and f'<option value="{source}">' not in page.text
    token = _csrf(page.text)

    def move(to: str, csrf: str = token) -> requests.Response:
        return s.post(web["base"] + "/owa/message/action", allow_redirects=False,
                      data={"csrf": csrf, "folder": source, "uid": "1", "action": "move", "target": to})
    assert move("No such folder").status_code == 400
    assert move(target, csrf="forged").status_code == 403
    m.select(source)
    assert len(m.search(None, "ALL")[1][0].split()) == 1  # refused moves changed nothing
    done = move(target)
    assert done.status_code == 303 and done.headers["Location"] == f"/owa/?folder={source}"
    m.select(source)
    assert m.search(None, "ALL")[1] == [b""]
    m.select(target)
    assert len(m.search(None, "SUBJECT", f'"{marker}"')[1][0].split()) == 1
    for name in (source, target):
        m.delete(name)
    m.logout()
