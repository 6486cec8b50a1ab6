"""The mail sync engine: what a client (a phone, later the web app) has of a folder, and what changed since.

Protocol-neutral: it knows IMAP folders, UIDs, flags and keywords, never a
wire format. A ``FolderState`` records, for one client and one folder, the
UIDVALIDITY, the counters last compared (HIGHESTMODSEQ, UIDNEXT, MESSAGES),
the read/flag/category digest of every message the client has, and the
messages it is still owed, newest first. ``look`` finds the folder as it is
now as cheaply as the server allows: nothing at all when the counters did not
move; with CONDSTORE, the UID set plus only the messages changed since; else
every message's flags. ``diff`` and ``rebase`` turn that into what to tell the
client. Front ends store the state under their own sync keys.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from adapters.interfaces import FolderStatus, MessageSummary

READ, FLAGGED = 1, 2
# Thunderbird's keywords for its five default tags, and keywords that are client bookkeeping, not categories.
LABELS = {"$label1": "Important", "$label2": "Work", "$label3": "Personal", "$label4": "To Do", "$label5": "Later"}
NOT_CATEGORIES = frozenset({"junk", "nonjunk", "notjunk", "forwarded", "redirected", "mdnsent"})


def keyword_category(flag: str) -> str | None:
    """The category an IMAP flag stands for, or None for system flags and client bookkeeping."""
    name = LABELS.get(flag.lower())
    if name is None:
        if not flag or flag[0] in "\\$" or flag.lower() in NOT_CATEGORIES:
            return None
        name = flag.replace("_", " ")
    return name


def categories(flags: Sequence[str]) -> list[str]:
    """The categories a message's keywords stand for, first spelling of each, in order."""
    out: list[str] = []
    seen: set[str] = set()
    for flag in flags:
        name = keyword_category(flag)
        if name and name.lower() not in seen:
            seen.add(name.lower())
            out.append(name)
    return out


def category_keyword(category: str) -> str:
    """The IMAP keyword (an atom) for a category: Thunderbird's label keywords for its five default tags,
    otherwise the name with the characters an atom cannot hold (space, brackets, quotes, wildcards,
    controls) as "_", which reads back as a space."""
    for keyword, name in LABELS.items():
        if name.lower() == category.strip().lower():
            return keyword
    out = "".join(c if c.isascii() and c.isprintable() and c not in ' (){%*"\\]' else "_" for c in category.strip())
    return (out or "_")[:200] if out[:1] not in ("\\", "$") else "_" + out[1:200]


def flag_bits(flags: Sequence[str]) -> int:
    """READ and FLAGGED, plus a 16-bit digest of the categories, so a category change made by another
    client shows as a change too."""
    up = {f.upper() for f in flags}
    names = sorted(c.lower() for c in categories(flags))
    digest = (zlib.crc32("\x1f".join(names).encode()) & 0xFFFF) if names else 0
    return (READ if "\\SEEN" in up else 0) | (FLAGGED if "\\FLAGGED" in up else 0) | (digest << 2)


@dataclass
class FolderState:
    """What a client has of one folder, and what it is still owed."""

    uidvalidity: int
    marks: tuple[int | None, int, int]   # (HIGHESTMODSEQ, UIDNEXT, MESSAGES) when last compared
    known: dict[int, int] = field(default_factory=dict)  # UID -> flag_bits the client has
    pending: list[int] = field(default_factory=list)     # UIDs still to send, newest first
    filter_type: int = 0                                 # the front end's own date filter code
    relist: bool = False  # the marks were read after the client's own changes: list the folder next time

    def dump(self) -> bytes:
        uids = sorted(self.known)
        doc = {"v": self.uidvalidity, "m": list(self.marks), "u": uids, "b": [self.known[u] for u in uids],
               "p": self.pending, "f": self.filter_type, "r": self.relist}
        return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 3)

    @classmethod
    def load(cls, blob: bytes) -> FolderState:
        doc = json.loads(zlib.decompress(blob))
        return cls(doc["v"], tuple(doc["m"]), dict(zip(doc["u"], doc["b"])), doc["p"], doc["f"], doc.get("r", False))


def marks(status: FolderStatus) -> tuple[int | None, int, int]:
    return status.highestmodseq, status.uidnext, status.messages


def internal_date(summary: MessageSummary) -> dt.datetime | None:
    if not summary.internaldate:
        return None
    try:
        return dt.datetime.strptime(summary.internaldate, "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None


def in_window(listing: list[MessageSummary], days: int | None) -> list[MessageSummary]:
    """The messages received in the last ``days`` days (all of them for None)."""
    if not days:
        return listing
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    return [m for m in listing if (when := internal_date(m)) is None or when >= cutoff]


async def start(store, folder: str, days: int | None, filter_type: int = 0) -> FolderState:
    """A fresh state: the client has nothing and is owed every message in the window, newest first."""
    status = await store.status(folder)
    listing = in_window(await store.list_messages(folder), days)
    return FolderState(status.uidvalidity, marks(status), {}, sorted((m.uid for m in listing), reverse=True),
                       filter_type)


async def look(store, folder: str, state: FolderState, status: FolderStatus, days: int | None,
               full: bool) -> tuple[dict[int, int] | None, dict[int, tuple[str, ...]]]:
    """(UID -> flag_bits now, UID -> IMAP flags of the messages read) — or (None, {}) when the counters
    say nothing changed and ``full`` is not asked for."""
    moved_on = marks(status) != tuple(state.marks)
    listed: dict[int, tuple[str, ...]] = {}
    if (moved_on and not full and not state.relist and not days and state.marks[0] is not None
            and status.highestmodseq is not None and state.marks[0] > 0):
        # CONDSTORE: every UID, plus only the messages changed since the last look. Messages the client
        # does not have yet count as unflagged until they are sent.
        uids, changed = await store.changed_since(folder, state.marks[0])
        current = {uid: state.known.get(uid, 0) for uid in uids}
        for m in changed:
            if m.uid in current:
                current[m.uid] = flag_bits(m.flags)
                listed[m.uid] = m.flags
        return current, listed
    if full or moved_on or state.marks[0] is None or state.relist:
        listing = in_window(await store.list_messages(folder), days)
        return {m.uid: flag_bits(m.flags) for m in listing}, {m.uid: m.flags for m in listing}
    return None, listed


def rebase(state: FolderState, current: dict[int, int]) -> None:
    """Messages new on the server join the owed list; owed ones that vanished leave it."""
    owed = set(state.pending)
    fresh = [uid for uid in current if uid not in state.known and uid not in owed]
    kept = [uid for uid in state.pending if uid in current]
    if fresh:
        kept = sorted(set(kept) | set(fresh), reverse=True)
    state.pending = kept


def diff(state: FolderState, current: dict[int, int]) -> tuple[list[int], list[int]]:
    """(UIDs the client has that are gone, UIDs whose flags or categories changed)."""
    gone = [uid for uid in state.known if uid not in current]
    changed = [uid for uid, bits in state.known.items() if uid in current and current[uid] != bits]
    return gone, changed
