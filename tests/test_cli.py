"""The casgate command: clear one-line errors and exit codes for bad input, check, certs init."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from gateway import tls
from gateway.demo.procs import free_port
from test_gateway import write_gateway_config


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_clean_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    for n in needles:
        assert n in r.stderr, r.stderr


def test_help_explains_itself():
    r = run("--help")
    assert r.returncode == 0
    for word in ("serve", "check", "demo", "certs", "Exchange"):
        assert word in r.stdout


def test_missing_config(tmp_path):
    assert_clean_error(run("serve", "-c", str(tmp_path / "nope.toml")), 2, "does not exist")


def test_malformed_config(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[server\nhttps_port = 1")
    assert_clean_error(run("serve", "-c", str(f)), 2, "not valid TOML")


def test_bad_value_names_the_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[server]\nhttps_port = 70000\n")
    assert_clean_error(run("check", "-c", str(f)), 2, "server.https_port")


def test_port_in_use(workdir, certs, dovecot):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = write_gateway_config(Path(workdir) / f"cli-busy-{port}", certs, dovecot, https=port)
        assert_clean_error(run("serve", "-c", str(cfg)), 1, "already in use", str(port))


def test_certificate_not_matching_key(workdir, certs, dovecot):
    root = Path(workdir) / f"cli-mismatch-{free_port()}"
    cfg = write_gateway_config(root, certs, dovecot)
    cfg.write_text(cfg.read_text().replace(str(certs.key), str(certs.ca_key)))
    assert_clean_error(run("serve", "-c", str(cfg)), 2, "does not match")


def test_check_reports_each_back_end(workdir, certs, dovecot):
    dead = free_port()
    root = Path(workdir) / f"cli-check-{dead}"
    cfg = write_gateway_config(root, certs, dovecot,
                               extra_backends=f'[backends.gone]\ntype = "smtp"\nurl = "smtp://127.0.0.1:{dead}"\n')
    r = run("check", "-c", str(cfg))
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert any(l.startswith("ok   backend dovecot (imap)") for l in lines), r.stdout
    assert any(l.startswith("FAIL backend gone (smtp)") for l in lines), r.stdout
    assert any(l.startswith("ok   directory: 2 users") for l in lines), r.stdout
    cfg.write_text(cfg.read_text().replace(f'[backends.gone]\ntype = "smtp"\nurl = "smtp://127.0.0.1:{dead}"\n', ""))
    assert run("check", "-c", str(cfg)).returncode == 0


def test_certs_init_makes_and_reuses(tmp_path):
    r = run("certs", "init", "--domain", "corp.test", "--dir", str(tmp_path), "--host", "mx.corp.test",
            "--host", "10.1.2.3")
    assert r.returncode == 0 and "wrote" in r.stdout
    assert tls.cert_hosts(tmp_path / "server.pem") == ["mx.corp.test", "10.1.2.3"]
    tls.check_pair(tmp_path / "server.pem", tmp_path / "server.key")
    assert oct((tmp_path / "server.key").stat().st_mode & 0o777) == "0o600"
    r = run("certs", "init", "--domain", "corp.test", "--dir", str(tmp_path), "--host", "mx.corp.test",
            "--host", "10.1.2.3")
    assert r.returncode == 0 and "kept" in r.stdout


ROOT = Path(__file__).resolve().parent.parent


def test_shipped_configs_are_valid():
    import dataclasses

    from gateway.config import load
    from gateway.services.directory import StaticDirectory

    example = load(ROOT / "casgate.example.toml")
    example = dataclasses.replace(example, directory=dataclasses.replace(example.directory,
                                                                       users_file="users.example.toml"))
    users = StaticDirectory.from_config(example)
    assert users.find("a.example@example.com").address == "alice@example.com"
    assert users.find("bob@example.net").login == "bob"  # domain alias and per-user login
    for name, state in (("docker/casgate.toml", "sqlite"), ("docker/casgate-cluster.toml", "postgresql")):
        cfg = load(ROOT / name)
        assert cfg.state.backend == state
        assert set(cfg.backends) >= {"dovecot"}
    config_help = run("config-help")
    assert config_help.returncode == 0 and "auth.cache_ttl" in config_help.stdout


def test_redis_bus_that_does_not_answer(workdir, certs, dovecot):
    root = Path(workdir) / f"cli-redis-{free_port()}"
    cfg = write_gateway_config(root, certs, dovecot)
    dead = free_port()
    cfg.write_text(cfg.read_text().replace('[state]\npath = "state.db"\n',
                                           f'[state]\npath = "state.db"\nbus = "redis"\n'
                                           f'redis_url = "redis://127.0.0.1:{dead}/0"\n'))
    assert_clean_error(run("serve", "-c", str(cfg)), 1, "Redis bus", str(dead))
