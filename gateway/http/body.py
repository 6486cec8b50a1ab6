"""Reading a request body within a size limit, for every HTTP front end."""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` (the rest is never read).

    aiohttp inflates a gzip or deflate body as it is read, so the limit holds for the inflated size
    and a compression bomb is cut off at ``limit``; a body that cannot be inflated is the client's
    fault and gets 400.
    """
    if request.content_length is not None and request.content_length > limit:
        return None
    data = bytearray()
    try:
        while chunk := await request.content.read(65536):
            data += chunk
            if len(data) > limit:
                return None
    except RequestPayloadError:
        raise web.HTTPBadRequest(text="the request body could not be decoded (Content-Encoding)\n") from None
    return bytes(data)
