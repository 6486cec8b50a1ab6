"""GetItemEstimate (MS-ASCMD 2.2.1.9): how many changes a Sync with this key would bring, without sending them."""

from __future__ import annotations

from ..folders import valid_key
from ..pimfolders import parse_key
from ..wbxml import Element
from . import EasCall, EasError
from ...services.mailsync import FolderState, flag_bits, in_window
from .pimcollection import pending_count
from .sync import FILTER_DAYS

NS = "GetItemEstimate"
# GetItemEstimate status (MS-ASCMD 2.2.3.177.6).
OK, BAD_COLLECTION, NOT_PRIMED, BAD_KEY = 1, 2, 3, 4


def _response(status: int, collection_id: str, estimate: int | None = None) -> Element:
    children = [Element(NS, "Status", text=str(status))]
    collection = [Element(NS, "CollectionId", text=collection_id)]
    if estimate is not None:
        collection.append(Element(NS, "Estimate", text=str(estimate)))
    children.append(Element(NS, "Collection", collection))
    return Element(NS, "Response", children)


async def run(call: EasCall) -> Element:
    body = call.body
    if body is None or body.ns != NS or body.name != "GetItemEstimate":
        raise EasError(BAD_COLLECTION, "expected a GetItemEstimate request")
    collections = body.find("Collections")
    if collections is None:
        raise EasError(BAD_COLLECTION, "GetItemEstimate without Collections")
    out = []
    for collection in collections.findall("Collection"):
        out.append(await _estimate(call, collection))
    return Element(NS, "GetItemEstimate", out)


async def _estimate(call: EasCall, collection: Element) -> Element:
    collection_id = collection.text_of("CollectionId") or ""
    key = collection.text_of("SyncKey", "AirSync")
    folder = await call.services.folders.name_of(call.user.address, collection_id)
    if folder is None:
        return _response(BAD_COLLECTION, collection_id)
    if key in (None, "0"):
        return _response(NOT_PRIMED, collection_id)
    blob = await call.ctx.state.get_sync_state(call.user.address, call.device.device_id, collection_id, key) \
        if valid_key(key) else None
    if blob is None:
        return _response(BAD_KEY, collection_id)
    if (pim := parse_key(folder)) is not None:
        return _response(OK, collection_id, await pending_count(call, *pim, blob))
    state = FolderState.load(blob)
    filter_text = collection.text_of("FilterType", "AirSync")
    options = collection.find("Options", "AirSync")
    if options is not None:
        filter_text = options.text_of("FilterType", "AirSync", filter_text)
    filter_type = int(filter_text) if filter_text and filter_text.isdigit() and int(filter_text) in FILTER_DAYS \
        else state.filter_type
    store = await call.mailbox()
    listing = in_window(await store.list_messages(folder), FILTER_DAYS.get(filter_type))
    current = {m.uid: flag_bits(m.flags) for m in listing}
    owed = set(state.pending) & set(current)
    fresh = {uid for uid in current if uid not in state.known} - owed
    gone = sum(1 for uid in state.known if uid not in current)
    changed = sum(1 for uid, bits in state.known.items() if uid in current and current[uid] != bits)
    return _response(OK, collection_id, len(owed) + len(fresh) + gone + changed)
