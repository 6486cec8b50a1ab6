"""Out-of-office kept as a Sieve vacation rule (RFC 5230) on the user's ManageSieve server (RFC 5804).

Sieve has no notion of internal and external senders, so one reply text is
used for everyone: the internal message, or the external one when the
internal message is empty.  ``external_audience`` other than "all" limits the
reply to senders whose From domain is one of the user's own domains ("known"
is treated like "none": contacts are out of a Sieve script's reach).  The
settings are kept verbatim as a JSON comment on the script's first line, so
``get`` returns exactly what ``set`` stored, whatever the rule had to
normalise (line breaks in the reply, seconds in the dates).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import re
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from .errors import (AuthenticationFailed, BackendError, BackendUnavailable, InvalidData, PermissionDenied,
                     QuotaExceeded)
from .interfaces import Credentials

SCRIPT_NAME = "casgate-oof"
MARKER = "# casgate-oof "
AUDIENCES = ("none", "known", "all")
MAX_LINE = 16 * 1024           # one response line from the server, CRLF included
MAX_LITERAL = 1024 * 1024      # one string literal from the server (a whole script)
MAX_RESPONSE = 4 * 1024 * 1024  # everything one command may answer
MAX_TEXT = 64 * 1024           # UTF-8 octets of one reply message or subject
_MAX_QUOTED = 1024             # RFC 5804: longer strings go as literals
_LITERAL = re.compile(rb"\{(\d{1,7})(\+?)\}")
_ATOM_STOP = frozenset(b' ()"{')
_BREAKS = re.compile(r"\r\n|\r|\n")


class SieveDataError(InvalidData, ValueError):
    """Bad settings given to ``set``, or a server reply or script that makes no sense."""


@dataclass(frozen=True)
class SieveEndpoint:
    """Where the ManageSieve server listens and whether to secure it with STARTTLS."""

    host: str
    port: int
    tls: str = "starttls"  # starttls | none
    ssl_context: ssl.SSLContext | None = None
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.tls not in ("starttls", "none"):
            raise SieveDataError(f"tls must be 'starttls' or 'none', not {self.tls!r}")


@dataclass(frozen=True)
class OofSettings:
    """EAS out-of-office; ``state`` is OofState: 0 disabled, 1 enabled, 2 enabled between start and end (UTC)."""

    state: int
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    internal_message: str = ""
    external_message: str = ""  # replied only when internal_message is empty (one text for everyone)
    external_audience: str = "all"  # "none" | "known" | "all"
    subject: str = ""


# ---- the Sieve script (pure) -------------------------------------------------------------------------------

def _text(value: object, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise SieveDataError(f"{what} must be text")
    if "\0" in value:
        raise SieveDataError(f"{what} contains a NUL character, which Sieve cannot carry")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise SieveDataError(f"{what} is not valid Unicode (lone surrogate)") from None
    if size > limit:
        raise SieveDataError(f"{what} is longer than {limit} octets")
    return value


def _utc(value: object, what: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime):
        raise SieveDataError(f"{what} must be a datetime")
    # A naive time is taken as UTC, as EAS sends every time in UTC.
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def validated(settings: OofSettings) -> OofSettings:
    """The settings with times in UTC, or SieveDataError naming what is wrong."""
    if not isinstance(settings, OofSettings):
        raise SieveDataError("settings must be an OofSettings")
    if type(settings.state) is not int or settings.state not in (0, 1, 2):
        raise SieveDataError(f"OOF state must be 0, 1 or 2, not {settings.state!r}")
    start, end = _utc(settings.start, "start"), _utc(settings.end, "end")
    if settings.state == 2 and (start is None or end is None):
        raise SieveDataError("a time-based OOF (state 2) needs a start and an end")
    if start is not None and end is not None and end <= start:
        raise SieveDataError("the OOF end must come after its start")
    if settings.external_audience not in AUDIENCES:
        raise SieveDataError(f"external_audience must be one of {', '.join(AUDIENCES)}")
    for name in ("internal_message", "external_message"):
        _text(getattr(settings, name), name.replace("_", " "))
    _text(settings.subject, "subject", 4096)
    return replace(settings, start=start, end=end)


def sieve_string(value: str) -> str:
    """A Sieve quoted string (RFC 5228 2.4.2): line breaks become CRLF, quotes and backslashes are escaped."""
    body = _BREAKS.sub("\r\n", value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{body}"'


def _string_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(sieve_string(v) for v in values) + "]"


def _iso(value: dt.datetime) -> str:
    # Compared as text with currentdate's iso8601 part in UTC; both start with these 19 characters.
    return value.replace(tzinfo=None, microsecond=0).isoformat(timespec="seconds")


def build_script(settings: OofSettings, addresses: Sequence[str] = (), previous: str | None = None,
                 extensions: frozenset[str] | None = None) -> str:
    """Our whole script: the settings line, then (when enabled) the vacation rule and an include of ``previous``.

    ``extensions`` is the server's SIEVE capability; None means "assume everything".
    """
    s = validated(settings)
    record = {"version": 1, "state": s.state, "start": s.start.isoformat() if s.start else None,
              "end": s.end.isoformat() if s.end else None, "internal_message": s.internal_message,
              "external_message": s.external_message, "external_audience": s.external_audience,
              "subject": s.subject, "previous": previous}
    lines = [MARKER + json.dumps(record, ensure_ascii=True, sort_keys=True, separators=(",", ":")),
             "# Out-of-office set by casgate (Exchange ActiveSync); the first line is read back, edits are lost."]
    if s.state == 0:
        return "\r\n".join(lines) + "\r\n"
    needs = ["vacation"] + (["include"] if previous else []) + (["date", "relational"] if s.state == 2 else [])
    missing = [n for n in needs if extensions is not None and n not in extensions]
    if "include" in missing:
        raise PermissionDenied("an existing sieve script is active and the server cannot include it")
    if missing:
        raise SieveDataError(f"the Sieve server lacks the extension(s) {', '.join(missing)}")
    lines.append(f"require {_string_list(needs)};")
    tests = []
    if s.state == 2:
        assert s.start is not None and s.end is not None
        tests += [f'currentdate :zone "+0000" :value "ge" "iso8601" "{_iso(s.start)}"',
                  f'currentdate :zone "+0000" :value "le" "iso8601" "{_iso(s.end)}"']
    domains = sorted({a.rpartition("@")[2].lower() for a in addresses})
    rule = "vacation :days 1"
    if s.subject:
        rule += " :subject " + sieve_string(" ".join(_BREAKS.split(s.subject)))
    if addresses:
        rule += " :addresses " + _string_list(addresses)
    rule += " " + sieve_string(s.internal_message or s.external_message) + ";"
    if s.external_audience != "all":
        tests.append(f'address :domain :is "from" {_string_list(domains)}')
    if s.external_audience != "all" and not domains:
        lines.append("# No own address is known, so no sender counts as internal: nobody gets a reply.")
    elif tests:
        lines += [f"if allof({', '.join(tests)}) {{", f"  {rule}", "}"]
    else:
        lines.append(rule)
    if previous:
        # After the vacation rule, so that a "stop" in the user's own script cannot silence it.
        lines.append(f"include :personal :optional {sieve_string(previous)};")
    return "\r\n".join(lines) + "\r\n"


def parse_script(text: str) -> tuple[OofSettings, str | None]:
    """The settings and the previously active script's name that ``build_script`` wrote into ``text``."""
    first = text.split("\n", 1)[0].rstrip("\r")
    if not first.startswith(MARKER):
        raise SieveDataError(f"the {SCRIPT_NAME} script does not start with our settings line")
    try:
        record = json.loads(first[len(MARKER):])
    except (ValueError, RecursionError):
        raise SieveDataError(f"the settings line of {SCRIPT_NAME} is not JSON") from None
    if not isinstance(record, dict) or record.get("version") != 1:
        raise SieveDataError(f"the settings line of {SCRIPT_NAME} has an unknown layout")

    def when(key: str) -> dt.datetime | None:
        value = record.get(key)
        if value is None:
            return None
        try:
            parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise SieveDataError(f"the settings line of {SCRIPT_NAME} has a bad {key} time")
        return parsed.astimezone(dt.timezone.utc)

    previous = record.get("previous")
    if previous is not None and not isinstance(previous, str):
        raise SieveDataError(f"the settings line of {SCRIPT_NAME} has a bad previous script name")
    settings = OofSettings(record.get("state"), when("start"), when("end"),  # type: ignore[arg-type]
                           record.get("internal_message"), record.get("external_message"),  # type: ignore[arg-type]
                           record.get("external_audience"), record.get("subject"))  # type: ignore[arg-type]
    return validated(settings), previous


# ---- ManageSieve responses (pure) ----------------------------------------------------------------------------

class Atom(str):
    """A bare word of a response (OK, NO, ACTIVE, a response code), as opposed to a string."""


Token = str | tuple  # Atom, str (quoted or literal) or a parenthesised tuple of tokens


class ResponseParser:
    """Splits one logical response line, which may continue after literals, into tokens."""

    def __init__(self) -> None:
        self._stack: list[list[Token]] = [[]]

    def feed_line(self, line: bytes) -> int | None:
        """Take one line without its CRLF; return the size of a literal to feed next, or None when complete."""
        i, n = 0, len(line)
        while i < n:
            c = line[i]
            if c == 0x20:
                i += 1
            elif c == 0x22:
                i = self._quoted(line, i + 1)
            elif c == 0x28:
                self._stack.append([])
                i += 1
            elif c == 0x29:
                if len(self._stack) == 1:
                    raise SieveDataError("unbalanced ')' in a ManageSieve response")
                inner = self._stack.pop()
                self._stack[-1].append(tuple(inner))
                i += 1
            elif c == 0x7B:
                m = _LITERAL.fullmatch(line, i)
                if not m:
                    raise SieveDataError("malformed literal in a ManageSieve response")
                size = int(m.group(1))
                if size > MAX_LITERAL:
                    raise SieveDataError(f"ManageSieve literal of {size} octets is over the limit")
                return size
            else:
                j = i
                while j < n and line[j] not in _ATOM_STOP:
                    if not 0x21 <= line[j] <= 0x7E:
                        raise SieveDataError("control or 8-bit character in a ManageSieve response")
                    j += 1
                self._stack[-1].append(Atom(line[i:j].decode("ascii")))
                i = j
        if len(self._stack) != 1:
            raise SieveDataError("unbalanced '(' in a ManageSieve response")
        return None

    def feed_literal(self, data: bytes) -> None:
        self._stack[-1].append(_decode(data))

    def _quoted(self, line: bytes, i: int) -> int:
        out = bytearray()
        while i < len(line):
            c = line[i]
            if c == 0x22:
                self._stack[-1].append(_decode(bytes(out)))
                return i + 1
            if c == 0x5C:
                if i + 1 >= len(line) or line[i + 1] not in b'"\\':
                    raise SieveDataError("bad escape in a ManageSieve quoted string")
                i += 1
            elif c in (0, 0x0D, 0x0A):
                raise SieveDataError("NUL or line break inside a ManageSieve quoted string")
            out.append(line[i])
            i += 1
        raise SieveDataError("unterminated ManageSieve quoted string")

    @property
    def tokens(self) -> list[Token]:
        return self._stack[0]


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SieveDataError("a ManageSieve string is not UTF-8") from None


@dataclass(frozen=True)
class Response:
    """The end of a command: OK, NO or BYE, its response code and text, and the data lines before it."""

    status: str
    code: tuple[str, ...] = ()
    text: str = ""
    data: tuple[tuple[Token, ...], ...] = ()


def final_response(tokens: Sequence[Token]) -> Response | None:
    """The status response these tokens form, None for a data line, SieveDataError for nonsense."""
    if not tokens or not isinstance(tokens[0], Atom):
        return None
    status = tokens[0].upper()
    if status not in ("OK", "NO", "BYE"):
        raise SieveDataError(f"unexpected ManageSieve response {tokens[0][:40]!r}")
    rest = list(tokens[1:])
    code: tuple[str, ...] = ()
    if rest and isinstance(rest[0], tuple):
        code = tuple(str(t).upper() if isinstance(t, Atom) else str(t) for t in rest.pop(0))
    text = rest.pop(0) if rest and isinstance(rest[0], str) and not isinstance(rest[0], Atom) else ""
    if rest:
        raise SieveDataError("trailing data after a ManageSieve status response")
    return Response(status, code, text)


# ---- the client ---------------------------------------------------------------------------------------------

def _arg(value: str | bytes) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) <= _MAX_QUOTED and not any(b in data for b in b"\0\r\n"):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d+}\r\n" % len(data) + data  # RFC 5804 clients send only non-synchronising literals


class ManageSieve:
    """One logged-in ManageSieve connection; open it with ``ManageSieve.connect``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, endpoint: SieveEndpoint) -> None:
        self.reader, self.writer, self.endpoint = reader, writer, endpoint
        self.capabilities: dict[str, str] = {}

    @property
    def extensions(self) -> frozenset[str]:
        """The Sieve extensions the server runs for this user (its SIEVE capability)."""
        return frozenset(self.capabilities.get("SIEVE", "").lower().split())

    @classmethod
    @asynccontextmanager
    async def connect(cls, endpoint: SieveEndpoint, credentials: Credentials,
                      client_ip: str | None = None) -> AsyncIterator[ManageSieve]:
        """Connect, secure, log in; LOGOUT at the end. Only ``adapters.errors`` exceptions leave it.

        ``client_ip`` is passed on with Dovecot's XCLIENT (when offered), so that the server's
        brute-force penalty falls on the phone that typed a wrong password, not on the gateway.
        """
        session: ManageSieve | None = None
        try:
            ip = str(ipaddress.ip_address(client_ip)) if client_ip else None
        except ValueError:
            raise SieveDataError(f"not an IP address: {client_ip!r}") from None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(endpoint.host, endpoint.port, limit=MAX_LINE), endpoint.timeout)
            session = cls(reader, writer, endpoint)
            await session._start(credentials, ip)
            yield session
            await session._logout()
        except BackendError:
            raise
        except (OSError, EOFError, asyncio.TimeoutError, ssl.SSLError) as exc:
            raise BackendUnavailable(f"ManageSieve server {endpoint.host}:{endpoint.port} unavailable: "
                                     f"{type(exc).__name__}: {exc}") from None
        except asyncio.LimitOverrunError:
            raise SieveDataError("ManageSieve server sent an over-long line") from None
        finally:
            if session is not None:
                session.writer.transport.abort()

    async def _start(self, credentials: Credentials, client_ip: str | None) -> None:
        self.capabilities = self._caps(await self._response("greeting"))
        if self.endpoint.tls == "starttls":
            if "STARTTLS" not in self.capabilities:
                raise BackendUnavailable("ManageSieve server does not offer STARTTLS")
            await self.command("STARTTLS")
            ctx = self.endpoint.ssl_context or ssl.create_default_context()
            await asyncio.wait_for(self.writer.start_tls(ctx, server_hostname=self.endpoint.host),
                                   self.endpoint.timeout)
            # RFC 5804 2.2: the server repeats its capabilities unasked once TLS is up.
            self.capabilities = self._caps(await self._response("STARTTLS"))
        if client_ip and "XCLIENT" in self.capabilities:
            await self.command(f"XCLIENT ADDR={client_ip}")
        await self._authenticate(credentials)
        # The SIEVE extensions may differ per user once logged in; keep the greeting's if none are listed.
        self.capabilities = self._caps(await self.command("CAPABILITY")) or self.capabilities

    @staticmethod
    def _caps(response: Response) -> dict[str, str]:
        caps = {}
        for line in response.data:
            if not line or not isinstance(line[0], str) or isinstance(line[0], (Atom, tuple)):
                raise SieveDataError("malformed ManageSieve capability line")
            caps[line[0].upper()] = str(line[1]) if len(line) > 1 else ""
        return caps

    async def _authenticate(self, credentials: Credentials) -> None:
        if "PLAIN" not in self.capabilities.get("SASL", "").upper().split():
            raise AuthenticationFailed("ManageSieve server does not offer SASL PLAIN here")
        if "\0" in credentials.username or "\0" in credentials.password:
            raise AuthenticationFailed("user name or password contains NUL")
        plain = base64.b64encode(b"\0" + credentials.username.encode() + b"\0" + credentials.password.encode())
        self._send(b'AUTHENTICATE "PLAIN" ' + _arg(plain))
        await asyncio.wait_for(self.writer.drain(), self.endpoint.timeout)
        tokens = await self._tokens()
        if final_response(tokens) is None:  # a challenge, which PLAIN with an initial response never needs
            self._send(b'"*"')
            await asyncio.wait_for(self.writer.drain(), self.endpoint.timeout)
            tokens = await self._tokens()
        response = final_response(tokens)
        if response is None:
            raise SieveDataError("ManageSieve server kept challenging a PLAIN login")
        if response.status != "OK":
            if response.status == "BYE" or (response.code and response.code[0] == "TRYLATER"):
                raise BackendUnavailable(f"ManageSieve login deferred: {response.text[:200]}")
            raise AuthenticationFailed(f"ManageSieve server refused the login: {response.text[:200]}")

    def _send(self, command: bytes) -> None:
        self.writer.write(command + b"\r\n")

    async def _tokens(self, budget: list[int] | None = None) -> list[Token]:
        """One logical response line, literals included."""
        budget = budget if budget is not None else [MAX_RESPONSE]
        parser = ResponseParser()
        while True:
            line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), self.endpoint.timeout)
            budget[0] -= len(line)
            size = parser.feed_line(line[:-2])
            if size is None:
                return parser.tokens
            budget[0] -= size
            if budget[0] < 0:
                raise SieveDataError("ManageSieve response is over the size limit")
            parser.feed_literal(await asyncio.wait_for(self.reader.readexactly(size), self.endpoint.timeout))

    async def _response(self, what: str) -> Response:
        await asyncio.wait_for(self.writer.drain(), self.endpoint.timeout)
        budget, data = [MAX_RESPONSE], []
        while True:
            tokens = await self._tokens(budget)
            if budget[0] < 0:
                raise SieveDataError("ManageSieve response is over the size limit")
            response = final_response(tokens)
            if response is None:
                data.append(tuple(tokens))
                continue
            response = replace(response, data=tuple(data))
            if response.status == "OK":
                return response
            detail = f"ManageSieve {what} answered {response.status}" + (
                f" ({' '.join(response.code)})" if response.code else "") + f": {response.text[:300]}"
            if response.status == "BYE" or (response.code and response.code[0] == "TRYLATER"):
                raise BackendUnavailable(detail)
            if response.code and response.code[0].startswith("QUOTA"):
                raise QuotaExceeded(detail)
            if response.code and response.code[0] in ("ENCRYPT-NEEDED", "AUTH-TOO-WEAK"):
                raise AuthenticationFailed(detail)
            raise SieveDataError(detail)

    async def command(self, name: str, *args: str | bytes) -> Response:
        """Send a command with string arguments; the OK response, or the error its NO/BYE means."""
        self._send(b" ".join([name.encode("ascii"), *(_arg(a) for a in args)]))
        return await self._response(name)

    async def listscripts(self) -> dict[str, bool]:
        """Script name -> whether it is the active one."""
        scripts = {}
        for line in (await self.command("LISTSCRIPTS")).data:
            if not line or isinstance(line[0], (Atom, tuple)) or len(line) > 2 or (
                    len(line) == 2 and str(line[1]).upper() != "ACTIVE"):
                raise SieveDataError("malformed LISTSCRIPTS line")
            scripts[str(line[0])] = len(line) == 2
        return scripts

    async def getscript(self, name: str) -> str:
        data = (await self.command("GETSCRIPT", name)).data
        if len(data) != 1 or len(data[0]) != 1 or isinstance(data[0][0], (Atom, tuple)):
            raise SieveDataError("malformed GETSCRIPT answer")
        return str(data[0][0])

    async def putscript(self, name: str, script: str) -> None:
        body = script.encode("utf-8")
        self._send(b"PUTSCRIPT " + _arg(name) + b" {%d+}\r\n" % len(body) + body)
        await self._response("PUTSCRIPT")

    async def setactive(self, name: str) -> None:
        """Make ``name`` the active script; "" leaves none active."""
        await self.command("SETACTIVE", name)

    async def deletescript(self, name: str) -> None:
        await self.command("DELETESCRIPT", name)

    async def _logout(self) -> None:
        self._send(b"LOGOUT")
        try:
            await self._response("LOGOUT")
        except BackendUnavailable:
            pass  # BYE is a fine answer to LOGOUT


class SieveOof:
    """The user's out-of-office as our own Sieve script, ``casgate-oof``, next to any script they have."""

    def __init__(self, endpoint: SieveEndpoint, credentials: Credentials, own_addresses: Sequence[str] = (),
                 client_ip: str | None = None) -> None:
        addresses: list[str] = []
        for a in own_addresses:
            if not isinstance(a, str) or "@" not in a or any(c.isspace() or c in '"\\\0' or ord(c) < 32 for c in a):
                raise SieveDataError(f"not an e-mail address: {a!r}")
            if a.lower() not in (x.lower() for x in addresses):
                addresses.append(a)
        self.endpoint, self.credentials, self.addresses = endpoint, credentials, tuple(addresses)
        self.client_ip = client_ip

    async def get(self) -> OofSettings:
        async with ManageSieve.connect(self.endpoint, self.credentials, self.client_ip) as ms:
            scripts = await ms.listscripts()
            if SCRIPT_NAME not in scripts:
                return OofSettings(0)
            settings, _ = parse_script(await ms.getscript(SCRIPT_NAME))
        return settings if scripts[SCRIPT_NAME] else replace(settings, state=0)

    async def set(self, settings: OofSettings) -> None:
        settings = validated(settings)  # before connecting: bad input never reaches the server
        async with ManageSieve.connect(self.endpoint, self.credentials, self.client_ip) as ms:
            scripts = await ms.listscripts()
            active = next((name for name, on in scripts.items() if on), None)
            previous = None
            if active == SCRIPT_NAME:
                try:
                    previous = parse_script(await ms.getscript(SCRIPT_NAME))[1]
                except SieveDataError:
                    previous = None  # our script was edited by hand: there is nothing of theirs to restore
                if previous not in scripts:
                    previous = None
            elif active is not None:
                previous = active
            if settings.state == 0:
                if active == SCRIPT_NAME:
                    await self._reactivate(ms, previous)
                await ms.putscript(SCRIPT_NAME, build_script(settings, self.addresses, None, ms.extensions))
                return
            await ms.putscript(SCRIPT_NAME, build_script(settings, self.addresses, previous, ms.extensions))
            if active != SCRIPT_NAME:
                await ms.setactive(SCRIPT_NAME)

    @staticmethod
    async def _reactivate(ms: ManageSieve, previous: str | None) -> None:
        if previous:
            try:
                await ms.setactive(previous)
                return
            except SieveDataError:
                pass  # deleted meanwhile: leave no script active rather than ours
        await ms.setactive("")


__all__ = ["SCRIPT_NAME", "SieveDataError", "SieveEndpoint", "OofSettings", "SieveOof", "ManageSieve",
           "ResponseParser", "Response", "Atom", "final_response", "build_script", "parse_script",
           "sieve_string", "validated"]
