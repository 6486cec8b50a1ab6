"""The Collection element of a Sync response, shared by the mail and the DAV collections' Sync."""

from __future__ import annotations

from ..wbxml import Element

NS = "AirSync"


def collection_status(collection_id: str, status: int, key: str | None, klass: str | None) -> Element:
    """A Collection with its Class (when the request named one), SyncKey, CollectionId and Status."""
    children = [Element(NS, "Class", text=klass)] if klass else []
    children += [Element(NS, "SyncKey", text=key or "0"), Element(NS, "CollectionId", text=collection_id),
                 Element(NS, "Status", text=str(status))]
    return Element(NS, "Collection", children)


def collection_answer(collection_id: str, status: int, key: str, klass: str | None, more: bool,
                      items: list[Element], responses: list[Element]) -> Element:
    """A Collection under a new key: MoreAvailable, the server's Commands, the Responses to the device's."""
    answer = collection_status(collection_id, status, key, klass)
    if more:
        answer.children.append(Element(NS, "MoreAvailable"))
    if items:
        answer.children.append(Element(NS, "Commands", items))
    if responses:
        answer.children.append(Element(NS, "Responses", responses))
    return answer
