"""vCard text as content lines: reading 2.1, 3.0 and 4.0, folding, escaping, and raising 2.1 to 3.0."""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field

from .email_item import ItemError

__all__ = ["Card", "Prop", "parse_vcard", "escape", "unescape", "split_value", "upgrade_to_30", "BAD_CHARS",
           "MAX_VCARD_CHARS", "MAX_PROPS"]

MAX_VCARD_CHARS = 8 * 1024 * 1024
MAX_PROPS = 10_000               # content lines of one vCard
_MAX_PARAMS = 100                # parameters of one content line
# NUL and lone surrogates: no UTF-8 text or WBXML string can carry them
BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_NAME = re.compile(r"(?:([A-Za-z0-9-]+)\.)?([A-Za-z0-9-]+)")
_PARAM_NAME = re.compile(r"[A-Za-z0-9-]*")
_PARAM_VALUE = re.compile(r'(?:"[^"]*"|[^";:])*')
_TOKEN = re.compile(r"\\.?|;|,|[^\\;,]+", re.S)
_UNESCAPE = re.compile(r"\\(.)", re.S)


@dataclass
class Prop:
    """One content line: ``params`` as written ((NAME, raw value), None for a bare 2.1 parameter),
    ``value`` still escaped; ``raw`` is the unfolded line as read and ``source`` its physical lines, written
    back unchanged when the property is kept."""

    group: str
    name: str
    params: list[tuple[str, str | None]] = field(default_factory=list)
    value: str = ""
    raw: str | None = None
    nested: bool = False
    source: str | None = None

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key.upper() == name and value is not None:
                return value.replace('"', "")
        return None

    def encoding(self) -> str:
        """QUOTED-PRINTABLE, B, BASE64 or '' (2.1 may write the encoding as a bare parameter)."""
        for key, value in self.params:
            if key.upper() == "ENCODING" and value is not None:
                return value.replace('"', "").strip().upper()
            if value is None and key.upper() in ("QUOTED-PRINTABLE", "BASE64", "B"):
                return key.upper()
        return ""

    def types(self, labels: dict[str, str]) -> set[str]:
        out = {labels[self.group]} if self.group in labels else set()
        for key, value in self.params:
            if value is None:
                out.add(key.lower())
            elif key.upper() == "TYPE":
                out.update(t.strip().lower() for t in value.replace('"', "").split(","))
        return out

    def render(self) -> str:
        if self.raw is not None:
            return self.source if self.source is not None else _fold(self.raw)
        head = (self.group + "." if self.group else "") + self.name
        head += "".join(f";{key}" if value is None else f";{key}={value}" for key, value in self.params)
        return _fold(f"{head}:{self.value}")


def _fold(line: str) -> str:
    """RFC 6350 3.2: lines of at most 75 octets, never cutting a UTF-8 sequence."""
    data = line.encode("utf-8")
    if len(data) <= 75:
        return line
    out, start, limit = [], 0, 75
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:
            end -= 1
        out.append(data[start:end].decode("utf-8"))
        start, limit = end, 74
    return "\r\n ".join(out)


def _logical_lines(text: str) -> list[tuple[str, list[str]]]:
    """Unfolded lines with their physical lines; a 2.1 quoted-printable value that ends in '=' continues
    on the next line."""
    lines: list[tuple[list[str], list[str]]] = []
    qp_open = False
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if qp_open:
            lines[-1][0][-1] = lines[-1][0][-1][:-1]
            lines[-1][0].append(line)
            lines[-1][1].append(line)
        elif line[:1] in (" ", "\t") and lines:
            lines[-1][0].append(line[1:])
            lines[-1][1].append(line)
        else:
            lines.append(([line], [line]))
        last = lines[-1][0][-1]
        qp_open = last.endswith("=") and "QUOTED-PRINTABLE" in lines[-1][0][0].split(":", 1)[0].upper()
    return [("".join(parts), physical) for parts, physical in lines if any(part.strip() for part in parts)]


def _parse_line(line: str) -> Prop | None:
    match = _NAME.match(line)
    if match is None:
        return None
    prop = Prop(match.group(1) or "", match.group(2).upper(), raw=line)
    pos = match.end()
    while pos < len(line) and line[pos] == ";":
        if len(prop.params) >= _MAX_PARAMS:
            return None
        name = _PARAM_NAME.match(line, pos + 1)
        pos = name.end()
        if pos < len(line) and line[pos] == "=":
            value = _PARAM_VALUE.match(line, pos + 1)
            prop.params.append((name.group(0), value.group(0)))
            pos = value.end()
        elif name.group(0):
            prop.params.append((name.group(0), None))
    if pos >= len(line) or line[pos] != ":":
        return None
    prop.value = line[pos + 1:]
    if prop.encoding() == "QUOTED-PRINTABLE":
        data = binascii.a2b_qp(prop.value.encode("utf-8"))
        try:
            text = data.decode(prop.param("CHARSET") or "utf-8", "replace")
        except LookupError:
            text = data.decode("utf-8", "replace")
        prop.value = BAD_CHARS.sub("\ufffd", text).replace("\r\n", "\n").replace("\n", "\\n")
    return prop


@dataclass
class Card:
    """A parsed vCard: its version ("2.1", "3.0" or "4.0") and its content lines in order."""

    version: str
    props: list[Prop]


def parse_vcard(text: str) -> Card:
    """The first vCard in ``text``; ItemError when there is none."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    if not isinstance(text, str):
        raise ItemError(f"a vCard is text, not {type(text).__name__}")
    if len(text) > MAX_VCARD_CHARS:
        raise ItemError(f"vCard of {len(text)} characters is over the {MAX_VCARD_CHARS} limit")
    text = BAD_CHARS.sub(lambda m: "" if m.group(0) == "\x00" else "\ufffd", text)
    props: list[Prop] = []
    depth, done = 0, False
    for line, physical in _logical_lines(text):
        marker = line.strip().upper()
        if marker == "BEGIN:VCARD":
            depth += 1
            if depth == 1:
                continue
        elif marker == "END:VCARD" and depth:
            depth -= 1
            if depth == 0:
                done = True
                break
            if depth == 1:  # the end of a vCard nested in this one (a 2.1 AGENT): kept as a nested line
                props.append(Prop("", "", raw=line, nested=True))
                props[-1].source = line
                continue
        if depth == 0:
            continue
        prop = _parse_line(line)
        if depth > 1:
            prop = Prop("", "", raw=line, nested=True)
        if prop is not None:
            if len(props) >= MAX_PROPS:
                raise ItemError(f"vCard has more than {MAX_PROPS} properties")
            prop.source = "\r\n".join(physical).rstrip("\r\n")
            props.append(prop)
    if not done:
        raise ItemError("no BEGIN:VCARD ... END:VCARD in the text")
    version = next((p.value.strip() for p in props if p.name == "VERSION"), "3.0")
    return Card(version if version in ("2.1", "3.0", "4.0") else "3.0", props)


def unescape(value: str) -> str:
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) in "nN" else m.group(1) if m.group(1) in "\\,;:"
                         else "\\" + m.group(1), value)


def escape(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace(",", "\\,").replace(";", "\\;")


def split_value(value: str, sep: str) -> list[str]:
    """The unescaped parts of a value split at ``sep`` (';' or ',') where it is not escaped."""
    parts, current = [], []
    for token in _TOKEN.findall(value):
        if token == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(token)
    parts.append("".join(current))
    return [unescape(part) for part in parts]


def upgrade_to_30(card: Card) -> None:
    """vCard 2.1 raised to 3.0: bare parameters named TYPE, values no longer quoted-printable."""
    props = []
    for prop in card.props:
        if prop.nested:
            continue
        encoding = prop.encoding()
        params: list[tuple[str, str | None]] = []
        for key, value in prop.params:
            if key.upper() in ("ENCODING", "CHARSET") or (value is None and key.upper() in (
                    "QUOTED-PRINTABLE", "BASE64", "B", "8BIT", "7BIT")):
                continue
            params.append(("TYPE", key.lower()) if value is None else (key, value))
        if encoding in ("B", "BASE64"):
            params.insert(0, ("ENCODING", "b"))
            prop.value = "".join(prop.value.split())
        prop.params, prop.raw = params, None
        if prop.name == "VERSION":
            prop.value = "3.0"
        props.append(prop)
    card.props, card.version = props, "3.0"
