"""Everything one gateway process shares, assembled once from the config and passed explicitly."""

from __future__ import annotations

import ssl
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from . import tls
from .config import Config
from .metrics import Metrics
from .services.auth import AuthService
from .services.availability import AvailabilityService
from .services.backends import Backends
from .services.directory import StaticDirectory
from .state import StateStore, open_store
from .state.bus import Bus, LocalBus, open_bus


@dataclass
class GatewayContext:
    config: Config
    directory: StaticDirectory
    backends: Backends
    auth: AuthService
    state: StateStore
    metrics: Metrics
    ssl_context: ssl.SSLContext
    availability: AvailabilityService
    bus: Bus = field(default_factory=LocalBus)


def server_ssl_context(config: Config) -> ssl.SSLContext:
    """The listeners' TLS context: the default certificate plus SNI entries (raises tls.CertificateError)."""
    sni = [(e.hostnames, config.path(e.cert), config.path(e.key)) for e in config.tls.sni]
    return tls.server_context(config.path(config.tls.cert), config.path(config.tls.key), sni)


async def open_context(config: Config, stack: AsyncExitStack) -> GatewayContext:
    """Build the services; whatever needs closing is registered on ``stack``."""
    ssl_ctx = server_ssl_context(config)
    directory = StaticDirectory.from_config(config)
    backends = Backends(config)
    metrics = Metrics()
    auth = AuthService(config.auth, directory, backends,
                       on_result=lambda result: metrics.auth.labels(result).inc())
    st = config.state
    store = open_store(st.backend, path=str(config.path(st.path)) if st.backend == "sqlite" else "", dsn=st.dsn,
                       schema=st.schema)
    await store.start()
    stack.push_async_callback(store.close)
    availability = AvailabilityService(config, directory, backends)
    stack.push_async_callback(availability.close)
    bus = open_bus(st.bus, st.redis_url)
    await bus.start()
    stack.push_async_callback(bus.close)
    return GatewayContext(config, directory, backends, auth, store, metrics, ssl_ctx, availability, bus)
