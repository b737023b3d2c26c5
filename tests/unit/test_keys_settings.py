from __future__ import annotations

import time
from pathlib import Path

import pytest

from headwater.auth.keys import KeyStore
from headwater.core.errors import AuthError, ConfigError
from headwater.core.settings import load_settings


def test_roles_and_statuses(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db", cache_s=0)
    write, read, admin = (store.create(n, n) for n in ("write", "read", "admin"))
    assert store.require(write, write=True).name == "write"
    assert store.require(admin, write=True).name == store.require(admin, read=True).name == "admin"
    for key, kwargs, status in [
        (None, {"write": True}, 401),
        ("hw_w_nope", {"write": True}, 401),
        (read, {"write": True}, 403),
        (write, {"read": True}, 403),
    ]:
        with pytest.raises(AuthError) as info:
            store.require(key, **kwargs)
        assert info.value.status == status
    store.revoke("write")
    with pytest.raises(AuthError):
        store.require(write, write=True)
    assert [k.name for k in store.list()] == ["write", "read", "admin"]
    assert all(k.prefix and k.prefix in key for k, key in zip(store.list()[1:], (read, admin), strict=True))


def test_lookup_cache_expires_so_revocation_takes_effect(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.db", cache_s=0.2)
    other = KeyStore(tmp_path / "keys.db")  # another process revoking
    key = store.create("k", "write")
    store.require(key, write=True)
    other.revoke("k")
    store.require(key, write=True)  # still cached
    time.sleep(0.25)
    with pytest.raises(AuthError):
        store.require(key, write=True)


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HEADWATER_PORT", "HEADWATER_HOST", "HEADWATER_QUERY_MAX_ROWS", "HEADWATER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "headwater.toml"
    config.write_text('port = 7000\nhost = "0.0.0.0"\nquery_max_rows = 5\n')
    assert load_settings(config).port == 7000
    monkeypatch.setenv("HEADWATER_PORT", "7100")
    settings = load_settings(config)
    assert (settings.port, settings.host, settings.query_max_rows) == (7100, "0.0.0.0", 5)
    assert load_settings(config, port=7200, host=None).port == 7200  # flags win; None means "not given"
    with pytest.raises(ConfigError, match="port"):
        load_settings(config, port=70000)
    config.write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigError, match="no_such_setting"):
        load_settings(config)


def test_users_passwords_sessions_and_roles(tmp_path: Path) -> None:
    from headwater.auth.users import UserStore

    store = UserStore(tmp_path / "users.db", session_hours=1)
    store.create("ana", "analyst", "correct horse battery")
    with pytest.raises(AuthError, match="password"):
        store.create("bob", "viewer", "short")
    with pytest.raises(AuthError, match="role"):
        store.create("bob", "root", "long enough password")
    with pytest.raises(AuthError) as info:
        store.create("ana", "viewer", "another long password")
    assert info.value.status == 409
    assert b"correct horse" not in (tmp_path / "users.db").read_bytes()
    for name, password in (("ana", "wrong password!"), ("nobody", "correct horse battery")):
        with pytest.raises(AuthError) as info:
            store.login(name, password)
        assert info.value.status == 401
    token, session = store.login("ana", "correct horse battery")
    assert session.user.permissions == {"view", "analyze", "sql"}
    found = store.session(token)
    assert found is not None and found.csrf == session.csrf
    assert store.session("forged") is None
    store.logout(token)
    assert store.session(token) is None
    expired = UserStore(tmp_path / "users.db", session_hours=-1 / 3600)
    stale, _ = expired.login("ana", "correct horse battery")
    assert store.session(stale) is None  # past its expiry
    store.delete("ana")
    assert store.list() == []


def test_dedupe_window_must_cover_the_lateness_bound(tmp_path: Path) -> None:
    from headwater.core.errors import ConfigError

    with pytest.raises(ConfigError, match="lateness_bound_hours"):
        load_settings(None, data_dir=tmp_path, dedupe_window_hours=24)
    assert load_settings(None, data_dir=tmp_path, dedupe_window_hours=0).dedupe_window_hours == 0
    kept = load_settings(None, data_dir=tmp_path, dedupe_window_hours=24, lateness_bound_hours=12)
    assert kept.dedupe_window_hours == 24
