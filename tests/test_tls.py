"""Certificates and TLS contexts: dev CA, SNI selection, key mismatch, minimum version."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from gateway import tls


def _serve_once(ctx: ssl.SSLContext) -> tuple[int, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def run():
        with srv:
            for _ in range(2):
                conn, _ = srv.accept()
                try:
                    with ctx.wrap_socket(conn, server_side=True) as s:
                        s.recv(1)
                except (ssl.SSLError, OSError):
                    pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return port, t


def _peer_names(port: int, ca: Path, server_name: str) -> list[str]:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port)) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            der = s.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    return [str(n) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value.get_values_for_type(x509.DNSName)]


def test_sni_picks_the_certificate_for_the_name(tmp_path):
    main, _ = tls.init_certs(tmp_path / "main", "example.test")
    # A second organisation's certificate, with its own CA.
    other, _ = tls.init_certs(tmp_path / "other", "other.test")
    ctx = tls.server_context(main.cert, main.key, [(["mail.other.test", "autodiscover.other.test"],
                                                    other.cert, other.key)])
    port, t = _serve_once(ctx)
    assert "mail.example.test" in _peer_names(port, main.ca_cert, "mail.example.test")
    assert "mail.other.test" in _peer_names(port, other.ca_cert, "mail.other.test")
    t.join(5)


def test_key_mismatch_and_missing_files(tmp_path):
    a, _ = tls.init_certs(tmp_path / "a", "a.test")
    b, _ = tls.init_certs(tmp_path / "b", "b.test")
    with pytest.raises(tls.CertificateError, match="does not match"):
        tls.server_context(a.cert, b.key)
    with pytest.raises(tls.CertificateError, match="does not exist"):
        tls.server_context(tmp_path / "none.pem", a.key)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(tls.CertificateError, match="not a PEM certificate"):
        tls.server_context(tmp_path / "junk.pem", a.key)


def test_old_tls_refused(tmp_path):
    a, _ = tls.init_certs(tmp_path / "a", "a.test")
    ctx = tls.server_context(a.cert, a.key)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_leaf_is_renewed_when_names_change_but_ca_is_kept(tmp_path):
    first, made = tls.init_certs(tmp_path, "example.test")
    ca_before = first.ca_cert.read_bytes()
    assert made
    again, made = tls.init_certs(tmp_path, "example.test", ["mail.example.test", "new.example.test"])
    assert made and again.ca_cert.read_bytes() == ca_before
    assert tls.cert_hosts(again.cert) == ["mail.example.test", "new.example.test"]
    tls.check_pair(again.cert, again.key)
