"""The EWS operations this gateway answers, keyed by the local name of the SOAP body's request element."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from adapters.interfaces import UserRecord

from ..soap import EwsRequest

__all__ = ["Handler", "Operation", "registry"]

#: handler(ctx, user, request) -> the m:...Response element; ctx is the GatewayContext.
Handler = Callable[[Any, UserRecord, EwsRequest], Awaitable[etree._Element]]


@dataclass(frozen=True)
class Operation:
    """One operation: the request element's local name, its handler and the oldest schema that has it."""

    name: str
    handler: Handler
    since: str = "Exchange2007_SP1"


def registry() -> dict[str, Operation]:
    """Every implemented operation; anything else is answered with ErrorInvalidOperation."""
    from . import convert_id, get_server_time_zones, get_user_availability

    ops = (convert_id.OPERATION, get_server_time_zones.OPERATION, get_user_availability.OPERATION)
    return {op.name: op for op in ops}
