"""Prometheus metrics: one registry per gateway, passed explicitly (no global collector)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The gateway's instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("casgate_http_requests", "HTTP requests served",
                                     ["route", "method", "status"], registry=r)
        self.http_latency = Histogram("casgate_http_request_seconds", "HTTP request latency",
                                      ["route"], registry=r,
                                      buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.connections = Gauge("casgate_open_connections", "Open client connections", ["listener"], registry=r)
        self.connections_total = Counter("casgate_connections", "Accepted client connections",
                                         ["listener"], registry=r)
        self.auth = Counter("casgate_auth_attempts", "Login attempts by result", ["result"], registry=r)
        self.imap_spares = Counter("casgate_imap_backend_spares", "IMAP logins by whether a spare back-end "
                                   "connection was ready (hit) or had to be opened (miss)", ["result"], registry=r)
        self.eas_commands = Counter("casgate_eas_commands", "ActiveSync commands by command and result",
                                    ["command", "result"], registry=r)
        self.eas_pings_held = Gauge("casgate_eas_pings_held", "ActiveSync Pings held, waiting for a change",
                                    registry=r)
        self.dovecot_push = Counter("casgate_dovecot_push_notifications", "Notifications from Dovecot's push hook by "
                                    "result (accepted, refused, bad, ignored)", ["result"], registry=r)
        self.backend_up = Gauge("casgate_backend_up", "1 when the last probe of a back end succeeded",
                                ["backend", "type"], registry=r)
        self.backend_probe_seconds = Gauge("casgate_backend_probe_seconds", "Duration of the last probe",
                                           ["backend", "type"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
