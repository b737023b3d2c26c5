"""Enrichments end to end: events posted over HTTP to `headwater up`, enriched by the lake writer's stages, read
back with SQL — and the same with every enrichment switched off."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.helpers import RunningHeadwater, child_env, make_keys
from tests.unit.test_enrich_ip import build_mmdb
from tests.unit.test_enrich_sessions import sid

CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 "
    "Mobile Safari/537.36"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
SAFARI_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 "
    "Safari/605.1.15"
)
T0 = datetime(2025, 3, 1, 12, 0, 0)  # the session helpers' T0
FUNCTION = '''
import pyarrow.compute as pc


def landing(events):
    """Whether the page URL is the home page: a user enrichment over the batch."""
    return events.append_column("is_home", pc.match_substring_regex(events["_url"], r"^https?://[^/]+/?(\\?|$)"))
'''
ENRICHED = ["browser", "browser_version", "os", "os_version", "device_type", "is_bot", "bot_reason", "country",
            "region", "city", "ip", "channel", "referrer_domain", "utm_source", "utm_medium", "utm_campaign",
            "utm_term", "utm_content", "click_id", "session_id"]  # fmt: skip


def start(tmp_path_factory: pytest.TempPathFactory, **settings: Any) -> RunningHeadwater:
    data_dir = tmp_path_factory.mktemp("hw")
    keys = make_keys(data_dir)
    env = child_env(data_dir, flush_interval_ms=200, **settings)
    return RunningHeadwater(data_dir, env, keys=keys).start()


@pytest.fixture(scope="module")
def enriched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    files = tmp_path_factory.mktemp("files")
    mmdb = build_mmdb(files / "city.mmdb")
    function = files / "site_enrichments.py"
    function.write_text(textwrap.dedent(FUNCTION))
    running = start(
        tmp_path_factory,
        enrich_geoip_database=mmdb,
        enrich_functions=json.dumps([f"{function}:landing"]),
    )
    yield running
    running.stop()


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat() + "Z"


def page(anonymous: str, minutes: float, url: str, referrer: str | None, agent: str, ip: str, **extra: Any) -> dict:
    context: dict[str, Any] = {"page": {"url": url, "referrer": referrer}, "userAgent": agent, "ip": ip}
    return {"type": "page", "anonymousId": anonymous, "timestamp": at(minutes), "context": context,
            "messageId": f"{anonymous}-{minutes}", **extra}  # fmt: skip


def post_batch(running: RunningHeadwater, calls: list[dict[str, Any]], **headers: str) -> None:
    body = {"writeKey": running.keys["write"], "batch": calls}
    response = httpx.post(f"{running.url}/v1/batch", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text


def rows(running: RunningHeadwater, where: str, columns: list[str], count: int) -> list[dict[str, Any]]:
    running.wait_rows(f"SELECT count(*) FROM events WHERE {where}", [[count]])
    found = running.sql(f"SELECT {', '.join(columns)} FROM events WHERE {where} ORDER BY timestamp, event_id")
    return [dict(zip(columns, row, strict=True)) for row in found]


def test_a_visit_is_enriched(enriched: RunningHeadwater) -> None:
    url = "https://shop.example/?utm_source=google&utm_medium=cpc&utm_campaign=spring&gclid=Cj0KCQ"
    calls = [
        page("visitor-1", 0, url, "https://www.google.com/", CHROME_ANDROID, "81.2.69.160"),
        page("visitor-1", 10, "https://shop.example/p/1", url, CHROME_ANDROID, "81.2.69.160"),
        {"type": "identify", "anonymousId": "visitor-1", "userId": "u-1", "timestamp": at(12),
         "context": {"userAgent": CHROME_ANDROID, "ip": "81.2.69.160"}},
        page("visitor-1", 50, "https://shop.example/p/2", None, CHROME_ANDROID, "2001:db8:1::7"),  # a new session
        page("crawler", 1, "https://shop.example/", None, GOOGLEBOT, "89.160.20.112"),
    ]  # fmt: skip
    post_batch(enriched, calls)
    columns = ["anonymous_id", "type", *ENRICHED, "is_home", "context->>'ip'"]
    got = rows(enriched, "anonymous_id IN ('visitor-1', 'crawler')", columns, 5)
    first, crawler, second, identify, later = got
    assert first["anonymous_id"] == "visitor-1" and crawler["anonymous_id"] == "crawler"
    assert (first["browser"], first["browser_version"], first["os"], first["os_version"], first["device_type"]) == (
        "Chrome Mobile", "120.0", "Android", "14", "mobile",
    )  # fmt: skip
    assert (first["country"], first["region"], first["city"]) == ("GB", "England", "London")
    assert first["ip"] == "81.2.69.0" and first["context->>'ip'"] == "81.2.69.0"
    assert (first["channel"], first["referrer_domain"], first["utm_source"], first["utm_medium"]) == (
        "paid", "google.com", "google", "cpc",
    )  # fmt: skip
    assert (first["utm_campaign"], first["click_id"], first["is_bot"], first["is_home"]) == (
        "spring", "gclid:Cj0KCQ", False, True,
    )  # fmt: skip
    assert second["channel"] == "internal" and second["is_home"] is False
    assert identify["type"] == "identify" and identify["channel"] is None and identify["device_type"] == "mobile"
    assert first["session_id"] == second["session_id"] == identify["session_id"] == sid("visitor-1", 0)
    assert later["session_id"] == sid("visitor-1", 50)
    assert (later["country"], later["city"], later["ip"]) == ("FR", "Paris", "2001:db8:1::")
    assert later["context->>'ip'"] == "2001:db8:1::" and later["channel"] == "direct"
    assert (crawler["is_bot"], crawler["bot_reason"], crawler["device_type"]) == (
        True, "crawler-user-agents: Googlebot\\/", "bot",
    )  # fmt: skip
    assert (crawler["country"], crawler["city"]) == ("SE", "Linköping")


def test_browser_request_headers_and_filters(enriched: RunningHeadwater) -> None:
    """Without context.userAgent/ip, a browser request's User-Agent header and client address are used; the new
    columns filter and group in SQL like any other."""
    call = {"type": "track", "event": "Clicked", "anonymousId": "visitor-2", "timestamp": at(3),
            "properties": {"button": "buy"}}  # fmt: skip
    post_batch(enriched, [call], **{"User-Agent": SAFARI_MAC, "Origin": "https://shop.example"})
    got = rows(enriched, "anonymous_id = 'visitor-2'", ["browser", "os", "device_type", "ip", "is_bot"], 1)
    assert got == [
        {"browser": "Safari", "os": "Mac OS X", "device_type": "desktop", "ip": "127.0.0.0", "is_bot": False}
    ]
    grouped = enriched.sql(
        "SELECT device_type, count(*) FROM events WHERE is_bot = false AND anonymous_id LIKE 'visitor-%' "
        "GROUP BY device_type ORDER BY device_type"
    )
    assert grouped == [["desktop", 1], ["mobile", 4]]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    running = start(
        tmp_path_factory,
        enrich_user_agent="false",
        enrich_bots="false",
        enrich_referrer="false",
        enrich_sessions="false",
        enrich_ip="drop",
    )
    yield running
    running.stop()


def test_every_enrichment_off(plain: RunningHeadwater) -> None:
    call = page("visitor-3", 0, "https://shop.example/?utm_source=x", "https://t.co/a", GOOGLEBOT, "81.2.69.160")
    post_batch(plain, [call])
    plain.wait_rows("SELECT count(*) FROM events WHERE anonymous_id = 'visitor-3'", [[1]])
    response = httpx.post(
        plain.url + "/api/query",
        json={"sql": "SELECT * FROM events WHERE anonymous_id = 'visitor-3'"},
        headers={"Authorization": f"Bearer {plain.keys['read']}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    names = [c if isinstance(c, str) else c["name"] for c in answer["columns"]]
    row = dict(zip(names, answer["rows"][0], strict=True))
    assert {c: row.get(c) for c in ENRICHED} == dict.fromkeys(ENRICHED)  # the view's columns, never written
    assert "ip" not in json.loads(row["context"])
    assert "81.2.69" not in json.dumps(answer)
    assert "off: user agent (enrich_user_agent = false); bots" in logs(plain)


def logs(running: RunningHeadwater) -> str:
    return "\n".join(p.read_text(errors="replace") for p in running.data_dir.rglob("*.log"))
