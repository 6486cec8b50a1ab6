"""HTTP Basic authentication for every HTTP front end, through the authentication service."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from adapters.errors import AuthenticationFailed, BackendUnavailable
from adapters.interfaces import Credentials, UserRecord

from ..services.auth import AuthService, LoginThrottled


def challenge(request: web.Request, text: str = "authentication required\n",
              retry_after: int | None = None) -> web.HTTPUnauthorized:
    # Exchange names the host as the realm; clients show it in their password prompt.
    realm = (request.url.host or "casgate").replace('"', "")
    headers = {"WWW-Authenticate": f'Basic realm="{realm}", charset="UTF-8"'}
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    return web.HTTPUnauthorized(text=text, headers=headers)


def credentials_of(header: str) -> Credentials | None:
    """The login and password of an ``Authorization: Basic`` header, or None when absent or malformed."""
    scheme, _, blob = header.partition(" ")
    if scheme.lower() != "basic" or not blob:
        return None
    try:
        raw = base64.b64decode(blob.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # older Windows clients send their code page
    login, colon, password = text.partition(":")
    if not colon or not login:
        return None
    # Outlook and Windows tools send DOMAIN\user; the directory knows users by login or address.
    return Credentials(login.rpartition("\\")[2], password)


def client_ip(request: web.Request) -> str:
    return request.remote or "0.0.0.0"


async def authenticate(request: web.Request, auth: AuthService) -> tuple[UserRecord, Credentials]:
    """The caller's user and credentials; otherwise raises the HTTP answer to give.

    Missing or wrong credentials and back-off give 401 (with Retry-After while
    backing off: EWS and ActiveSync clients wait on it); a password store that
    cannot be reached gives 503 with Retry-After.
    """
    creds = credentials_of(request.headers.get("Authorization", ""))
    if creds is None:
        raise challenge(request)
    try:
        result = await auth.authenticate(creds.username, creds.password, client_ip(request))
    except LoginThrottled as exc:
        raise challenge(request, "too many failed logins; try again later\n", exc.retry_after) from None
    except AuthenticationFailed:
        raise challenge(request, "invalid user name or password\n") from None
    except BackendUnavailable as exc:
        raise web.HTTPServiceUnavailable(text="the mail store cannot check passwords right now\n",
                                         headers={"Retry-After": str(exc.retry_after)}) from None
    return result.user, creds
