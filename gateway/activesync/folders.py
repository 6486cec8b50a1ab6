"""Mail folders as a device sees them: stable ServerIds for IMAP mailboxes, EAS folder types, sync keys.

A folder's ServerId is a small number given the first time any of the user's
devices sees the folder and kept in the state store, so every device and
every node agree on it and it survives restarts. An IMAP rename done through
FolderUpdate keeps the id; a folder that disappears loses its id (a folder
made again under the same name is a new folder, as on Exchange).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from adapters.interfaces import Folder

from ..state import StateStore

# MS-ASCMD 2.2.3.186.3 FolderHierarchy Type values.
GENERIC, INBOX, DRAFTS, DELETED, SENT, OUTBOX, USER_MAIL = 1, 2, 3, 4, 5, 6, 12
_SPECIAL = {"\\DRAFTS": DRAFTS, "\\TRASH": DELETED, "\\SENT": SENT}
# Well-known names, for servers without SPECIAL-USE (lower case, last path element).
_NAMED = {"drafts": DRAFTS, "entwürfe": DRAFTS, "brouillons": DRAFTS,
          "trash": DELETED, "deleted items": DELETED, "deleted messages": DELETED, "papierkorb": DELETED,
          "corbeille": DELETED, "sent": SENT, "sent items": SENT, "sent messages": SENT, "sent mail": SENT,
          "gesendet": SENT, "gesendete objekte": SENT, "envoyés": SENT, "outbox": OUTBOX, "postausgang": OUTBOX}
_NS = "eas-folders"
_SEQ = "eas-folder-seq"
_CACHE_SECONDS = 30.0


def folder_types(folders: list[Folder]) -> dict[str, int]:
    """The EAS type of each folder; each default type goes to one folder only (SPECIAL-USE first, then
    well-known names), the rest are user mail folders. Junk has no default type in EAS: Exchange too
    reports its Junk E-Mail folder as a user mail folder."""
    out: dict[str, int] = {}

    def give(name: str, kind: int) -> None:
        out[name] = kind
        if kind != USER_MAIL:
            taken.add(kind)

    taken: set[int] = set()
    for f in folders:
        if f.name.upper() == "INBOX":
            give(f.name, INBOX)
    for f in folders:
        kind = _SPECIAL.get((f.special_use or "").upper())
        if kind is not None and kind not in taken and f.name not in out:
            give(f.name, kind)
    for f in folders:
        if f.name in out:
            continue
        kind = _NAMED.get(f.name.lower()) if not (f.delimiter and f.delimiter in f.name) else None  # top level only
        give(f.name, kind if kind is not None and kind not in taken else USER_MAIL)
    return out


def parent_of(folder: Folder, names: set[str]) -> str | None:
    """The IMAP name of the folder's parent, when that parent is itself a listed folder."""
    if not folder.delimiter or folder.delimiter not in folder.name:
        return None
    parent = folder.name.rsplit(folder.delimiter, 1)[0]
    return parent if parent in names else None


def first_key() -> str:
    """A new sync key chain. The random part keeps a key of a removed partnership from matching a new one."""
    return f"{{{secrets.token_hex(8)}}}1"


def next_key(key: str) -> str:
    """The key after ``key``; the same every time, so a retried request is answered under the same key."""
    head, _, n = key.rpartition("}")
    return f"{head}}}{int(n) + 1}"


def valid_key(key: str) -> bool:
    head, close, n = key.rpartition("}")
    return bool(close) and head.startswith("{") and n.isdigit() and len(key) <= 64


class FolderMap:
    """IMAP folder name <-> ServerId, per user, in the state store (cached briefly)."""

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self._cache: dict[str, tuple[float, dict[str, str]]] = {}
        # Changes are read-modify-write of one record per user: two phones of one user doing their first
        # FolderSync at once must not each write a map without the other's new ids.
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, user: str) -> asyncio.Lock:
        lock = self._locks.get(user)
        if lock is None:
            lock = self._locks[user] = asyncio.Lock()
        return lock

    async def _load(self, user: str, fresh: bool = False) -> dict[str, str]:
        hit = self._cache.get(user)
        if hit is not None and not fresh and time.monotonic() - hit[0] < _CACHE_SECONDS:
            return hit[1]
        raw = await self.state.kv_get(_NS, user)
        ids = json.loads(raw) if raw else {}
        self._cache[user] = (time.monotonic(), ids)
        return ids

    async def _store(self, user: str, ids: dict[str, str]) -> None:
        await self.state.kv_set(_NS, user, json.dumps(ids, sort_keys=True).encode())
        self._cache[user] = (time.monotonic(), ids)

    async def assign(self, user: str, names: list[str], mail_only: bool = False) -> dict[str, str]:
        """Ids for exactly these folders (the current list): new ones get fresh ids, missing ones lose theirs.
        With ``mail_only`` the list is of mail folders only, and the DAV folders' ids (keys starting with
        NUL, see pimfolders.py) are kept as they are."""
        async with self._lock(user):
            return await self._assign(user, names, mail_only)

    async def _assign(self, user: str, names: list[str], mail_only: bool) -> dict[str, str]:
        ids = dict(await self._load(user, fresh=True))
        if mail_only:
            names = list(names) + [n for n in ids if n.startswith("\x00")]
        changed = False
        for name in names:
            if name not in ids:
                ids[name] = str(await self.state.kv_incr(_SEQ, user))
                changed = True
        for name in set(ids) - set(names):
            del ids[name]
            changed = True
        if changed:
            await self._store(user, ids)
        return ids

    async def all(self, user: str) -> dict[str, str]:
        """Every folder name (or DAV folder key) -> ServerId the user has now."""
        return dict(await self._load(user, fresh=True))

    async def name_of(self, user: str, server_id: str) -> str | None:
        for attempt in (False, True):
            ids = await self._load(user, fresh=attempt)
            for name, sid in ids.items():
                if sid == server_id:
                    return name
        return None

    async def id_of(self, user: str, name: str) -> str | None:
        ids = await self._load(user)
        return ids.get(name) or (await self._load(user, fresh=True)).get(name)

    async def rename(self, user: str, old: str, new: str, delimiter: str) -> None:
        """Carry ids over an IMAP rename (children move with their parent)."""
        async with self._lock(user):
            await self._rename(user, old, new, delimiter)

    async def _rename(self, user: str, old: str, new: str, delimiter: str) -> None:
        ids = dict(await self._load(user, fresh=True))
        for name in list(ids):
            if name == old or name.startswith(old + delimiter):
                ids[new + name[len(old):]] = ids.pop(name)
        await self._store(user, ids)
