"""The Plan page in a real browser: an empty state before any plan; then an analyst browses the active version's
events and their properties (types, required, personal data) with the sources sending them and their volumes,
compares two versions, and reads the catalog (planned / seen but not planned); an admin activates a version for
one source from the page; an analyst cannot."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from headwater.auth.users import UserStore
from headwater.plan.load import read_files
from tests.browser.test_web import PASSWORD, shot, sign_in
from tests.helpers import ROOT, RunningHeadwater, child_env, make_keys, serving

EXAMPLE = ROOT / "examples" / "plan"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    """`headwater up` with `root` (admin) and `ana` (analyst), and events imported before it starts."""
    data_dir = tmp_path_factory.mktemp("web-plan")
    keys = make_keys(data_dir)
    users = UserStore(data_dir / "users.db")
    users.create("root", "admin", PASSWORD)
    users.create("ana", "analyst", PASSWORD)
    users.close()
    seen = {"web": [("Product Viewed", 6), ("Signed Up", 2), ("Cart Abandoned", 3)], "ios": [("Product Viewed", 4)]}
    for source, counts in seen.items():
        path = data_dir / f"{source}.ndjson"
        rows = [{"event": e, "userId": f"u{i}", "product_id": "ABC-123"} for e, n in counts for i in range(n)]
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        command = [sys.executable, "-m", "headwater.cli.main", "import", str(path), "--source", source]
        subprocess.run([*command, "--data-dir", str(data_dir)], check=True, capture_output=True, timeout=300)
    with serving(RunningHeadwater(data_dir, child_env(data_dir, flush_interval_ms=200), keys=keys)) as hw:
        yield hw


def publish(app: RunningHeadwater, version: str, edit: Any = None, activate: str | None = None) -> None:
    files = read_files(EXAMPLE)
    files["plan.json"] = files["plan.json"].replace('"1-0-0"', f'"{version}"')
    if edit is not None:
        order = json.loads(files["events/order_completed.json"])
        edit(order)
        files["events/order_completed.json"] = json.dumps(order)
    body = {"files": files, **({"activate": activate} if activate else {})}
    answer = httpx.post(app.url + "/api/plans", json=body, headers={"Authorization": f"Bearer {app.keys['admin']}"})
    assert answer.status_code == 201, answer.text


def open_plan(page: Page, app: RunningHeadwater, user: str) -> None:
    sign_in(page, app.url, user)
    page.click("#nav a[href='#/plan']")


def test_plan_page_from_empty_to_browsing_diffing_and_the_catalog(app: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    open_plan(page, app, "ana")
    expect(page.locator("#plan-empty")).to_contain_text("headwater plan push")

    publish(app, "1-0-0", activate="*")
    publish(app, "2-0-0", lambda d: d["properties"].pop("email"))
    page.reload()
    expect(page.locator("#plan-active")).to_contain_text("every source → shop@1-0-0")
    rows = page.locator("#plan-events tr.plan-event")
    expect(rows).to_have_count(4)
    viewed = page.locator("#plan-events tr.plan-event[data-event='Product Viewed']")
    expect(viewed).to_contain_text("web, ios", timeout=15_000)  # from the catalog: the sources sending it
    expect(viewed).to_contain_text("10")
    order = page.locator("#plan-events tr.plan-event[data-event='Order Completed']")
    expect(order).to_contain_text("quarantine")
    expect(order).to_contain_text("not seen")
    order.click()
    email = page.locator("#plan-events table.plan-properties tr[data-path='email']")
    expect(email).to_be_visible()
    expect(email).to_contain_text("personal: hash")
    expect(email).to_contain_text("string")
    expect(page.locator("#plan-events table.plan-properties tr[data-path='revenue']")).to_contain_text("required")
    expect(page.locator("#plan-events table.plan-properties tr[data-path='products[].product_id']")).to_be_visible()
    expect(page.locator("#plan-activate")).to_have_count(0)  # analysts browse; admins activate

    page.select_option("select[name=plan-diff-a]", "shop@1-0-0")
    page.select_option("select[name=plan-diff-b]", "shop@2-0-0")
    page.click("#plan-compare")
    change = page.locator("#plan-diff tr[data-level='MODEL']")
    expect(change).to_contain_text("$.properties.email")
    expect(change).to_contain_text("property removed")
    expect(page.locator("#plan-diff-verdict")).to_contain_text("needs version 2-0-0 or later")

    expect(page.locator("#plan-catalog-unplanned tr[data-event='Cart Abandoned']")).to_contain_text("3")
    expect(page.locator("#plan-catalog-planned tr[data-event='Order Completed']")).to_contain_text("planned, not seen")
    expect(page.locator("#plan-catalog-planned tr[data-event='Signed Up']")).to_have_attribute("data-status", "planned")
    shot(page, "plan")
    context.close()


def test_an_admin_activates_a_version_for_one_source(app: RunningHeadwater, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    open_plan(page, app, "root")
    expect(page.locator("#plan-active")).to_contain_text("shop@1-0-0")
    page.select_option("select[name=plan-version]", "shop@2-0-0")
    expect(page.locator("#plan-events")).to_contain_text("shop@2-0-0")
    page.fill("input[name=plan-source]", "ios")
    page.click("#plan-activate")
    expect(page.locator("#plan-active")).to_contain_text("ios → shop@2-0-0")
    expect(page.locator("#plan-active")).to_contain_text("every source → shop@1-0-0")
    admin = {"Authorization": f"Bearer {app.keys['admin']}"}
    rows = httpx.get(app.url + "/api/audit?action=plan", headers=admin).json()["rows"]
    assert (rows[0]["actor"], rows[0]["actor_kind"], rows[0]["details"]["source"]) == ("root", "user", "ios")
    context.close()
