"""Kaggle credential resolution (official order), validation and private installation."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle
import stat
from pathlib import Path

import pytest

from imgae_dx.errors import CredentialsError
from imgae_dx.streaming.credentials import (
    KaggleCredentials,
    Secret,
    find_credentials,
    install_credentials,
    parse_credentials_file,
    resolve_credentials,
)

KEY = "0123456789abcdef0123456789abcdef"
KEY2 = "fedcba9876543210fedcba9876543210"
TOKEN = "KGAT_tok3n0123456789abcdef"


def _json(path: Path, user: str = "alice", key: str = KEY, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"username": user, "key": key}))
    path.chmod(mode)
    return path


def _token(path: Path, token: str = TOKEN, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


def _home() -> Path:
    return Path(os.environ["HOME"])


# ------------------------------------------------------------------------------ resolution
def test_nothing_found_names_every_place_and_the_fix():
    assert find_credentials() is None
    with pytest.raises(CredentialsError) as e:
        resolve_credentials()
    msg = str(e.value)
    assert "KAGGLE_API_TOKEN" in msg and ".kaggle/kaggle.json" in msg and "setup-kaggle" in msg


def test_official_order_each_source_shadows_the_later_ones(tmp_path, monkeypatch):
    cfg = tmp_path / "cfgdir"
    xdg = Path(os.environ["XDG_CONFIG_HOME"]) / "kaggle" / "kaggle.json"
    _json(xdg, user="xdg-user")
    assert find_credentials().path == xdg

    _json(_home() / ".kaggle" / "kaggle.json", user="home-user")
    assert find_credentials().username == "home-user"

    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    _json(cfg / "kaggle.json", user="cfg-user")
    assert find_credentials().username == "cfg-user"

    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    monkeypatch.setenv("KAGGLE_KEY", KEY2)
    c = find_credentials()
    assert (c.kind, c.username, c.secret.reveal()) == ("key", "env-user", KEY2)
    assert "KAGGLE_USERNAME" in c.source

    _token(_home() / ".kaggle" / "access_token")
    c = find_credentials()
    assert c.kind == "token" and c.path == _home() / ".kaggle" / "access_token"

    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_from_env")
    c = find_credentials()
    assert c.kind == "token" and c.secret.reveal() == "KGAT_from_env" and c.source == "environment variable KAGGLE_API_TOKEN"


def test_api_token_env_may_name_a_file(tmp_path, monkeypatch):
    f = _token(tmp_path / "tok.txt", "KGAT_in_file")
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(f))
    c = find_credentials()
    assert c.secret.reveal() == "KGAT_in_file" and c.path == f
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(tmp_path / "missing.txt"))
    with pytest.raises(CredentialsError, match="does not exist"):
        find_credentials()


def test_half_set_env_is_ignored_with_a_warning(caplog, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "only-user")
    with caplog.at_level(logging.WARNING):
        assert find_credentials() is None
    assert "KAGGLE_KEY" in caplog.text
    with pytest.raises(CredentialsError, match="must both be set"):
        resolve_credentials()
    _json(_home() / ".kaggle" / "kaggle.json")
    assert find_credentials().username == "alice"


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"username": "alice", "key": ', "not valid JSON"),
        ('{"username": "alice"}', "lacks the field"),
        ('{"key": "' + KEY + '"}', "lacks the field"),
        ('{"username": "alice", "key": ""}', "'key' is empty"),
        ('{"username": "alice", "key": "   "}', "'key' is empty"),
        ('{"username": "", "key": "' + KEY + '"}', "'username' is empty"),
        ('["alice", "' + KEY + '"]', "JSON object"),
    ],
)
def test_bad_kaggle_json_is_named_and_the_key_never_shown(tmp_path, content, match):
    f = tmp_path / "kaggle.json"
    f.write_text(content)
    with pytest.raises(CredentialsError, match=match) as e:
        parse_credentials_file(f)
    assert str(f) in str(e.value)
    assert KEY not in str(e.value)


def test_bad_json_error_does_not_echo_the_document(tmp_path):
    f = tmp_path / "kaggle.json"
    f.write_text('{"username": "alice", "key": "' + KEY + '" oops}')
    with pytest.raises(CredentialsError) as e:
        parse_credentials_file(f)
    assert KEY not in str(e.value) and "line 1" in str(e.value)


def test_empty_token_file_and_token_with_spaces(tmp_path):
    with pytest.raises(CredentialsError, match="empty"):
        parse_credentials_file(_token(tmp_path / "access_token", ""))
    with pytest.raises(CredentialsError, match="spaces"):
        parse_credentials_file(_token(tmp_path / "t2", "abc def"))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CredentialsError, match="does not exist"):
        parse_credentials_file(tmp_path / "nope.json")
    with pytest.raises(CredentialsError, match="folder"):
        parse_credentials_file(tmp_path)


def test_broken_first_source_is_an_error_not_skipped():
    f = _home() / ".kaggle" / "kaggle.json"
    f.parent.mkdir(parents=True)
    f.write_text("{not json")
    _json(Path(os.environ["XDG_CONFIG_HOME"]) / "kaggle" / "kaggle.json")
    with pytest.raises(CredentialsError, match=str(f)):
        find_credentials()


def test_world_readable_file_is_used_with_a_warning(caplog):
    f = _json(_home() / ".kaggle" / "kaggle.json", mode=0o644)
    with caplog.at_level(logging.WARNING):
        c = find_credentials()
    assert c.username == "alice"
    assert c.warnings and "chmod 600" in c.warnings[0] and str(f) in c.warnings[0]
    assert "readable by other users" in caplog.text and KEY not in caplog.text


# ---------------------------------------------------------------------------------- secrecy
def test_secret_never_in_repr_str_format_or_pickle():
    c = KaggleCredentials.from_key("alice", KEY, source="test")
    for text in (repr(c), str(c), f"{c}", c.describe(), repr(c.secret), str(c.secret), f"{c.secret}"):
        assert KEY not in text
    assert c.client_kwargs() == {"username": "alice", "password": KEY}
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(c)
    assert copy.deepcopy(c).secret.reveal() == KEY
    t = KaggleCredentials.from_token(TOKEN)
    assert TOKEN not in repr(t) and t.client_kwargs() == {"api_token": TOKEN}
    assert Secret("x") == Secret("x") and Secret("x") != Secret("y")


# ----------------------------------------------------------------------------------- install
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_install_kaggle_json_private_and_active(tmp_path):
    src = _json(tmp_path / "dl" / "kaggle.json", mode=0o644)
    r = install_credentials(src)
    dest = _home() / ".kaggle" / "kaggle.json"
    assert r.path == dest and r.kind == "key" and r.username == "alice"
    assert _mode(dest) == 0o600 and _mode(dest.parent) == 0o700
    assert json.loads(dest.read_text()) == {"username": "alice", "key": KEY}
    assert not r.shadowed and r.active.path == dest and "will be used" in r.note
    assert any("chmod 600" in w for w in r.warnings)  # the *source* was world-readable
    assert KEY not in r.note and KEY not in repr(r)
    assert [p.name for p in dest.parent.iterdir()] == ["kaggle.json"]  # no temp file left


def test_install_token_into_config_dir_and_tighten_folder(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg"
    cfg.mkdir(mode=0o755)
    cfg.chmod(0o755)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    r = install_credentials(_token(tmp_path / "my_token.txt"))
    assert r.path == cfg / "access_token" and r.kind == "token"
    assert _mode(r.path) == 0o600 and _mode(cfg) == 0o700
    assert any("tightened" in w for w in r.warnings)
    assert not r.shadowed and r.active.kind == "token"


def test_install_reports_that_env_vars_win(tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "env-user")
    monkeypatch.setenv("KAGGLE_KEY", KEY2)
    r = install_credentials(_json(tmp_path / "kaggle.json"))
    assert r.shadowed and r.active.username == "env-user"
    assert "KAGGLE_USERNAME" in r.note and "takes precedence" in r.note
    assert KEY2 not in r.note and KEY not in r.note


def test_install_elsewhere_says_it_will_not_be_found(tmp_path):
    r = install_credentials(_json(tmp_path / "kaggle.json"), dest_dir=tmp_path / "custom")
    assert r.path == tmp_path / "custom" / "kaggle.json" and r.active is None and r.shadowed
    assert "KAGGLE_CONFIG_DIR" in r.note


def test_install_overwrites_atomically_and_rejects_invalid_without_touching(tmp_path):
    install_credentials(_json(tmp_path / "a.json", key=KEY))
    dest = _home() / ".kaggle" / "kaggle.json"
    bad = tmp_path / "bad.json"
    bad.write_text('{"username": "alice", "key": ""}')
    with pytest.raises(CredentialsError):
        install_credentials(bad)
    assert json.loads(dest.read_text())["key"] == KEY  # the good one survived
    install_credentials(_json(tmp_path / "b.json", key=KEY2))
    assert json.loads(dest.read_text())["key"] == KEY2 and _mode(dest) == 0o600


def test_install_in_place_fixes_mode():
    f = _json(_home() / ".kaggle" / "kaggle.json", mode=0o644)
    r = install_credentials(f)
    assert r.path == f and _mode(f) == 0o600 and not r.shadowed
