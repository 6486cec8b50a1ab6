"""EWS adapters: an existing Exchange (or any EWS server) reached through exchangelib."""

from .freebusy import EwsFreeBusy, RemoteBusy

__all__ = ["EwsFreeBusy", "RemoteBusy"]
