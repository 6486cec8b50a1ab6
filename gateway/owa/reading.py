"""Reading a message safely: MIME to what the reading pane shows, HTML cleaned with nh3, attachments named safely.

Pure functions, no I/O. A message's HTML is cleaned (no script, no event
handler, no form, frame, object, SVG or MathML, no ``javascript:`` or
``data:`` link, only harmless CSS properties) and is then shown in a sandboxed
frame whose own Content-Security-Policy allows no script and no fetch at all:
remote images and CSS ``url()``s, tracking pixels among them, load nothing.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from urllib.parse import quote

import nh3

#: The body frame's policy: styles written in the message, nothing else; no script, no request anywhere.
BODY_CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; font-src 'none'; "
            "form-action 'none'; frame-ancestors 'self'; base-uri 'none'; sandbox")
#: The same once the reader has allowed this message's (or this sender's) remote images: images, nothing else.
BODY_CSP_IMAGES = BODY_CSP.replace("img-src 'none'", "img-src https: http: data:")
_TAGS = {"a", "abbr", "b", "bdi", "bdo", "blockquote", "br", "caption", "center", "cite", "code", "col", "colgroup",
         "dd", "del", "details", "dfn", "div", "dl", "dt", "em", "figcaption", "figure", "font", "footer", "h1", "h2",
         "h3", "h4", "h5", "h6", "header", "hr", "i", "img", "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s",
         "samp", "small", "span", "strike", "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot",
         "th", "thead", "tr", "tt", "u", "ul", "var", "wbr"}
_COMMON = {"style", "title", "dir", "lang", "align", "class"}
_ATTRIBUTES = {"*": _COMMON, "a": {"href", "name"}, "img": {"src", "alt", "width", "height"},
               "td": {"colspan", "rowspan", "valign", "width", "bgcolor"}, "th": {"colspan", "rowspan", "width"},
               "table": {"width", "border", "cellpadding", "cellspacing", "bgcolor"}, "font": {"color", "face",
                                                                                                "size"},
               "col": {"span", "width"}, "ol": {"start", "type"}}
_STYLE = {"color", "background-color", "font", "font-family", "font-size", "font-style", "font-weight",
          "text-align", "text-decoration", "text-indent", "text-transform", "line-height", "letter-spacing",
          "white-space", "vertical-align", "margin", "margin-top", "margin-bottom", "margin-left", "margin-right",
          "padding", "padding-top", "padding-bottom", "padding-left", "padding-right", "border", "border-top",
          "border-bottom", "border-left", "border-right", "border-color", "border-style", "border-width",
          "border-collapse", "border-spacing", "border-radius", "width", "height", "max-width", "min-width",
          "display", "list-style-type"}
_CSS_DANGER = re.compile(r"[\\(@<>]|expression|javascript|behavior|binding", re.I)  # no function, escape, rule
_PIXEL = re.compile(r"<img\b[^>]*\b(?:width|height)=\"\s*[01](?:px)?\s*\"[^>]*>", re.I)
_REMOTE_IMG = re.compile(r"<img\b[^>]*\bsrc\s*=\s*[\"']?\s*(?:https?:)?//", re.I)
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f\"\\/:*?<>|]+")


@dataclass
class Attachment:
    index: int
    name: str
    content_type: str
    size: int


@dataclass
class Reading:
    subject: str = ""
    sender: str = ""
    to: str = ""
    cc: str = ""
    date: str = ""
    text: str | None = None   # the plain body, when there is no HTML one
    html: str | None = None   # the cleaned HTML body
    remote_images: bool = False
    attachments: list[Attachment] = field(default_factory=list)


def read(raw: bytes) -> Reading:
    """What the reading pane shows of ``raw`` (malformed MIME gives what can be read, never an error)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    out = Reading(subject=_header(msg, "Subject"), sender=_header(msg, "From"), to=_header(msg, "To"),
                  cc=_header(msg, "Cc"), date=_header(msg, "Date"))
    body = None
    if isinstance(msg, EmailMessage):
        try:
            body = msg.get_body(preferencelist=("html", "plain"))
        except (KeyError, ValueError, LookupError):
            body = None
    if body is None and not msg.is_multipart():
        body = msg
    if body is not None:
        content = _content(body)
        if body.get_content_type() == "text/html":
            out.html = clean_html(content)
            out.remote_images = bool(_REMOTE_IMG.search(content))
        else:
            out.text = content
    out.attachments = attachments(msg, skip=body)
    return out


def clean_html(html: str) -> str:
    """``html`` with only what a mail needs to look right (see the module's docstring), and no tracking pixel
    (an image 0 or 1 pixel wide or high), so that allowing a sender's images does not report the reading."""
    return _PIXEL.sub("", _clean(html))


def _clean(html: str) -> str:
    return nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto", "cid"},
                     link_rel="noopener noreferrer", strip_comments=True, attribute_filter=_attribute,
                     clean_content_tags={"script", "style", "title", "svg", "math", "noscript", "template",
                                         "iframe", "object", "embed", "xmp", "noembed", "noframes"})


def _attribute(tag: str, name: str, value: str) -> str | None:
    return _style(value) if name == "style" else value


def _style(value: str) -> str | None:
    """Only the declarations of harmless properties whose values fetch nothing and run nothing."""
    kept = []
    for declaration in value.split(";"):
        prop, colon, val = declaration.partition(":")
        prop, val = prop.strip().lower(), val.strip()
        if colon and prop in _STYLE and val and not _CSS_DANGER.search(val):
            kept.append(f"{prop}: {val}")
    return "; ".join(kept) or None


def parts(msg: Message) -> list[Message]:
    """The message's leaf parts in order (the numbering attachments and downloads share)."""
    return [p for p in msg.walk() if not p.is_multipart()]


def attachments(msg: Message, skip: Message | None = None) -> list[Attachment]:
    out = []
    for index, part in enumerate(parts(msg)):
        if part is skip:
            continue
        name = part.get_filename()
        if name is None and part.get_content_maintype() == "text" and part.get_content_disposition() != "attachment":
            continue  # an alternative body, not something to download
        payload = part.get_payload(decode=True) or b""
        out.append(Attachment(index, safe_name(name or f"part-{index}"), part.get_content_type(), len(payload)))
    return out


def safe_name(name: str) -> str:
    """A file name fit to show and to offer for download: no control characters, quotes or path parts."""
    cleaned = _UNSAFE_NAME.sub("_", str(name)).strip(" ._")
    return cleaned[:200] if any(c.isalnum() for c in cleaned) else "attachment"


def disposition(name: str) -> str:
    """Content-Disposition for a download: always an attachment, the name as RFC 6266/5987 allow."""
    fallback = safe_name(name).encode("ascii", "replace").decode().replace("?", "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(safe_name(name), safe='')}"


def _header(msg: Message, name: str) -> str:
    try:
        value = str(msg.get(name) or "")
    except Exception:  # noqa: BLE001 - a header the parser cannot make sense of: show it as it came
        value = next((str(v) for k, v in msg.raw_items() if k.lower() == name.lower()), "")
    return re.sub(r"[\r\n]+", " ", value)[:2000]


def _content(part: Message) -> str:
    payload = part.get_payload(decode=True) or b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:  # a charset Python does not know
        return payload.decode("utf-8", "replace")
