"""Certificates and TLS contexts: a development CA and leaf certificates, SNI selection, key checks."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class CertificateError(Exception):
    """A certificate or key file is missing, unreadable or does not match."""


@dataclass(frozen=True)
class CertPaths:
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def cert_hosts(cert_file: Path) -> list[str]:
    """The DNS names and addresses a certificate's SAN names."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + \
           [str(v) for v in san.get_values_for_type(x509.IPAddress)]


def init_certs(directory: Path, domain: str, hosts: list[str] | None = None,
               days: int = 825) -> tuple[CertPaths, bool]:
    """Make (or reuse) a dev CA and a leaf certificate in ``directory``.

    Returns the paths and whether anything new was written.  An existing leaf is
    reused when it still covers every requested host and is signed by the CA there.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(directory / "ca.pem", directory / "ca.key", directory / "server.pem",
                      directory / "server.key")
    wanted = hosts or [f"mail.{domain}", f"autodiscover.{domain}", f"autoconfig.{domain}", "localhost", "127.0.0.1"]
    now = dt.datetime.now(dt.timezone.utc)
    if all(p.exists() for p in (paths.ca_cert, paths.ca_key, paths.cert, paths.key)):
        try:
            leaf = x509.load_pem_x509_certificate(paths.cert.read_bytes())
            ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
            fresh = leaf.not_valid_after_utc > now + dt.timedelta(days=7)
            if fresh and set(wanted) <= set(cert_hosts(paths.cert)) and leaf.issuer == ca.subject:
                check_pair(paths.cert, paths.key)
                return paths, False
        except (ValueError, CertificateError):
            pass
    if paths.ca_cert.exists() and paths.ca_key.exists():
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "casgate development"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"casgate dev CA for {domain}")])
        ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
                   .sign(ca_key, hashes.SHA256()))
        _write_key(paths.ca_key, ca_key)
        paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, wanted[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(_san(wanted), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(paths.key, key)
    paths.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return paths, True


def check_pair(cert_file: Path, key_file: Path) -> None:
    """Raise CertificateError unless the files exist, parse, and the key belongs to the certificate."""
    for p, what in ((cert_file, "certificate"), (key_file, "private key")):
        if not p.exists():
            raise CertificateError(f"{what} file {p} does not exist")
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except ValueError:
        raise CertificateError(f"{cert_file} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    except (ValueError, TypeError):
        raise CertificateError(f"{key_file} is not an unencrypted PEM private key") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (cert.public_key().public_bytes(serialization.Encoding.DER, pub)
            != key.public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise CertificateError(f"private key {key_file} does not match certificate {cert_file}")


def _server_context(cert: Path, key: Path) -> ssl.SSLContext:
    check_pair(cert, key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(cert: Path, key: Path, sni: list[tuple[list[str], Path, Path]] = ()) -> ssl.SSLContext:
    """A server-side context for ``cert``, switching to an SNI entry's certificate by server name."""
    default = _server_context(cert, key)
    by_name: dict[str, ssl.SSLContext] = {}
    for hostnames, c, k in sni:
        ctx = _server_context(c, k)
        for h in hostnames:
            by_name[h.lower()] = ctx
    if by_name:
        def pick(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            if not server_name:
                return
            name = server_name.lower()
            chosen = by_name.get(name) or by_name.get("*." + name.partition(".")[2])
            if chosen is not None:
                sslobj.context = chosen
        default.sni_callback = pick
    return default


def client_context(ca_file: str | Path | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client-side context for talking to back ends."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
