"""The ActiveSync request line: the specification's examples, both query forms, every refusal, round trip, fuzzing."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.activesync.request import (COMMAND_NAMES, COMMANDS, SUPPORTED_VERSIONS, EasRequest, RequestError,
                                        encode_base64_query, parse_request)

# MS-ASHTTP 2.2.1.1.1.1 and 2.2.1.1.1.2: the same request in both forms.
SPEC_BASE64 = "jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l"
SPEC_PLAIN = "Cmd=Sync&User=rmjones&DeviceId=v140Device&DeviceType=SmartPhone"
BASE64_VERSIONS = ("12.1", "14.0", "14.1", "16.0", "16.1")


def raw_query(data: bytes) -> str:
    return base64.b64encode(data).decode()


def layout(version: int = 141, code: int = 0, locale: bytes = b"\x09\x04", device_id: bytes = b"dev1",
           key: bytes = b"", device_type: bytes = b"iPhone", params: bytes = b"") -> bytes:
    """A base64-form byte sequence built field by field, so each test can break one field."""
    return (bytes((version, code)) + locale + bytes((len(device_id),)) + device_id + bytes((len(key),)) + key
            + bytes((len(device_type),)) + device_type + params)


def refused(query: str, headers: dict | None = None, status: int = 400, method: str = "POST") -> str:
    with pytest.raises(RequestError) as info:
        parse_request(query, {} if headers is None else headers, method=method)
    assert info.value.status == status
    return str(info.value)


# --- the specification's examples ---------------------------------------------------------------------

def test_spec_base64_example():
    assert base64.b64decode(SPEC_BASE64)[:4] == bytes((140, 0, 0x09, 0x04))
    req = parse_request(SPEC_BASE64, {})
    assert req == EasRequest(command="Sync", user="", device_id="v140Device", device_type="SmartPhone",
                             version="14.0", policy_key=None, locale=0x0409, base64_form=True)
    assert encode_base64_query(req) == SPEC_BASE64


def test_spec_plain_example_is_the_same_request():
    plain = parse_request(SPEC_PLAIN, {"MS-ASProtocolVersion": "14.0"})
    b64 = parse_request(SPEC_BASE64, {})
    assert (plain.command, plain.device_id, plain.device_type, plain.version) == \
        (b64.command, b64.device_id, b64.device_type, b64.version)
    assert plain.user == "rmjones" and plain.locale is None and not plain.base64_form


# --- plain text ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["12.1", "14.1"])
def test_plain_sync_with_headers(version):
    query = "Cmd=Sync&User=CONTOSO%5Cjdoe&DeviceId=ApplF17ABC123&DeviceType=iPhone"
    req = parse_request(query, {"ms-asprotocolversion": version, "X-MS-PolicyKey": "3942919513"})
    assert req == EasRequest(command="Sync", user="CONTOSO\\jdoe", device_id="ApplF17ABC123", device_type="iPhone",
                             version=version, policy_key=3942919513, locale=None)


def test_plain_names_and_command_ignore_case_and_order():
    req = parse_request("devicetype=Android&deviceid=abc123&USER=u%40example.com&cmd=foldersync", {})
    assert (req.command, req.user, req.device_id, req.device_type) == ("FolderSync", "u@example.com", "abc123",
                                                                       "Android")
    assert req.version is None and req.policy_key is None


def test_plain_sendmail_save_in_sent_and_extras_ignored():
    req = parse_request("Cmd=SendMail&User=u&DeviceId=d1&DeviceType=t&SaveInSent=T&Foo=bar&Cmd2=x", {})
    assert req.command == "SendMail" and req.save_in_sent
    assert not parse_request("Cmd=SendMail&User=u&DeviceId=d1&DeviceType=t&SaveInSent=F", {}).save_in_sent
    assert not parse_request("Cmd=SendMail&User=u&DeviceId=d1&DeviceType=t", {}).save_in_sent


def test_plain_smart_reply_and_attachment_parameters():
    req = parse_request("Cmd=SmartReply&User=u&DeviceId=d1&DeviceType=t&CollectionId=5&ItemId=5%3A12"
                        "&LongId=RgAAAA&Occurrence=2024-01-01&ParentId=0&SaveInSent=t", {})
    assert (req.collection_id, req.item_id, req.long_id, req.occurrence, req.parent_id, req.save_in_sent) == \
        ("5", "5:12", "RgAAAA", "2024-01-01", "0", True)
    att = parse_request("Cmd=GetAttachment&User=u&DeviceId=d1&DeviceType=t&AttachmentName=5%3A12%3A0", {})
    assert att.command == "GetAttachment" and att.attachment_name == "5:12:0" and att.collection_id is None


def test_plain_item_operations_accept_multipart_header():
    query = "Cmd=ItemOperations&User=u&DeviceId=d1&DeviceType=t"
    assert parse_request(query, {"MS-ASAcceptMultiPart": "T"}).accept_multipart
    assert not parse_request(query, {"MS-ASAcceptMultiPart": "F"}).accept_multipart
    assert not parse_request(query, {}).accept_multipart


def test_plain_policy_key_sources():
    query = "Cmd=Provision&User=u&DeviceId=d1&DeviceType=t"
    assert parse_request(query, {"X-MS-PolicyKey": "0"}).policy_key == 0
    assert parse_request(query, {"X-MS-PolicyKey": ""}).policy_key is None
    assert parse_request(query + "&PolicyKey=1234", {}).policy_key == 1234  # pyactivesync while provisioning
    assert parse_request(query + "&PolicyKey=1234", {"X-MS-PolicyKey": "99"}).policy_key == 99
    assert parse_request(query, {"X-MS-PolicyKey": "4294967295"}).policy_key == 0xFFFFFFFF


def test_plain_plus_is_space_and_empty_fields_skipped():
    req = parse_request("Cmd=Sync&&User=a+b&DeviceId=d1&DeviceType=t&CollectionId=&", {})
    assert req.user == "a b" and req.collection_id is None


def test_every_known_command_name_is_accepted():
    for name in COMMAND_NAMES:
        assert parse_request(f"Cmd={name.upper()}&User=u&DeviceId=d&DeviceType=t", {}).command == name
    assert {"Find", "GetHierarchy", "Sync", "ValidateCert"} <= COMMAND_NAMES


def test_options_needs_nothing():
    assert parse_request("", {}, method="OPTIONS") == EasRequest("", "", "", "", None, None, None)
    req = parse_request("Cmd=Sync&User=u", {"MS-ASProtocolVersion": "16.1"}, method="options")
    assert (req.command, req.user, req.version) == ("", "u", "16.1")
    assert parse_request(SPEC_BASE64, {}, method="OPTIONS").command == ""


# --- base64 ---------------------------------------------------------------------------------------------

def test_base64_parameters_and_options():
    params = (b"\x01\x02ab" + b"\x03\x03a:1" + b"\x04\x02LI" + b"\x05\x01p" + b"\x06\x03occ" + b"\x00\x051:2:3"
              + b"\x08\x0cj\xc3\xb6rg@ex.org" + b"\x07\x01\x03")
    req = parse_request(raw_query(layout(version=161, code=2, key=b"\x01\x00\x00\x80", params=params)), {})
    assert req == EasRequest(command="SmartForward", user="jörg@ex.org", device_id="dev1", device_type="iPhone",
                             version="16.1", policy_key=0x80000001, locale=0x0409, collection_id="ab",
                             item_id="a:1", long_id="LI", parent_id="p", occurrence="occ",
                             attachment_name="1:2:3", save_in_sent=True, accept_multipart=True, base64_form=True)


@pytest.mark.parametrize("bits, save, multipart", [(0x00, False, False), (0x01, True, False),
                                                   (0x02, False, True), (0xFC, False, False)])
def test_base64_options_bits(bits, save, multipart):
    req = parse_request(raw_query(layout(code=19, params=bytes((7, 1, bits)))), {})
    assert (req.command, req.save_in_sent, req.accept_multipart) == ("ItemOperations", save, multipart)


def test_base64_every_command_code_and_version():
    for code, name in COMMANDS.items():
        assert parse_request(raw_query(layout(code=code)), {}).command == name
    for version in BASE64_VERSIONS:
        assert parse_request(raw_query(layout(version=int(version.replace(".", "")))), {}).version == version
    for version in set(SUPPORTED_VERSIONS) - set(BASE64_VERSIONS):
        assert parse_request(SPEC_PLAIN, {"MS-ASProtocolVersion": version}).version == version
    assert COMMANDS[9] == "FolderSync" and COMMANDS[18] == "Ping" and COMMANDS[22] == "ValidateCert"
    assert set(COMMANDS) == {*range(0, 5), *range(9, 23)}


def test_base64_binary_device_id_is_upper_hex():
    guid = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert parse_request(raw_query(layout(device_id=guid)), {}).device_id == "00112233445566778899AABBCCDDEEFF"


def test_base64_percent_encoded_and_unpadded():
    data = layout(device_id=b"d" * 2, device_type=b"t?>?")  # encodes with "+" and padding
    text = raw_query(data)
    assert "=" in text and ("+" in text or "/" in text)
    want = parse_request(text, {})
    assert parse_request(quote(text, safe=""), {}) == want
    assert parse_request(text.rstrip("="), {}) == want
    assert want.device_type == "t?>?"


def test_base64_policy_key_and_multipart_from_headers_as_fallback():
    query = raw_query(layout())
    assert parse_request(query, {"X-MS-PolicyKey": "7"}).policy_key == 7
    assert parse_request(raw_query(layout(key=b"\x05\x00\x00\x00")), {"X-MS-PolicyKey": "7"}).policy_key == 5
    assert parse_request(query, {"MS-ASAcceptMultiPart": "T"}).accept_multipart
    assert parse_request(raw_query(layout(key=b"\x00" * 4)), {}).policy_key == 0


# --- refusals ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("query, needle", [
    ("User=u&DeviceId=d&DeviceType=t", "Cmd is missing"),
    ("Cmd=Sync&User=u&DeviceType=t", "DeviceId is missing"),
    ("Cmd=Sync&User=u&DeviceId=d", "DeviceType is missing"),
    ("Cmd=Sync&DeviceId=d&DeviceType=t", "User is missing"),
    ("Cmd=Sync&User=u&DeviceId=" + "a" * 33 + "&DeviceType=t", "longer than 32"),
    ("Cmd=Sync&User=u&DeviceId=abc-def&DeviceType=t", "letters and digits"),
    ("Cmd=Sync&User=u&DeviceId=d&DeviceType=" + "t" * 33, "longer than 32"),
    ("Cmd=Sync&User=u&DeviceId=d&DeviceType=%C3%A9", "printable ASCII"),
    ("Cmd=Sync&User=" + "u" * 256 + "&DeviceId=d&DeviceType=t", "longer than 255"),
    ("Cmd=Sync&User=a%0Ab&DeviceId=d&DeviceType=t", "control"),
    ("Cmd=Sync&User=u&DeviceId=d&DeviceType=t&ItemId=a%00", "control"),
    ("Cmd=Sync&cmd=Ping&User=u&DeviceId=d&DeviceType=t", "repeated"),
    ("Cmd=Sync&User=u&DeviceId=d&DeviceType=t&Flag", "has no '='"),
    ("Cmd=Sync&User=%FF&DeviceId=d&DeviceType=t", "UTF-8"),
    ("Cmd=Sync1&User=u&DeviceId=d&DeviceType=t", "not a command name"),
    ("Cmd=Sync&User=u&DeviceId=d&DeviceType=t&SaveInSent=yes", "T or F"),
    ("Cmd=Sync&User=u&DeviceId=d&DeviceType=t&PolicyKey=4294967296", "32-bit"),
    ("Cmd=Sync&User=u&DeviceId=d&DeviceType=t&PolicyKey=-1", "32-bit"),
    ("&".join(f"X{i}=1" for i in range(40)), "more than 32"),
])
def test_plain_refusals(query, needle):
    assert needle in refused(query)


@pytest.mark.parametrize("headers, needle", [
    ({"MS-ASProtocolVersion": "15.0"}, "not a protocol version"),
    ({"MS-ASProtocolVersion": "x" * 500}, "..."),
    ({"X-MS-PolicyKey": "abc"}, "32-bit"),
    ({"X-MS-PolicyKey": "１２"}, "32-bit"),  # full-width digits: int() would take them
    ({"MS-ASAcceptMultiPart": "yes"}, "T or F"),
])
def test_header_refusals(headers, needle):
    message = refused("Cmd=Sync&User=u&DeviceId=d&DeviceType=t", headers)
    assert needle in message and len(message) < 100


def test_repeated_header_with_two_values():
    class Multi(dict):
        def items(self):
            return [("MS-ASProtocolVersion", "14.1"), ("ms-asprotocolversion", "16.1")]
    assert "repeated" in refused("Cmd=Sync&User=u&DeviceId=d&DeviceType=t", Multi())


def test_messages_stay_short_for_unprintable_input():
    message = refused("Cmd=" + quote("\U000e0001" * 30) + "&User=u&DeviceId=d&DeviceType=t")
    assert "not a command name" in message and len(message) < 100


def test_unknown_command_is_501_and_not_echoed_in_full():
    message = refused("Cmd=" + "Frobnicate" * 4 + "&User=u&DeviceId=d&DeviceType=t", status=501)
    assert "Frobnicate" in message and "Frobnicate" * 4 not in message
    assert "unknown command" in refused(raw_query(layout(code=5)), status=501)
    assert "unknown command" in refused(raw_query(layout(code=23)), status=501)


def test_malformed_wins_over_unknown_command():
    refused("Cmd=Frob&User=u&DeviceId=a-b&DeviceType=t", status=400)
    refused(raw_query(layout(code=99, device_id=b"a-b")), status=400)


def test_other_methods_are_405():
    refused(SPEC_PLAIN, method="GET", status=405)


@pytest.mark.parametrize("data, needle", [
    (layout(version=25), "plain-text"),
    (layout(version=120), "plain-text"),
    (layout(version=142), "no supported version"),
    (layout(version=0), "no supported version"),
    (layout(device_id=b""), "empty device ID"),
    (layout(device_id=b"a" * 33), "longer than 32"),
    (layout(device_id=b"a.b"), "letters and digits"),
    (layout(device_id=bytes(17)), "longer than 32"),
    (layout(key=b"\x01\x02"), "0 or 4"),
    (layout(device_type=b""), "DeviceType is missing"),
    (layout(device_type=b"\xff\xfe"), "not ASCII"),
    (layout(device_type=b"t" * 33), "longer than 32"),
    (layout(params=b"\x02\x01x"), "unknown parameter tag 2"),
    (layout(params=b"\x09\x01x"), "unknown parameter tag 9"),
    (layout(params=b"\x01\x01a\x01\x01b"), "repeated"),
    (layout(params=b"\x07\x02\x01\x00"), "not one byte"),
    (layout(params=b"\x08\x02\xc3\x28"), "not UTF-8"),
    (layout(params=b"\x01\x05ab"), "ends inside the parameter value"),
    (layout(params=b"\x01"), "ends inside the parameter length"),
    (layout()[:3], "ends inside the locale"),
    (layout()[:7], "ends inside the device ID"),
    (layout(key=b"\x01\x02\x03\x04")[:-12], "ends inside the policy key"),
    (b"\x8d", "ends inside the command code"),
])
def test_base64_refusals(data, needle):
    assert needle in refused(raw_query(data))


def test_base64_text_refusals():
    assert "neither" in refused("not*base64")
    assert "neither" in refused("A")  # one character is never base64
    assert "neither" in refused("abc%E9")
    assert "exceeds" in refused("A" * 20000)


# --- round trip and fuzzing ---------------------------------------------------------------------------

_PRINTABLE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=32)
_ALNUM = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"),
                 min_size=1, max_size=32)
_TEXT = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=60)
_PARAM = st.none() | _TEXT


@st.composite
def base64_requests(draw) -> EasRequest:
    device_id = draw(_ALNUM | st.binary(min_size=1, max_size=16).map(lambda b: b.hex().upper()))
    return EasRequest(
        command=draw(st.sampled_from(sorted(COMMANDS.values()))), user=draw(st.just("") | _TEXT),
        device_id=device_id, device_type=draw(_PRINTABLE | st.just("Windows Mail")),
        version=draw(st.sampled_from(BASE64_VERSIONS)), policy_key=draw(st.none() | st.integers(0, 2**32 - 1)),
        locale=draw(st.integers(0, 0xFFFF)), collection_id=draw(_PARAM), item_id=draw(_PARAM),
        long_id=draw(_PARAM), parent_id=draw(_PARAM), occurrence=draw(_PARAM), attachment_name=draw(_PARAM),
        save_in_sent=draw(st.booleans()), accept_multipart=draw(st.booleans()), base64_form=True)


@settings(max_examples=300, deadline=None)
@given(base64_requests())
def test_round_trip(req):
    query = encode_base64_query(req)
    assert parse_request(query, {}) == req
    assert parse_request(query.replace("%3D", ""), {}) == req  # and without padding


def test_encode_refuses_what_it_cannot_write():
    good = parse_request(SPEC_BASE64, {})
    for change, status in [({"version": "12.0"}, 400), ({"version": None}, 400), ({"command": "Find"}, 400),
                           ({"command": "Frob"}, 501), ({"device_id": "a-b"}, 400), ({"device_type": ""}, 400),
                           ({"locale": 70000}, 400), ({"policy_key": 2**32}, 400), ({"item_id": ""}, 400),
                           ({"user": "x" * 200 + "é" * 50}, 400)]:
        with pytest.raises(RequestError) as info:
            encode_base64_query(EasRequest(**{**good.__dict__, **change}))
        assert info.value.status == status, change


def _outcome(query: str, headers: dict, method: str = "POST") -> None:
    try:
        req = parse_request(query, headers, method=method)
    except RequestError as exc:
        assert exc.status in (400, 501) and len(str(exc)) < 150
    else:
        assert isinstance(req, EasRequest)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300), st.dictionaries(st.sampled_from(["MS-ASProtocolVersion", "X-MS-PolicyKey",
                                                              "ms-asacceptmultipart", "User-Agent"]),
                                              st.text(max_size=20)), st.sampled_from(["POST", "OPTIONS"]))
def test_fuzz_text(query, headers, method):
    _outcome(query, headers, method)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes_as_base64(data):
    _outcome(raw_query(data), {})
    _outcome(quote(raw_query(data), safe=""), {})


@settings(max_examples=400, deadline=None)
@given(base64_requests(), st.data())
def test_fuzz_mutated_valid_queries(req, data):
    raw = bytearray(base64.b64decode(encode_base64_query(req).replace("%2B", "+").replace("%2F", "/")
                                     .replace("%3D", "=")))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "add"]))
        where = data.draw(st.integers(0, len(raw)))
        if action == "flip" and where < len(raw):
            raw[where] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[where:]
        else:
            raw[where:where] = bytes((data.draw(st.integers(0, 255)),))
    _outcome(raw_query(bytes(raw)), {})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Cmd", "User", "DeviceId", "DeviceType", "SaveInSent", "ItemId",
                                           "PolicyKey", "cmd", "x"]),
                          st.text(max_size=40)), max_size=8))
def test_fuzz_plain_pairs(pairs):
    _outcome("&".join(f"{quote(k)}={quote(v)}" for k, v in pairs), {})
