"""``casgate dns``: the records to publish, read back record by record from the command's zone-file output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.autodiscover.dns import SRV_LABELS, records_for, render_zone
from gateway.autodiscover.published import MailService

BASE = """
[server]
{server}
[autodiscover]
{autodiscover}
[backends.dovecot]
type = "imap"
url = "imaps://10.1.2.3:993"
[backends.submit]
type = "smtp"
url = "{smtp_url}"
[domains."example.com"]
imap = "dovecot"
smtp = "submit"
aliases = ["example.net"]
[domains."other.org"]
imap = "dovecot"
"""
PORTS = {"https_port": 8443, "imap_port": 1143, "imaps_port": 1993, "pop3_port": 1110, "pop3s_port": 1995}


def write(tmp_path: Path, public_url: str = "https://mail.example.com", autodiscover: str = "",
          smtp_url: str = "smtp://smtp.example.com:587", **ports: int) -> Path:
    server = "\n".join(f"{k} = {v}" for k, v in {**PORTS, **ports}.items()) + f'\npublic_url = "{public_url}"'
    path = tmp_path / "casgate.toml"
    path.write_text(BASE.format(server=server, autodiscover=autodiscover, smtp_url=smtp_url))
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "dns", *args], capture_output=True, text=True,
                          timeout=60)


def records(text: str) -> dict[tuple[str, str], str]:
    """(name, type) -> value of every record line; each line is checked for zone-file form on the way."""
    out = {}
    for line in text.splitlines():
        data = line.split(";", 1)[0].strip()
        if not data:
            continue
        name, ttl, klass, rtype, *value = data.split()
        assert name.endswith(".") and ttl.isdigit() and klass == "IN", line
        assert rtype in ("SRV", "CNAME", "A", "AAAA"), line
        if rtype == "SRV":
            prio, weight, port, target = value
            assert all(v.isdigit() for v in (prio, weight, port)) and 0 <= int(port) <= 65535, line
            assert target.endswith("."), line
        assert (name, rtype) not in out, f"duplicate {line}"
        out[(name, rtype)] = " ".join(value)
    return out


def test_every_record_for_a_domain(tmp_path):
    r = run("--domain", "example.com", "-c", str(write(tmp_path, public_url="https://mail.example.com:8443")))
    assert r.returncode == 0, r.stderr
    got = records(r.stdout)
    assert got == {
        ("_autodiscover._tcp.example.com.", "SRV"): "0 0 8443 mail.example.com.",
        ("_imaps._tcp.example.com.", "SRV"): "0 1 1993 mail.example.com.",
        ("_imap._tcp.example.com.", "SRV"): "10 1 1143 mail.example.com.",
        ("_pop3s._tcp.example.com.", "SRV"): "20 1 1995 mail.example.com.",
        ("_pop3._tcp.example.com.", "SRV"): "30 1 1110 mail.example.com.",
        ("_submissions._tcp.example.com.", "SRV"): "0 0 0 .",
        ("_submission._tcp.example.com.", "SRV"): "10 1 587 smtp.example.com.",
        ("autodiscover.example.com.", "CNAME"): "mail.example.com.",
        ("autoconfig.example.com.", "CNAME"): "mail.example.com.",
    }
    # Not on 443: the output says why the names alone will not do.
    assert "8443" in r.stdout.splitlines()[1] and r.stdout.splitlines()[1].startswith(";")


def test_services_not_offered_get_the_dot_record(tmp_path):
    cfg = write(tmp_path, autodiscover='protocols = ["imap"]', smtp_url="smtps://smtp.example.com:465")
    got = records(run("--domain", "example.com", "-c", str(cfg)).stdout)
    for label in ("_pop3s._tcp", "_pop3._tcp", "_submissions._tcp", "_submission._tcp"):
        assert got[(f"{label}.example.com.", "SRV")] == "0 0 0 .", label
    assert got[("_imaps._tcp.example.com.", "SRV")] == "0 1 1993 mail.example.com."


def test_implicit_tls_submission_and_port_443(tmp_path):
    cfg = write(tmp_path, public_url="https://autodiscover.example.com", imap_port=0,
                smtp_url="smtps://smtp.example.com:465")
    r = run("--domain", "example.com", "-c", str(cfg))
    got = records(r.stdout)
    assert got[("_submissions._tcp.example.com.", "SRV")] == "0 1 465 smtp.example.com."
    assert got[("_submission._tcp.example.com.", "SRV")] == "0 0 0 ."
    assert got[("_imap._tcp.example.com.", "SRV")] == "0 0 0 ."  # the STARTTLS listener is off
    assert got[("_autodiscover._tcp.example.com.", "SRV")] == "0 0 443 autodiscover.example.com."
    # The gateway's own name needs no CNAME to itself; autoconfig still points at it.
    assert ("autodiscover.example.com.", "CNAME") not in got
    assert got[("autoconfig.example.com.", "CNAME")] == "autodiscover.example.com."
    assert "balancer" not in r.stdout


def test_an_address_instead_of_a_name_gets_a_stand_in(tmp_path):
    cfg = write(tmp_path, public_url="https://192.0.2.10:8443", smtp_url="smtp://[2001:db8::25]:587")
    got = records(run("--domain", "example.com", "-c", str(cfg)).stdout)
    assert got[("_autodiscover._tcp.example.com.", "SRV")] == "0 0 8443 mail.example.com."
    assert got[("_imaps._tcp.example.com.", "SRV")] == "0 1 1993 mail.example.com."
    assert got[("mail.example.com.", "A")] == "192.0.2.10"
    # A second address gets its own name; one name for both would send clients to either at random.
    assert got[("_submission._tcp.example.com.", "SRV")] == "10 1 587 mail2.example.com."
    assert got[("mail2.example.com.", "AAAA")] == "2001:db8::25"
    assert got[("autoconfig.example.com.", "CNAME")] == "mail.example.com."


def test_alias_domain_and_public_host(tmp_path):
    cfg = write(tmp_path, autodiscover='public_host = "cas.example.com"\nimap_host = "imap.example.com"')
    got = records(run("--domain", "example.net", "-c", str(cfg)).stdout)
    # The public URL's port (443: a balancer in front) is what clients are told, not the listener's 8443.
    assert got[("_autodiscover._tcp.example.net.", "SRV")] == "0 0 443 cas.example.com."
    assert got[("_imaps._tcp.example.net.", "SRV")] == "0 1 1993 imap.example.com."
    assert got[("_pop3s._tcp.example.net.", "SRV")] == "20 1 1995 cas.example.com."
    assert got[("autoconfig.example.net.", "CNAME")] == "cas.example.com."


def test_a_domain_without_submission(tmp_path):
    got = records(run("--domain", "other.org", "-c", str(write(tmp_path))).stdout)
    assert got[("_submission._tcp.other.org.", "SRV")] == got[("_submissions._tcp.other.org.", "SRV")] == "0 0 0 ."


@pytest.mark.parametrize("args, needle", [
    (["--domain", "example.org"], "example.org is not a domain of this configuration"),
    (["--domain", "example.com", "-c", "/nonexistent/casgate.toml"], "does not exist"),
])
def test_errors_are_one_clear_line(tmp_path, args, needle):
    if "-c" not in args:
        args = [*args, "-c", str(write(tmp_path))]
    r = run(*args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_pure_records_and_zone_text():
    services = [MailService("imap", "imap.example.com", 993, "implicit"),
                MailService("pop3", "pop.example.com", 110, "none")]
    recs = records_for("Example.COM.", services, "mail.example.com", 443)
    assert [r.name for r in recs[1:1 + len(SRV_LABELS)]] == [f"{label}.example.com." for label, *_ in SRV_LABELS]
    text = render_zone("example.com", recs, 443)
    got = records(text)
    assert got[("_pop3._tcp.example.com.", "SRV")] == "30 1 110 pop.example.com."  # plain POP3 is _pop3 too
    assert got[("_pop3s._tcp.example.com.", "SRV")] == "0 0 0 ."
    assert text.startswith("; DNS records for example.com\n") and text.endswith("\n")
