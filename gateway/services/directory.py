"""Directory and routing from a static users file: who a user is and which back end holds each kind of data."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

from adapters.interfaces import UserRecord

from ..config import BACKEND_TYPES, Config, ConfigError

_USER_KEYS = {"address", "name", "login", "aliases", *BACKEND_TYPES}


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class StaticDirectory:
    """Users read once from a TOML file (``[[user]]`` tables); implements ``adapters.interfaces.Directory``."""

    def __init__(self, config: Config, records: list[UserRecord]) -> None:
        self._config = config
        self._records = records
        self._by_key: dict[str, UserRecord] = {}
        self._alias_domains = {alias.lower(): d.lower() for d, dc in config.domains.items() for alias in dc.aliases}
        for r in records:
            for key in (r.address, r.login, *r.aliases):
                self._by_key.setdefault(key.lower(), r)

    @classmethod
    def from_config(cls, config: Config) -> "StaticDirectory":
        path = config.path(config.directory.users_file)
        key = "directory.users_file"
        try:
            data = tomllib.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            raise ConfigError(key, f"users file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(key, f"cannot read users file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(key, f"users file {path} is not valid TOML: {exc}") from None
        return cls(config, parse_users(config, data, str(path)))

    async def lookup(self, address_or_login: str) -> UserRecord | None:
        return self.find(address_or_login)

    def find(self, address_or_login: str) -> UserRecord | None:
        """The user an address, alias or login names; addresses on alias domains resolve too."""
        key = address_or_login.strip().lower()
        if record := self._by_key.get(key):
            return record
        local, at, domain = key.rpartition("@")
        if at and domain in self._alias_domains:
            return self._by_key.get(f"{local}@{self._alias_domains[domain]}")
        return None

    async def users(self) -> AsyncIterator[UserRecord]:
        for r in self._records:
            yield r

    def all_users(self) -> list[UserRecord]:
        return list(self._records)

    def search(self, text: str, limit: int = 100) -> list[UserRecord]:
        """People whose address, alias, login or a word of whose display name starts with ``text``
        (ignoring case), by display name: the global address list as a phone or web app searches it."""
        wanted = text.strip().lower()
        if not wanted:
            return []
        found = []
        for r in self._records:
            words = (r.display_name or "").lower().split()
            keys = [r.address.lower(), r.login.lower(), *(a.lower() for a in r.aliases), *words,
                    (r.display_name or "").lower()]
            if any(k.startswith(wanted) for k in keys):
                found.append(r)
        found.sort(key=lambda r: ((r.display_name or r.address).lower(), r.address))
        return found[:limit]

    def route(self, user: UserRecord, role: str) -> str | None:
        """Name of the back end serving ``role`` (imap, caldav, carddav, smtp, ews) for this user."""
        return user.backends.get(role) or None

    def is_local_domain(self, domain: str) -> bool:
        d = domain.lower()
        return d in {x.lower() for x in self._config.domains} or d in self._alias_domains


def parse_users(config: Config, data: dict, source: str = "users file") -> list[UserRecord]:
    """Validate the users file's tables into records, with each domain's default back ends filled in."""
    rows = data.get("user", [])
    unknown_top = sorted(set(data) - {"user"})
    if unknown_top:
        raise ConfigError(f"{source}: {unknown_top[0]}", "unknown table (users are [[user]] tables)")
    if not isinstance(rows, list):
        raise ConfigError(f"{source}: user", "must be an array of tables ([[user]])")
    domains = {d.lower(): dc for d, dc in config.domains.items()}
    records, seen = [], set()
    for i, row in enumerate(rows):
        key = f"{source}: user[{i}]"
        if not isinstance(row, dict):
            raise ConfigError(key, "must be a table")
        if bad := sorted(set(row) - _USER_KEYS):
            raise ConfigError(f"{key}.{bad[0]}", "unknown setting")
        address = row.get("address")
        if not isinstance(address, str) or address.count("@") != 1 or address.startswith("@") \
                or address.endswith("@"):
            raise ConfigError(f"{key}.address", "must be an e-mail address")
        address = address.lower()
        domain = _domain_of(address)
        for field_name in ("name", "login", *BACKEND_TYPES):
            if field_name in row and not isinstance(row[field_name], str):
                raise ConfigError(f"{key}.{field_name}", "must be a string")
        aliases = row.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) and "@" in a for a in aliases):
            raise ConfigError(f"{key}.aliases", "must be a list of e-mail addresses")
        dc = domains.get(domain)
        backends = {}
        for role in BACKEND_TYPES:
            name = row.get(role) or (getattr(dc, role) if dc else "")
            if name:
                if name not in config.backends:
                    raise ConfigError(f"{key}.{role}", f"names back end {name!r}, which is not defined")
                if config.backends[name].type != role:
                    raise ConfigError(f"{key}.{role}", f"back end {name!r} is not of type {role}")
                backends[role] = name
        if "imap" not in backends and "ews" not in backends:
            raise ConfigError(key, f"{address} has no mail back end: set imap (or ews) on the user "
                                   f"or on [domains.\"{domain}\"]")
        # A login equal to the address (the default) is one name, not two.
        for k in dict.fromkeys((address, row.get("login", address).lower(), *(a.lower() for a in aliases))):
            if k in seen:
                raise ConfigError(key, f"{k} is listed twice")
            seen.add(k)
        records.append(UserRecord(address=address, login=row.get("login", address),
                                  display_name=row.get("name") or address.partition("@")[0].title(),
                                  domain=domain, backends=backends,
                                  aliases=tuple(a.lower() for a in aliases)))
    return records


def write_users_file(path: Path, users: list[tuple[str, str]]) -> None:
    """Write a users file for (address, display name) pairs; used by the demo."""
    lines = []
    for address, name in users:
        lines += ["[[user]]", f'address = "{address}"', f'name = "{name}"', ""]
    path.write_text("\n".join(lines))
