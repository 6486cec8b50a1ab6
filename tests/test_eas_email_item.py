"""RFC 5322 message -> ActiveSync Email item: known answers, body choice and truncation, MIME, flags,
conversations, hostile messages and fuzzing."""

from __future__ import annotations

import base64
import hashlib
import quopri
import statistics
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.activesync.email_item import (
    MAX_ATTACHMENTS, BodyOptions, BodyPreference, ItemError, conversation_id, email_application_data,
    parse_options)
from gateway.activesync.wbxml import Element, decode, encode, from_xml, to_xml

VERSIONS = ("2.5", "12.0", "12.1", "14.0", "14.1", "16.0", "16.1")

SIMPLE = (b"From: Alice Example <alice@example.com>\r\n"
          b"To: Bob <bob@example.com>\r\n"
          b"Subject: Lunch\r\n"
          b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n"
          b"Message-ID: <lunch-1@example.com>\r\n"
          b"MIME-Version: 1.0\r\n"
          b"Content-Type: text/plain; charset=us-ascii\r\n"
          b"\r\n"
          b"See you at noon.\r\n")

SIMPLE_141 = """<?xml version="1.0" encoding="utf-8"?>
<ApplicationData xmlns="AirSync" xmlns:email="Email" xmlns:airsyncbase="AirSyncBase" xmlns:email2="Email2" \
xmlns:wbxml="urn:casgate:wbxml">
  <email:To>"Bob" &lt;bob@example.com&gt;</email:To>
  <email:From>"Alice Example" &lt;alice@example.com&gt;</email:From>
  <email:Subject>Lunch</email:Subject>
  <email:DateReceived>2024-01-01T12:00:00.000Z</email:DateReceived>
  <email:DisplayTo>Bob</email:DisplayTo>
  <email:ThreadTopic>Lunch</email:ThreadTopic>
  <email:Importance>1</email:Importance>
  <email:Read>1</email:Read>
  <airsyncbase:Body>
    <airsyncbase:Type>1</airsyncbase:Type>
    <airsyncbase:EstimatedDataSize>18</airsyncbase:EstimatedDataSize>
    <airsyncbase:Truncated>0</airsyncbase:Truncated>
    <airsyncbase:Data>See you at noon.&#13;
</airsyncbase:Data>
  </airsyncbase:Body>
  <email:MessageClass>IPM.Note</email:MessageClass>
  <email:InternetCPID>65001</email:InternetCPID>
  <email:Flag/>
  <email:ContentClass>urn:content-classes:message</email:ContentClass>
  <airsyncbase:NativeBodyType>1</airsyncbase:NativeBodyType>
  <email2:ConversationId wbxml:opaque="base64">eOxOdo5BgAiWATwS0CYJIQ==</email2:ConversationId>
  <email2:ConversationIndex wbxml:opaque="base64">Ado8qgs=</email2:ConversationIndex>
  <email:Categories/>
</ApplicationData>
"""

SIMPLE_25 = """<?xml version="1.0" encoding="utf-8"?>
<ApplicationData xmlns="AirSync" xmlns:email="Email">
  <email:To>"Bob" &lt;bob@example.com&gt;</email:To>
  <email:From>"Alice Example" &lt;alice@example.com&gt;</email:From>
  <email:Subject>Lunch</email:Subject>
  <email:DateReceived>2024-01-01T12:00:00.000Z</email:DateReceived>
  <email:DisplayTo>Bob</email:DisplayTo>
  <email:ThreadTopic>Lunch</email:ThreadTopic>
  <email:Importance>1</email:Importance>
  <email:Read>0</email:Read>
  <email:Body>See you at noon.&#13;
</email:Body>
  <email:BodyTruncated>0</email:BodyTruncated>
  <email:MessageClass>IPM.Note</email:MessageClass>
</ApplicationData>
"""


def qp(text: str, charset: str = "utf-8") -> bytes:
    return quopri.encodestring(text.replace("\r\n", "\n").encode(charset)).replace(b"\n", b"\r\n")


ALTERNATIVE = (b"From: carol@example.com\r\nTo: dave@example.com\r\nSubject: News\r\n"
               b"Date: Tue, 02 Jan 2024 08:30:00 -0500\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/alternative; boundary=\"=_alt\"\r\n\r\n"
               b"This is a multi-part message.\r\n"
               b"--=_alt\r\nContent-Type: text/plain; charset=utf-8\r\n"
               b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
               + qp("Plain café text\r\nsecond line") + b"\r\n"
               b"--=_alt\r\nContent-Type: text/html; charset=utf-8\r\n"
               b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
               + qp("<html><body><p>HTML <b>café</b> text</p></body></html>") + b"\r\n"
               b"--=_alt--\r\n")

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(100)))
PDF = b"%PDF-1.4 " + bytes(range(256)) * 4
WITH_ATTACHMENTS = (
    b"From: Erin <erin@example.com>\r\nTo: frank@example.com\r\nSubject: Report\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
    b"--outer\r\nContent-Type: multipart/related; boundary=\"rel\"; type=\"multipart/alternative\"\r\n\r\n"
    b"--rel\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n"
    b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the chart.\r\n"
    b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>See <img src=\"cid:chart@x\"></p>\r\n"
    b"--alt--\r\n"
    b"--rel\r\nContent-Type: image/png\r\nContent-ID: <chart@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + PNG + b"\r\n--rel--\r\n"
    b"--outer\r\nContent-Type: application/pdf; name=\"old.pdf\"\r\n"
    b"Content-Disposition: attachment; filename=\"=?utf-8?q?R=C3=A9sum=C3=A9?=.pdf\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(PDF).replace(b"\n", b"\r\n") +
    b"--outer\r\nContent-Type: message/rfc822\r\n\r\nSubject: Forwarded thing\r\nFrom: x@example.com\r\n\r\nbody\r\n"
    b"--outer--\r\n")


def item(raw: bytes, version: str = "14.1", *prefs: BodyPreference, **kwargs) -> Element:
    options = kwargs.pop("options", None) or BodyOptions(tuple(prefs))
    return email_application_data(raw, version=version, options=options, **kwargs)


def child(element: Element, name: str, ns: str = "Email") -> Element:
    found = element.find(name, ns)
    assert found is not None, f"no {ns}:{name} in {[c.name for c in element.children]}"
    return found


def text(element: Element, name: str, ns: str = "Email") -> str | None:
    return element.text_of(name, ns)


def body(element: Element) -> Element:
    return child(element, "Body", "AirSyncBase")


# --- known answers -------------------------------------------------------------------------------------

def test_simple_text_message_14_1_known_answer():
    result = item(SIMPLE, "14.1", BodyPreference(1, 32768), flags=["\\Seen"])
    assert to_xml(result) == SIMPLE_141
    assert from_xml(SIMPLE_141) == result  # the view is exact, so the tree is too
    decode(encode(result))


def test_simple_text_message_2_5_known_answer():
    assert to_xml(item(SIMPLE, "2.5", options=BodyOptions(truncation=512))) == SIMPLE_25


def test_conversation_values_of_the_known_answer_are_what_the_specs_say():
    # ConversationId: MD5 of the root Message-ID; ConversationIndex: FILETIME of the Date header >> 24 (5 bytes).
    assert conversation_id(SIMPLE) == hashlib.md5(b"message-id:lunch-1@example.com").digest()
    assert base64.b64decode("eOxOdo5BgAiWATwS0CYJIQ==") == conversation_id(SIMPLE)
    unix = datetime(2024, 1, 1, 12, tzinfo=timezone.utc).timestamp()
    filetime = int(unix + 11_644_473_600) * 10_000_000
    assert base64.b64decode("Ado8qgs=") == (filetime >> 24).to_bytes(5, "big")


def test_shape_differs_between_2_5_12_1_and_14_1():
    for version in ("2.5", "12.1", "14.1"):
        result = item(WITH_ATTACHMENTS, version, BodyPreference(2), flags=["\\Flagged", "Work"])
        names = {(c.ns, c.name) for c in result.children}
        modern = version != "2.5"
        assert (("AirSyncBase", "Body") in names) is modern
        assert (("Email", "Body") in names) is not modern
        assert (("AirSyncBase", "Attachments") in names) is modern
        assert (("Email", "Attachments") in names) is not modern
        assert (("Email", "Flag") in names) is modern
        assert (("AirSyncBase", "NativeBodyType") in names) is modern
        assert (("Email2", "ConversationId") in names) is (version == "14.1")
        assert (("Email", "Categories") in names) is (version == "14.1")
        encode(result)


def test_2_5_attachment_uses_email_namespace_and_attname():
    result = item(WITH_ATTACHMENTS, "2.5", options=BodyOptions(), file_reference=lambda p: f"att:{p}")
    attachments = child(result, "Attachments").findall("Attachment")
    assert [a.text_of("AttName") for a in attachments] == ["att:1.2", "att:2", "att:3"]
    assert attachments[1].text_of("DisplayName") == "Résumé.pdf"
    assert attachments[1].text_of("AttSize") == str(len(PDF))
    assert attachments[2].text_of("AttMethod") == "5"


def test_2_5_body_truncation_reports_the_full_size():
    result = item(ALTERNATIVE, "2.5", options=BodyOptions(truncation=5))
    assert [c.name for c in result.children if c.name.startswith("Body")] == ["Body", "BodySize", "BodyTruncated"]
    assert text(result, "Body") == "Plain"
    assert text(result, "BodySize") == str(len("Plain café text\r\nsecond line".encode()))
    assert text(result, "BodyTruncated") == "1"


# --- bodies --------------------------------------------------------------------------------------------

def test_html_and_text_alternative():
    html_item = item(ALTERNATIVE, "14.1", BodyPreference(2))
    assert text(body(html_item), "Type", "AirSyncBase") == "2"
    assert text(body(html_item), "Data", "AirSyncBase") == "<html><body><p>HTML <b>café</b> text</p></body></html>"
    assert text(html_item, "NativeBodyType", "AirSyncBase") == "2"
    plain_item = item(ALTERNATIVE, "14.1", BodyPreference(1))
    assert text(body(plain_item), "Data", "AirSyncBase") == "Plain café text\r\nsecond line"
    assert text(plain_item, "DateReceived") == "2024-01-02T13:30:00.000Z"
    assert html_item.find("Attachments", "AirSyncBase") is None


def test_preference_order_html_preferred_and_text_fallback():
    # The client's first preference wins when the message can satisfy it ...
    assert text(body(item(ALTERNATIVE, "14.1", BodyPreference(2), BodyPreference(1))), "Type", "AirSyncBase") == "2"
    assert text(body(item(ALTERNATIVE, "14.1", BodyPreference(1), BodyPreference(2))), "Type", "AirSyncBase") == "1"
    # ... RTF cannot be made, so the next preference is used ...
    assert text(body(item(ALTERNATIVE, "14.1", BodyPreference(3), BodyPreference(1))), "Type", "AirSyncBase") == "1"
    # ... a plain-only message still gets HTML, built from its text (escaped, <br> between lines) ...
    built = text(body(item(b"Subject: x\r\n\r\na < b & c\r\nnext", "14.1", BodyPreference(2), BodyPreference(1))),
                 "Data", "AirSyncBase")
    assert "a &lt; b &amp; c<br>\r\nnext" in built and built.startswith("<html>")
    # ... and HTML that is too large for AllOrNone falls back to the plain text that fits.
    result = body(item(ALTERNATIVE, "14.1", BodyPreference(2, 20, all_or_none=True), BodyPreference(1, 100)))
    assert text(result, "Type", "AirSyncBase") == "1"
    assert text(result, "Truncated", "AirSyncBase") == "0"


def test_plain_text_from_html_only_message():
    raw = (b"Subject: h\r\nContent-Type: text/html; charset=windows-1252\r\n\r\n"
           b"<html><head><title>T</title><style>p{}</style><script>alert(1)</script></head>"
           b"<body><p>Caf\xe9&nbsp;<b>menu</b>\r\n   today</p><ul><li>one</li><li>two</li></ul>"
           b"x&lt;y<br>end</body></html>")
    result = item(raw, "14.1", BodyPreference(1, None, preview=12))
    assert text(body(result), "Data", "AirSyncBase") == "Café menu today\r\n\r\none\r\n\r\ntwo\r\n\r\nx<y\r\nend"
    assert text(body(result), "Preview", "AirSyncBase") == "Café menu to"
    assert text(result, "NativeBodyType", "AirSyncBase") == "2"


def test_truncation_never_cuts_a_utf8_sequence():
    raw = "Subject: t\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n€€€".encode()
    for limit, expected in ((0, ""), (2, ""), (3, "€"), (4, "€"), (5, "€"), (6, "€€"), (9, "€€€"), (10, "€€€")):
        result = body(item(raw, "14.1", BodyPreference(1, limit)))
        assert text(result, "EstimatedDataSize", "AirSyncBase") == "9"
        assert (text(result, "Data", "AirSyncBase") or "") == expected
        assert text(result, "Truncated", "AirSyncBase") == ("1" if limit < 9 else "0")
    cut = body(item(raw, "14.1", BodyPreference(1, 4)))
    assert len(cut.find("Data", "AirSyncBase").text.encode()) == 3


def test_all_or_none_sends_no_data_when_nothing_fits():
    result = body(item(ALTERNATIVE, "14.1", BodyPreference(2, 10, all_or_none=True)))
    assert result.find("Data", "AirSyncBase") is None
    assert text(result, "Truncated", "AirSyncBase") == "1"
    assert int(text(result, "EstimatedDataSize", "AirSyncBase")) > 10
    fits = body(item(ALTERNATIVE, "14.1", BodyPreference(2, 10_000, all_or_none=True)))
    assert text(fits, "Truncated", "AirSyncBase") == "0" and fits.find("Data", "AirSyncBase") is not None


def test_preview_only_from_14_0():
    assert body(item(ALTERNATIVE, "12.1", BodyPreference(2, preview=50))).find("Preview", "AirSyncBase") is None
    preview = text(body(item(ALTERNATIVE, "14.0", BodyPreference(2, preview=50))), "Preview", "AirSyncBase")
    assert preview == "Plain café text second line"


def test_non_utf8_charsets():
    raw = (b"Subject: =?windows-1252?q?=80uro?= =?iso-8859-1?b?R3L832U=?=\r\n"
           b"From: =?ISO-8859-1?Q?Andr=E9?= <andre@example.com>\r\n"
           b"Content-Type: text/plain; charset=\"ISO-8859-1\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           + qp("Grüße, André", "latin-1"))
    result = item(raw, "14.1", BodyPreference(1))
    assert text(result, "Subject") == "€uroGrüße"
    assert text(result, "From") == '"André" <andre@example.com>'
    assert text(body(result), "Data", "AirSyncBase") == "Grüße, André"
    japanese = "こんにちは".encode("iso-2022-jp")
    jp = item(b"Content-Type: text/plain; charset=iso-2022-jp\r\n\r\n" + japanese, "14.1", BodyPreference(1))
    assert text(body(jp), "Data", "AirSyncBase") == "こんにちは"


def test_charset_fallbacks():
    def plain(raw: bytes) -> str:
        return text(body(item(raw, "14.1", BodyPreference(1))), "Data", "AirSyncBase")
    # Declared us-ascii but UTF-8 inside: read as UTF-8.
    assert plain("Content-Type: text/plain; charset=us-ascii\r\n\r\nnaïve".encode()) == "naïve"
    # No charset, not UTF-8: Latin-1.
    assert plain(b"\r\ncaf\xe9 cr\xe8me br\xfbl\xe9e") == "café crème brûlée"
    # Unknown charset name: UTF-8.
    assert plain("Content-Type: text/plain; charset=x-nonsense\r\n\r\nü".encode()) == "ü"
    # Mostly UTF-8 with one broken byte: UTF-8 with a replacement character.
    assert plain(b"\r\n" + "ä".encode() * 200 + b"\xff") == "ä" * 200 + "\ufffd"
    # An encoded word whose UTF-8 character is split across two words.
    split = item(b"Subject: =?utf-8?b?w6Q=?= =?utf-8?q?=C3?= =?utf-8?q?=B6?=\r\n\r\n", "14.1", BodyPreference(1))
    assert text(split, "Subject") == "äö"


def test_broken_transfer_encodings_never_raise():
    for encoding in (b"base64", b"quoted-printable", b"x-uuencode", b"\x00"):
        raw = b"Content-Transfer-Encoding: " + encoding + b"\r\n\r\n=A\r\n====!!\x00\xff*=ZZ=\r\nQUJD=RA"
        result = item(raw, "14.1", BodyPreference(1))
        assert "\x00" not in (text(body(result), "Data", "AirSyncBase") or "")
        encode(result)


# --- MIME ----------------------------------------------------------------------------------------------

def test_mime_body_type_4_is_the_exact_raw_bytes():
    raw = WITH_ATTACHMENTS + b"\xff\xfe 8-bit trailer"
    data = child(body(item(raw, "14.1", BodyPreference(4))), "Data", "AirSyncBase")
    assert data.opaque == raw and data.text is None
    assert text(body(item(raw, "14.1", BodyPreference(4))), "EstimatedDataSize", "AirSyncBase") == str(len(raw))
    truncated = body(item(raw, "14.1", BodyPreference(4, 100)))
    assert truncated.find("Data", "AirSyncBase").opaque == raw[:100]
    assert text(truncated, "Truncated", "AirSyncBase") == "1"


def test_mime_support_2_sends_mime_even_when_html_is_preferred():
    result = body(item(ALTERNATIVE, "14.1", options=BodyOptions((BodyPreference(2),), mime_support=2)))
    assert text(result, "Type", "AirSyncBase") == "4"
    assert result.find("Data", "AirSyncBase").opaque == ALTERNATIVE


def test_mime_support_2_in_2_5_sends_mimedata():
    result = item(ALTERNATIVE, "2.5", options=BodyOptions(mime_support=2))
    assert child(result, "MIMEData").opaque == ALTERNATIVE
    assert text(result, "MIMESize") == str(len(ALTERNATIVE)) and text(result, "MIMETruncated") == "0"
    assert result.find("Body") is None
    cut = item(ALTERNATIVE, "2.5", options=BodyOptions(mime_support=2, mime_truncation=50))
    assert child(cut, "MIMEData").opaque == ALTERNATIVE[:50] and text(cut, "MIMETruncated") == "1"


def test_mime_support_1_only_for_smime():
    signed = (b"Subject: signed\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\";"
              b" micalg=sha-256; boundary=s\r\n\r\n--s\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
              b"--s\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\r\n--s--\r\n")
    options = BodyOptions((BodyPreference(4), BodyPreference(2)), mime_support=1)
    smime = item(signed, "14.1", options=options)
    assert text(body(smime), "Type", "AirSyncBase") == "4"
    assert text(smime, "MessageClass") == "IPM.Note.SMIME.MultipartSigned"
    plain = item(ALTERNATIVE, "14.1", options=options)
    assert text(body(plain), "Type", "AirSyncBase") == "2"
    encrypted = b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m\r\n\r\nMIAG"
    assert text(item(encrypted, "14.1", BodyPreference(1)), "MessageClass") == "IPM.Note.SMIME"


# --- attachments ---------------------------------------------------------------------------------------

def test_attachment_and_inline_image():
    seen: list[str] = []

    def reference(path: str) -> str:
        seen.append(path)
        return f"5:42:{path}"

    result = item(WITH_ATTACHMENTS, "14.1", BodyPreference(2), file_reference=reference)
    assert text(body(result), "Data", "AirSyncBase") == '<p>See <img src="cid:chart@x"></p>'
    attachments = child(result, "Attachments", "AirSyncBase").findall("Attachment")
    assert seen == ["1.2", "2", "3"]
    image, pdf, message = attachments
    assert text(image, "DisplayName", "AirSyncBase") == "ATT00001.png"
    assert text(image, "FileReference", "AirSyncBase") == "5:42:1.2"
    assert text(image, "ContentId", "AirSyncBase") == "chart@x"
    assert text(image, "IsInline", "AirSyncBase") == "1"
    assert text(image, "EstimatedDataSize", "AirSyncBase") == "108"
    assert text(image, "Method", "AirSyncBase") == "1"
    assert text(pdf, "DisplayName", "AirSyncBase") == "Résumé.pdf"  # the disposition's filename wins
    assert text(pdf, "EstimatedDataSize", "AirSyncBase") == str(len(PDF))
    assert pdf.find("IsInline", "AirSyncBase") is None
    assert text(message, "DisplayName", "AirSyncBase") == "Forwarded thing.eml"
    assert text(message, "Method", "AirSyncBase") == "5"


def test_rfc2231_filename_and_single_part_attachment():
    raw = (b"Content-Type: application/octet-stream\r\n"
           b"Content-Disposition: attachment; filename*0*=utf-8''%E2%82%AC; filename*1=\"-rate.txt\"\r\n\r\nxyz")
    result = item(raw, "14.1", BodyPreference(1))
    attachment = child(child(result, "Attachments", "AirSyncBase"), "Attachment", "AirSyncBase")
    assert text(attachment, "DisplayName", "AirSyncBase") == "€-rate.txt"
    assert text(attachment, "FileReference", "AirSyncBase") == "1"
    assert text(body(result), "Data", "AirSyncBase") == ""


def test_file_reference_must_return_str():
    with pytest.raises(ItemError):
        item(WITH_ATTACHMENTS, "14.1", BodyPreference(1), file_reference=lambda path: 7)


# --- headers, flags, classes ---------------------------------------------------------------------------

def test_flags_read_flag_and_categories():
    flags = ["\\Seen", "\\Flagged", "\\Answered", "$Forwarded", "$MDNSent", "NonJunk", "$label2", "Project X",
             "project x", "$label9"]
    result = item(SIMPLE, "14.1", BodyPreference(1), flags=flags)
    assert text(result, "Read") == "1"
    flag = child(result, "Flag")
    assert text(flag, "Status") == "2" and text(flag, "FlagType") == "Flag for follow up"
    assert [c.text for c in child(result, "Categories").children] == ["Work", "Project X"]
    unread = item(SIMPLE, "14.1", BodyPreference(1), flags=frozenset({"\\Draft"}))
    assert text(unread, "Read") == "0"
    assert child(unread, "Flag").children == [] and child(unread, "Categories").children == []


def test_addresses_display_to_and_reply_to():
    raw = (b"To: \"Smith, John\" <john@example.com>, =?utf-8?q?J=C3=BCrgen?= <j@example.com>,\r\n"
           b" plain@example.com (Plain Person), undisclosed-recipients:;\r\n"
           b"Cc: team: a@example.com, b@example.com;\r\nReply-To: <list@example.com>\r\nSubject: hi\r\n\r\n")
    result = item(raw, "14.1", BodyPreference(1))
    assert text(result, "To") == ('"Smith, John" <john@example.com>, "Jürgen" <j@example.com>, '
                                  '"Plain Person" <plain@example.com>')
    assert text(result, "DisplayTo") == "Smith, John; Jürgen; Plain Person"
    assert text(result, "Cc") == "a@example.com, b@example.com"
    assert text(result, "ReplyTo") == "list@example.com"
    order = [c.name for c in result.children[:5]]
    assert order == ["To", "Cc", "Subject", "ReplyTo", "DisplayTo"]


@pytest.mark.parametrize("header, expected", [
    (b"Importance: High", "2"), (b"Importance: low", "0"), (b"X-Priority: 1 (Highest)", "2"),
    (b"X-Priority: 5", "0"), (b"X-Priority: 3", "1"), (b"Priority: urgent", "2"), (b"X-Junk: 1", "1")])
def test_importance(header, expected):
    assert text(item(header + b"\r\n\r\nx", "14.1", BodyPreference(1)), "Importance") == expected


def test_meeting_request_message_class():
    raw = (b"Content-Type: multipart/alternative; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\ninvite\r\n"
           b"--m\r\nContent-Type: text/calendar; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.b64encode(b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n") + b"\r\n--m--\r\n")
    assert text(item(raw, "14.1", BodyPreference(1)), "MessageClass") == "IPM.Schedule.Meeting.Request"
    reply = raw.replace(base64.b64encode(b"BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n"),
                        base64.b64encode(b"BEGIN:VCALENDAR\r\nMETHOD:REPLY\r\nEND:VCALENDAR\r\n"))
    assert text(item(reply, "14.1", BodyPreference(1)), "MessageClass") == "IPM.Note"


def test_internal_date_wins_over_date_header_and_naive_means_utc():
    result = item(SIMPLE, "14.1", BodyPreference(1), internal_date=datetime(2024, 3, 4, 5, 6, 7, 890_000))
    assert text(result, "DateReceived") == "2024-03-04T05:06:07.890Z"
    aware = datetime(2024, 3, 4, 7, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    received = text(item(SIMPLE, "14.1", BodyPreference(1), internal_date=aware), "DateReceived")
    assert received == "2024-03-04T05:06:07.000Z"
    assert item(b"Subject: no date\r\n\r\n", "14.1", BodyPreference(1)).find("DateReceived") is None


# --- conversations -------------------------------------------------------------------------------------

ORIGINAL = b"Message-ID: <root@example.com>\r\nSubject: Plans\r\n\r\nLet's plan."
REPLY = (b"Message-ID: <reply1@example.org>\r\nIn-Reply-To: <root@example.com>\r\n"
         b"References: <root@example.com>\r\nSubject: Re: Plans\r\n\r\nOK.")
REPLY_TO_REPLY = (b"Message-ID: <reply2@example.net>\r\nIn-Reply-To: <reply1@example.org>\r\n"
                  b"References: <root@example.com>\r\n <reply1@example.org>\r\nSubject: RE: AW: Plans\r\n\r\nSure.")


def test_conversation_id_same_for_reply_and_original():
    assert len(conversation_id(ORIGINAL)) == 16
    assert conversation_id(ORIGINAL) == conversation_id(REPLY) == conversation_id(REPLY_TO_REPLY)
    assert conversation_id(REPLY.split(b"\r\n\r\n")[0]) == conversation_id(ORIGINAL)  # headers alone will do
    assert conversation_id(SIMPLE) != conversation_id(ORIGINAL)
    in_reply_only = b"In-Reply-To: <root@example.com>\r\nSubject: Re: Plans\r\n\r\n"
    assert conversation_id(in_reply_only) == conversation_id(ORIGINAL)
    assert child(item(REPLY, "14.1", BodyPreference(1)), "ConversationId", "Email2").opaque == conversation_id(ORIGINAL)
    assert text(item(REPLY_TO_REPLY, "14.1", BodyPreference(1)), "ThreadTopic") == "Plans"


def test_conversation_id_falls_back_to_the_normalised_subject():
    forwarded = conversation_id(b"Subject: Fwd: Re: Budget  2024\r\n\r\n")
    assert forwarded == conversation_id(b"Subject: budget 2024\r\n\r\n")
    assert conversation_id(b"Subject: a\r\n\r\n") != conversation_id(b"Subject: b\r\n\r\n")
    assert conversation_id("Subject: str input\r\n\r\n") == conversation_id(b"Subject: str input\r\n\r\n")
    with pytest.raises(ItemError):
        conversation_id(12345)


def test_conversation_index_from_thread_index():
    guid = bytes(range(16))
    thread_index = b"\x01" + b"\x01\xda\x3c\xaa\x0b" + guid + b"\x00\x00\x01\x02\x03"
    raw = b"Thread-Index: " + base64.b64encode(thread_index) + b"\r\nDate: Mon, 01 Jan 2024 12:00:00 +0000\r\n\r\n"
    index = child(item(raw, "14.1", BodyPreference(1)), "ConversationIndex", "Email2").opaque
    assert index == b"\x01\xda\x3c\xaa\x0b" + b"\x00\x00\x01\x02\x03"
    broken = raw.replace(base64.b64encode(thread_index), b"bm90IGFuIGluZGV4")  # wrong length: use the Date
    assert child(item(broken, "14.1", BodyPreference(1)), "ConversationIndex", "Email2").opaque == bytes.fromhex(
        "01da3caa0b")


# --- options -------------------------------------------------------------------------------------------

def test_parse_options_sync_and_itemoperations():
    sync = from_xml("""<Options xmlns="AirSync" xmlns:airsyncbase="AirSyncBase">
        <FilterType>3</FilterType><Conflict>1</Conflict><MIMESupport>1</MIMESupport>
        <MIMETruncation>1</MIMETruncation><Truncation>4</Truncation>
        <airsyncbase:BodyPreference><airsyncbase:Type>2</airsyncbase:Type>
          <airsyncbase:TruncationSize>51200</airsyncbase:TruncationSize>
          <airsyncbase:AllOrNone>1</airsyncbase:AllOrNone><airsyncbase:Preview>255</airsyncbase:Preview>
        </airsyncbase:BodyPreference>
        <airsyncbase:BodyPreference><airsyncbase:Type>1</airsyncbase:Type></airsyncbase:BodyPreference>
        </Options>""")
    assert parse_options(sync, "14.1") == BodyOptions(
        (BodyPreference(2, 51200, True, 255), BodyPreference(1)), mime_support=1, mime_truncation=4096,
        truncation=5120)
    assert parse_options(sync, "12.1").preferences[0].preview is None  # Preview is a 14.0 element
    fetch = from_xml("""<Options xmlns="ItemOperations" xmlns:airsync="AirSync" xmlns:airsyncbase="AirSyncBase">
        <airsync:MIMESupport>2</airsync:MIMESupport>
        <airsyncbase:BodyPreference><airsyncbase:Type>4</airsyncbase:Type></airsyncbase:BodyPreference></Options>""")
    assert parse_options(fetch, "16.1") == BodyOptions((BodyPreference(4),), mime_support=2)
    assert parse_options(None, "2.5") == BodyOptions()


@pytest.mark.parametrize("code, octets", [(0, 0), (1, 4096), (7, 102400), (8, None)])
def test_mime_truncation_codes(code, octets):
    options = Element("AirSync", "Options", [Element("AirSync", "MIMETruncation", text=str(code))])
    assert parse_options(options, "2.5").mime_truncation == octets


@pytest.mark.parametrize("code, octets", [(0, 0), (1, 512), (3, 2048), (8, 102400), (9, None)])
def test_truncation_codes(code, octets):
    options = Element("AirSync", "Options", [Element("AirSync", "Truncation", text=str(code))])
    assert parse_options(options, "2.5").truncation == octets


@pytest.mark.parametrize("xml", [
    "<Options xmlns='AirSync'><MIMESupport>3</MIMESupport></Options>",
    "<Options xmlns='AirSync'><MIMESupport>1</MIMESupport><MIMESupport>1</MIMESupport></Options>",
    "<Options xmlns='AirSync'><MIMETruncation>9</MIMETruncation></Options>",
    "<Options xmlns='AirSync'><Truncation>-1</Truncation></Options>",
    "<Options xmlns='AirSync'><Truncation> 1</Truncation></Options>",
    "<Options xmlns='AirSync'><Truncation/></Options>",
    "<Options xmlns='AirSync' xmlns:b='AirSyncBase'><b:BodyPreference><b:Type>5</b:Type></b:BodyPreference></Options>",
    "<Options xmlns='AirSync' xmlns:b='AirSyncBase'><b:BodyPreference/></Options>",
    "<Options xmlns='AirSync' xmlns:b='AirSyncBase'><b:BodyPreference><b:Type>1</b:Type>"
    "<b:TruncationSize>4294967296</b:TruncationSize></b:BodyPreference></Options>",
    "<Options xmlns='AirSync' xmlns:b='AirSyncBase'><b:BodyPreference><b:Type>1</b:Type><b:Type>2</b:Type>"
    "</b:BodyPreference></Options>",
    "<Options xmlns='AirSync' xmlns:b='AirSyncBase'><b:BodyPreference><b:Type>1</b:Type><b:Preview>256</b:Preview>"
    "</b:BodyPreference></Options>",
    "<Options xmlns='AirSync' xmlns:b='AirSyncBase'><b:BodyPreference><b:Type>2</b:Type></b:BodyPreference>"
    "<b:BodyPreference><b:Type>2</b:Type></b:BodyPreference></Options>",
    "<Collection xmlns='AirSync'/>",
])
def test_parse_options_rejects_bad_values(xml):
    with pytest.raises(ItemError):
        parse_options(from_xml(xml), "14.1")


def test_bad_arguments_raise_item_error():
    options = BodyOptions()
    for call in (
            lambda: email_application_data(SIMPLE, version="13.0", options=options),
            lambda: email_application_data("text", version="14.1", options=options),
            lambda: email_application_data(SIMPLE, version="14.1", options=None),
            lambda: email_application_data(SIMPLE, version="14.1", options=options, flags="\\Seen"),
            lambda: email_application_data(SIMPLE, version="14.1", options=options, flags=[1]),
            lambda: email_application_data(SIMPLE, version="14.1", options=options, internal_date="2024"),
            lambda: email_application_data(SIMPLE, version="14.1", options=options,
                                           internal_date=datetime.max.replace(tzinfo=timezone(timedelta(hours=-1)))),
            lambda: parse_options(None, "1.0"),
            lambda: parse_options("<Options/>", "14.1"),
            lambda: BodyPreference(0),
            lambda: BodyPreference(1, -1),
            lambda: BodyPreference(1, all_or_none=1),
            lambda: BodyOptions([BodyPreference(1)]),
            lambda: BodyOptions(mime_support=3)):
        with pytest.raises(ItemError):
            call()


# --- hostile messages ----------------------------------------------------------------------------------

def timed(raw: bytes, *prefs: BodyPreference, version: str = "14.1") -> tuple[Element, float]:
    start = time.perf_counter()
    result = item(raw, version, *(prefs or (BodyPreference(1, 2048, preview=100),)))
    elapsed = time.perf_counter() - start
    encode(result)
    return result, elapsed


def test_ten_megabyte_message():
    raw = b"Subject: big\r\n\r\n" + (b"0123456789" * 7 + b"abcdef\r\n") * (10_000_000 // 78)
    result, elapsed = timed(raw, BodyPreference(1, 4096))
    assert text(body(result), "Truncated", "AirSyncBase") == "1"
    assert int(text(body(result), "EstimatedDataSize", "AirSyncBase")) == len(raw) - 16
    assert elapsed < 2.0
    mime, elapsed = timed(raw, BodyPreference(4))
    assert body(mime).find("Data", "AirSyncBase").opaque == raw and elapsed < 2.0


def test_ten_thousand_parts_are_listed_up_to_the_cap():
    raw = (b"Content-Type: multipart/mixed; boundary=z\r\n\r\n"
           + b"".join(b"--z\r\nContent-Type: image/png; name=p%d.png\r\n\r\nxx\r\n" % i for i in range(10_000))
           + b"--z--\r\n")
    result, elapsed = timed(raw)
    attachments = child(result, "Attachments", "AirSyncBase").children
    assert len(attachments) == MAX_ATTACHMENTS
    assert text(attachments[-1], "DisplayName", "AirSyncBase") == f"p{MAX_ATTACHMENTS - 1}.png"
    assert elapsed < 2.0


def test_deep_nesting_is_capped():
    levels = 5_000
    raw = (b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
           + b"".join(b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1)
                      for i in range(levels))
           + b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep text\r\n" % levels)
    result, elapsed = timed(raw)
    assert elapsed < 2.0
    assert text(body(result), "Data", "AirSyncBase") == ""  # the text lies below the cap
    nested = b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    same = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + nested * 50_000
    assert timed(same)[1] < 2.0


def test_hostile_headers_and_bytes():
    cases = [
        b"\x00" * 100 + b"Subject: nul\x00s\r\n\r\n\x00body\x00",
        b"Subject: " + b"=?a?q?" * 10_000 + b"\r\nTo: " + b"(" * 50_000 + b"\r\n\r\n",
        b"From: " + b'"' * 50_000 + b"\r\nSubject: =?utf-8?q?" + b"a" * 50_000 + b"\r\n\r\n",
        b"Content-Type: multipart/mixed; " + b'a="b;' * 5_000 + b"\r\n\r\n",
        b"Content-Type: text/plain; charset=punycode\r\n\r\n" + b"a" * 100_000 + b"-\xff",
        b"Content-Type: text/html\r\n\r\n" + b"<div>" * 100_000 + b"<" * 100_000,
        b"To: a@b\r\n" * 200_000 + b"\r\nbody",
        b"Date: Mon, 99 Foo 99999 99:99:99 +9999\r\nX-Priority: \xff\r\nThread-Index: ====\r\n\r\n",
        b"Content-Type: /\r\nContent-Disposition: ;;;=\r\n\r\n",
        b"Content-Type: multipart/alternative; boundary=\"\"\r\n\r\n--\r\n",
    ]
    for raw in cases:
        result, elapsed = timed(raw)
        assert elapsed < 2.0, raw[:40]
        for element in result.iter():
            assert element.text is None or "\x00" not in element.text


def test_typical_message_converts_well_under_two_milliseconds():
    html_part = "".join(f"<p>Paragraph {i} with <a href='https://example.com/{i}'>a link</a> and café.</p>\r\n"
                        for i in range(140))
    text_part = "".join(f"Paragraph {i} with a link and café.\r\n" for i in range(140))
    raw = (b"From: A <a@example.com>\r\nTo: B <b@example.com>\r\nSubject: Newsletter\r\n"
           b"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\nMessage-ID: <n@example.com>\r\n"
           b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           + qp(text_part) + b"\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + qp(html_part) + b"\r\n--b--\r\n")
    assert 15_000 < len(raw) < 22_000
    options = BodyOptions((BodyPreference(2, 32768, preview=255), BodyPreference(1)))
    batches = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            email_application_data(raw, version="14.1", options=options, flags=["\\Seen"])
        batches.append((time.perf_counter() - start) / 20)
    assert statistics.median(batches) < 0.002


# --- fuzzing -------------------------------------------------------------------------------------------

PREFERENCES = st.lists(
    st.builds(BodyPreference, st.sampled_from([1, 2, 3, 4]), st.none() | st.integers(0, 300), st.booleans(),
              st.none() | st.integers(0, 255)),
    max_size=4, unique_by=lambda p: p.type)
OPTIONS = st.builds(BodyOptions, PREFERENCES.map(tuple), st.integers(0, 2), st.none() | st.integers(0, 300),
                    st.none() | st.integers(0, 300))
FLAGS = st.lists(st.sampled_from(["\\Seen", "\\Flagged", "\\Deleted", "$label1", "$Junk", "Work", "\x00", ""])
                 | st.text(max_size=10), max_size=5)


def check(raw: bytes, version: str, options: BodyOptions, flags: list[str]) -> None:
    try:
        result = email_application_data(raw, version=version, options=options, flags=flags,
                                        file_reference=lambda path: "f" + path)
    except ItemError:
        return
    assert (result.ns, result.name) == ("AirSync", "ApplicationData")
    assert decode(encode(result)) == result


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.sampled_from(VERSIONS), OPTIONS, FLAGS)
def test_fuzz_arbitrary_bytes(raw, version, options, flags):
    check(raw, version, options, flags)


HEADER_VALUES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["=?utf-8?b?w6Q=?=", "=?bogus?q?x?=", "=?utf-8?q?=C3?= =?utf-8?q?=A4?=", '"a\\"b" <c@d>, e@f',
                     "undisclosed-recipients:;", "<>", "((((", "Mon, 01 Jan 2024 12:00:00 +0000", "Tue, 31 Feb 0 :",
                     "AQHaPVoQAAECAwQFBgcICQoLDA0ODw==", "high", "1", "<a@b> <c@d>"]),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
HEADERS = st.lists(st.tuples(
    st.sampled_from(["From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "References", "In-Reply-To",
                     "Importance", "X-Priority", "Thread-Index", "Thread-Topic", "Content-ID", "Content-Location",
                     "Content-Disposition", "X-Other"]), HEADER_VALUES), max_size=6)
CHARSETS = st.sampled_from(["utf-8", "iso-8859-1", "windows-1252", "shift_jis", "iso-2022-jp", "utf-16", "utf-7",
                            "us-ascii", "bogus", "idna", "rot13", ""])
ENCODINGS = st.sampled_from([None, "base64", "quoted-printable", "7bit", "8bit", "x-bogus"])
LEAF_TYPES = st.sampled_from(["text/plain", "text/html", "text/calendar; method=REQUEST", "image/png",
                              "application/pdf", "message/rfc822", "application/pkcs7-mime", "bogus"])
BOUNDARIES = st.text(st.sampled_from("ab-=_'()+,./:?"), min_size=1, max_size=8)


def header_block(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}".encode("utf-8", "surrogatepass") + b"\r\n" for name, value in headers)


@st.composite
def leaves(draw) -> bytes:
    headers = draw(HEADERS)
    ctype = draw(LEAF_TYPES)
    charset = draw(CHARSETS)
    encoding = draw(ENCODINGS)
    payload = draw(st.binary(max_size=200) | st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")))
    if encoding == "base64" and draw(st.booleans()):
        payload = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    elif encoding == "quoted-printable" and draw(st.booleans()):
        payload = quopri.encodestring(payload)
    lines = headers + [("Content-Type", f"{ctype}; charset={charset}")]
    if encoding:
        lines.append(("Content-Transfer-Encoding", encoding))
    return header_block(lines) + b"\r\n" + payload


def multiparts(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def build(draw) -> bytes:
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "signed", "digest", "report"]))
        boundary = draw(BOUNDARIES)
        parts = draw(st.lists(children, max_size=4))
        closed = draw(st.booleans())
        head = header_block(draw(HEADERS) + [("Content-Type", f'multipart/{subtype}; boundary="{boundary}"')])
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
        return head + b"\r\npreamble\r\n" + body + (b"--" + boundary.encode() + b"--\r\n" if closed else b"")
    return build()


MESSAGES = st.recursive(leaves(), multiparts, max_leaves=10)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(MESSAGES, st.sampled_from(VERSIONS), OPTIONS, FLAGS,
       st.sampled_from(["none", "lf", "truncate", "nul"]), st.integers(0, 5000))
def test_fuzz_structured_messages(raw, version, options, flags, mutation, at):
    if mutation == "lf":
        raw = raw.replace(b"\r\n", b"\n")
    elif mutation == "truncate":
        raw = raw[:at]
    elif mutation == "nul":
        raw = raw[:at] + b"\x00" + raw[at:]
    check(raw, version, options, flags)
    assert len(conversation_id(raw)) == 16


OPTION_CHILDREN = st.builds(
    lambda ns_name, text: Element(ns_name[0], ns_name[1], text=text),
    st.sampled_from([("AirSync", "MIMESupport"), ("AirSync", "MIMETruncation"), ("AirSync", "Truncation"),
                     ("AirSync", "FilterType"), ("AirSyncBase", "Type"), ("AirSyncBase", "Preview")]),
    st.none() | st.sampled_from(["0", "1", "2", "8", "9", "10", "-1", "", " 1", "٣"]) | st.text(max_size=4))
BODY_PREFERENCES = st.builds(lambda children: Element("AirSyncBase", "BodyPreference", children),
                             st.lists(st.builds(
                                 lambda name, text: Element("AirSyncBase", name, text=text),
                                 st.sampled_from(["Type", "TruncationSize", "AllOrNone", "Preview", "Data"]),
                                 st.none() | st.sampled_from(["0", "1", "2", "4", "5", "255", "256", "4294967296"])),
                                 max_size=4))


@settings(max_examples=200, deadline=None)
@given(st.lists(OPTION_CHILDREN | BODY_PREFERENCES, max_size=6), st.sampled_from(["AirSync", "ItemOperations"]),
       st.sampled_from(VERSIONS))
def test_fuzz_parse_options(children, ns, version):
    try:
        options = parse_options(Element(ns, "Options", children), version)
    except ItemError:
        return
    assert isinstance(options, BodyOptions)
    check(SIMPLE, version, options, [])
