"""Bots and crawlers → `is_bot` (bool) and `bot_reason` (setting `enrich_bots`). Flagged, never dropped.

Rules, first match wins (`bot_reason`):
- "headless browser: <pattern>": a browser-automation agent (HeadlessChrome, PhantomJS, Selenium, Puppeteer… —
  the crawler-user-agents patterns tagged `browser-automation`, plus any agent containing "Headless");
- "crawler-user-agents: <pattern>": any other pattern of the crawler-user-agents list (search engines, SEO,
  monitoring, AI crawlers, feed readers…), the first in the list's order that matches (case-sensitive, as the
  list is written). Patterns tagged `http-library` (curl, python-requests, okhttp, Go-http-client…) count only
  on *browser events*: a server-side SDK that posts through such a library is not a bot;
- "empty user agent": a browser event without a user agent.

A browser event is a `page` call or an event carrying a page URL (`_url`). `is_bot` is false otherwise (NULL never).
When the user-agent stage ran, `device_type` of flagged rows becomes `bot` too.

Vectorised: the list's ~1,500 patterns are joined into a few RE2 regexes run by `pyarrow.compute` over the
batch's distinct agents; which pattern matched is looked up only for the (few) matching agents, cached across batches.
"""

from __future__ import annotations

import importlib.metadata
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.stages import StageBatch
from headwater.enrich.common import column_or_nulls, flat, set_column

COLUMNS = ("is_bot", "bot_reason")
EMPTY = "empty user agent"
HEADLESS = "headless browser"
CRAWLER = "crawler-user-agents"
CHUNK = 200  # patterns per RE2 regex


def _patterns() -> tuple[list[str], list[str], list[str]]:
    """(browser-automation, http-library, other) patterns of the crawler-user-agents list, in list order."""
    from crawleruseragents import CRAWLER_USER_AGENTS_DATA

    automation: list[str] = []
    library: list[str] = []
    other: list[str] = []
    for entry in CRAWLER_USER_AGENTS_DATA:
        tags = entry.get("tags") or []
        kind = automation if "browser-automation" in tags else library if "http-library" in tags else other
        kind.append(entry["pattern"])
    return automation, library, other


class BotStage:
    """Adds `is_bot` and `bot_reason` from `_user_agent`, `_endpoint` and `_url`."""

    name = "enrich_bots"

    def __init__(self, cache_size: int = 50_000) -> None:
        automation, library, other = _patterns()
        automation.append("Headless")
        self.groups = ((HEADLESS, automation), (CRAWLER, other), (CRAWLER, library))
        every = [f"(?:{p})" for _, group in self.groups for p in group]
        # RE2 runs a DFA only while the automaton fits its memory budget: one regex of all ~1,500 patterns falls
        # back to the slow NFA (~400 µs per agent), chunks of 200 stay on the DFA (~6 µs per agent in all)
        self.chunks = ["|".join(every[i : i + CHUNK]) for i in range(0, len(every), CHUNK)]
        self._compiled = [(reason, [(p, re.compile(p)) for p in group]) for reason, group in self.groups]
        count = sum(len(g) for _, g in self.groups)
        version = importlib.metadata.version("crawler-user-agents")
        self.describe = f"bots ({count} patterns of crawler-user-agents {version})"
        self.cache_size = cache_size
        self._known: dict[str | None, tuple[str | None, bool]] = {}  # agent -> (reason, only on browser events)

    def _which(self, agent: str) -> tuple[str | None, bool]:
        """(reason, only on browser events) for an agent the joined regexes matched: the first pattern in order."""
        for index, (reason, group) in enumerate(self._compiled):
            for pattern, regex in group:
                if regex.search(agent):
                    return f"{reason}: {pattern}", index == 2
        return None, False

    def _learn(self, agents: pa.Array) -> None:
        """Classify the agents not seen before (the regexes run on those only)."""
        empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(agents), ""), True).to_numpy(zero_copy_only=False)
        matched = np.zeros(len(agents), dtype=bool)
        for chunk in self.chunks:
            matched |= pc.fill_null(pc.match_substring_regex(agents, chunk), False).to_numpy(zero_copy_only=False)
        for agent, is_empty, is_match in zip(agents.to_pylist(), empty, matched, strict=True):
            self._known[agent] = (EMPTY, True) if is_empty else self._which(agent) if is_match else (None, False)

    def apply(self, batch: StageBatch) -> StageBatch:
        events = batch.events
        rows = events.num_rows
        encoded = pc.dictionary_encode(column_or_nulls(events, "_user_agent"), null_encoding="encode")
        agents = encoded.dictionary
        values = agents.to_pylist()  # per distinct agent
        unknown = [i for i, agent in enumerate(values) if agent not in self._known]
        if len(self._known) + len(unknown) > self.cache_size:  # full: start again with this batch's agents
            self._known.clear()
            unknown = list(range(len(values)))
        if unknown:
            self._learn(agents.take(pa.array(unknown, pa.int64())))
        known = [self._known[agent] for agent in values]
        indices = encoded.indices
        reason = pc.take(pa.array([k[0] for k in known], pa.string()), indices)
        browser_only = pc.take(pa.array([k[1] for k in known], pa.bool_()), indices)
        endpoint = column_or_nulls(events, "_endpoint")
        browser_event = pc.or_(
            pc.fill_null(pc.equal(endpoint, "page"), False), pc.is_valid(column_or_nulls(events, "_url"))
        )
        keep = pc.or_(pc.invert(browser_only), browser_event)
        reason = pc.if_else(keep, reason, pa.nulls(rows, pa.string()))
        is_bot = pc.is_valid(reason)
        events = set_column(events, "is_bot", is_bot)
        events = set_column(events, "bot_reason", reason)
        if "device_type" in events.column_names:
            events = set_column(events, "device_type", pc.if_else(is_bot, "bot", flat(events.column("device_type"))))
        batch.events = events
        return batch

    def close(self) -> None:
        self._known.clear()
