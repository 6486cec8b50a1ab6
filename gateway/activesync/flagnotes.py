"""What IMAP cannot hold of a follow-up flag: its type, start, due and reminder dates (MS-ASEMAIL Flag).

IMAP keeps only \\Flagged. The rest a device set is kept in the state store
per user, folder, UIDVALIDITY and UID, so every device of the user (and every
node) sends the same flag back. It is dropped when the flag is cleared or
completed; a message flagged by another client gets a plain follow-up flag.
"""

from __future__ import annotations

import json

from ..state import StateStore
from .wbxml import Element

_NS = "eas-flag"
_KEPT = {("Email", "FlagType"), ("Email", "Status"), ("Tasks", "StartDate"), ("Tasks", "UtcStartDate"),
         ("Tasks", "DueDate"), ("Tasks", "UtcDueDate"), ("Tasks", "ReminderSet"), ("Tasks", "ReminderTime"),
         ("Tasks", "Subject"), ("Tasks", "OrdinalDate"), ("Tasks", "SubOrdinalDate")}
_TTL = 400 * 86400.0


def _key(user: str, folder: str, uidvalidity: int, uid: int) -> str:
    return f"{user}\x1f{folder}\x1f{uidvalidity}\x1f{uid}"


def plain_flag() -> list[Element]:
    return [Element("Email", "Status", text="2"), Element("Email", "FlagType", text="Flag for follow up")]


class FlagNotes:
    def __init__(self, state: StateStore) -> None:
        self.state = state

    async def get(self, user: str, folder: str, uidvalidity: int, uid: int) -> list[Element] | None:
        raw = await self.state.kv_get(_NS, _key(user, folder, uidvalidity, uid))
        if raw is None:
            return None
        return [Element(ns, name, text=text) for ns, name, text in json.loads(raw)]

    async def put(self, user: str, folder: str, uidvalidity: int, uid: int, flag: Element) -> None:
        """Keep an active flag's details (Status 2); anything else clears them."""
        kept = [[c.ns, c.name, c.text] for c in flag.children if (c.ns, c.name) in _KEPT and c.text is not None]
        if flag.text_of("Status", "Email") != "2" or len(json.dumps(kept)) > 4096:
            await self.drop(user, folder, uidvalidity, uid)
            return
        await self.state.kv_set(_NS, _key(user, folder, uidvalidity, uid), json.dumps(kept).encode(), ttl=_TTL)

    async def drop(self, user: str, folder: str, uidvalidity: int, uid: int) -> None:
        await self.state.kv_delete(_NS, _key(user, folder, uidvalidity, uid))
