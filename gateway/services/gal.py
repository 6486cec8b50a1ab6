"""The global address list: the directory's users, plus an LDAP directory and a shared CardDAV book, merged.

Phones search it (EAS Search GAL, Find) and resolve recipients against it. The
gateway's own users always come first; the other sources add people the
gateway does not serve and fill in what the directory lacks (phones, photos,
S/MIME certificates). Entries with the same e-mail address are one person.
Each source's answers are cached for ``[gal] cache_ttl``; a source that fails
or is slower than ``[gal] timeout`` is logged, left out, and not asked again
for ``cache_ttl`` seconds, so the directory's people are always answered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Protocol
from urllib.parse import unquote_to_bytes, urljoin

from adapters.errors import BackendError
from adapters.interfaces import Credentials, UserRecord

from ..config import Config, ConfigError

if TYPE_CHECKING:
    from adapters.dav import CardDavContactStore
    from adapters.ldap import LdapDirectory, Person

    from .directory import StaticDirectory

log = logging.getLogger(__name__)

#: Most entries kept in one source's answer cache before the oldest are dropped.
CACHE_ENTRIES = 2048


@dataclass(frozen=True)
class GalEntry:
    """One person of the global address list; empty strings where a source knows nothing."""

    display_name: str
    email: str
    first_name: str = ""
    last_name: str = ""
    aliases: tuple[str, ...] = ()
    phone: str = ""
    mobile_phone: str = ""
    home_phone: str = ""
    office: str = ""
    title: str = ""
    company: str = ""
    alias: str = ""
    picture: bytes | None = None
    certificates: tuple[bytes, ...] = ()

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address of the person, lower-cased, main one first."""
        return tuple(dict.fromkeys(a.lower() for a in (self.email, *self.aliases) if a))

    def merged(self, other: GalEntry) -> GalEntry:
        """This entry with the fields it lacks taken from ``other`` (addresses and certificates joined)."""
        changes = {f.name: getattr(other, f.name) for f in fields(self)
                   if not getattr(self, f.name) and getattr(other, f.name)}
        main = self.email.lower()
        changes["aliases"] = tuple(dict.fromkeys(a.lower() for a in (*self.aliases, *other.addresses)
                                                 if a.lower() != main))
        changes["certificates"] = tuple(dict.fromkeys(self.certificates + other.certificates))
        return replace(self, **changes)

    def matches(self, wanted: str) -> bool:
        """True when an address, the alias or a word of a name starts with ``wanted`` (lower-case)."""
        words = [*self.display_name.lower().split(), self.display_name.lower(), self.first_name.lower(),
                 self.last_name.lower(), self.alias.lower(), *self.addresses]
        return any(w.startswith(wanted) for w in words if w)


def _sort_key(entry: GalEntry) -> tuple[str, str]:
    return (entry.display_name or entry.email).lower(), entry.email.lower()


def entry_of_user(user: UserRecord) -> GalEntry:
    """A directory user as a GAL entry: "Alice Example" is first name Alice, last name Example."""
    name = user.display_name or user.address
    parts = name.split()
    first, last = (parts[0], " ".join(parts[1:])) if len(parts) > 1 else ("", name)
    alias = user.login.partition("@")[0] or user.address.partition("@")[0]
    return GalEntry(display_name=name, email=user.address, first_name=first, last_name=last,
                    aliases=tuple(user.aliases), alias=alias)


class GalSource(Protocol):
    """Somewhere people come from besides the directory."""

    name: str

    async def search(self, text: str, limit: int) -> list[GalEntry]: ...

    async def close(self) -> None: ...


# --- LDAP --------------------------------------------------------------------------------------------

def entry_of_person(person: Person) -> GalEntry | None:
    """An LDAP entry (GAL field -> values) as a GAL entry; None without an e-mail address."""
    def first(name: str) -> str:
        values = person.get(name) or []
        return values[0] if values else ""
    mails = person.get("email") or []
    if not mails:
        return None
    given, family = first("first_name"), first("last_name")
    display = first("display_name") or " ".join(p for p in (given, family) if p) or mails[0]
    pictures = person.get("picture") or []
    return GalEntry(display_name=display, email=mails[0].lower(), first_name=given, last_name=family,
                    aliases=tuple(m.lower() for m in mails[1:]), phone=first("phone"),
                    mobile_phone=first("mobile_phone"), home_phone=first("home_phone"), office=first("office"),
                    title=first("title"), company=first("company"),
                    alias=first("alias") or mails[0].partition("@")[0], picture=pictures[0] if pictures else None,
                    certificates=tuple(person.get("certificates") or ()))


class LdapSource:
    name = "ldap"

    def __init__(self, directory: LdapDirectory) -> None:
        self._directory = directory

    async def search(self, text: str, limit: int) -> list[GalEntry]:
        return [e for p in await self._directory.search(text, limit) if (e := entry_of_person(p)) is not None]

    async def close(self) -> None:
        pass


# --- a shared CardDAV address book -------------------------------------------------------------------

_DATA_URI = re.compile(r"^data:([^,]*?)(;base64)?,(.*)$", re.IGNORECASE | re.DOTALL)
_BINARY_LINE = re.compile(r"^(?:[A-Za-z0-9-]+\.)?(PHOTO|KEY)[;:]", re.IGNORECASE)


def _binary_values(vcard: str, name: str) -> list[bytes]:
    """The inline values of PHOTO or KEY lines: ENCODING=b (vCard 3) or data: URIs (vCard 4); URLs are skipped.

    Read from the raw lines: vobject's text decoding cuts a data: URI at its comma.
    """
    import vobject
    found = []
    for line in re.sub(r"\r?\n[ \t]", "", vcard).splitlines():
        match = _BINARY_LINE.match(line)
        if not match or match.group(1).upper() != name:
            continue
        try:
            _, params, value, _ = vobject.base.parseLine(line)
            encodings = {str(v).lower() for p in params if p and p[0].upper() == "ENCODING" for v in p[1:]}
            if encodings & {"b", "base64"}:
                found.append(base64.b64decode(value.strip(), validate=False))
            # Some writers escape the URI's separators as if it were text ("data:image/jpeg\\;base64\\,...").
            elif uri := _DATA_URI.match(value.strip().replace("\\,", ",").replace("\\;", ";")):
                payload = uri.group(3)
                found.append(base64.b64decode(payload) if uri.group(2) else unquote_to_bytes(payload))
        except (vobject.base.ParseError, binascii.Error, ValueError):
            continue
    return [v for v in found if v]


def entry_of_vcard(text: str) -> GalEntry | None:
    """A vCard (3.0 or 4.0) as a GAL entry; None when it is not a vCard or has no e-mail address."""
    import vobject
    try:
        card = vobject.readOne(text)
    except Exception:  # vobject raises ParseError, ValueError or worse on junk
        return None
    contents = card.contents

    def text_of(key: str) -> str:
        items = contents.get(key) or []
        value = items[0].value if items else ""
        if isinstance(value, list):
            value = value[0] if value else ""
        return str(value).strip() if value else ""

    emails = []
    for item in contents.get("email", []):
        types = {t.lower() for t in item.params.get("TYPE", []) for t in t.split(",")}
        value = str(item.value or "").strip().lower().removeprefix("mailto:")
        if "@" in value:
            # A preferred address (TYPE=PREF, or PREF=1 in vCard 4) is the main one.
            emails.append((0 if "pref" in types or item.params.get("PREF") else 1, len(emails), value))
    if not emails:
        return None
    addresses = [v for _, _, v in sorted(emails)]
    phones: dict[str, str] = {}
    for item in contents.get("tel", []):
        types = {t.lower() for t in item.params.get("TYPE", []) for t in t.split(",")}
        number = str(item.value or "").strip().removeprefix("tel:")
        kind = "mobile_phone" if types & {"cell", "mobile"} else "home_phone" if "home" in types else "phone"
        if number:
            phones.setdefault(kind, number)
    given = family = ""
    if contents.get("n"):
        n = contents["n"][0].value
        given = " ".join(n.given) if isinstance(n.given, list) else str(n.given or "")
        family = " ".join(n.family) if isinstance(n.family, list) else str(n.family or "")
    org = contents["org"][0].value if contents.get("org") else []
    company = (org[0] if isinstance(org, list) and org else str(org or "")).strip()
    pictures = _binary_values(text, "PHOTO")
    display = text_of("fn") or " ".join(p for p in (given.strip(), family.strip()) if p) or addresses[0]
    return GalEntry(display_name=display, email=addresses[0], first_name=given.strip(), last_name=family.strip(),
                    aliases=tuple(addresses[1:]), title=text_of("title"), company=company,
                    alias=addresses[0].partition("@")[0], picture=pictures[0] if pictures else None,
                    certificates=tuple(_binary_values(text, "KEY")), **phones)


class CardDavSource:
    """One shared address book read with a service login; the whole book is cached and searched in memory."""

    name = "carddav"

    def __init__(self, store: CardDavContactStore, book_url: str, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._book_url = book_url
        self._ttl = ttl
        self._clock = clock
        self._stack: AsyncExitStack | None = None
        self._entries: list[GalEntry] = []
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def _book(self) -> list[GalEntry]:
        async with self._lock:
            now = self._clock()
            if self._loaded_at is None or now - self._loaded_at >= self._ttl:
                if self._stack is None:
                    stack = AsyncExitStack()
                    await self._store.start(stack)
                    self._stack = stack
                cards = await self._store.contacts(self._book_url)
                self._entries = [e for c in cards if (e := entry_of_vcard(c.vcard)) is not None]
                self._loaded_at = now
            return self._entries

    async def search(self, text: str, limit: int) -> list[GalEntry]:
        wanted = text.strip().lower()
        return [e for e in await self._book() if e.matches(wanted)][:limit]

    async def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()


# --- the merged list ---------------------------------------------------------------------------------

class Gal:
    """The global address list of one gateway process."""

    def __init__(self, directory: StaticDirectory, sources: Sequence[GalSource] = (), cache_ttl: float = 60.0,
                 timeout: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._directory = directory
        self.sources = list(sources)
        self._ttl = cache_ttl
        self._timeout = timeout
        self._clock = clock
        self._cache: dict[tuple[str, str, int], tuple[float, list[GalEntry]]] = {}
        self._down_until: dict[str, float] = {}

    @classmethod
    def from_config(cls, config: Config, directory: StaticDirectory) -> Gal:
        """The GAL ``[gal]`` describes; ConfigError when it names a missing or unusable back end."""
        check_config(config)
        g = config.gal
        sources: list[GalSource] = []
        if g.ldap_url:
            from adapters.ldap import DEFAULT_ATTRIBUTES, LdapDirectory, LdapSettings
            ca = g.ldap_ca_file or config.tls.ca_file
            settings = LdapSettings.from_url(
                g.ldap_url, g.ldap_tls, base=g.ldap_base, bind_dn=g.ldap_bind_dn, password=g.ldap_secret(config),
                ca_file=str(config.path(ca)) if ca else None, filter_template=g.ldap_filter,
                attributes={**DEFAULT_ATTRIBUTES, **g.ldap_attributes}, size_limit=g.ldap_size_limit,
                timeout=g.timeout)
            sources.append(LdapSource(LdapDirectory(settings)))
        if g.carddav_backend:
            from adapters.dav import CardDavContactStore
            b = config.backends[g.carddav_backend]
            ca = b.ca_file or config.tls.ca_file
            store = CardDavContactStore(b.url, Credentials(b.service_login, b.service_secret(config)),
                                        str(config.path(ca)) if ca else None, min(b.timeout, g.timeout))
            book = urljoin(b.url if b.url.endswith("/") else b.url + "/", g.carddav_book)
            sources.append(CardDavSource(store, book, g.cache_ttl))
        return cls(directory, sources, g.cache_ttl, g.timeout)

    async def close(self) -> None:
        for source in self.sources:
            await source.close()

    async def search(self, text: str, limit: int = 100) -> list[GalEntry]:
        """People matching ``text``: the directory's first (by name), then the other sources' (by name)."""
        wanted = text.strip()
        if not wanted or limit <= 0:
            return []
        own = [entry_of_user(u) for u in self._directory.search(wanted, limit=limit)]
        answers = await asyncio.gather(*(self._ask(s, wanted, limit) for s in self.sources))
        return merge(own, [e for answer in answers for e in answer])[:limit]

    async def resolve(self, address_or_name: str, limit: int = 1000) -> list[GalEntry]:
        """Who ``address_or_name`` names: the one person with that address (or login) if there is one,
        else everyone the text matches."""
        wanted = address_or_name.strip()
        found = await self.search(wanted, limit)
        user = self._directory.find(wanted) if wanted else None
        if user is not None:
            mine = [e for e in found if user.address.lower() in e.addresses]
            return mine[:1] or merge([entry_of_user(user)], found)[:1]
        exact = [e for e in found if wanted.lower() in e.addresses]
        return exact or found

    async def _ask(self, source: GalSource, text: str, limit: int) -> list[GalEntry]:
        now = self._clock()
        if self._down_until.get(source.name, 0.0) > now:
            return []
        key = (source.name, text.lower(), limit)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            found = await asyncio.wait_for(source.search(text, limit), self._timeout)
        except asyncio.TimeoutError:
            return self._failed(source, f"no answer within {self._timeout:g} s")
        except BackendError as exc:
            return self._failed(source, str(exc))
        except Exception as exc:  # a bug in one source must not take the others' answers with it
            return self._failed(source, f"unexpected {exc.__class__.__name__}")
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            while len(self._cache) >= CACHE_ENTRIES:
                self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (now + self._ttl, found)
        return found

    def _failed(self, source: GalSource, why: str) -> list[GalEntry]:
        log.warning("GAL source %s skipped for %g s: %s", source.name, self._ttl, why)
        self._down_until[source.name] = self._clock() + self._ttl
        return []


def merge(first: Sequence[GalEntry], others: Sequence[GalEntry]) -> list[GalEntry]:
    """``first`` in its order, then ``others`` by name; a person (any shared address) appears once, with the
    earlier entry's fields (``first``, then ``others`` in their order: source by source) winning and the gaps
    filled from the later ones."""
    out: list[GalEntry] = []
    where: dict[str, int] = {}

    def add(entry: GalEntry) -> None:
        index = next((where[a] for a in entry.addresses if a in where), None)
        if index is None:
            index = len(out)
            out.append(entry)
        else:
            out[index] = out[index].merged(entry)
        for a in out[index].addresses:
            where.setdefault(a, index)

    for entry in first:
        add(entry)
    own = len(out)
    for entry in others:
        add(entry)
    return out[:own] + sorted(out[own:], key=_sort_key)


def check_config(config: Config) -> None:
    """Raise ConfigError when ``[gal]`` names a CardDAV back end that is missing or cannot be used."""
    g = config.gal
    if g.carddav_backend:
        b = config.backends.get(g.carddav_backend)
        if b is None:
            raise ConfigError("gal.carddav_backend", f"names back end {g.carddav_backend!r}, which is not defined")
        if b.type != "carddav":
            raise ConfigError("gal.carddav_backend", f"back end {g.carddav_backend!r} is not of type carddav")
        if not b.service_login:
            raise ConfigError("gal.carddav_backend", f"back end {g.carddav_backend!r} has no service_login to "
                                                     "read the shared address book with")
        if not g.carddav_book:
            raise ConfigError("gal.carddav_book", "is required when carddav_backend is set")
    if g.ldap_url and not g.ldap_base:
        raise ConfigError("gal.ldap_base", "is required when ldap_url is set")
    g.ldap_secret(config)  # a password file that cannot be read fails here, not at the first search


__all__ = ["CardDavSource", "Gal", "GalEntry", "GalSource", "LdapSource", "check_config", "entry_of_person",
           "entry_of_user", "entry_of_vcard", "merge"]
