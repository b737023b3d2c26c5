"""User agent parsing and bot detection against real user-agent strings."""

from __future__ import annotations

import pytest

from headwater.enrich.bots import BotStage
from headwater.enrich.useragent import UserAgentStage
from tests.unit.test_enrich_common import events_table, run

# name -> (user agent, browser, browser_version, os, os_version, device_type)
AGENTS = {
    "chrome windows": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
        "Safari/537.36",
        "Chrome", "120.0", "Windows", "10", "desktop",
    ),
    "firefox linux": (
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
        "Firefox", "121.0", "Ubuntu", None, "desktop",
    ),
    "safari mac": (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 "
        "Safari/605.1.15",
        "Safari", "17.2", "Mac OS X", "10.15", "desktop",
    ),
    "edge windows": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
        "Safari/537.36 Edg/120.0.2210.91",
        "Edge", "120.0", "Windows", "10", "desktop",
    ),
    "chrome os": (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 "
        "Safari/537.36",
        "Chrome", "120.0", "Chrome OS", "14541.0", "desktop",
    ),
    "safari iphone": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.2 Mobile/15E148 Safari/604.1",
        "Mobile Safari", "17.2", "iOS", "17.2", "mobile",
    ),
    "chrome android": (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 "
        "Mobile Safari/537.36",
        "Chrome Mobile", "120.0", "Android", "14", "mobile",
    ),
    "firefox android": (
        "Mozilla/5.0 (Android 14; Mobile; rv:121.0) Gecko/121.0 Firefox/121.0",
        "Firefox Mobile", "121.0", "Android", "14", "mobile",
    ),
    "samsung internet": (
        "Mozilla/5.0 (Linux; Android 13; SAMSUNG SM-S911B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/23.0 Chrome/115.0.0.0 Mobile Safari/537.36",
        "Samsung Internet", "23.0", "Android", "13", "mobile",
    ),
    "ipad": (
        "Mozilla/5.0 (iPad; CPU OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 "
        "Mobile/15E148 Safari/604.1",
        "Mobile Safari", "17.2", "iOS", "17.2", "tablet",
    ),
    "android tablet": (
        "Mozilla/5.0 (Linux; Android 12; SM-T870) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 "
        "Safari/537.36",
        "Chrome", "119.0", "Android", "12", "tablet",
    ),
    "kindle": (
        "Mozilla/5.0 (Linux; Android 9; KFMAWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/120.3.1 like "
        "Chrome/120.0.6099.230 Safari/537.36",
        "Amazon Silk", "120.3", "Android", "9", "tablet",
    ),
    "smart tv": (
        "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/4.0 "
        "Chrome/76.0.3809.146 TV Safari/537.36",
        "Samsung Internet", "4.0", "Tizen", "6.0", "other",
    ),
    "curl": ("curl/8.5.0", "curl", "8.5", None, None, "other"),
    "googlebot": (
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Googlebot", "2.1", None, None, "bot",
    ),
    "googlebot smartphone": (
        "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.6099.71 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Googlebot", "2.1", "Android", "6.0", "bot",
    ),
    "bingbot": (
        "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
        "bingbot", "2.0", None, None, "bot",
    ),
    "headless chrome": (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.28 "
        "Safari/537.36",
        "HeadlessChrome", "120.0", "Linux", None, "bot",
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def agent_stage() -> UserAgentStage:
    return UserAgentStage()


@pytest.fixture(scope="module")
def bot_stage() -> BotStage:
    return BotStage()


def test_the_rust_resolver_is_used(agent_stage: UserAgentStage) -> None:
    assert agent_stage.resolver.startswith("ua-parser-rs ")
    assert "ua-parser-rs" in agent_stage.describe


@pytest.mark.parametrize("name", list(AGENTS))
def test_user_agent_columns(agent_stage: UserAgentStage, name: str) -> None:
    agent, *expected = AGENTS[name]
    out = run([agent_stage], events_table([{"_user_agent": agent}]))
    columns = ["browser", "browser_version", "os", "os_version", "device_type"]
    assert [out.column(c)[0].as_py() for c in columns] == expected


def test_batch_of_repeated_and_missing_agents(agent_stage: UserAgentStage) -> None:
    agents = [AGENTS[n][0] for n in AGENTS] * 3 + [None, "", "   "]
    out = run([agent_stage], events_table([{"_user_agent": a} for a in agents]))
    browsers = out.column("browser").to_pylist()
    assert browsers[: len(AGENTS)] == [AGENTS[n][1] for n in AGENTS]
    assert browsers[: len(AGENTS)] * 3 == browsers[: 3 * len(AGENTS)]
    assert out.column("device_type").to_pylist()[-3:] == [None, None, None]


BOTS = {
    "googlebot": ("page", None, "crawler-user-agents: Googlebot\\/"),
    "googlebot smartphone": ("track", None, "crawler-user-agents: Googlebot\\/"),
    "bingbot": ("track", None, "crawler-user-agents: bingbot"),
    "headless chrome": ("track", None, "headless browser: HeadlessChrome"),
    "curl": ("page", None, "crawler-user-agents: ^curl"),  # an HTTP library on a page call: a bot
}


@pytest.mark.parametrize("name", list(BOTS))
def test_bots_flagged_with_reason(agent_stage: UserAgentStage, bot_stage: BotStage, name: str) -> None:
    endpoint, url, reason = BOTS[name]
    row = {"_user_agent": AGENTS[name][0], "_endpoint": endpoint, "_url": url}
    out = run([agent_stage, bot_stage], events_table([row]))
    assert out.column("is_bot").to_pylist() == [True]
    assert out.column("bot_reason").to_pylist() == [reason]
    assert out.column("device_type").to_pylist() == ["bot"]


def test_browsers_and_server_libraries_are_not_bots(agent_stage: UserAgentStage, bot_stage: BotStage) -> None:
    people = [n for n in AGENTS if AGENTS[n][5] != "bot" and n != "curl"]
    rows = [{"_user_agent": AGENTS[n][0], "_endpoint": "page", "_url": "https://a.test/"} for n in people]
    # server-side SDKs post through HTTP libraries: not bots outside browser events
    for agent in ("curl/8.5.0", "python-requests/2.31.0", "okhttp/4.12.0", "Go-http-client/1.1", None):
        rows.append({"_user_agent": agent, "_endpoint": "track"})
    out = run([agent_stage, bot_stage], events_table(rows))
    assert out.column("is_bot").to_pylist() == [False] * len(rows)
    assert out.column("bot_reason").null_count == len(rows)


def test_http_library_on_a_page_url_and_empty_agents(bot_stage: BotStage) -> None:
    rows = [
        {"_user_agent": "python-requests/2.31.0", "_endpoint": "track", "_url": "https://a.test/p"},
        {"_user_agent": None, "_endpoint": "page"},
        {"_user_agent": "  ", "_endpoint": "track", "_url": "https://a.test/"},
        {"_user_agent": "", "_endpoint": "identify"},
        {
            "_user_agent": "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.2",
            "_endpoint": "screen",
        },
    ]
    out = run([bot_stage], events_table(rows))
    assert out.column("is_bot").to_pylist() == [True, True, True, False, True]
    assert out.column("bot_reason").to_pylist() == [
        "crawler-user-agents: python-requests",
        "empty user agent",
        "empty user agent",
        None,
        "crawler-user-agents: GPTBot",
    ]
    assert "device_type" not in out.column_names  # the user-agent stage did not run


def test_every_crawler_instance_of_the_list_is_flagged(bot_stage: BotStage) -> None:
    """The instances that ship with crawler-user-agents, all flagged by the joined RE2 regex on a page call."""
    from crawleruseragents import CRAWLER_USER_AGENTS_DATA

    agents = sorted({a for entry in CRAWLER_USER_AGENTS_DATA for a in entry.get("instances", [])})
    out = run([bot_stage], events_table([{"_user_agent": a, "_endpoint": "page"} for a in agents]))
    missed = [a for a, flagged in zip(agents, out.column("is_bot").to_pylist(), strict=True) if not flagged]
    assert len(agents) > 1000
    assert missed == []
    reasons = out.column("bot_reason").to_pylist()
    assert all(r.startswith(("crawler-user-agents: ", "headless browser: ")) for r in reasons)


def test_bot_cache_full_starts_again() -> None:
    stage = BotStage(cache_size=3)
    agents = [AGENTS[n][0] for n in ("googlebot", "bingbot", "chrome windows", "curl", "headless chrome")]
    table = events_table([{"_user_agent": a, "_endpoint": "page"} for a in agents])
    expected = [True, True, False, True, True]
    for _ in range(2):
        assert run([stage], table).column("is_bot").to_pylist() == expected
        assert len(stage._known) <= len(agents)
