"""casgate[inspect]: a mitmproxy addon that shows ActiveSync WBXML bodies as XML and labels each EAS flow.

mitmproxy is not in casgate's own virtualenv (its pins would hold back
casgate's dependencies); ``make test-inspect`` builds ``.venv-inspect`` with
mitmproxy and casgate, and from the repository root::

    .venv-inspect/bin/mitmproxy -s gateway/activesync/inspect_addon.py
    .venv-inspect/bin/mitmdump -s gateway/activesync/inspect_addon.py

(elsewhere: ``pip install -e '.[inspect]'``, then the same ``-s`` option).

What it adds:

- A content view, "ActiveSync WBXML", chosen automatically (ahead of
  mitmproxy's own "WBXML" view, which knows fewer code pages) for request and
  response bodies typed ``application/vnd.ms-sync.wbxml``: casgate's XML view
  of the tree (``wbxml.to_xml``), the same one its logs and tests use. mitmproxy
  undoes a gzip Content-Encoding before any view sees the body. Bodies typed
  ``application/vnd.ms-sync.multipart`` (ItemOperations, MS-ASCMD 2.2.1.10.1.1)
  show their parts table and then the WBXML first part. A body that does not
  decode shows the decoder's message and a hex dump of its start; the view
  never raises.
- ``request``/``response`` hooks that label every flow whose path ends in
  /Microsoft-Server-ActiveSync: a comment such as "EAS Sync v14.1 Status 1"
  (the command from either query form, the protocol version, the top-level
  Status of the response, and the HTTP code when it is not 200), and the same
  facts in ``flow.metadata["casgate.eas"]``. A comment someone typed is kept.
- The option ``eas_max_opaque_shown`` (bytes, default 1024; -1 shows all):
  longer opaque values appear as a length marker instead of base64.

The view uses the ``View`` API of mitmproxy 10 and 11 and the ``Contentview``
API of mitmproxy 12 and later, whichever the installed mitmproxy has.
"""

# No "from __future__ import annotations" here: ``mitmproxy -s`` runs this file as a module missing from
# sys.modules, where dataclasses cannot resolve annotations written as strings.
import dataclasses
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mitmproxy import contentviews, ctx, http
from mitmproxy.utils.strutils import hexdump

from gateway.activesync.request import RequestError, parse_request
from gateway.activesync.wbxml import WbxmlError, decode, to_xml

__all__ = ["METADATA_KEY", "MULTIPART_TYPE", "VIEW_NAME", "WBXML_TYPE", "ActiveSyncView", "EasInspector", "EasSummary",
           "InspectError", "Rendering", "addons", "render_body", "split_multipart", "summarize_request",
           "summarize_response", "top_status"]

WBXML_TYPE = "application/vnd.ms-sync.wbxml"
MULTIPART_TYPE = "application/vnd.ms-sync.multipart"
VIEW_NAME = "ActiveSync WBXML"
METADATA_KEY = "casgate.eas"
EAS_PATH = "/microsoft-server-activesync"
DEFAULT_OPAQUE_SHOWN = 1024
HEXDUMP_BYTES = 256  # enough to see what a broken body starts with, short enough to scroll past
_NEW_API = hasattr(contentviews, "Contentview")  # mitmproxy 12 and later


class InspectError(ValueError):
    """A body that claims an ActiveSync type cannot be read as one; the message says why."""


@dataclass(frozen=True)
class Rendering:
    """What the view shows: a title and (style, text) lines; ``error`` is set when the body did not decode."""

    description: str
    lines: tuple[tuple[str, str], ...]
    error: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(text for _, text in self.lines)


@dataclass(frozen=True)
class EasSummary:
    """What one ActiveSync exchange was about; ``command`` is None when the request line did not parse."""

    command: str | None
    version: str | None
    status: str | None = None
    http_status: int | None = None
    problem: str | None = None

    def line(self) -> str:
        """The one-line comment mitmproxy shows beside the flow."""
        words = ["EAS", self.command or "?"]
        if self.version:
            words.append(f"v{self.version}")
        if self.status is not None:
            words.append(f"Status {self.status or '(empty)'}")
        if self.http_status not in (None, 200):
            words.append(f"HTTP {self.http_status}")
        if self.problem:
            words.append(f"({self.problem})")
        return " ".join(words)


# --- pure parts: bodies and request lines ----------------------------------------------------------------

def split_multipart(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each part of a MultiPartResponse, each checked to lie inside the body."""
    # The specification says "integer" without a byte order; casgate's ItemOperations writes little-endian.
    size = len(data)
    if size < 4:
        raise InspectError(f"multipart body of {size} bytes is shorter than its 4-byte PartsCount")
    (count,) = struct.unpack_from("<i", data)
    if count < 1:
        raise InspectError(f"PartsCount is {count}; a multipart response holds at least its WBXML part")
    if count > (size - 4) // 8:
        raise InspectError(f"PartsCount {count} needs a {8 * count}-byte part table; only {size - 4} bytes follow")
    table_end = 4 + 8 * count
    parts = []
    for index in range(count):
        offset, length = struct.unpack_from("<ii", data, 4 + 8 * index)
        if offset < table_end or length < 0 or offset + length > size:
            raise InspectError(f"part {index} (offset {offset}, length {length}) lies outside bytes "
                               f"{table_end}-{size} of the body")
        parts.append((offset, length))
    return parts


def _xml_lines(data: bytes, max_opaque_shown: int | None) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The root name and XML lines of a WBXML document; InspectError when it does not decode."""
    try:
        root = decode(data)
    except WbxmlError as exc:
        raise InspectError(f"not ActiveSync WBXML: {exc}") from None
    xml = to_xml(root, max_opaque_shown=max_opaque_shown)
    return root.name, tuple(("text", line) for line in xml.splitlines())


def _hexdump_lines(data: bytes) -> Iterator[tuple[str, str]]:
    for offset, hexes, chars in hexdump(data[:HEXDUMP_BYTES]):
        yield "text", f"{offset}  {hexes}  {chars}"
    if len(data) > HEXDUMP_BYTES:
        yield "text", f"... {len(data) - HEXDUMP_BYTES} more bytes"


def render_body(data: bytes, content_type: str | None,
                max_opaque_shown: int | None = DEFAULT_OPAQUE_SHOWN) -> Rendering:
    """The view of one ActiveSync body; what does not decode becomes its error and a hex dump, never an exception."""
    data = bytes(data)
    if not data:
        return Rendering(VIEW_NAME, (("text", "(empty body)"),))
    if content_type != MULTIPART_TYPE:
        try:
            name, lines = _xml_lines(data, max_opaque_shown)
        except InspectError as exc:
            return Rendering(f"{VIEW_NAME}: malformed", (("error", str(exc)), *_hexdump_lines(data)), str(exc))
        return Rendering(f"{VIEW_NAME}: {name}", lines)
    try:
        parts = split_multipart(data)
    except InspectError as exc:
        return Rendering(f"{VIEW_NAME}: malformed multipart", (("error", str(exc)), *_hexdump_lines(data)), str(exc))
    table = [("highlight", f"{len(parts)} parts; part 0 is the WBXML response, the others are the fetched data"),
             ("highlight", "part    offset    length"),
             *(("text", f"{index:>4}  {offset:>8}  {length:>8}") for index, (offset, length) in enumerate(parts)),
             ("text", "")]
    offset, length = parts[0]
    try:
        name, lines = _xml_lines(data[offset:offset + length], max_opaque_shown)
    except InspectError as exc:
        return Rendering(f"{VIEW_NAME}: multipart, WBXML part malformed", (*table, ("error", f"part 0: {exc}")),
                         str(exc))
    return Rendering(f"{VIEW_NAME}: multipart, {len(parts)} parts, {name}", (*table, *lines))


def top_status(data: bytes, content_type: str | None) -> str | None:
    """The text of the response's top-level Status element, or None; InspectError when the body does not decode."""
    if content_type == MULTIPART_TYPE:
        offset, length = split_multipart(data)[0]
        data = data[offset:offset + length]
    elif content_type != WBXML_TYPE:
        return None
    if not data:
        return None  # an empty 200 is a normal answer (a Sync with nothing new)
    try:
        root = decode(data)
    except WbxmlError as exc:
        raise InspectError(f"response is not ActiveSync WBXML: {exc}") from None
    status = next((child for child in root.children if child.name == "Status"), None)
    return None if status is None else status.text or ""


def summarize_request(query: str, headers: Mapping[str, str], method: str = "POST") -> EasSummary:
    """The command and version a request line names (either query form); a malformed one gives its problem."""
    try:
        request = parse_request(query, headers, method=method)
    except RequestError as exc:
        return EasSummary(None, None, problem=str(exc))
    return EasSummary(request.command or method.upper(), request.version)


def summarize_response(summary: EasSummary, http_status: int, data: bytes | None,
                       content_type: str | None) -> EasSummary:
    """``summary`` with the response's HTTP code and top-level Status added."""
    problem = summary.problem
    try:
        status = None if data is None else top_status(data, content_type)
    except InspectError as exc:
        status, problem = None, "; ".join(filter(None, [problem, str(exc)]))
    return dataclasses.replace(summary, status=status, http_status=http_status, problem=problem)


# --- the mitmproxy shell ---------------------------------------------------------------------------------

_ViewBase: type = contentviews.Contentview if _NEW_API else contentviews.View


class ActiveSyncView(_ViewBase):  # type: ignore[misc,valid-type]
    """The "ActiveSync WBXML" content view; one class answers both mitmproxy view APIs."""

    name = VIEW_NAME
    syntax_highlight = "xml"  # read by mitmproxy 12 and later

    def __init__(self) -> None:
        self.max_opaque_shown: int | None = DEFAULT_OPAQUE_SHOWN

    def render(self, data: bytes, content_type: str | None) -> Rendering:
        return render_body(data, content_type, self.max_opaque_shown)

    def __call__(self, data: bytes, *, content_type: str | None = None, **unknown: Any) -> tuple[str, Iterator]:
        """mitmproxy 10 and 11: (description, lines of (style, text))."""
        rendering = self.render(data, content_type)
        return rendering.description, iter([[pair] for pair in rendering.lines])

    def prettify(self, data: bytes, metadata: Any) -> str:
        """mitmproxy 12 and later: the text alone."""
        return self.render(data, metadata.content_type).text

    def render_priority(self, data: bytes, metadata: Any = None, *, content_type: str | None = None,
                        **unknown: Any) -> float:
        if metadata is not None:
            content_type = metadata.content_type
        # Above 1, the priority mitmproxy's own WBXML view claims for the same type.
        return 2.0 if data and content_type in (WBXML_TYPE, MULTIPART_TYPE) else 0.0


def _content_type(message: http.Message) -> str | None:
    parsed = http.parse_content_type(message.headers.get("content-type", ""))
    return f"{parsed[0]}/{parsed[1]}".lower() if parsed else None


class EasInspector:
    """Registers the view and labels ActiveSync flows; everything it shows comes from the pure functions above."""

    def __init__(self) -> None:
        self.view = ActiveSyncView()

    def load(self, loader: Any) -> None:
        loader.add_option("eas_max_opaque_shown", int, DEFAULT_OPAQUE_SHOWN,
                          "ActiveSync WBXML view: opaque values longer than this many bytes are shown as their "
                          "length only (-1 shows all).")
        if not _NEW_API and contentviews.get(VIEW_NAME) is not None:
            contentviews.remove(contentviews.get(VIEW_NAME))  # a reloaded script's earlier view
        contentviews.add(self.view)  # mitmproxy 12 replaces a view of the same name itself

    def configure(self, updated: set[str]) -> None:
        if "eas_max_opaque_shown" in updated:
            value = ctx.options.eas_max_opaque_shown
            self.view.max_opaque_shown = None if value < 0 else value

    def done(self) -> None:
        # mitmproxy 12 has no way to take a view back; a reload replaces it by name.
        if not _NEW_API and self.view in contentviews.views:
            contentviews.remove(self.view)

    def request(self, flow: http.HTTPFlow) -> None:
        if _is_eas(flow):
            _annotate(flow, _request_summary(flow))

    def response(self, flow: http.HTTPFlow) -> None:
        if not _is_eas(flow) or flow.response is None:
            return
        try:
            data = flow.response.content
        except ValueError:  # a Content-Encoding that does not decode
            data = flow.response.raw_content
        summary = summarize_response(_request_summary(flow), flow.response.status_code, data,
                                     _content_type(flow.response))
        _annotate(flow, summary)


def _is_eas(flow: http.HTTPFlow) -> bool:
    return flow.request.path.partition("?")[0].rstrip("/").lower().endswith(EAS_PATH)


def _request_summary(flow: http.HTTPFlow) -> EasSummary:
    return summarize_request(flow.request.path.partition("?")[2], flow.request.headers, flow.request.method)


def _annotate(flow: http.HTTPFlow, summary: EasSummary) -> None:
    """Write the summary into the metadata, and into the comment unless someone else wrote one there."""
    ours = flow.metadata.get(METADATA_KEY, {}).get("comment")
    line = summary.line()
    flow.metadata[METADATA_KEY] = {**dataclasses.asdict(summary), "comment": line}
    if flow.comment in ("", ours):
        flow.comment = line


addons = [EasInspector()]
