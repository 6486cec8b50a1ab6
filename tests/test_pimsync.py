"""The DAV sync engine's state, pure: item ids, what went, what changed, what is owed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.services.pimsync import CollectionState, client_uid, look


def test_new_objects_get_ids_in_href_order_and_are_owed():
    state = CollectionState()
    found = look(state, {"/c/b.ics": "1", "/c/a.ics": "1"})
    assert found.owed == ["1", "2"] and state.href_of("1") == "/c/a.ics" and found.count == 2
    assert look(CollectionState.load(state.dump()), {"/c/b.ics": "1", "/c/a.ics": "1"}).owed == ["1", "2"]


def test_gone_changed_and_never_sent():
    state = CollectionState(items={"1": ["/a", "e1"], "2": ["/b", "e1"], "3": ["/c", None], "4": ["/d", "!e1"],
                                   "5": ["/e", "!e1"]}, seq=5)
    found = look(state, {"/b": "e2", "/e": "e2", "/d": "e1", "/f": "e1"})
    assert found.gone == ["1"] and found.changed == ["2"]
    assert found.owed == ["5", "6"]  # held back but changed since, and the new one
    assert "3" not in state.items  # gone before it was ever sent: nothing to tell
    assert state.items["4"] == ["/d", "!e1"]  # still held back, unchanged


def test_client_uid_is_stable_per_client_id():
    assert client_uid("u", "d", "7", "c1") == client_uid("u", "d", "7", "c1")
    assert client_uid("u", "d", "7", "c1") != client_uid("u", "d", "7", "c2")
    assert client_uid("u", "d", "7", "c1") != client_uid("u", "e", "7", "c1")


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.sampled_from(["a", "b"]), max_size=20),
       st.dictionaries(st.text(min_size=1, max_size=8), st.sampled_from(["a", "b"]), max_size=20))
def test_after_sending_everything_a_second_look_finds_nothing(first, second):
    state = CollectionState()
    look(state, first)
    for item in state.owed():
        state.items[item][1] = first[state.items[item][0]]
    found = look(state, second)
    for item in found.gone:
        del state.items[item]
    for item in found.changed + found.owed:
        state.items[item][1] = second[state.items[item][0]]
    assert look(state, second).count == 0
    assert sorted(h for h, _ in state.items.values()) == sorted(second)
