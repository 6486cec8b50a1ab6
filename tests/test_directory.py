"""The static directory: finding users by address, login and alias, domain aliases, routing, users-file errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, from_dict
from gateway.services.directory import StaticDirectory, parse_users


def _config(base_dir: str = ".", **extra):
    return from_dict({
        "backends": {
            "mail": {"type": "imap", "url": "imaps://mail.example.test"},
            "mail2": {"type": "imap", "url": "imaps://mail2.example.test"},
            "dav": {"type": "caldav", "url": "https://dav.example.test/"},
            "cards": {"type": "carddav", "url": "https://dav.example.test/"},
            "out": {"type": "smtp", "url": "smtp://mail.example.test"},
            "exchange": {"type": "ews", "url": "https://exchange.example.test/EWS/Exchange.asmx"},
        },
        "domains": {
            "example.test": {"imap": "mail", "caldav": "dav", "smtp": "out",
                             "aliases": ["example.org", "Example.NET"]},
            "ews.test": {"ews": "exchange"},
            "bare.test": {},
        },
        **extra,
    }, base_dir=base_dir)


USERS = {"user": [
    {"address": "Alice@Example.test", "name": "Alice Liddell", "aliases": ["al@example.test", "a.liddell@example.test"]},
    {"address": "bob@example.test", "login": "bob.builder"},
    {"address": "carol@example.test", "imap": "mail2", "carddav": "cards"},
    {"address": "dave@ews.test"},
    {"address": "erin@bare.test", "imap": "mail"},
]}


@pytest.fixture
def directory() -> StaticDirectory:
    cfg = _config()
    return StaticDirectory(cfg, parse_users(cfg, USERS))


def _parse_error(data: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_users(_config(), data, "users.toml")
    return info.value


# --- lookups ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "address"), [
    ("alice@example.test", "alice@example.test"),
    ("ALICE@EXAMPLE.TEST", "alice@example.test"),
    ("  alice@example.test \t", "alice@example.test"),
    ("al@example.test", "alice@example.test"),
    ("A.Liddell@Example.Test", "alice@example.test"),
    ("bob.builder", "bob@example.test"),
    ("BOB.Builder", "bob@example.test"),
    ("bob@example.test", "bob@example.test"),
    ("carol@example.test", "carol@example.test"),
    ("dave@ews.test", "dave@ews.test"),
])
def test_find_by_address_login_alias_any_case(directory, name, address):
    user = directory.find(name)
    assert user is not None and user.address == address


@pytest.mark.parametrize("name", ["nobody@example.test", "alice", "alice@example.com", "", "@example.test",
                                  "bob.builder@example.test", "alice@example"])
def test_find_unknown_is_none(directory, name):
    assert directory.find(name) is None


async def test_lookup_is_the_async_form_of_find(directory):
    user = await directory.lookup("AL@example.test")
    assert user is not None and user.address == "alice@example.test"
    assert await directory.lookup("nobody@example.test") is None


@pytest.mark.parametrize(("name", "address"), [
    ("bob@example.org", "bob@example.test"),
    ("BOB@EXAMPLE.ORG", "bob@example.test"),
    ("alice@example.net", "alice@example.test"),  # alias declared in mixed case
    ("al@example.org", "alice@example.test"),  # a user alias on an alias domain
])
def test_domain_aliases_resolve(directory, name, address):
    user = directory.find(name)
    assert user is not None and user.address == address


def test_domain_alias_does_not_leak_to_other_domains(directory):
    assert directory.find("dave@example.org") is None
    assert directory.find("bob@ews.test") is None


def test_is_local_domain(directory):
    for d in ("example.test", "EXAMPLE.TEST", "example.org", "example.net", "ews.test"):
        assert directory.is_local_domain(d), d
    assert not directory.is_local_domain("example.com")


def test_record_fields(directory):
    alice = directory.find("alice@example.test")
    assert alice.display_name == "Alice Liddell"
    assert alice.domain == "example.test"
    assert alice.login == "alice@example.test"  # login defaults to the address
    assert alice.aliases == ("al@example.test", "a.liddell@example.test")
    bob = directory.find("bob@example.test")
    assert bob.login == "bob.builder"
    assert bob.display_name == "Bob"  # derived from the local part when no name is given


async def test_all_users_in_file_order(directory):
    addresses = [u.address for u in directory.all_users()]
    assert addresses == ["alice@example.test", "bob@example.test", "carol@example.test", "dave@ews.test",
                         "erin@bare.test"]
    assert [u.address async for u in directory.users()] == addresses


# --- routing ----------------------------------------------------------------------------------------------


def test_domain_defaults_fill_in(directory):
    bob = directory.find("bob@example.test")
    assert bob.backends == {"imap": "mail", "caldav": "dav", "smtp": "out"}
    assert directory.route(bob, "imap") == "mail"
    assert directory.route(bob, "carddav") is None
    assert directory.route(bob, "ews") is None


def test_per_user_override_beats_domain_default(directory):
    carol = directory.find("carol@example.test")
    assert directory.route(carol, "imap") == "mail2"
    assert directory.route(carol, "carddav") == "cards"
    assert directory.route(carol, "caldav") == "dav"  # not overridden: still the domain's


def test_ews_alone_is_a_mail_backend(directory):
    dave = directory.find("dave@ews.test")
    assert dave.backends == {"ews": "exchange"}


def test_user_on_domain_without_defaults_needs_own_backend(directory):
    assert directory.find("erin@bare.test").backends == {"imap": "mail"}
    err = _parse_error({"user": [{"address": "frank@bare.test"}]})
    assert err.key == "users.toml: user[0]"
    assert "no mail back end" in str(err)


def test_user_on_undeclared_domain_needs_own_backend():
    err = _parse_error({"user": [{"address": "x@elsewhere.test"}]})
    assert "no mail back end" in str(err)
    ok = parse_users(_config(), {"user": [{"address": "x@elsewhere.test", "imap": "mail"}]})
    assert ok[0].backends == {"imap": "mail"}


def test_empty_users_file_is_no_users():
    assert parse_users(_config(), {}) == []


# --- users-file errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("users", "key", "words"), [
    ([{"address": "a@example.test"}, {"address": "A@example.test"}], "users.toml: user[1]", "listed twice"),
    ([{"address": "a@example.test"}, {"address": "b@example.test", "login": "a@example.test"}],
     "users.toml: user[1]", "listed twice"),
    ([{"address": "a@example.test", "aliases": ["x@example.test"]},
      {"address": "b@example.test", "aliases": ["X@example.test"]}], "users.toml: user[1]", "listed twice"),
    ([{"address": "a@example.test", "login": "same"}, {"address": "b@example.test", "login": "SAME"}],
     "users.toml: user[1]", "listed twice"),
    ([{"address": "a@example.test"}, {"address": "b@example.test", "aliases": ["a@example.test"]}],
     "users.toml: user[1]", "listed twice"),
    ([{"address": "no-at-sign"}], "users.toml: user[0].address", "e-mail address"),
    ([{"address": "a@b@example.test"}], "users.toml: user[0].address", "e-mail address"),
    ([{"address": "@example.test"}], "users.toml: user[0].address", "e-mail address"),
    ([{"address": "a@"}], "users.toml: user[0].address", "e-mail address"),
    ([{"address": 5}], "users.toml: user[0].address", "e-mail address"),
    ([{"name": "No Address"}], "users.toml: user[0].address", "e-mail address"),
    ([{"address": "a@example.test", "mail": "mail"}], "users.toml: user[0].mail", "unknown setting"),
    ([{"address": "a@example.test", "name": 3}], "users.toml: user[0].name", "string"),
    ([{"address": "a@example.test", "login": ["a"]}], "users.toml: user[0].login", "string"),
    ([{"address": "a@example.test", "aliases": "x@example.test"}], "users.toml: user[0].aliases", "list"),
    ([{"address": "a@example.test", "aliases": ["not-an-address"]}], "users.toml: user[0].aliases", "e-mail"),
    ([{"address": "a@example.test", "imap": "nosuch"}], "users.toml: user[0].imap", "not defined"),
    ([{"address": "a@example.test", "imap": "dav"}], "users.toml: user[0].imap", "not of type imap"),
    ([{"address": "a@example.test", "caldav": "cards"}], "users.toml: user[0].caldav", "not of type caldav"),
    ([{"address": "a@example.test", "smtp": 25}], "users.toml: user[0].smtp", "string"),
    (["a@example.test"], "users.toml: user[0]", "table"),
])
def test_users_file_errors_name_the_entry(users, key, words):
    err = _parse_error({"user": users})
    assert err.key == key
    assert words in str(err)


def test_unknown_top_level_table():
    err = _parse_error({"user": [], "users": []})
    assert err.key == "users.toml: users"
    assert "unknown table" in str(err)


def test_user_must_be_array_of_tables():
    err = _parse_error({"user": {"address": "a@example.test"}})
    assert err.key == "users.toml: user"


def test_one_login_that_equals_the_address_is_not_a_duplicate():
    users = parse_users(_config(), {"user": [{"address": "a@example.test", "login": "A@Example.Test"},
                                             {"address": "b@example.test", "aliases": ["b@example.test"]}]})
    assert [u.address for u in users] == ["a@example.test", "b@example.test"]


# --- from_config ------------------------------------------------------------------------------------------


def test_from_config_reads_users_file_next_to_config(tmp_path: Path):
    (tmp_path / "people.toml").write_text(
        '[[user]]\naddress = "alice@example.test"\nname = "Alice"\naliases = ["al@example.test"]\n\n'
        '[[user]]\naddress = "bob@example.test"\nimap = "mail2"\n')
    cfg = _config(str(tmp_path), directory={"users_file": "people.toml"})
    d = StaticDirectory.from_config(cfg)
    assert d.find("al@example.org").address == "alice@example.test"
    assert d.route(d.find("bob@example.test"), "imap") == "mail2"


def test_from_config_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        StaticDirectory.from_config(_config(str(tmp_path)))
    assert info.value.key == "directory.users_file"
    assert "does not exist" in str(info.value)
    assert str(tmp_path / "users.toml") in str(info.value)


def test_from_config_bad_toml(tmp_path: Path):
    (tmp_path / "users.toml").write_text('[[user]\naddress = "a@example.test"\n')
    with pytest.raises(ConfigError) as info:
        StaticDirectory.from_config(_config(str(tmp_path)))
    assert info.value.key == "directory.users_file"
    assert "not valid TOML" in str(info.value)


def test_from_config_non_utf8(tmp_path: Path):
    (tmp_path / "users.toml").write_bytes(b'[[user]]\naddress = "\xff@example.test"\n')
    with pytest.raises(ConfigError) as info:
        StaticDirectory.from_config(_config(str(tmp_path)))
    assert info.value.key == "directory.users_file"


def test_from_config_bad_entry_names_the_file(tmp_path: Path):
    (tmp_path / "users.toml").write_text('[[user]]\naddress = "a@example.test"\nimap = "nosuch"\n')
    with pytest.raises(ConfigError) as info:
        StaticDirectory.from_config(_config(str(tmp_path)))
    assert info.value.key == f"{tmp_path / 'users.toml'}: user[0].imap"
