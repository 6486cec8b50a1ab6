"""The sync engine for DAV collections: what a client has of one collection, and what changed since.

Protocol-neutral: it knows hrefs and ETags, never a wire format. A
``CollectionState`` gives each object the client was told of a short item id
(the client's handle for it) and remembers the ETag it was sent, or None while
it is still owed. ``look`` compares that with the collection's ETags now and
says which items went, which changed and which are new; the new ones get ids
at once, in a fixed order, so a repeated look from the same state assigns the
same ids. Front ends store the state under their own sync keys.
"""

from __future__ import annotations

import json
import uuid
import zlib
from dataclasses import dataclass, field

_VERSION = 1
SEP = "\x00"


def folder_key(klass: str, url: str) -> str:
    """How a front end names one class's view of a DAV collection among a user's folders: NUL, the class
    (Calendar, Contacts, Tasks, Notes), NUL, the collection URL; no IMAP mailbox name starts with NUL."""
    return f"{SEP}{klass}{SEP}{url}"


def split_key(name: str) -> tuple[str, str] | None:
    """(class, collection URL) of a folder_key, None for any other name."""
    if not name.startswith(SEP) or name.count(SEP) < 2:
        return None
    _, klass, url = name.split(SEP, 2)
    return (klass, url) if klass and url else None


def role_of(klass: str) -> str:
    """The back-end role serving a class's collections."""
    return "carddav" if klass == "Contacts" else "caldav"


@dataclass
class CollectionState:
    """One client's view of one collection."""

    # item id -> [href, ETag sent, or None while owed, or "!" + ETag when the client's filter held it back]
    items: dict[str, list] = field(default_factory=dict)
    seq: int = 0
    filter_type: int = 0
    ghosted: list[str] = field(default_factory=list)  # properties the client does not carry: keep them

    def dump(self) -> bytes:
        return zlib.compress(json.dumps({"v": _VERSION, "i": self.items, "s": self.seq, "f": self.filter_type,
                                         "g": self.ghosted}, separators=(",", ":")).encode())

    @classmethod
    def load(cls, blob: bytes) -> CollectionState:
        data = json.loads(zlib.decompress(blob))
        if data.get("v") != _VERSION:
            raise ValueError("sync state of another version")
        return cls(data["i"], data["s"], data.get("f", 0), data.get("g", []))

    def new_id(self, href: str) -> str:
        self.seq += 1
        item = str(self.seq)
        self.items[item] = [href, None]
        return item

    def id_of(self, href: str) -> str | None:
        for item, (known, _) in self.items.items():
            if known == href:
                return item
        return None

    def href_of(self, item: str) -> str | None:
        entry = self.items.get(item)
        return entry[0] if entry else None

    def owed(self) -> list[str]:
        """Items the client has not been sent yet, oldest id first."""
        return sorted((i for i, (_, etag) in self.items.items() if etag is None), key=int)


@dataclass(frozen=True)
class Look:
    """What changed in a collection for one client."""

    gone: list[str]     # item ids whose object is gone
    changed: list[str]  # item ids the client has, whose object changed
    owed: list[str]     # item ids not yet sent (new ones included)

    @property
    def count(self) -> int:
        return len(self.gone) + len(self.changed) + len(self.owed)


def look(state: CollectionState, current: dict[str, str]) -> Look:
    """Compare the state with the collection's href -> ETag now; new objects get ids (sorted by href, so
    the same state and listing always give the same ids). Gone items that were never sent are dropped."""
    gone, changed = [], []
    known = set()
    for item, (href, etag) in list(state.items.items()):
        known.add(href)
        if href not in current:
            if etag is None or etag.startswith("!"):
                del state.items[item]
            else:
                gone.append(item)
        elif etag is not None and etag.startswith("!") and etag[1:] != current[href]:
            state.items[item][1] = None  # held back by the client's filter, and changed since: look again
        elif etag is not None and not etag.startswith("!") and etag != current[href]:
            changed.append(item)
    for href in sorted(set(current) - known):
        state.new_id(href)
    return Look(sorted(gone, key=int), sorted(changed, key=int), state.owed())


def client_uid(user: str, device: str, collection: str, client_id: str) -> str:
    """The UID of an object a device adds: the same for the same ClientId, so an Add repeated after a lost
    answer writes the same object again rather than a second one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"casgate:{user}:{device}:{collection}:{client_id}"))
