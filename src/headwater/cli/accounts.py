"""`headwater keys` and `headwater users`: API keys and web users from the command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table as RichTable

from headwater.cli.audit import record_cli
from headwater.cli.options import ConfigOpt, DataDirOpt
from headwater.core.errors import HeadwaterError
from headwater.core.settings import Settings

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
users_app = typer.Typer(help="Create, list, change and delete web users.", no_args_is_help=True)


def _settings_from(config: Path | None, **flags: Any) -> Settings:
    from headwater.cli.main import settings_from

    return settings_from(config, **flags)


def _account_store(kind: str, config: Path | None, data_dir: Path | None) -> Any:
    from headwater.cli.main import account_store

    return account_store(kind, config, data_dir)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(users_app, name="users")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A name for the key; it becomes the events' `source`.")],
    role: Annotated[str, typer.Option(help="write (send events), read (query) or admin (both).")] = "write",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the key.")] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a key and print it (it is stored hashed and cannot be shown again)."""
    with _account_store("keys", config, data_dir) as store:
        key = store.create(name, role)
    record_cli(_settings_from(config, data_dir=data_dir), "key.created", name, {"role": role, "prefix": key[:9]})
    if quiet:
        sys.stdout.write(key + "\n")
    else:
        sys.stdout.write(f"created {role} key {name!r}:\n{key}\nStore it now: it cannot be shown again.\n")


@keys_app.command("list")
def keys_list(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """List keys (names, roles, prefixes; never the keys)."""
    table = RichTable("name", "role", "prefix", "created", "status")
    with _account_store("keys", config, data_dir) as store:
        for key in store.list():
            created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(key.created_ms / 1000))
            table.add_row(key.name, key.role, key.prefix + "…", created, "revoked" if key.revoked_ms else "active")
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(name: str, config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Revoke a key by name (takes effect within 2 seconds)."""
    with _account_store("keys", config, data_dir) as store:
        store.revoke(name)
    record_cli(_settings_from(config, data_dir=data_dir), "key.revoked", name)
    sys.stdout.write(f"revoked {name!r}\n")


def _ask_password() -> str:
    return str(typer.prompt("password", hide_input=True, confirmation_prompt=True))


@users_app.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="Sign-in name.")],
    role: Annotated[str, typer.Option(help="admin (everything), analyst (insights, SQL) or viewer (dashboards).")],
    password: Annotated[
        str | None, typer.Option(help="At least 10 characters (asked for when not given).", envvar="HEADWATER_PASSWORD")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a web user (passwords are stored as argon2 hashes)."""
    password = password if password is not None else _ask_password()
    with _account_store("users", config, data_dir) as store:
        user = store.create(name, role, password)
    record_cli(_settings_from(config, data_dir=data_dir), "user.created", user.name, {"role": user.role})
    sys.stdout.write(f"created {user.role} user {user.name!r}\n")


@users_app.command("list")
def users_list(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """List web users and their roles."""
    table = RichTable("name", "role")
    with _account_store("users", config, data_dir) as store:
        for user in store.list():
            table.add_row(user.name, user.role)
    Console().print(table)


@users_app.command("set-role")
def users_set_role(
    name: str,
    role: Annotated[str, typer.Argument(help="admin, analyst or viewer.")],
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Give a web user another role (the last admin keeps theirs)."""
    with _account_store("users", config, data_dir) as store:
        previous = store.set_role(name, role)
    if previous != role:
        record_cli(_settings_from(config, data_dir=data_dir), "user.role_changed", name, {"from": previous, "to": role})
    sys.stdout.write(f"{name!r}: {previous} -> {role}\n")


@users_app.command("set-password")
def users_set_password(
    name: str,
    password: Annotated[
        str | None, typer.Option(help="At least 10 characters (asked for when not given).", envvar="HEADWATER_PASSWORD")
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Set a web user's password and end their sessions."""
    password = password if password is not None else _ask_password()
    with _account_store("users", config, data_dir) as store:
        store.set_password(name, password)
    record_cli(_settings_from(config, data_dir=data_dir), "user.password_changed", name)
    sys.stdout.write(f"password of {name!r} changed; their sessions ended\n")


@users_app.command("delete")
def users_delete(name: str, config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Delete a web user and end their sessions."""
    with _account_store("users", config, data_dir) as store:
        store.delete(name)
    record_cli(_settings_from(config, data_dir=data_dir), "user.deleted", name)
    sys.stdout.write(f"deleted {name!r}\n")


def ensure_first_admin(settings: Settings) -> str | None:
    """On first run, create user `admin` with a random password; return the password (shown once)."""
    import secrets

    from headwater.auth.users import UserStore

    store = UserStore(settings.store_uri("users"))
    try:
        if store.count():
            return None
        password = secrets.token_urlsafe(12)
        try:
            store.create("admin", "admin", password)
        except HeadwaterError:  # another server sharing app_db_uri created it first
            return None
        record_cli(settings, "user.created", "admin", {"role": "admin", "by": "first run of up"})
        return password
    finally:
        store.close()
