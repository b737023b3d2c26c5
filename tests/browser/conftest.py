"""One Chromium per browser test module (Debian's chromium, flags from DESIGN.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright

from headwater.auth.users import UserStore
from tests.browser.test_web import CHROMIUM, FLAGS, PASSWORD
from tests.helpers import RunningHeadwater, child_env, make_keys, serving


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def admin_and_analyst_app(
    tmp_path_factory: pytest.TempPathFactory, name: str, **settings: Any
) -> Iterator[RunningHeadwater]:
    """`headwater up` with keys and two web users, `root` (admin) and `ana` (analyst), for a module's pages."""
    data_dir = tmp_path_factory.mktemp(name)
    keys = make_keys(data_dir)
    users = UserStore(data_dir / "users.db")
    users.create("root", "admin", PASSWORD)
    users.create("ana", "analyst", PASSWORD)
    users.close()
    with serving(RunningHeadwater(data_dir, child_env(data_dir, flush_interval_ms=200, **settings), keys=keys)) as hw:
        yield hw
