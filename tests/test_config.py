"""The config schema: defaults, every kind of bad value named by its key, file loading, describe()."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import BACKEND_TYPES, BackendConfig, Config, ConfigError, describe, from_dict, load

IMAP = {"type": "imap", "url": "imaps://mail.example.test"}
SMTP = {"type": "smtp", "url": "smtp://mail.example.test:587"}


def _error(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    return info.value


# --- defaults ---------------------------------------------------------------------------------------------


def test_empty_dict_gives_every_default():
    cfg = from_dict({})
    assert cfg == Config(base_dir=".")
    assert cfg.server.https_port == 8443 and cfg.server.imaps_port == 1993
    assert cfg.state.backend == "sqlite" and cfg.state.path == "casgate.db"
    assert cfg.auth.max_failures == 5 and cfg.auth.cache_ttl == 300
    assert cfg.directory.users_file == "users.toml"
    assert cfg.backends == {} and cfg.domains == {} and cfg.tls.sni == []
    assert cfg.https_url == "https://127.0.0.1:8443"


def test_config_is_immutable():
    cfg = from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.server.https_port = 1  # type: ignore[misc]


def test_values_are_taken_and_int_widens_to_float():
    cfg = from_dict({"server": {"https_port": 443, "shutdown_grace": 3, "public_url": "https://cas.example.test/"},
                     "auth": {"backoff_base": 1}})
    assert cfg.server.https_port == 443
    assert cfg.server.shutdown_grace == 3.0 and isinstance(cfg.server.shutdown_grace, float)
    assert isinstance(cfg.auth.backoff_base, float)
    assert cfg.https_url == "https://cas.example.test"


def test_port_zero_disables_and_is_allowed():
    assert from_dict({"server": {"imap_port": 0}}).server.imap_port == 0


# --- bad values name their key ----------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "key", "words"), [
    ({"server": {"https_port": "443"}}, "server.https_port", "type int"),
    ({"server": {"https_port": True}}, "server.https_port", "type int"),
    ({"server": {"https_port": 1.5}}, "server.https_port", "type int"),
    ({"server": {"listen": 127}}, "server.listen", "type str"),
    ({"backends": {"m": {**IMAP, "verify": "yes"}}}, "backends.m.verify", "type bool"),
    ({"server": {"shutdown_grace": "10"}}, "server.shutdown_grace", "type float"),
    ({"server": {"shutdown_grace": False}}, "server.shutdown_grace", "type float"),
    ({"server": {"https_port": 65536}}, "server.https_port", "port"),
    ({"server": {"pop3_port": -1}}, "server.pop3_port", "port"),
    ({"auth": {"cache_ttl": 0}}, "auth.cache_ttl", "greater than 0"),
    ({"auth": {"backoff_max": -1.0}}, "auth.backoff_max", "greater than 0"),
    ({"log": {"level": "verbose"}}, "log.level", "one of"),
    ({"state": {"backend": "mysql"}}, "state.backend", "one of"),
    ({"tls": {"sni": {"hostnames": ["a"]}}}, "tls.sni", "list"),
    ({"tls": {"sni": [{"hostnames": "a", "cert": "c", "key": "k"}]}}, "tls.sni[0].hostnames", "list"),
    ({"domains": {"example.test": {"aliases": ["ok", 3]}}}, "domains.example.test.aliases[1]", "type str"),
    ({"availability": {"working_start": "²:00"}}, "availability.working_start", "HH:MM"),
    ({"availability": {"time_zone": "x" * 300}}, "availability.time_zone", "IANA"),
    ({"server": 5}, "server", "table"),
    ({"backends": []}, "backends", "table"),
    ({"backends": {"m": "imaps://x"}}, "backends.m", "table"),
])
def test_bad_value_names_key(data, key, words):
    err = _error(data)
    assert err.key == key
    assert str(err).startswith(key + ": ")
    assert words in str(err)


def test_bool_is_not_an_int_even_for_checked_keys():
    # True == 1 would pass the port check; the type check must catch it first.
    assert _error({"auth": {"max_failures": True}}).key == "auth.max_failures"


@pytest.mark.parametrize(("data", "key"), [
    ({"serverr": {}}, "serverr"),
    ({"server": {"port": 1}}, "server.port"),
    ({"auth": {"cache_ttl": 5, "ttl": 5}}, "auth.ttl"),
    ({"backends": {"m": {**IMAP, "password": "x"}}}, "backends.m.password"),
    ({"domains": {"example.test": {"imap_backend": "m"}}}, "domains.example.test.imap_backend"),
    ({"tls": {"sni": [{"hostnames": ["a"], "cert": "c", "key": "k", "chain": "x"}]}}, "tls.sni[0].chain"),
    ({"base_dir": "/etc"}, "base_dir"),  # internal field, not a setting
])
def test_unknown_key_is_named(data, key):
    err = _error(data)
    assert err.key == key
    assert "unknown setting" in str(err)


def test_unknown_backend_type():
    err = _error({"backends": {"m": {"type": "pop3", "url": "pop3://x"}}})
    assert err.key == "backends.m.type"
    assert "imap" in str(err) and "ews" in str(err)


@pytest.mark.parametrize(("backend", "words"), [
    ({"type": "imap", "url": "https://mail.example.test"}, "imap://"),
    ({"type": "smtp", "url": "imaps://mail.example.test"}, "smtps://"),
    ({"type": "caldav", "url": "imap://dav.example.test"}, "https://"),
    ({"type": "carddav", "url": "smtp://dav.example.test"}, "http://"),
    ({"type": "ews", "url": "imaps://exchange.example.test"}, "https://"),
    ({"type": "imap", "url": "mail.example.test:993"}, "imap"),
])
def test_url_scheme_must_match_type(backend, words):
    err = _error({"backends": {"m": backend}})
    assert err.key == "backends.m.url"
    assert words in str(err)


@pytest.mark.parametrize(("url", "words"), [
    ("", "required"),
    ("imaps://", "no host"),
    ("imaps://:993", "no host"),
    ("imaps://[::1", "not a valid URL"),
    ("imaps://mail.example.test:99999", "not a valid URL"),
    ("imaps://mail.example.test:abc", "not a valid URL"),
])
def test_unusable_url_is_named(url, words):
    err = _error({"backends": {"m": {"type": "imap", "url": url}}})
    assert err.key == "backends.m.url"
    assert words in str(err)


def test_domain_naming_undefined_backend():
    err = _error({"backends": {"mail": IMAP}, "domains": {"example.test": {"imap": "mial"}}})
    assert err.key == "domains.example.test.imap"
    assert "'mial'" in str(err) and "not defined" in str(err)


def test_domain_naming_backend_of_wrong_type():
    err = _error({"backends": {"mail": IMAP, "out": SMTP}, "domains": {"example.test": {"imap": "out"}}})
    assert err.key == "domains.example.test.imap"
    assert "smtp" in str(err) and "not imap" in str(err)


def test_domain_with_valid_references_loads():
    cfg = from_dict({"backends": {"mail": IMAP, "out": SMTP},
                     "domains": {"example.test": {"imap": "mail", "smtp": "out", "aliases": ["example.org"]}}})
    assert cfg.domains["example.test"].imap == "mail"
    assert cfg.domains["example.test"].aliases == ["example.org"]


def test_postgresql_needs_dsn():
    err = _error({"state": {"backend": "postgresql"}})
    assert err.key == "state.dsn"
    assert "postgresql" in str(err)
    cfg = from_dict({"state": {"backend": "postgresql", "dsn": "postgresql://db/casgate"}})
    assert cfg.state.dsn == "postgresql://db/casgate"


@pytest.mark.parametrize("entry", [
    {"cert": "c.pem", "key": "c.key"},
    {"hostnames": [], "cert": "c.pem", "key": "c.key"},
    {"hostnames": ["a.example.test"], "key": "c.key"},
    {"hostnames": ["a.example.test"], "cert": "c.pem"},
])
def test_incomplete_sni_entry(entry):
    full = {"hostnames": ["b.example.test"], "cert": "b.pem", "key": "b.key"}
    err = _error({"tls": {"sni": [full, entry]}})
    assert err.key == "tls.sni[1]"
    assert "hostnames, cert and key" in str(err)


def test_complete_sni_entry_loads():
    cfg = from_dict({"tls": {"sni": [{"hostnames": ["a.example.test"], "cert": "a.pem", "key": "a.key"}]}})
    assert cfg.tls.sni[0].hostnames == ["a.example.test"]
    assert cfg.tls.sni[0].cert == "a.pem"


# --- back-end URL helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "tls", "mode", "port"), [
    ("imaps://h", "auto", "implicit", 993),
    ("imap://h", "auto", "starttls", 143),
    ("imap://h:1143", "none", "none", 1143),
    ("imaps://h:10993", "auto", "implicit", 10993),
    ("smtp://h", "auto", "starttls", 587),
    ("submission://h", "auto", "starttls", 587),
    ("smtps://h", "auto", "implicit", 465),
    ("https://h/dav/", "auto", "implicit", 443),
    ("http://h/dav/", "auto", "none", 80),
    ("http://h:5232/", "auto", "none", 5232),
    ("imap://h", "implicit", "implicit", 143),
])
def test_backend_tls_mode_and_port_from_url(url, tls, mode, port):
    b = BackendConfig(url=url, tls=tls)
    assert b.tls_mode == mode
    assert b.port == port
    assert b.host == "h"


def test_backend_host_from_loaded_config():
    cfg = from_dict({"backends": {"dav": {"type": "caldav", "url": "https://DAV.example.test:8443/radicale/"}}})
    b = cfg.backends["dav"]
    assert (b.host, b.port, b.tls_mode) == ("dav.example.test", 8443, "implicit")


# --- loading files ----------------------------------------------------------------------------------------


def test_load_missing_file(tmp_path: Path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_load_directory_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError):
        load(tmp_path)


def test_load_non_toml(tmp_path: Path):
    p = tmp_path / "casgate.toml"
    p.write_text("[server\nhttps_port = 1\n")
    with pytest.raises(ConfigError) as info:
        load(p)
    assert "not valid TOML" in str(info.value)
    assert str(p) in str(info.value)


def test_load_non_utf8(tmp_path: Path):
    p = tmp_path / "casgate.toml"
    p.write_bytes(b'[server]\nlisten = "\xff\xfe"\n')
    with pytest.raises(ConfigError) as info:
        load(p)
    assert "not valid TOML" in str(info.value)


def test_load_bad_value_names_key(tmp_path: Path):
    p = tmp_path / "casgate.toml"
    p.write_text("[server]\nhttps_port = 70000\n")
    with pytest.raises(ConfigError) as info:
        load(p)
    assert info.value.key == "server.https_port"


def test_load_reads_values_and_resolves_relative_paths(tmp_path: Path):
    folder = tmp_path / "etc" / "casgate"
    folder.mkdir(parents=True)
    p = folder / "casgate.toml"
    p.write_text('[server]\nhttps_port = 443\n[directory]\nusers_file = "people.toml"\n'
                 '[tls]\ncert = "/abs/server.pem"\n'
                 '[backends.mail]\ntype = "imap"\nurl = "imaps://127.0.0.1:993"\n'
                 '[domains."example.test"]\nimap = "mail"\n')
    cfg = load(p)
    assert cfg.server.https_port == 443
    assert Path(cfg.base_dir) == folder.resolve()
    assert cfg.path(cfg.directory.users_file) == folder.resolve() / "people.toml"
    assert cfg.path(cfg.tls.cert) == Path("/abs/server.pem")
    assert cfg.path("sub/x.pem") == folder.resolve() / "sub" / "x.pem"
    assert cfg.domains["example.test"].imap == "mail"


def test_load_relative_path_argument_resolves_to_absolute_folder(tmp_path: Path, monkeypatch):
    (tmp_path / "casgate.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    cfg = load("casgate.toml")
    assert Path(cfg.base_dir).is_absolute()
    monkeypatch.chdir("/")
    assert cfg.path("users.toml") == tmp_path.resolve() / "users.toml"


# --- describe() -------------------------------------------------------------------------------------------


def _schema_leaves(cls: type, prefix: str = "") -> set[str]:
    """Every settable key, found by walking the dataclasses independently of describe()."""
    out = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "base_dir":
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        args = typing.get_args(tp)
        if dataclasses.is_dataclass(tp):
            out |= _schema_leaves(tp, key)
        elif typing.get_origin(tp) is dict and dataclasses.is_dataclass(args[1]):
            out |= _schema_leaves(args[1], f"{key}.<name>")
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(args[0]):
            out |= _schema_leaves(args[0], f"{key}[]")
        else:
            out.add(key)
    return out


def test_describe_lists_every_leaf_with_help():
    rows = describe()
    keys = [r[0] for r in rows]
    assert len(keys) == len(set(keys))
    assert _schema_leaves(Config) <= set(keys)
    for key, type_name, _default, help_text in rows:
        assert help_text.strip(), f"{key} has no help text"
        assert type_name, key
    assert "tls.sni[].hostnames" in keys and "backends.<name>.url" in keys and "domains.<name>.aliases" in keys


def test_describe_defaults_match_the_schema():
    rows = {r[0]: r for r in describe()}
    cfg = from_dict({})
    assert rows["server.https_port"][1:3] == ("int", cfg.server.https_port)
    assert rows["auth.backoff_base"][1:3] == ("float", cfg.auth.backoff_base)
    assert rows["state.backend"][2] == "sqlite"
    assert rows["backends.<name>.tls"][2] == "auto"


# --- fuzz: anything TOML can hold either loads or raises ConfigError --------------------------------------

_KNOWN = ["server", "tls", "state", "auth", "directory", "log", "backends", "domains", "sni", "hostnames",
          "cert", "key", "url", "type", "imap", "smtp", "caldav", "carddav", "ews", "aliases", "dsn", "backend",
          "https_port", "imap_port", "listen", "cache_ttl", "max_failures", "level", "format", "users_file",
          "verify", "timeout", "ca_file", "public_url", "shutdown_grace", "mail", "example.test", "availability",
          "working_start", "working_end", "working_days", "time_zone", "user_access", "default_access"]
_keys = st.one_of(st.sampled_from(_KNOWN), st.text(max_size=8))
_scalars = st.one_of(
    st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["imap", "smtp", "caldav", "ews", "imaps://h", "imap://[", "https://h/x", "smtp://h:99999",
                     "postgresql", "sqlite", "mail", "auto", "none", "debug", "text"]),
    st.integers(min_value=-5, max_value=70000),
    st.datetimes(), st.dates(), st.times(),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=25)
_tables = st.dictionaries(_keys, _values, max_size=6)
_urls = st.builds("{}://{}{}{}".format,
                  st.sampled_from(["imap", "imaps", "smtp", "smtps", "submission", "http", "https", "ldap", ""]),
                  st.one_of(st.sampled_from(["h", "127.0.0.1", "[::1]", "[", "[::1", "]", "", "h:"]),
                            st.text(max_size=6)),
                  st.sampled_from(["", ":1", ":993", ":99999", ":abc", ":", ":-1", ":0"]),
                  st.sampled_from(["", "/", "/dav/", "?x", "#y", "/[x"]))
_backend = st.fixed_dictionaries({"type": st.sampled_from([*BACKEND_TYPES, "pop3"]), "url": _urls},
                                 optional={"tls": st.sampled_from(["auto", "none", "implicit", "tls"]),
                                           "verify": _scalars, "timeout": _scalars})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_tables, st.fixed_dictionaries({}, optional={
    "server": st.dictionaries(st.sampled_from(_KNOWN[9:]), _values, max_size=3),
    "backends": st.dictionaries(_keys, st.one_of(_backend, st.dictionaries(
        st.sampled_from(["type", "url", "tls", "verify"]), _scalars, max_size=4)), max_size=3),
    "domains": st.dictionaries(_keys, st.dictionaries(st.sampled_from(["imap", "smtp", "aliases"]),
                                                      _values, max_size=3), max_size=2),
    "tls": st.dictionaries(st.sampled_from(["sni", "cert"]), _values, max_size=2),
    "state": st.dictionaries(st.sampled_from(["backend", "dsn", "path"]), _scalars, max_size=3),
    "availability": st.dictionaries(st.sampled_from(_KNOWN[-6:]), st.one_of(_values, st.sampled_from(
        ["08:00", "24:00", "²:00", "8:5", "Europe/Berlin", "x" * 300, "../etc", "Monday", "limited"])),
        max_size=3),
})))
def test_fuzz_loads_or_raises_config_error(data):
    try:
        cfg = from_dict(data)
    except ConfigError as exc:
        assert isinstance(exc.key, str)
        return
    assert isinstance(cfg, Config)
    for b in cfg.backends.values():  # derived values must work on anything that loaded
        assert isinstance(b.port, int) and b.tls_mode in ("implicit", "starttls", "none") and b.host

