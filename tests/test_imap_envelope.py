"""The message list's ENVELOPE reading (adapters/imap/store.py): real-world shapes, and any shape without error."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.imap.store import _envelope, _header_text
from adapters.imap.wire import Data, parse_response


def _fetched(line: bytes) -> Data:
    return parse_response([line.rstrip(b"\r\n")])


def test_an_envelope_with_encoded_words_and_a_display_name():
    d = _fetched(b'* 3 FETCH (UID 17 FLAGS (\\Seen \\Flagged) INTERNALDATE "27-Nov-2026 10:00:00 +0000" '
                 b'RFC822.SIZE 420 ENVELOPE ("Fri, 27 Nov 2026 10:00:00 +0000" "=?utf-8?q?Gr=C3=BC=C3=9Fe?=" '
                 b'(("=?iso-8859-1?q?Zo=EB?=" NIL "zoe" "example.test")) NIL NIL NIL NIL NIL NIL "<a@b>"))\r\n')
    e = _envelope(d)
    assert (e.seq, e.uid, e.size, e.subject, e.sender_name, e.sender_address) == (
        3, 17, 420, "Grüße", "Zoë", "zoe@example.test")
    assert e.flags == ("\\Seen", "\\Flagged") and e.date.startswith("Fri, 27 Nov")


def test_missing_parts_give_empty_fields_not_errors():
    e = _envelope(_fetched(b"* 1 FETCH (UID 5 ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL))\r\n"))
    assert (e.subject, e.sender_name, e.sender_address, e.date) == ("", "", "", None)
    assert _envelope(_fetched(b"* 1 FETCH (FLAGS ())\r\n")) is None  # no UID: not listed
    assert _header_text(b"=?bogus?x?zz?=") == "=?bogus?x?zz?=" and _header_text(b"\xff raw") == "\ufffd raw"


items = st.recursive(st.one_of(st.none(), st.binary(max_size=30)), lambda inner: st.tuples(inner, inner, inner, inner)
                     | st.lists(inner, max_size=6).map(tuple), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-5, max_value=10**6) | st.none(), items)
def test_any_fetch_shape_is_read_without_error(seq, envelope):
    d = Data("FETCH", seq, ((b"UID", b"9", b"ENVELOPE", envelope, b"FLAGS", envelope),))
    e = _envelope(d)
    assert e is None or (isinstance(e.subject, str) and isinstance(e.sender_address, str))
