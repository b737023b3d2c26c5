"""Scrapes of the local server's /metrics kept in memory for a while, with Prometheus' `rate` and `increase`.

Samples are stamped with the evaluator's clock (`now` of each tick). A series missing from an earlier successful
scrape counts as 0 there (prometheus_client shows a labelled counter only once it was incremented), and a value
that went down is a counter reset (a restarted process): the increase after it counts from 0, as Prometheus does.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from headwater.core.settings import Settings

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT_S = 5.0
Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]


@dataclass(frozen=True, slots=True)
class Scrape:
    at: float
    values: dict[SeriesKey, float] | None  # None: the scrape failed
    error: str | None = None


def metrics_url(settings: Settings) -> str | None:
    """The local server's /metrics (port 0: the port `up` wrote to `<data_dir>/run/server.port`)."""
    port = settings.port
    if port == 0:
        try:
            port = int((settings.data_dir / "run" / "server.port").read_text().strip())
        except (OSError, ValueError):
            return None
    host = settings.host if settings.host not in ("", "0.0.0.0", "::", "[::]") else "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def parse(text: str) -> dict[SeriesKey, float]:
    out: dict[SeriesKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return out


def matches(labels: Labels, wanted: dict[str, str]) -> bool:
    have = dict(labels)
    return all(have.get(k) == v for k, v in wanted.items())


class MetricsWindow:
    """The last scrapes (kept `keep_s` seconds of evaluator time) and functions over them."""

    def __init__(self, settings: Settings, keep_s: float = 900.0, client: httpx.Client | None = None) -> None:
        self.settings = settings
        self.keep_s = keep_s
        self.scrapes: collections.deque[Scrape] = collections.deque()
        self.client = client or httpx.Client(timeout=SCRAPE_TIMEOUT_S)
        self.url: str | None = None

    def scrape(self, now: float) -> Scrape:
        """Scrape once, keep the result (also a failure) and forget what is older than `keep_s`."""
        self.url = metrics_url(self.settings)
        if self.url is None:
            result = Scrape(now, None, f"no server port file in {Path(self.settings.data_dir) / 'run'}")
        else:
            try:
                token = self.settings.metrics_token
                headers = {"authorization": f"Bearer {token}"} if token else None
                response = self.client.get(self.url, headers=headers)
                response.raise_for_status()
                result = Scrape(now, parse(response.text))
            except (httpx.HTTPError, ValueError) as exc:
                result = Scrape(now, None, f"{self.url}: {exc or type(exc).__name__}")
        if self.scrapes and self.scrapes[-1].at > now:  # the clock went back: start over
            self.scrapes.clear()
        self.scrapes.append(result)
        while self.scrapes and self.scrapes[0].at < now - self.keep_s:
            self.scrapes.popleft()
        return result

    def add(self, at: float, values: dict[SeriesKey, float] | None) -> None:
        """Keep a sample taken elsewhere (tests, or a caller that scraped itself)."""
        self.scrapes.append(Scrape(at, values))

    @property
    def latest(self) -> Scrape | None:
        return self.scrapes[-1] if self.scrapes else None

    @property
    def up(self) -> bool:
        latest = self.latest
        return latest is not None and latest.values is not None

    def series(self, metric: str, labels: dict[str, str] | None = None) -> dict[Labels, float]:
        """The latest value of every series of `metric` whose labels include `labels` (empty when down)."""
        latest = self.latest
        if latest is None or latest.values is None:
            return {}
        wanted = labels or {}
        return {lab: v for (name, lab), v in latest.values.items() if name == metric and matches(lab, wanted)}

    def value(self, metric: str, labels: dict[str, str] | None = None) -> float | None:
        """The sum of the matching series, None when there is none."""
        found = self.series(metric, labels)
        return sum(found.values()) if found else None

    def has_window(self, window_s: float) -> bool:
        """True when two successful scrapes (the latest one of them) lie within the last `window_s`."""
        latest = self.latest
        return (
            latest is not None
            and latest.values is not None
            and sum(1 for _ in self._ok_since(latest.at - window_s)) >= 2
        )

    def _ok_since(self, start: float) -> Iterator[Scrape]:
        return (s for s in self.scrapes if s.at >= start and s.values is not None)

    def increase(self, metric: str, window_s: float, labels: dict[str, str] | None = None) -> dict[Labels, float]:
        """Per series: how much the counter grew over the last `window_s` (resets handled).

        Needs two successful scrapes within the window; with fewer, an empty answer (unknown)."""
        latest = self.latest
        if latest is None or latest.values is None:
            return {}
        scrapes = list(self._ok_since(latest.at - window_s))
        if len(scrapes) < 2:
            return {}
        wanted = labels or {}
        keys = {k for s in scrapes for k in s.values or {} if k[0] == metric and matches(k[1], wanted)}
        out: dict[Labels, float] = {}
        for key in keys:
            total, previous = 0.0, None
            for scrape in scrapes:
                current = (scrape.values or {}).get(key, 0.0)
                if previous is not None:
                    total += current - previous if current >= previous else current
                previous = current
            out[key[1]] = total
        return out

    def rate(self, metric: str, window_s: float, labels: dict[str, str] | None = None) -> dict[Labels, float]:
        """Per series: increase divided by the time between the first and last scrape of the window."""
        latest = self.latest
        if latest is None:
            return {}
        scrapes = list(self._ok_since(latest.at - window_s))
        if len(scrapes) < 2 or scrapes[-1].at <= scrapes[0].at:
            return {}
        span = scrapes[-1].at - scrapes[0].at
        return {lab: v / span for lab, v in self.increase(metric, window_s, labels).items()}

    def value_at(self, metric: str, at: float, labels: dict[str, str] | None = None) -> float | None:
        """The sum of the matching series in the successful scrape closest to (and not after) `at`."""
        best = None
        for scrape in self.scrapes:
            if scrape.values is not None and scrape.at <= at:
                best = scrape
        if best is None or best.values is None:
            return None
        wanted = labels or {}
        found = [v for (name, lab), v in best.values.items() if name == metric and matches(lab, wanted)]
        return sum(found) if found else None

    def close(self) -> None:
        self.client.close()
