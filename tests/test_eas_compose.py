"""Outgoing mail for SendMail / SmartReply / SmartForward: known answers, header fixes, quoting, forwarded
attachments, hostile headers and structures, charsets, and fuzzing."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timezone
from email import message_from_bytes
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.activesync.compose import (
    MAX_MESSAGE_BYTES, MAX_RECIPIENTS, ComposeError, ComposeStatus, Outgoing, compose)

NOW = datetime(2024, 3, 4, 10, 30, tzinfo=timezone.utc)
USER = "me@example.com"

SEND = (b"From: Someone Else <evil@example.net>\r\n"
        b"To: Bob <bob@example.com>, alice@example.com\r\n"
        b"Cc: Carol <carol@example.com>, ALICE@example.com\r\n"
        b"Bcc: secret@example.org, BOB@Example.com\r\n"
        b"Subject: Hi\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"\r\n"
        b"Hello\r\n")

ORIGINAL = (b"From: Alice Example <alice@example.com>\r\n"
            b"To: Me <me@example.com>\r\n"
            b"Cc: Dan <dan@example.com>\r\n"
            b"Subject: =?utf-8?q?Lunch_=C3=A0_midi?=\r\n"
            b"Date: Mon, 01 Jan 2024 13:05:00 +0100\r\n"
            b"Message-ID: <orig-2@example.com>\r\n"
            b"References: <root-0@example.com> <orig-1@example.com>\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"\r\n"
            b"Shall we meet at noon?\r\nAlice\r\n")

PDF_PART = (b"Content-Type: application/pdf; name=\"menu.pdf\"\r\n"
            b"Content-Disposition: attachment;\r\n filename=\"menu.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"\r\n"
            b"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K\r\n"
            b"eJwr5HIK4TI0MDAwVDAwMDY2NDA0ULCwMDI1NTE2NLKwMDWyNDQwMTU0MTMwsDQw\r\n")
PNG_PART = (b"Content-Type: image/png\r\n"
            b"Content-Disposition: inline; filename=\"dot.png\"\r\n"
            b"Content-ID: <dot@example.com>\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"\r\n"
            b"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk\r\n")
ENCLOSED_PART = (b"Content-Type: message/rfc822\r\n"
                 b"\r\n"
                 b"From: x@example.com\r\nSubject: enclosed\r\n\r\nenclosed body\r\n")

ORIGINAL_WITH_FILES = (b"From: Alice <alice@example.com>\r\n"
                       b"To: me@example.com\r\n"
                       b"Subject: Menu\r\n"
                       b"Date: Tue, 02 Jan 2024 09:00:00 +0000\r\n"
                       b"Message-ID: <menu@example.com>\r\n"
                       b"MIME-Version: 1.0\r\n"
                       b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
                       b"\r\n"
                       b"--outer\r\n"
                       b"Content-Type: multipart/alternative; boundary=\"alt\"\r\n"
                       b"\r\n"
                       b"--alt\r\n"
                       b"Content-Type: text/plain; charset=us-ascii\r\n\r\nThe menu, plain.\r\n"
                       b"--alt\r\n"
                       b"Content-Type: multipart/related; boundary=\"rel\"\r\n\r\n"
                       b"--rel\r\n"
                       b"Content-Type: text/html; charset=us-ascii\r\n\r\n<p>The menu, <b>html</b>.</p>\r\n"
                       b"--rel\r\n" + PNG_PART + b"--rel--\r\n"
                       b"--alt--\r\n"
                       b"--outer\r\n" + PDF_PART +
                       b"--outer\r\n" + ENCLOSED_PART +
                       b"--outer--\r\n")


def run(mime: bytes, **options: object) -> Outgoing:
    options.setdefault("user_address", USER)
    options.setdefault("now", NOW)
    return compose(mime, **options)   # type: ignore[arg-type]


def parsed(data: bytes) -> Message:
    return BytesParser(policy=compat32).parsebytes(data)


def header_names(data: bytes) -> list[str]:
    return [name.lower() for name, _ in parsed(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n").items()]


def text_parts(data: bytes) -> dict[str, str]:
    """Decoded text of the text/* leaves that are not attachments, by subtype (the first of each)."""
    found: dict[str, str] = {}
    for part in message_from_bytes(data).walk():
        if part.get_content_maintype() == "text" and part.get_content_disposition() != "attachment":
            payload = part.get_payload(decode=True)
            found.setdefault(part.get_content_subtype(), payload.decode(part.get_content_charset() or "ascii"))
    return found


def reply(client: bytes, original: bytes = ORIGINAL, **options: object) -> Outgoing:
    return run(client, mode="reply", original=original, **options)


def status_of(mime: bytes, **options: object) -> int:
    with pytest.raises(ComposeError) as caught:
        run(mime, **options)
    return caught.value.status


# --- SendMail ----------------------------------------------------------------------------------------------

def test_send_known_answer() -> None:
    client = (b"From: Me <ME@example.com>\r\n"
              b"To: Bob <bob@example.com>\r\n"
              b"Bcc: hidden@example.org\r\n"
              b"Subject: Known\r\n"
              b"Date: Mon, 04 Mar 2024 10:00:00 +0000\r\n"
              b"Message-ID: <known@example.com>\r\n"
              b"\r\n"
              b"line one\nline two\r\n")
    out = run(client)
    assert out == Outgoing(
        sender=USER, recipients=("bob@example.com", "hidden@example.org"),
        message=(b"From: Me <ME@example.com>\r\nTo: Bob <bob@example.com>\r\nSubject: Known\r\n"
                 b"Date: Mon, 04 Mar 2024 10:00:00 +0000\r\nMessage-ID: <known@example.com>\r\n\r\n"
                 b"line one\r\nline two\r\n"),
        sent_copy=(b"From: Me <ME@example.com>\r\nTo: Bob <bob@example.com>\r\nBcc: hidden@example.org\r\n"
                   b"Subject: Known\r\nDate: Mon, 04 Mar 2024 10:00:00 +0000\r\n"
                   b"Message-ID: <known@example.com>\r\n\r\nline one\r\nline two\r\n"))


def test_send_enforces_from_removes_bcc_and_adds_date_and_id() -> None:
    out = run(SEND, display_name="Me Myself", domain_for_ids="ids.example.com")
    assert out.sender == USER
    assert out.recipients == ("bob@example.com", "alice@example.com", "carol@example.com", "secret@example.org")
    message = parsed(out.message)
    assert message.get_all("From") == ['"Me Myself" <me@example.com>']
    assert message["Bcc"] is None and b"secret@example.org" not in out.message
    assert message["Date"] == "Mon, 04 Mar 2024 10:30:00 +0000"
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith("@ids.example.com>")
    copy = parsed(out.sent_copy)
    assert copy["Bcc"] == "secret@example.org, BOB@Example.com"
    assert copy["Message-ID"] == message["Message-ID"]
    assert out.message.replace(b"\r\n", b"").count(b"\n") == 0 and out.message.count(b"\r") == out.message.count(b"\n")


def test_from_of_the_user_is_kept_and_spoofs_are_replaced() -> None:
    own = run(b"From: \"Me, really\" <Me@Example.com>\r\nTo: bob@example.com\r\n\r\nx")
    assert parsed(own.message)["From"] == '"Me, really" <Me@Example.com>'
    for spoof in (b"From: evil@example.net\r\n", b"From: me@example.com, evil@example.net\r\n",
                  b"From: me@example.com\r\nFrom: me@example.com\r\n", b"From: not an address\r\n", b""):
        out = run(spoof + b"To: bob@example.com\r\n\r\nx", display_name="Mé Mÿself")
        assert parsed(out.message).get_all("From") is not None
        (value,) = parsed(out.message).get_all("From")
        assert str(make_header(decode_header(value))) == "Mé Mÿself <me@example.com>"
    assert parsed(run(b"To: bob@example.com\r\n\r\nx").message)["From"] == "<me@example.com>"


def test_sender_and_reply_to_survive_only_when_they_are_the_user() -> None:
    client = (b"Sender: boss@example.com\r\nReply-To: Me <ME@example.com>\r\nReply-To: list@example.org\r\n"
              b"To: bob@example.com\r\n\r\nx")
    message = parsed(run(client).message)
    assert message["Sender"] is None
    assert message.get_all("Reply-To") == ["Me <ME@example.com>"]


def test_groups_give_their_members_and_empty_groups_nothing() -> None:
    client = (b"To: Team: a@example.com, B <b@example.com>;, undisclosed-recipients:;\r\n"
              b"Cc: \"Last, First\" <c@example.com>\r\nBcc: A@example.com\r\n\r\nx")
    out = run(client)
    assert out.recipients == ("a@example.com", "b@example.com", "c@example.com")
    assert run(b"To: undisclosed-recipients:;\r\nBcc: z@example.com\r\n\r\nx").recipients == ("z@example.com",)


def test_no_recipient() -> None:
    assert status_of(b"Subject: nobody\r\n\r\nx") == ComposeStatus.NO_RECIPIENT == 119
    assert status_of(b"To: undisclosed-recipients:;\r\n\r\nx") == 119
    assert status_of(b"To:\r\nCc: \r\n\r\nx") == 119
    assert status_of(b"") == 119


@pytest.mark.parametrize("value", [b"bob", b"bob@", b"@example.com", b"a@b@", b"<bob smith@example.com>",
                                   b"\"spaced local\"@example.com", b"caf\xe9@example.com", b"a <>"])
def test_unusable_addresses_are_refused(value: bytes) -> None:
    assert status_of(b"To: " + value + b"\r\n\r\nx") == ComposeStatus.RECIPIENT_UNRESOLVED == 116


def test_recipient_limit() -> None:
    many = b", ".join(b"r%d@example.com" % i for i in range(MAX_RECIPIENTS))
    assert len(run(b"To: " + many.replace(b", ", b",\r\n ") + b"\r\n\r\nx").recipients) == MAX_RECIPIENTS
    assert len(run(b"To: " + many.replace(b", ", b",\r\n ") + b"\r\nCc: R0@example.com\r\n\r\nx").recipients) == 500
    too_many = many + b", one-more@example.com"
    assert status_of(b"To: " + too_many.replace(b", ", b",\r\n ") + b"\r\n\r\nx") == ComposeStatus.SUBMISSION_FAILED


def test_lf_only_message_becomes_crlf() -> None:
    out = run(b"To: bob@example.com\nSubject: lf\n folded\n\nbody\nmore\n")
    assert b"Subject: lf\r\n folded\r\n" in out.message
    assert out.message.endswith(b"\r\n\r\nbody\r\nmore\r\n")


def test_eai_and_8bit_headers() -> None:
    client = "To: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n\r\nx".encode("utf-8")
    out = run(client, user_address="ich@bücher.example")
    assert out.recipients == ("jörg@bücher.example",)
    assert "Subject: Grüße".encode("utf-8") in out.message
    assert "From: <ich@bücher.example>".encode("utf-8") in out.message
    assert b"@localhost>" in out.message   # no ASCII domain for the Message-ID


# --- header injection and malformed headers -------------------------------------------------------------------

@pytest.mark.parametrize("client", [
    b"To: bob@example.com\r\nSubject: hi\rBcc: victim@example.org\r\n\r\nx",       # bare CR
    b"To: bob@example.com\r\nSubject: hi\nBcc: victim@example.org\r\n\r\nx",       # bare LF in a CRLF header
    b"To: bob@example.com\nSubject: hi\r\nBcc: victim@example.org\n\nx",           # CRLF in an LF header
    b"To: bob@example.com\r\nSubject: hi\r\r\n\r\nx",
    b"To: bob@example.com\r\nSubject: " + b"x" * 990 + b"\r\n\r\nbody",               # line over 998 octets
    b"To: bob@example.com\r\nSubject: a\x00b\r\n\r\nx",
    b" To: bob@example.com\r\n\r\nx",                                                # starts with a continuation
    b"To: bob@example.com\r\nnot a field\r\n\r\nx",
    b"From me@example.com Mon Jan  1 00:00:00 2024\r\nTo: bob@example.com\r\n\r\nx",
    b"To: bob@example.com\r\n: empty name\r\n\r\nx",
    b"To: bob@example.com\r\nSubject : spaced name\r\n\r\nx",
])
def test_header_injection_and_malformed_lines(client: bytes) -> None:
    assert status_of(client) == ComposeStatus.INVALID_MIME == 107


def test_lines_of_exactly_998_octets_pass() -> None:
    line = b"Subject: " + b"x" * (998 - 9)
    assert len(line) == 998
    assert line + b"\r\n" in run(b"To: bob@example.com\r\n" + line + b"\r\n\r\nx").message


def test_bare_cr_and_lf_in_the_body_are_normalised_not_refused() -> None:
    out = run(b"To: bob@example.com\r\n\r\na\rb\nc\r\n")
    assert out.message.endswith(b"\r\n\r\na\r\nb\r\nc\r\n")


def test_size_limit() -> None:
    big = b"To: bob@example.com\r\n\r\n"
    big += b"x" * (MAX_MESSAGE_BYTES - len(big) + 1)
    assert status_of(big) == ComposeStatus.TOO_LARGE == 122
    assert status_of(b"To: bob@example.com\r\n\r\nx", mode="reply", original=big) == 122


def test_caller_errors() -> None:
    assert status_of(b"To: bob@example.com\r\n\r\nx", mode="draft") == ComposeStatus.SERVER_ERROR
    for user in ("", "me", "me@example.com\r\nBcc: x@y", " me@example.com", "m e@example.com", "me@exa\udcffmple"):
        assert status_of(b"To: bob@example.com\r\n\r\nx", user_address=user) == 110
    assert status_of(b"To: bob@example.com\r\n\r\nx", domain_for_ids="bad domain") == 110
    assert status_of("To: bob@example.com\r\n\r\nx", ) == 110  # type: ignore[arg-type]
    assert status_of(b"To: bob@example.com\r\n\r\nx", now="2024-01-01") == 110  # type: ignore[arg-type]


def test_display_name_cannot_inject() -> None:
    out = run(b"To: bob@example.com\r\n\r\nx", display_name="Me\r\nBcc: victim@example.org\udcff")
    assert out.recipients == ("bob@example.com",)
    assert parsed(out.message)["Bcc"] is None and parsed(out.sent_copy)["Bcc"] is None
    assert parsed(out.message)["From"] == '"Me Bcc: victim@example.org?" <me@example.com>'


def test_naive_now_is_utc() -> None:
    out = run(b"To: bob@example.com\r\n\r\nx", now=datetime(2024, 3, 4, 10, 30))
    assert b"Date: Mon, 04 Mar 2024 10:30:00 +0000\r\n" in out.message


# --- SmartReply ------------------------------------------------------------------------------------------------

def test_reply_to_plain_text_quotes_the_original() -> None:
    client = (b"To: Alice <alice@example.com>\r\nSubject: RE: Lunch\r\n"
              b"Content-Type: text/plain; charset=utf-8\r\n\r\nYes, noon is fine.\r\n")
    out = reply(client)
    assert out.recipients == ("alice@example.com",)
    assert text_parts(out.message) == {"plain": (
        "Yes, noon is fine.\r\n\r\n\r\n-----Original Message-----\r\n"
        "From: Alice Example <alice@example.com>\r\n"
        "Sent: Monday, January 1, 2024 1:05 PM\r\n"
        "To: Me <me@example.com>\r\n"
        "Cc: Dan <dan@example.com>\r\n"
        "Subject: Lunch à midi\r\n"
        "\r\n"
        "Shall we meet at noon?\r\nAlice\r\n")}
    message = parsed(out.message)
    assert message["In-Reply-To"] == "<orig-2@example.com>"
    assert message["References"].split() == ["<root-0@example.com>", "<orig-1@example.com>", "<orig-2@example.com>"]
    assert message["MIME-Version"] == "1.0"
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert all(len(line) <= 76 for line in out.message.split(b"\r\n\r\n", 1)[1].split(b"\r\n"))


def test_reply_keeps_the_clients_threading_headers() -> None:
    client = (b"To: alice@example.com\r\nIn-Reply-To: <mine@example.com>\r\nReferences: <mine@example.com>\r\n"
              b"\r\nok")
    message = parsed(reply(client).message)
    assert message.get_all("In-Reply-To") == ["<mine@example.com>"]
    assert message.get_all("References") == ["<mine@example.com>"]


def test_reply_to_html_only_original_converts_it_to_text() -> None:
    original = (b"From: a@example.com\r\nTo: me@example.com\r\nSubject: s\r\nMessage-ID: <h@example.com>\r\n"
                b"Content-Type: text/html; charset=windows-1252\r\n\r\n"
                b"<html><head><title>T</title><style>p{color:red}</style></head><body>"
                b"<p>Caf\xe9 &amp; cr\xe8me</p><div>2 &lt; 3</div><script>alert(1)</script>"
                b"<!-- hidden --></body></html>")
    plain = text_parts(reply(b"To: a@example.com\r\n\r\nok\r\n", original).message)["plain"]
    assert plain.endswith("\r\n\r\nCafé & crème\r\n\r\n2 < 3")
    assert "alert" not in plain and "color" not in plain and "hidden" not in plain
    assert "Sent: " in plain   # no Date: shown empty rather than failing
    assert message_from_bytes(reply(b"To: a@example.com\r\n\r\nok", original).message)["References"] == \
        "<h@example.com>"


def test_reply_with_html_client_body_escapes_the_original_into_a_div() -> None:
    original = ORIGINAL.replace(b"Shall we meet at noon?", b"<script>alert('x')</script> & <b>bold</b>")
    client = (b"To: alice@example.com\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: multipart/alternative; boundary=\"client-alt\"\r\n\r\n"
              b"--client-alt\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nSee below.\r\n"
              b"--client-alt\r\nContent-Type: text/html; charset=iso-8859-1\r\n\r\n"
              b"<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=iso-8859-1\"></head>"
              b"<body><p>See below. \xa9</p></BODY></html>\r\n"
              b"--client-alt--\r\n")
    out = reply(client, original)
    parts = text_parts(out.message)
    assert parts["plain"].startswith("See below.\r\n\r\n-----Original Message-----\r\n")
    assert "<script>alert('x')</script> & <b>bold</b>" in parts["plain"]
    html = parts["html"]
    assert html.startswith("<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">")
    assert "<p>See below. \u00a9</p>" in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html
    assert "<script>" not in html
    assert html.index('<div class="casgate-original">') < html.index("</BODY></html>")
    assert "<b>Subject:</b> Lunch à midi" in html
    assert parsed(out.message).get_content_type() == "multipart/alternative"


def test_reply_to_a_message_without_text_body_prepends_a_text_part() -> None:
    client = (b"To: alice@example.com\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
              b"iVBORw0KGgo=\r\n")
    message = message_from_bytes(reply(client).message)
    assert message.get_content_type() == "multipart/mixed"
    first, second = message.get_payload()
    assert first.get_payload(decode=True).decode().startswith("-----Original Message-----\r\nFrom: Alice")
    assert second.get_content_type() == "image/png" and second.get_payload(decode=True) == b"\x89PNG\r\n\x1a\n"


def test_reply_with_a_signed_client_message_sends_it_unchanged() -> None:
    signed_body = (b"preamble\n--sig\r\nContent-Type:text/plain\r\n\r\nsigned text\r\n"
                   b"--sig\r\nContent-Type: application/pkcs7-signature\r\n\r\nAAAA\r\n--sig--\r\n")
    client = (b"To: alice@example.com\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\";"
              b" boundary=sig\r\n\r\n" + signed_body)
    out = reply(client)
    assert out.message.endswith(b"\r\n\r\n" + signed_body.replace(b"\n", b"\r\n").replace(b"\r\r", b"\r"))
    assert b"Original Message" not in out.message and b"Content-Type:text/plain\r\n" in out.message


def test_reply_without_original_is_item_not_found() -> None:
    assert status_of(b"To: a@example.com\r\n\r\nx", mode="reply") == ComposeStatus.ITEM_NOT_FOUND == 150
    assert status_of(b"To: a@example.com\r\n\r\nx", mode="forward") == 150


def test_original_boundary_lookalikes_are_escaped() -> None:
    client = (b"To: a@example.com\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
              b"--b1\r\nContent-Type: text/plain\r\n\r\nmine\r\n--b1--\r\n")
    original = b"To: me@example.com\r\n\r\nbefore\r\n--b1\r\nContent-Type: text/html\r\n\r\nevil\r\n--b1--\r\nafter\r\n"
    out = reply(client, original)
    message = message_from_bytes(out.message)
    assert len(message.get_payload()) == 1
    plain = message.get_payload(0).get_payload(decode=True).decode()
    assert plain.endswith("before\r\n--b1\r\nContent-Type: text/html\r\n\r\nevil\r\n--b1--\r\nafter\r\n")
    assert b"\r\n--b1\r\nContent-Type: text/html" not in out.message


# --- SmartForward -------------------------------------------------------------------------------------------

def test_forward_appends_body_and_copies_attachments_byte_for_byte() -> None:
    client = (b"To: carol@example.com\r\nSubject: FW: Menu\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
              b"FYI\r\n")
    out = run(client, mode="forward", original=ORIGINAL_WITH_FILES)
    for part in (PDF_PART, PNG_PART, ENCLOSED_PART):
        assert part in out.message and part in out.sent_copy
    message = message_from_bytes(out.message)
    assert message.get_content_type() == "multipart/mixed"
    body, png, pdf, enclosed = message.get_payload()   # document order
    assert body.get_payload(decode=True).decode().startswith("FYI\r\n\r\n\r\n-----Original Message-----\r\n")
    assert body.get_payload(decode=True).decode().endswith("\r\n\r\nThe menu, plain.")
    assert pdf.get_filename() == "menu.pdf" and pdf["Content-Transfer-Encoding"] == "base64"
    assert pdf.get_payload(decode=True) == base64.b64decode(PDF_PART.split(b"\r\n\r\n", 1)[1])
    assert png.get_filename() == "dot.png"
    assert enclosed.get_content_type() == "message/rfc822"
    assert enclosed.get_payload(0)["Subject"] == "enclosed"
    assert "in-reply-to" not in header_names(out.message)


def test_forward_into_a_client_mixed_message_keeps_its_own_attachments_first() -> None:
    client = (b"To: carol@example.com\r\nContent-Type: multipart/mixed; boundary=\"c\"\r\n\r\n"
              b"--c\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>FYI</p>\r\n"
              b"--c\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=\"a.csv\"\r\n\r\n"
              b"1,2\r\n--c--\r\n")
    out = run(client, mode="forward", original=ORIGINAL_WITH_FILES)
    message = message_from_bytes(out.message)
    names = [part.get_filename() for part in message.get_payload()]
    assert names == [None, "a.csv", "dot.png", "menu.pdf", None]
    html = message.get_payload(0).get_payload(decode=True).decode()
    assert html.startswith("<p>FYI</p>") and "The menu, plain." in html


def test_forward_with_replace_mime_sends_the_client_message_as_is() -> None:
    client = (b"From: me@example.com\r\nTo: carol@example.com\r\nBcc: x@example.org\r\nSubject: FW\r\n"
              b"Date: Mon, 04 Mar 2024 10:00:00 +0000\r\nMessage-ID: <fw@example.com>\r\n"
              b"Content-Type: text/plain\r\n\r\nmy own full text\r\n")
    for mode in ("forward", "reply"):
        out = run(client, mode=mode, replace_mime=True)
        assert out.message == client.replace(b"Bcc: x@example.org\r\n", b"")
        assert out.sent_copy == client
        assert out.recipients == ("carol@example.com", "x@example.org")


def test_forward_of_an_original_too_deep_to_read_is_refused() -> None:
    deep = b"To: me@example.com\r\n"
    for level in range(60):
        deep += b"Content-Type: multipart/mixed; boundary=l%d\r\n\r\n--l%d\r\n" % (level, level)
    assert status_of(b"To: a@example.com\r\n\r\nx", mode="forward", original=deep) == ComposeStatus.REPLY_FAILED


# --- charsets ---------------------------------------------------------------------------------------------

def test_8bit_and_non_utf8_charsets_are_decoded_and_reencoded_as_utf8() -> None:
    client = (b"To: a@example.com\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
              b"Content-Transfer-Encoding: 8bit\r\n\r\nGr\xfc\xdfe aus K\xf6ln\r\n")
    original = ("To: me@example.com\r\nSubject: =?koi8-r?b?8NLJ18XU?=\r\n"
                "Content-Type: text/plain; charset=koi8-r\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                "Привет из Москвы\r\n").encode("koi8-r")
    out = reply(client, original)
    message = message_from_bytes(out.message)
    assert message.get_content_charset() == "utf-8"
    plain = message.get_payload(decode=True).decode("utf-8")
    assert plain.startswith("Grüße aus Köln\r\n")
    assert "Subject: Привет\r\n" in plain and plain.endswith("Привет из Москвы\r\n")
    assert max(out.message) < 0x80   # quoted-printable: the rewritten message is 7-bit


def test_unknown_and_lying_charsets_fall_back_without_failing() -> None:
    for charset in (b"x-unknown", b"base64", b"idna", b"utf-8\x01", b"us-ascii"):
        client = (b"To: a@example.com\r\nContent-Type: text/plain; charset=" + charset + b"\r\n\r\n"
                  b"caf\xc3\xa9\r\n")
        plain = text_parts(reply(client).message)["plain"]
        assert plain.startswith("café\r\n")


def test_rfc2231_parameters_the_stdlib_cannot_decode_are_refused_cleanly() -> None:
    client = (b"To: a@example.com\r\nContent-Type: multipart/mixed; boundary*=idna''%ff%fe\r\n\r\n--x\r\n")
    assert status_of(client, mode="reply", original=ORIGINAL) == ComposeStatus.INVALID_MIME
    assert run(client).message.endswith(b"\r\n\r\n--x\r\n")   # sent as is: it is not parsed


# --- hostile structures and cost -----------------------------------------------------------------------------

def nested(levels: int) -> bytes:
    head = tail = b""
    for level in range(levels):
        head += b"Content-Type: multipart/mixed; boundary=n%d\r\n\r\n--n%d\r\n" % (level, level)
        tail = b"\r\n--n%d--\r\n" % level + tail
    return head + b"Content-Type: text/plain\r\n\r\ndeep" + tail


def test_nesting_is_bounded_before_and_after_parsing() -> None:
    ok = reply(b"To: a@example.com\r\n" + nested(45))
    assert text_parts(ok.message)["plain"].startswith("deep\r\n\r\n-----Original Message-----")
    # n1 is a prefix of n10...n19 (RFC 2046 5.1.1 forbids that): such boundaries are replaced, consistently
    assert ok.message.count(b"=_casgate_") == 2 * 4 + 4
    for levels in (51, 99, 5000):
        assert status_of(b"To: a@example.com\r\n" + nested(levels), mode="reply", original=ORIGINAL) == 107
    digest = b"Content-Type: text/plain\r\n\r\ndeep"
    for level in range(30):   # a digest's parts default to message/rfc822: two levels per declaration
        digest = (b"Content-Type: multipart/digest; boundary=d%d\r\n\r\n--d%d\r\n\r\n" % (level, level) + digest
                  + b"\r\n--d%d--\r\n" % level)
    assert status_of(b"To: a@example.com\r\n" + digest, mode="reply", original=ORIGINAL) == 107
    assert status_of(b"To: a@example.com\r\n" + nested(3000), mode="reply", original=ORIGINAL) == 107
    assert run(b"To: a@example.com\r\n" + nested(5000)).recipients == ("a@example.com",)   # sent, not parsed


def test_pathological_inputs_cost_linear_time() -> None:
    units = [b"<", b"<a", b"<!--", b"<meta charset=", b"&amp;", b"--x\r\n", b"a\r\n"]
    for unit in units:
        small = unit * (100_000 // len(unit))
        large = unit * (800_000 // len(unit))
        timings = []
        for filler in (small, large):
            original = b"To: me@example.com\r\nContent-Type: text/html\r\n\r\n" + filler
            client = b"To: a@example.com\r\nContent-Type: text/html\r\n\r\n" + filler
            started = time.perf_counter()
            reply(client, original)
            timings.append(time.perf_counter() - started)
        assert timings[1] < 8 * 1.5 * timings[0] + 0.05, (unit, timings)


def test_huge_address_header_is_refused_quickly() -> None:
    filler = b"To: " + b",\r\n ".join([b"(c)"] * 120_000) + b"\r\n\r\nx"
    started = time.perf_counter()
    assert status_of(filler) == ComposeStatus.SUBMISSION_FAILED
    assert time.perf_counter() - started < 1.0


def test_header_larger_than_a_mebibyte_is_refused() -> None:
    header = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 900) for i in range(1200))
    assert status_of(b"To: a@example.com\r\n" + header + b"\r\nx") == ComposeStatus.INVALID_MIME


# --- fuzzing ------------------------------------------------------------------------------------------------

SEEDS = [SEND, ORIGINAL, ORIGINAL_WITH_FILES,
         b"To: a@example.com\r\nContent-Type: multipart/alternative; boundary=q\r\n\r\n--q\r\n"
         b"Content-Type: text/plain\r\n\r\nx\r\n--q\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--q--\r\n"]


def check_result(out: Outgoing, rewritten: bool = False) -> None:
    """What every successful result must satisfy, whatever went in."""
    head_only = BytesParser(policy=compat32).parsebytes(out.message, headersonly=True)
    assert head_only["Bcc"] is None and head_only["Resent-Bcc"] is None
    if rewritten:   # a body we rebuilt must parse as MIME; a body sent as is was never ours to judge
        assert isinstance(parsed(out.message), Message)
    assert out.recipients and len(out.recipients) <= MAX_RECIPIENTS
    assert len({r.casefold() for r in out.recipients}) == len(out.recipients)
    copy = parsed(out.sent_copy)
    values = [str(v).replace("\r\n", "") for k, v in copy.raw_items() if k.lower() in ("to", "cc", "bcc")]
    again = [address for _, address in getaddresses(values) if address]
    assert {a.casefold() for a in again} == {
        r.encode("utf-8").decode("ascii", "surrogateescape").casefold() for r in out.recipients}
    head = out.message.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert out.message.count(b"\r") == out.message.count(b"\r\n") == out.message.count(b"\n")


def attempt(mime: bytes, **options: object) -> None:
    try:
        out = run(mime, **options)
    except ComposeError as error:
        assert isinstance(error.status, ComposeStatus)
        return
    check_result(out, rewritten=options.get("mode", "send") != "send" and not options.get("replace_mime"))


def test_brackets_outside_a_domain_literal_are_no_address():
    """Found by the fuzz test below: a folded "[" made "a@example.com[]" a recipient that the Sent copy's own
    parse read differently."""
    for mime in (b"To: a@example.com\r\n [ ", b"To: a@exa[mple.com\r\n"):
        with pytest.raises(ComposeError) as caught:
            run(mime, mode="send", original=ORIGINAL_WITH_FILES)
        assert caught.value.status is ComposeStatus.RECIPIENT_UNRESOLVED
    out = run(b"To: a@[192.0.2.1]\r\nSubject: literal\r\n\r\nhi\r\n", mode="send")
    assert out.recipients == ("a@[192.0.2.1]",)  # a domain literal is fine
    check_result(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from(["send", "reply", "forward"]))
def test_fuzz_arbitrary_bytes(data: bytes, mode: str) -> None:
    attempt(b"To: a@example.com\r\n" + data, mode=mode, original=ORIGINAL_WITH_FILES)
    attempt(data, mode=mode, original=data)
    multipart = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + data
    attempt(b"To: a@example.com\r\n" + multipart, mode=mode, original=multipart)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    alphabet = st.sampled_from([b"\r", b"\n", b"\r\n", b":", b",", b";", b"<", b">", b"\"", b"@", b" ", b"\x00",
                                b"\xff", b"--", b"Bcc: x@y.z\r\n", b"=?utf-8?b?", b"boundary=", b"multipart/"])
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            data[position:position] = draw(alphabet | st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position:position + draw(st.integers(1, 20))]
        else:
            data[position:position + 1] = draw(alphabet)
    return bytes(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), mutated(), st.sampled_from(["send", "reply", "forward"]), st.booleans())
def test_fuzz_mutated_messages(client: bytes, original: bytes, mode: str, replace_mime: bool) -> None:
    attempt(client, mode=mode, original=original, replace_mime=replace_mime)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(st.characters(codec="utf-8"), max_size=30), min_size=1, max_size=6),
       st.text(max_size=40))
def test_fuzz_address_fields_and_display_names(values: list[str], display_name: str) -> None:
    header = b"".join(b"%s: %s\r\n" % (name, value.encode("utf-8"))
                      for name, value in zip([b"To", b"Cc", b"Bcc", b"Sender", b"Reply-To", b"From"], values))
    try:
        out = run(header + b"\r\nbody", display_name=display_name)
    except ComposeError as error:
        assert error.status in (107, 116, 119, 120)
        return
    check_result(out)


# --- random well-formed MIME trees ------------------------------------------------------------------------

CHARSETS = [("utf-8", "utf-8"), ("iso-8859-1", "latin-1"), ("koi8-r", "koi8-r"), ("shift_jis", "shift_jis")]
WORDS = st.text(st.sampled_from("abcXYZ019 .,;-=<>&\u00e9\u00fc\u00df\u041f\u0440\u0438\u65e5\u672c"), max_size=30)


@st.composite
def entity(draw: st.DrawFn, depth: int = 0) -> tuple[bytes, list[bytes]]:
    """A MIME entity (CRLF, no final line end) and the raw parts a forward must copy from it."""
    kinds = ["plain", "html", "file", "message"] + (["multipart"] * 2 if depth < 3 else [])
    kind = draw(st.sampled_from(kinds))
    if kind in ("plain", "html"):
        charset, codec = draw(st.sampled_from(CHARSETS))
        text = draw(WORDS).encode(codec, "replace")
        cte, body = draw(st.sampled_from([("8bit", text), ("base64", base64.encodebytes(text).rstrip())]))
        head = b"Content-Type: text/%s; charset=%s\r\nContent-Transfer-Encoding: %s\r\n" % (
            kind.encode(), charset.encode(), cte.encode())
        return head + b"\r\n" + body.replace(b"\n", b"\r\n"), []
    if kind == "file":
        data = draw(st.binary(max_size=120))
        name = draw(st.sampled_from([b"a.bin", b"r\xc3\xa9sum\xc3\xa9.pdf", b"x y.zip"]))
        part = (b"Content-Type: application/octet-stream; name=\"%s\"\r\nContent-Disposition: attachment; "
                b"filename=\"%s\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" % (name, name)
                + base64.encodebytes(data).rstrip().replace(b"\n", b"\r\n"))
        return part, [part]
    if kind == "message":
        inner, _ = draw(entity(depth + 1))
        part = b"Content-Type: message/rfc822\r\n\r\nSubject: enclosed\r\n" + inner
        return part, [part]
    boundary = b"=_b" + draw(st.uuids()).hex.encode()
    subtype = draw(st.sampled_from([b"mixed", b"alternative", b"related"]))
    children = draw(st.lists(entity(depth + 1), min_size=1, max_size=3))
    body = b"--" + boundary + b"\r\n" + (b"\r\n--" + boundary + b"\r\n").join(c for c, _ in children)
    body += b"\r\n--" + boundary + b"--"
    head = b"Content-Type: multipart/%s; boundary=\"%s\"\r\n" % (subtype, boundary)
    return head + b"\r\n" + body, [raw for _, found in children for raw in found]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entity(), entity(), st.sampled_from(["reply", "forward"]))
def test_random_trees_quote_and_forward_byte_for_byte(client: tuple[bytes, list[bytes]],
                                                      original: tuple[bytes, list[bytes]], mode: str) -> None:
    client_entity, client_parts = client
    original_entity, original_parts = original
    out = run(b"To: a@example.com\r\nSubject: s\r\n" + client_entity + b"\r\n", mode=mode,
              original=b"From: o@example.com\r\nSubject: orig\r\n" + original_entity + b"\r\n")
    check_result(out, rewritten=True)
    for raw in client_parts:   # the client's own attachments are never rewritten
        assert raw in out.message
    for raw in original_parts:
        if mode == "forward":
            assert raw in out.message
        elif raw not in client_entity:
            assert raw not in out.message   # a reply quotes text, never attachments
    texts = [part.get_payload(decode=True) for part in message_from_bytes(out.message).walk()
             if part.get_content_maintype() == "text"]
    assert any(b"-----Original Message-----" in text for text in texts)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entity())
def test_random_trees_are_sent_unchanged(client: tuple[bytes, list[bytes]]) -> None:
    mime = (b"From: me@example.com\r\nTo: a@example.com\r\nDate: Mon, 04 Mar 2024 10:00:00 +0000\r\n"
            b"Message-ID: <r@example.com>\r\n" + client[0] + b"\r\n")
    assert run(mime).message == mime
    assert run(mime, mode="forward", replace_mime=True).sent_copy == mime
