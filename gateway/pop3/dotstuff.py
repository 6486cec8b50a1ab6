"""Streaming encoder of POP3 multi-line bodies (RFC 1939 3): CRLF line ends, dot-stuffing, the final ".".

Works on chunks cut anywhere, so RETR never holds a whole message; with a
line limit it also serves TOP (the header block, the blank line, N body lines).
"""

from __future__ import annotations


class DotStuffer:
    """feed() each chunk of a raw message, write what it returns, then write finish().

    Bare LF becomes CRLF; a bare CR is passed through unchanged. With
    ``max_body_lines`` set, output stops after the header block, its blank
    line and that many body lines; ``done`` then turns True so the caller can
    stop reading the message.
    """

    def __init__(self, max_body_lines: int | None = None) -> None:
        self._bol = True        # the output so far ends at a line start
        self._cr = False        # the last input byte was CR: an LF opening the next chunk is not bare
        self._limit = max_body_lines
        self._in_headers = True
        self._line_len = 0      # bytes of the current, unfinished line (CR included), for finding the blank one
        self._body_left = max_body_lines or 0
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        if self.done or not chunk:
            return b""
        # The usual chunk has only CRLF line ends and no line starting with a dot: counting and searching
        # (memchr speed) then show that it goes out as it is, without the copies the rewrites would make.
        lfs = chunk.count(b"\n")
        if lfs == chunk.count(b"\r\n") + (self._cr and chunk[:1] == b"\n"):
            data = chunk
        elif self._cr and chunk[:1] == b"\n":
            data = b"\n" + chunk[1:].replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        else:
            data = chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self._cr = chunk[-1:] == b"\r"
        if self._limit is not None:
            data = self._cut(data)
        if b"\n." in data:
            data = data.replace(b"\n.", b"\n..")
        if self._bol and data[:1] == b".":
            data = b"." + data
        if data:
            self._bol = data[-1:] == b"\n"
        return data

    def finish(self) -> bytes:
        """The end of the body: CRLF if the last line had none, then the terminating ".", CRLF."""
        return b".\r\n" if self._bol else b"\r\n.\r\n"

    def _cut(self, data: bytes) -> bytes:
        """Keep what TOP may send of ``data`` (already CRLF-normalised) and note when that is all."""
        pos = 0
        while self._in_headers:
            lf = data.find(b"\n", pos)
            if lf < 0:
                self._line_len += len(data) - pos
                return data
            blank = self._line_len + (lf - pos) == 1  # only the CR of CRLF
            self._line_len = 0
            pos = lf + 1
            if blank:
                self._in_headers = False
        if self._body_left == 0:
            self.done = True
            return data[:pos]
        lines = data.count(b"\n", pos)
        if lines < self._body_left:
            self._body_left -= lines
            return data
        while True:
            lf = data.find(b"\n", pos)
            pos = lf + 1
            self._body_left -= 1
            if self._body_left == 0:
                self.done = True
                return data[:pos]
