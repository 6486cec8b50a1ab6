"""ActiveSync WBXML codec: specification vectors, every tag of every code page, limits, fuzzing, the XML view."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.activesync import codepages
from gateway.activesync.codepages import PAGES, TOKENS, page_for_namespace, tag_name, tag_token
from gateway.activesync.wbxml import Element, Limits, WbxmlError, decode, encode, from_xml, to_xml

E = Element
HEADER = b"\x03\x01\x6a\x00"

# --- known answers -------------------------------------------------------------------------------------

# MS-ASCMD / MS-ASWBXML: a FolderSync request with SyncKey 0.
FOLDERSYNC_REQUEST = bytes.fromhex("03 01 6A 00 00 07 56 52 03 30 00 01 01")

# MS-ASWBXML section 3.1.5.1.1 example: a Sync response carrying a new contact. The specification's XML:
SPEC_SYNC_XML = """<?xml version="1.0" encoding="utf-8"?>
<Sync xmlns="AirSync" xmlns:airsyncbase="AirSyncBase" xmlns:contacts="Contacts">
  <Collections><Collection><Class>Contacts</Class><SyncKey>2</SyncKey><CollectionId>2</CollectionId>
    <Status>1</Status><Commands><Add><ServerId>2:1</ServerId><ApplicationData>
      <airsyncbase:Body><airsyncbase:Type>1</airsyncbase:Type>
        <airsyncbase:EstimatedDataSize>0</airsyncbase:EstimatedDataSize>
        <airsyncbase:Truncated>1</airsyncbase:Truncated></airsyncbase:Body>
      <contacts:FileAs>Funk, Don</contacts:FileAs><contacts:FirstName>Don</contacts:FirstName>
      <contacts:LastName>Funk</contacts:LastName>
      <airsyncbase:NativeBodyType>1</airsyncbase:NativeBodyType>
  </ApplicationData></Add></Commands></Collection></Collections>
</Sync>"""
# Its WBXML as the specification prints it, up to "FileAs" ...
SPEC_SYNC_PREFIX = bytes.fromhex(
    "03 01 6A 00 45 5C 4F 50 03 43 6F 6E 74 61 63 74 73 00 01 4B 03 32 00 01 52 03 32 00 01 4E 03 31 00 01"
    " 56 47 4D 03 32 3A 31 00 01 5D 00 11 4A 46 03 31 00 01 4C 03 30 00 01 4D 03 31 00 01 01 00 01 5E 03"
    " 46 75 6E 6B")
# ... and the rest worked out by hand: ", Don", FirstName (0x1F), LastName (0x29), back to page 17 for
# NativeBodyType (0x16), then the END of NativeBodyType and of the six open containers.
SPEC_SYNC_RESPONSE = SPEC_SYNC_PREFIX + b", Don\x00\x01" + b"\x5f\x03Don\x00\x01" + b"\x69\x03Funk\x00\x01" \
    + b"\x00\x11\x56\x03\x31\x00\x01" + b"\x01" * 6

# Worked out by hand from the code page tables:
PING_REQUEST = HEADER + b"\x00\x0d\x45" + b"\x48\x0380\x00\x01" + b"\x49\x4a" + b"\x4b\x035\x00\x01" \
    + b"\x4c\x03Email\x00\x01" + b"\x01\x01\x01"
PROVISION_REQUEST = HEADER + b"\x00\x0e\x45\x46\x47\x48\x03MS-EAS-Provisioning-WBXML\x00\x01\x01\x01\x01"
SYNC_REQUEST = (HEADER + b"\x45\x5c\x4f" + b"\x4b\x030\x00\x01" + b"\x52\x035\x00\x01" + b"\x57"
                + b"\x58\x033\x00\x01" + b"\x00\x11\x45" + b"\x46\x032\x00\x01" + b"\x47\x035120\x00\x01" + b"\x01"
                + b"\x00\x00\x62\x030\x00\x01" + b"\x01" + b"\x13" + b"\x01\x01\x01")
MIME = b"Subject: hi\r\n\r\nhello"
SENDMAIL_REQUEST = HEADER + b"\x00\x15\x45" + b"\x51\x031\x00\x01" + b"\x08" + b"\x50\xc3" \
    + bytes((len(MIME),)) + MIME + b"\x01\x01"


def spec_sync_tree() -> Element:
    def a(name: str, text: str) -> Element:
        return E("AirSync", name, text=text)

    def base(name: str, text: str) -> Element:
        return E("AirSyncBase", name, text=text)

    data = E("AirSync", "ApplicationData", [
        E("AirSyncBase", "Body", [base("Type", "1"), base("EstimatedDataSize", "0"), base("Truncated", "1")]),
        E("Contacts", "FileAs", text="Funk, Don"), E("Contacts", "FirstName", text="Don"),
        E("Contacts", "LastName", text="Funk"), base("NativeBodyType", "1")])
    add = E("AirSync", "Add", [a("ServerId", "2:1"), data])
    collection = E("AirSync", "Collection", [a("Class", "Contacts"), a("SyncKey", "2"), a("CollectionId", "2"),
                                              a("Status", "1"), E("AirSync", "Commands", [add])])
    return E("AirSync", "Sync", [E("AirSync", "Collections", [collection])])


VECTORS = {
    "foldersync": (FOLDERSYNC_REQUEST, E("FolderHierarchy", "FolderSync", [E("FolderHierarchy", "SyncKey", text="0")])),
    "spec-sync-response": (SPEC_SYNC_RESPONSE, spec_sync_tree()),
    "ping": (PING_REQUEST, E("Ping", "Ping", [
        E("Ping", "HeartbeatInterval", text="80"),
        E("Ping", "Folders", [E("Ping", "Folder", [E("Ping", "Id", text="5"), E("Ping", "Class", text="Email")])])])),
    "provision": (PROVISION_REQUEST, E("Provision", "Provision", [E("Provision", "Policies", [E("Provision", "Policy", [
        E("Provision", "PolicyType", text="MS-EAS-Provisioning-WBXML")])])])),
    "sync-request": (SYNC_REQUEST, E("AirSync", "Sync", [E("AirSync", "Collections", [E("AirSync", "Collection", [
        E("AirSync", "SyncKey", text="0"), E("AirSync", "CollectionId", text="5"),
        E("AirSync", "Options", [
            E("AirSync", "FilterType", text="3"),
            E("AirSyncBase", "BodyPreference", [E("AirSyncBase", "Type", text="2"),
                                                E("AirSyncBase", "TruncationSize", text="5120")]),
            E("AirSync", "MIMESupport", text="0")]),
        E("AirSync", "GetChanges")])])])),
    "sendmail-opaque": (SENDMAIL_REQUEST, E("ComposeMail", "SendMail", [
        E("ComposeMail", "ClientId", text="1"), E("ComposeMail", "SaveInSentItems"),
        E("ComposeMail", "Mime", opaque=MIME)])),
}


@pytest.mark.parametrize("name", VECTORS)
def test_known_answer_vectors_decode_and_encode_byte_exact(name: str) -> None:
    data, tree = VECTORS[name]
    assert decode(data) == tree
    assert encode(tree) == data


def test_spec_sync_response_bytes_start_as_printed_and_xml_example_encodes_to_them() -> None:
    assert SPEC_SYNC_RESPONSE.startswith(SPEC_SYNC_PREFIX)
    assert from_xml(SPEC_SYNC_XML) == spec_sync_tree()
    assert encode(from_xml(SPEC_SYNC_XML)) == SPEC_SYNC_RESPONSE


def test_multibyte_opaque_length_and_non_ascii_text() -> None:
    blob = bytes(range(256)) * 2  # 512 = 0x84 0x00
    tree = E("Email2", "ConversationId", opaque=blob)
    assert encode(tree) == HEADER + b"\x00\x16\x49\xc3\x84\x00" + blob + b"\x01"
    text = "Grüße, 日本語, emoji \U0001F389"
    tree = E("Email", "Subject", text=text)
    assert encode(tree) == HEADER + b"\x00\x02\x54\x03" + text.encode() + b"\x00\x01"
    assert decode(encode(tree)) == tree


def test_empty_tag_empty_string_and_empty_opaque_are_distinct() -> None:
    empty, blank, no_bytes = (E("AirSync", "SyncKey"), E("AirSync", "SyncKey", text=""),
                              E("AirSync", "SyncKey", opaque=b""))
    assert encode(empty) == HEADER + b"\x0b"
    assert encode(blank) == HEADER + b"\x4b\x03\x00\x01"
    assert encode(no_bytes) == HEADER + b"\x4b\xc3\x00\x01"
    assert [decode(encode(t)) for t in (empty, blank, no_bytes)] == [empty, blank, no_bytes]
    assert decode(HEADER + b"\x4b\x01") == empty  # content flag without content


def test_split_strings_string_table_and_split_utf8_are_joined() -> None:
    assert decode(HEADER + b"\x54\x03ab\x00\x03cd\x00\x01").text == "abcd"  # page 0 0x14 is MoreAvailable
    table_doc = b"\x03\x01\x6a\x09Hi\x00there\x00" + b"\x00\x02\x54\x83\x03\x03 \x00\x83\x00\x01"
    assert decode(table_doc) == E("Email", "Subject", text="there Hi")
    euro = "€".encode()
    assert decode(HEADER + b"\x54\x03" + euro[:1] + b"\x00\x03" + euro[1:] + b"\x00\x01").text == "€"
    assert decode(HEADER + b"\x54\xc3\x01a\xc3\x01b\x01").opaque == b"ab"


# --- every tag of every code page ----------------------------------------------------------------------

ALL_TAGS = sorted(TOKENS, key=lambda key: TOKENS[key])


def test_every_tag_of_every_page_round_trips_byte_exact() -> None:
    count = 0
    for page in PAGES:
        switch = b"" if page.number == 0 else bytes((0, page.number))
        for token, name in enumerate(page.names):
            if name is None:
                continue
            count += 1
            valued = E(page.namespace, name, text="v")
            assert encode(valued) == HEADER + switch + bytes((token | 0x40, 0x03)) + b"v\x00\x01"
            assert decode(encode(valued)) == valued
            empty = E(page.namespace, name)
            assert encode(empty) == HEADER + switch + bytes((token,))
            assert decode(encode(empty)) == empty
    assert count == len(TOKENS) > 600


def make_leaf(tag: tuple[str, str], value: str | bytes | None) -> Element:
    return E(tag[0], tag[1], text=value if isinstance(value, str) else None,
             opaque=value if isinstance(value, bytes) else None)


TAGS = st.sampled_from(ALL_TAGS)


def trees(texts: st.SearchStrategy[str], max_leaves: int) -> st.SearchStrategy[Element]:
    """Random trees of tags from every page, leaves holding nothing, a text from ``texts``, or bytes."""
    leaves = st.builds(make_leaf, TAGS, st.none() | texts | st.binary(max_size=24))
    return st.recursive(leaves, lambda children: st.builds(lambda tag, kids: E(tag[0], tag[1], kids), TAGS,
                                                           st.lists(children, min_size=1, max_size=4)),
                        max_leaves=max_leaves)


# Any text WBXML can carry: every Unicode scalar value but NUL, the empty string included.
TREES = trees(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12), max_leaves=20)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREES)
def test_random_trees_over_all_tags_round_trip(tree: Element) -> None:
    data = encode(tree)
    assert decode(data) == tree
    assert encode(decode(data)) == data


def test_encoder_switches_page_only_when_needed() -> None:
    tree = E("AirSync", "ApplicationData", [E("Email", "To", text="a"), E("Email", "Cc", text="b"),
                                            E("AirSyncBase", "Body"), E("Email", "From", text="c")])
    data = encode(tree)
    assert data == (HEADER + b"\x5d" + b"\x00\x02\x56\x03a\x00\x01\x57\x03b\x00\x01" + b"\x00\x11\x0a"
                    + b"\x00\x02\x58\x03c\x00\x01" + b"\x01")


# --- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    (b"", "empty input"),
    (b"\x02\x01\x6a\x00\x45\x01", "version"),
    (b"\x03\x00\x6a\x00\x45\x01", "public identifier"),
    (b"\x03\x01\x04\x00\x45\x01", "charset"),
    (b"\x03\x01\x6a", "ends inside a multi-byte integer"),
    (HEADER, "no root element"),
    (HEADER + b"\x00", "ends inside SWITCH_PAGE"),
    (HEADER + b"\x00\x1a\x45\x01", "no ActiveSync code page 26"),
    (HEADER + b"\x00\x03\x45\x01", "no tag 0x05 on code page AirNotify"),
    (HEADER + b"\x11\x01", "no tag 0x11 on code page AirSync"),
    (HEADER + b"\x01", "END without an open element"),
    (HEADER + b"\x03x\x00", "outside the root element"),
    (HEADER + b"\x45\x46", "input ends inside"),
    (HEADER + b"\x45\x01\x01", "after the root element"),
    (HEADER + b"\x0b\x0b", "after the root element"),
    (HEADER + b"\x45\x85\x01\x01", "attributes"),
    (HEADER + b"\x45\xc5\x01\x01", "attributes"),
    (HEADER + b"\x4b\x03x", "unterminated"),
    (HEADER + b"\x4b\x03\xff\xfe\x00\x01", "not valid UTF-8"),
    (HEADER + b"\x4b\x03a\x00\xc3\x01b\x01", "mixes a string with opaque"),
    (HEADER + b"\x45\x03a\x00\x4b\x01\x01", "mixed content"),
    (HEADER + b"\x45\x0b\x03a\x00\x01", "mixed content"),
    (HEADER + b"\x4b\xc3\x05ab", "runs past the end"),
    (HEADER + b"\x4b\x83\x00\x01", "not a string in the table"),
    (b"\x03\x01\x6a\x02ab" + b"\x4b\x83\x00\x01", "not a string in the table"),  # no NUL in the table
    (b"\x03\x01\x6a\x09ab", "string table of 9 bytes runs past"),
    (HEADER + b"\x4b\xc3\x80\x80\x80\x80\x80\x01", "longer than 5 bytes"),
    (HEADER + b"\x4b\xc3\x9f\xff\xff\xff\x7f\x01", "exceeds 32 bits"),
])
def test_malformed_documents_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(WbxmlError, match=message):
        decode(data)


@pytest.mark.parametrize("token, name", [(0x02, "ENTITY"), (0x04, "LITERAL"), (0x40, "EXT_I_0"), (0x41, "EXT_I_1"),
                                         (0x42, "EXT_I_2"), (0x43, "PI"), (0x44, "LITERAL_C"), (0x80, "EXT_T_0"),
                                         (0x81, "EXT_T_1"), (0x82, "EXT_T_2"), (0x84, "LITERAL_A"), (0xC0, "EXT_0"),
                                         (0xC1, "EXT_1"), (0xC2, "EXT_2"), (0xC4, "LITERAL_AC")])
def test_wbxml_features_unused_by_activesync_are_refused_by_name(token: int, name: str) -> None:
    with pytest.raises(WbxmlError, match=f"WBXML {name} is not used"):
        decode(HEADER + bytes((0x45, token, 0x00, 0x00, 0x01)))


def test_encoder_refuses_what_it_cannot_write() -> None:
    with pytest.raises(WbxmlError, match="no ActiveSync tag 'Nope'"):
        encode(E("AirSync", "Nope"))
    with pytest.raises(WbxmlError, match="no ActiveSync tag"):
        encode(E("Email", "Sync"))
    with pytest.raises(WbxmlError, match="more than one"):
        encode(E("AirSync", "SyncKey", [E("AirSync", "Status")], text="1"))
    with pytest.raises(WbxmlError, match="NUL"):
        encode(E("AirSync", "SyncKey", text="a\x00b"))
    with pytest.raises(WbxmlError, match="UTF-8"):
        encode(E("AirSync", "SyncKey", text="\ud800"))
    with pytest.raises(TypeError):
        encode(E("AirSync", "Sync", ["not an element"]))  # type: ignore[list-item]


# --- limits --------------------------------------------------------------------------------------------

def test_input_size_limit() -> None:
    data = encode(E("AirSync", "SyncKey", text="x" * 100))
    assert decode(data, Limits(max_input_bytes=len(data))).text == "x" * 100
    with pytest.raises(WbxmlError, match="exceeds the limit"):
        decode(data, Limits(max_input_bytes=len(data) - 1))


def test_depth_limit() -> None:
    def nested(depth: int) -> bytes:
        return HEADER + b"\x5d" * (depth - 1) + b"\x1d" + b"\x01" * (depth - 1)

    assert decode(nested(64)).name == "ApplicationData"
    with pytest.raises(WbxmlError, match="deeper than 64"):
        decode(nested(65))
    with pytest.raises(WbxmlError, match="deeper than 3"):
        decode(nested(4), Limits(max_depth=3))


def test_element_count_limit() -> None:
    data = encode(E("AirSync", "Sync", [E("AirSync", "Status")] * 9))
    assert len(decode(data, Limits(max_elements=10)).children) == 9
    with pytest.raises(WbxmlError, match="more than 9 elements"):
        decode(data, Limits(max_elements=9))


def test_string_table_limit() -> None:
    doc = b"\x03\x01\x6a\x03ok\x00" + b"\x4b\x83\x00\x01"
    assert decode(doc).text == "ok"
    assert decode(doc, Limits(max_string_table_bytes=3)).text == "ok"
    with pytest.raises(WbxmlError, match="string table of 3 bytes exceeds the limit of 0"):
        decode(doc, Limits(max_string_table_bytes=0))


def test_value_size_limit_for_strings_opaque_and_joined_pieces() -> None:
    limits = Limits(max_value_bytes=4)
    assert decode(encode(E("AirSync", "SyncKey", text="abcd")), limits).text == "abcd"
    assert decode(encode(E("AirSync", "SyncKey", opaque=b"abcd")), limits).opaque == b"abcd"
    with pytest.raises(WbxmlError, match="longer than 4 bytes"):
        decode(encode(E("AirSync", "SyncKey", text="abcde")), limits)
    with pytest.raises(WbxmlError, match="exceeds the limit of 4"):
        decode(encode(E("AirSync", "SyncKey", opaque=b"abcde")), limits)
    with pytest.raises(WbxmlError, match="more than the limit of 4"):
        decode(HEADER + b"\x4b\x03abc\x00\x03de\x00\x01", limits)
    with pytest.raises(WbxmlError, match="more than the limit of 4"):
        decode(HEADER + b"\x4b\xc3\x03abc\xc3\x02de\x01", limits)


def test_limits_must_be_non_negative_ints() -> None:
    with pytest.raises(ValueError):
        Limits(max_depth=-1)
    with pytest.raises(ValueError):
        Limits(max_elements=1.5)  # type: ignore[arg-type]


def test_huge_declared_lengths_fail_without_allocating() -> None:
    tracemalloc.start()
    with pytest.raises(WbxmlError, match="opaque data of 4294967295 bytes exceeds"):
        decode(HEADER + b"\x4b\xc3\x8f\xff\xff\xff\x7f")
    with pytest.raises(WbxmlError, match="runs past the end"):
        decode(HEADER + b"\x4b\xc3\x8f\xff\xff\xff\x7f", Limits(max_value_bytes=2**32))
    with pytest.raises(WbxmlError, match="string table of 4294967295 bytes"):
        decode(b"\x03\x01\x6a\x8f\xff\xff\xff\x7f")
    with pytest.raises(WbxmlError, match="string table reference 4294967295"):
        decode(HEADER + b"\x4b\x83\x8f\xff\xff\xff\x7f\x01")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1_000_000  # nothing near the declared 4 GiB was ever allocated


def test_deep_nesting_is_refused_quickly_and_never_recurses() -> None:
    depth = 100_000
    deep = HEADER + b"\x5d" * (depth - 1) + b"\x1d" + b"\x01" * (depth - 1)
    with pytest.raises(WbxmlError, match="deeper than 64"):
        decode(deep)
    with pytest.raises(WbxmlError, match="deeper than 64"):
        decode(HEADER + b"\x45" * depth)  # never closed either
    # Allowed that deep, the loops still cope: decode, walk and re-encode 100,000 levels.
    tree = decode(deep, Limits(max_depth=depth, max_elements=depth))
    assert sum(1 for _ in tree.iter()) == depth
    assert encode(tree) == deep
    assert to_xml(decode(deep[:4 + 2000] + b"\x1d" + b"\x01" * 2000, Limits(max_depth=3000))).count("\n") == 4002


def test_decoding_a_megabyte() -> None:
    item = E("AirSync", "Add", [E("AirSync", "ServerId", text="5:1"), E("AirSync", "ApplicationData", [
        E("Email", "Subject", text="A subject of some length"), E("Email", "From", text="<bob@example.test>"),
        E("AirSyncBase", "Body", [E("AirSyncBase", "Type", text="2"), E("AirSyncBase", "Data", text="x" * 300)]),
        E("Email2", "ConversationId", opaque=bytes(16))])])
    small_items = encode(E("AirSync", "Commands", [item] * 2500))
    one_body = encode(E("ComposeMail", "Mime", opaque=b"m" * 1_000_000))
    assert len(small_items) > 1_000_000
    commands = decode(small_items)
    assert len(commands.children) == 2500 and commands.children[-1] == item
    assert decode(one_body).opaque == b"m" * 1_000_000


# --- fuzzing -------------------------------------------------------------------------------------------

def decode_or_refuse(data: bytes) -> None:
    """Decoding either gives a tree that encodes back to an equivalent document, or raises WbxmlError."""
    try:
        tree = decode(data)
    except WbxmlError:
        return
    assert decode(encode(tree)) == tree


FUZZ = settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    decode_or_refuse(data)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bodies_after_a_valid_header(body: bytes) -> None:
    decode_or_refuse(HEADER + body)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TREES, st.lists(st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete"]),
                                 st.integers(0, 10_000), st.binary(min_size=1, max_size=6)), min_size=1, max_size=4))
def test_fuzz_mutated_valid_documents(tree: Element, mutations: list[tuple[str, int, bytes]]) -> None:
    data = bytearray(encode(tree))
    for kind, where, extra in mutations:
        at = where % (len(data) + 1)
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << (extra[0] % 8)
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = extra
        else:
            del data[at:at + len(extra)]
    decode_or_refuse(bytes(data))


# --- the XML view --------------------------------------------------------------------------------------

def test_to_xml_declares_namespaces_and_shows_opaque_as_base64() -> None:
    tree = E("AirSync", "ApplicationData", [E("Email", "Subject", text="a < b & c\r\n"),
                                            E("Email2", "ConversationId", opaque=b"\x00\xff"),
                                            E("AirSync", "GetChanges"), E("AirSync", "SyncKey", text="")])
    assert to_xml(tree) == (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<ApplicationData xmlns="AirSync" xmlns:email="Email" xmlns:email2="Email2"'
        ' xmlns:wbxml="urn:casgate:wbxml">\n'
        "  <email:Subject>a &lt; b &amp; c&#13;\n</email:Subject>\n"
        '  <email2:ConversationId wbxml:opaque="base64">AP8=</email2:ConversationId>\n'
        "  <GetChanges/>\n"
        "  <SyncKey></SyncKey>\n"
        "</ApplicationData>\n")
    assert from_xml(to_xml(tree)).children[:3] == tree.children[:3]


def test_to_xml_can_replace_large_opaque_data_by_its_length() -> None:
    tree = E("ComposeMail", "Mime", opaque=b"x" * 100)
    text = to_xml(tree, max_opaque_shown=10)
    assert 'wbxml:opaque="omitted" wbxml:length="100"' in text
    with pytest.raises(WbxmlError, match="opaque data is missing"):
        from_xml(text)
    assert from_xml(to_xml(tree, max_opaque_shown=100)) == tree


def test_to_xml_replaces_characters_xml_cannot_carry() -> None:
    assert ">a\ufffdb</SyncKey>" in to_xml(E("AirSync", "SyncKey", text="a\x01b"))


@pytest.mark.parametrize("xml, message", [
    ('<Sync xmlns="AirSync"><Nope/></Sync>', "no ActiveSync tag 'Nope'"),
    ("<Sync/>", "namespace ''"),
    ('<Sync xmlns="AirSync">text<Status/></Sync>', "mixed content"),
    ('<Sync xmlns="AirSync" a="1"/>', "attributes"),
    ('<Mime xmlns="ComposeMail" xmlns:w="urn:casgate:wbxml" w:opaque="base64">!!</Mime>', "not valid base64"),
    ('<!DOCTYPE Sync [<!ENTITY x "y">]><Sync xmlns="AirSync">&x;</Sync>', "XML refused"),
    ("<Sync", "XML refused"),
])
def test_from_xml_refusals(xml: str, message: str) -> None:
    with pytest.raises(WbxmlError, match=message):
        from_xml(xml)


def test_from_xml_accepts_namespaces_written_with_a_colon() -> None:
    xml = '<FolderSync xmlns="FolderHierarchy:"><SyncKey>0</SyncKey></FolderSync>'
    assert encode(from_xml(xml)) == FOLDERSYNC_REQUEST


# Text XML 1.0 can carry; not empty, as the view reads <a></a> back as an empty tag.
XML_TREES = trees(st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"], include_characters="\t\n\r",
                                        exclude_characters="\ufffe\uffff"), min_size=1, max_size=12), max_leaves=15)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(XML_TREES)
def test_xml_view_round_trips(tree: Element) -> None:
    assert from_xml(to_xml(tree)) == tree


# --- the tables and the tree helpers -------------------------------------------------------------------

def test_code_page_tables_are_sane() -> None:
    assert len(PAGES) == 26
    assert [page.number for page in PAGES] == list(range(26))
    assert [page.namespace for page in PAGES] == [
        "AirSync", "Contacts", "Email", "AirNotify", "Calendar", "Move", "GetItemEstimate", "FolderHierarchy",
        "MeetingResponse", "Tasks", "ResolveRecipients", "ValidateCert", "Contacts2", "Ping", "Provision",
        "Search", "GAL", "AirSyncBase", "Settings", "DocumentLibrary", "ItemOperations", "ComposeMail", "Email2",
        "Notes", "RightsManagement", "Find"]
    for page in PAGES:
        assert len(page.names) == 64
        assert all(name is None for name in page.names[:codepages.FIRST_TOKEN])
        named = [name for name in page.names if name is not None]
        assert len(named) == len(set(named)) == len(page.tokens)
        for name, token in page.tokens.items():
            assert codepages.FIRST_TOKEN <= token <= codepages.LAST_TOKEN
            assert page.names[token] == name == tag_name(page.number, token) == tag_name(page.number, token | 0x40)
            assert tag_token(page.namespace, name) == (page.number, token)
        assert page_for_namespace(page.namespace) is page
    assert not PAGES[3].tokens  # AirNotify: no longer in use
    assert tag_name(26, 5) is None and tag_name(0, 0x11) is None and tag_token("AirSync", "Nope") is None


@pytest.mark.parametrize("namespace, name, page, token", [
    ("AirSync", "Sync", 0, 0x05), ("AirSync", "HeartbeatInterval", 0, 0x29), ("Contacts", "WeightedRank", 1, 0x3E),
    ("Email", "DisallowNewTimeProposal", 2, 0x3F), ("Calendar", "ClientUid", 4, 0x3C),
    ("FolderHierarchy", "FolderSync", 7, 0x16), ("MeetingResponse", "SendResponse", 8, 0x12),
    ("ResolveRecipients", "MaxPictures", 10, 0x1D), ("Ping", "MaxFolders", 13, 0x0D),
    ("Provision", "AccountOnlyRemoteWipe", 14, 0x3B), ("Search", "MaxPictures", 15, 0x23),
    ("AirSyncBase", "Location", 17, 0x20), ("AirSyncBase", "InstanceId", 17, 0x2D),
    ("Settings", "RightsManagementInformation", 18, 0x2B), ("ItemOperations", "MoveAlways", 20, 0x19),
    ("ComposeMail", "Forwardees", 21, 0x15), ("Email2", "Send", 22, 0x17), ("Notes", "Category", 23, 0x09),
    ("RightsManagement", "RemoveRightsManagementProtection", 24, 0x18), ("Find", "Picture", 25, 0x22),
])
def test_spot_checks_against_the_specification(namespace: str, name: str, page: int, token: int) -> None:
    assert tag_token(namespace, name) == (page, token)


def test_element_helpers() -> None:
    tree = spec_sync_tree()
    collection = tree.find("Collections").find("Collection")
    assert collection.text_of("SyncKey") == "2"
    assert collection.text_of("Missing", default="-") == "-"
    data = collection.find("Commands").find("Add").find("ApplicationData")
    assert data.find("Body") is None
    assert data.find("Body", "AirSyncBase").text_of("Type") == "1"
    assert [e.name for e in data.findall("FileAs", "Contacts")] == ["FileAs"]
    assert [e.name for e in tree.iter()][:4] == ["Sync", "Collections", "Collection", "Class"]
