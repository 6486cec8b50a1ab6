"""ConvertId: this gateway issues no item ids yet, so every id is answered as Exchange answers one it cannot read.

That is what exchangelib's version discovery (Version.guess converts the id
"DUMMY") expects: a per-id ErrorInvalidIdMalformed inside a normal reply whose
header carries ServerVersionInfo.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from adapters.interfaces import UserRecord

from ..soap import M_NS, T_NS, EwsRequest, SoapFault, m, response_message, sub
from . import Operation

ID_FORMATS = ("EntryId", "EwsId", "EwsLegacyId", "HexEntryId", "OwaId", "StoreId")
SOURCE_KINDS = ("AlternateId", "AlternatePublicFolderId", "AlternatePublicFolderItemId")


async def handle(ctx: Any, user: UserRecord, request: EwsRequest) -> etree._Element:
    body = request.body
    if body.get("DestinationFormat") not in ID_FORMATS:
        raise SoapFault("ErrorSchemaValidation", "The request failed schema validation: DestinationFormat must be "
                                                 f"one of {', '.join(ID_FORMATS)}.")
    source = body.find(m("SourceIds"))
    ids = [e for e in source if isinstance(e.tag, str)] if source is not None else []
    if not ids or any(etree.QName(e).localname not in SOURCE_KINDS or e.get("Format") not in ID_FORMATS
                      for e in ids):
        raise SoapFault("ErrorSchemaValidation", "The request failed schema validation: SourceIds must hold "
                                                 "AlternateId elements with a valid Format.")
    resp = etree.Element(m("ConvertIdResponse"), nsmap={"m": M_NS, "t": T_NS})
    messages = sub(resp, m("ResponseMessages"))
    for _ in ids:
        response_message(messages, m("ConvertIdResponseMessage"), "ErrorInvalidIdMalformed", "Id is malformed.")
    return resp


OPERATION = Operation("ConvertId", handle)
