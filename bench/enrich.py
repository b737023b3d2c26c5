"""Enrichment cost: rows/s of each enrichment stage alone and of all of them together, on --events generated
events (default 200,000) cut into lake-writer batches of --batch rows (default 20,000).

The events look like a web site's day: ~20k visitors, each with one browser (a pool of ~2k distinct user-agent
strings: desktop, phone and tablet browsers, 2 % crawlers, server-side SDK traffic through HTTP libraries), one
address (10 % IPv6), page views and tracks on ~500 paths with UTM campaigns and ad click ids (unique per click),
referrers from the site itself, search engines, social networks and ~200 other sites, and a Segment-like
`context` JSON. GeoIP uses a generated City database of 20,000 networks covering most of the addresses.

Each stage starts cold (empty caches, empty session table in a SQLite catalog) and runs over the batches in
order; `first_batch_rows_per_s` is the cold batch, `rows_per_s` all batches. For scale, `normalise_rows_per_s`
is what the writer already spends per row turning log records into the Arrow batch (RowBuilder), measured on
the same events.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from bench.common import emit
from headwater.core.events import EVENTS_SCHEMA, TS, RowBuilder
from headwater.core.stages import INPUT_COLUMNS, StageBatch
from headwater.enrich.bots import BotStage
from headwater.enrich.geoip import GeoIPStage
from headwater.enrich.ip import IPStage
from headwater.enrich.referrer import ReferrerStage
from headwater.enrich.sessions import SessionStage
from headwater.enrich.useragent import UserAgentStage
from headwater.lake.coordination import open_engine

KHTML = "AppleWebKit/537.36 (KHTML, like Gecko)"
SAFARI = "AppleWebKit/605.1.15 (KHTML, like Gecko)"
DESKTOP = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) " + KHTML + " Chrome/{v}.0.{b}.{p} Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) " + KHTML + " Chrome/{v}.0.{b}.{p} Safari/537.36 Edg/{v}.0.{b}.{p}",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) " + KHTML + " Chrome/{v}.0.{b}.{p} Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) " + SAFARI + " Version/{s}.{m} Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
]
PHONE = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS {s}_{m} like Mac OS X) "
    + SAFARI
    + " Version/{s}.{m} Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android {a}; {model}) " + KHTML + " Chrome/{v}.0.{b}.{p} Mobile Safari/537.36",
    "Mozilla/5.0 (Linux; Android {a}; SAMSUNG {model}) "
    + KHTML
    + " SamsungBrowser/{m}.0 Chrome/{v}.0.0.0 Mobile Safari/537.36",
]
TABLET = [
    "Mozilla/5.0 (iPad; CPU OS {s}_{m} like Mac OS X) " + SAFARI + " Version/{s}.{m} Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android {a}; SM-X{p}) " + KHTML + " Chrome/{v}.0.{b}.{p} Safari/537.36",
]
BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; GPTBot/1.2; +https://openai.com/gptbot",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/{v}.0.{b}.{p} Safari/537.36",
]
SERVER = ["python-requests/2.{m}.0", "analytics-node/6.{m}.0", "Go-http-client/1.1", "okhttp/4.{m}.0"]
MODELS = ["Pixel 7", "Pixel 8", "SM-S911B", "SM-A546B", "M2101K6G", "CPH2451", "moto g(60)", "22101316G"]
SEARCH = ["https://www.google.com/", "https://www.google.fr/", "https://www.bing.com/", "https://duckduckgo.com/"]
SOCIAL = ["https://l.facebook.com/", "https://t.co/x", "https://www.linkedin.com/", "https://www.reddit.com/"]
CAMPAIGN = [
    "utm_source=newsletter&utm_medium=email&utm_campaign=weekly-{n}",
    "utm_source=google&utm_medium=cpc&utm_campaign=brand&utm_term=shoes+{n}",
    "utm_source=facebook&utm_medium=social&utm_content=ad{n}",
]


def agents(rng: np.random.Generator, count: int) -> list[str]:
    """`count` distinct-ish user agents: 60 % desktop, 30 % phone, 8 % tablet, 2 % bots."""
    out = []
    for _ in range(count):
        roll = rng.random()
        pool = DESKTOP if roll < 0.6 else PHONE if roll < 0.9 else TABLET if roll < 0.98 else BOTS
        template = pool[rng.integers(len(pool))]
        out.append(
            template.format(
                v=rng.integers(110, 126), b=rng.integers(5000, 6500), p=rng.integers(0, 200), s=rng.integers(15, 18),
                m=rng.integers(0, 7), a=rng.integers(10, 15), model=MODELS[rng.integers(len(MODELS))],
            )
        )  # fmt: skip
    return out


def generate(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """Segment-like envelopes `{"m": meta, "e": event}` as the writer reads them from the log."""
    rng = np.random.default_rng(seed)
    people = max(1, count // 10)
    pool = agents(rng, 2_000)
    person_agent = rng.integers(0, len(pool), people)
    person_v6 = rng.random(people) < 0.1
    person_ip = [
        f"2001:db8:{rng.integers(0, 65536):x}:{rng.integers(0, 65536):x}::{rng.integers(1, 65536):x}"
        if v6
        else f"{rng.integers(1, 224)}.{rng.integers(0, 256)}.{rng.integers(0, 256)}.{rng.integers(1, 255)}"
        for v6 in person_v6
    ]
    start = datetime(2025, 3, 1, 8)
    seconds = np.sort(rng.integers(0, 7_200, count))
    who = rng.integers(0, people, count)
    out = []
    for i in range(count):
        person = int(who[i])
        server = rng.random() < 0.1
        page = f"https://shop.example/p/{rng.integers(500)}"
        roll = rng.random()
        if roll < 0.3:
            page += "?" + CAMPAIGN[rng.integers(len(CAMPAIGN))].format(n=rng.integers(20))
        elif roll < 0.35:
            page += f"?gclid=Cj0KCQ{rng.integers(1 << 40):x}"
        elif roll < 0.38:
            page += f"?fbclid=IwAR{rng.integers(1 << 40):x}"
        roll = rng.random()
        referrer = (
            None if roll < 0.4 else f"https://shop.example/p/{rng.integers(500)}" if roll < 0.7
            else SEARCH[rng.integers(len(SEARCH))] if roll < 0.9 else SOCIAL[rng.integers(len(SOCIAL))]
            if roll < 0.95 else f"https://site{rng.integers(200)}.example/article"
        )  # fmt: skip
        kind = "page" if rng.random() < 0.5 else "track"
        when = (start + timedelta(seconds=int(seconds[i]))).isoformat() + "Z"
        event: dict[str, Any] = {"type": kind, "anonymousId": f"anon-{person}", "timestamp": when,
                                 "messageId": f"m-{i}", "properties": {"path": page[20:], "value": i % 7}}  # fmt: skip
        if kind == "track":
            event["event"] = "Product Viewed"
        else:
            event["name"] = "Product"
        if server:
            event = {"type": "track", "event": "Order Completed", "userId": f"user-{person}", "timestamp": when,
                     "messageId": f"m-{i}", "properties": {"revenue": 12.5}}  # fmt: skip
        else:
            event["context"] = {
                "ip": person_ip[person], "userAgent": pool[person_agent[person]], "locale": "fr-FR",
                "library": {"name": "analytics.js", "version": "4.1.0"},
                "page": {"url": page, "referrer": referrer, "path": page[20:], "title": "Product"},
            }  # fmt: skip
        received_ms = int((start + timedelta(seconds=int(seconds[i])) - datetime(1970, 1, 1)).total_seconds() * 1000)
        meta = {"src": "web", "ep": event["type"], "ra": received_ms, "ip": person_ip[person],
                "ua": SERVER[rng.integers(len(SERVER))].format(m=rng.integers(0, 9)) if server else None}  # fmt: skip
        out.append({"m": meta, "e": event})
    return out


def generate_lolscale(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """Events like bench/ingest.py's: lolscale `POST /track` rows, one client address, no user agent or URL."""
    rng = np.random.default_rng(seed)
    start_ms = int((datetime(2025, 3, 1, 8) - datetime(1970, 1, 1)).total_seconds() * 1000)
    users = rng.integers(0, 10_000, count)
    out = []
    for i in range(count):
        when = start_ms + i * 7_200_000 // count
        event = {"event": "LOGIN", "userId": f"user{users[i]}", "time": when, "plan": "pro"}
        out.append({"m": {"src": "bench", "ep": "track-raw", "ra": when, "ip": "127.0.0.1"}, "e": event})
    return out


def normalise(envelopes: list[dict[str, Any]]) -> tuple[pa.Table, float]:
    """The batch as the writer builds it (with the stage inputs), and the time RowBuilder took."""
    values = [orjson.dumps(e) for e in envelopes]
    started = time.perf_counter()
    builder = RowBuilder(inputs=True)  # type: ignore[call-arg]
    for offset, value in enumerate(values):
        builder.add(orjson.loads(value), "bench", 0, offset)
    events, _ = builder.tables()
    elapsed = time.perf_counter() - started
    expected = [*EVENTS_SCHEMA.names, *INPUT_COLUMNS]
    if events.column_names != expected:
        raise SystemExit(f"RowBuilder gives {events.column_names}, not the writer's batch {expected}")
    assert events.schema.field("timestamp").type == TS
    return events, elapsed


def build_mmdb(path: Path, envelopes: list[dict[str, Any]], networks: int = 20_000) -> Path:
    """A City database with a /24 (or /48) for most addresses seen, and random others up to `networks`."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    rng = np.random.default_rng(2)
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", languages=["en"], ipv4_compatible=True)
    seen = sorted({str(e["m"]["ip"]) for e in envelopes})
    cities = [("FR", "Île-de-France", "Paris"), ("GB", "England", "London"), ("US", "California", "San Jose"),
              ("DE", "Bavaria", "Munich"), ("SE", "Östergötland County", "Linköping")]  # fmt: skip
    added: set[str] = set()
    for address in seen[: int(len(seen) * 0.9)]:
        network = address.rsplit(".", 1)[0] + ".0/24" if "." in address else address.rsplit("::", 1)[0] + "::/48"
        if network in added:
            continue
        added.add(network)
        country, region, city = cities[len(added) % len(cities)]
        record = {"country": {"iso_code": country}, "subdivisions": [{"names": {"en": region}}],
                  "city": {"names": {"en": city}}}  # fmt: skip
        writer.insert_network(IPSet([network]), record)
        if len(added) >= networks:
            break
    while len(added) < networks:
        network = f"{rng.integers(1, 224)}.{rng.integers(0, 256)}.{rng.integers(0, 256)}.0/24"
        if network not in added:
            added.add(network)
            writer.insert_network(IPSet([network]), {"country": {"iso_code": "NL"}})
    writer.to_db_file(str(path))
    return path


def measure(make: Any, batches: list[pa.Table]) -> dict[str, Any]:
    """Stages built by `make()` (cold) over the batches in order."""
    stages = make()
    times = []
    spent = dict.fromkeys((stage.name for stage in stages), 0.0)
    for table in batches:
        started = time.perf_counter()
        batch = StageBatch(table)
        for stage in stages:
            begun = time.perf_counter()
            batch = stage.apply(batch)
            spent[stage.name] += time.perf_counter() - begun
        times.append(time.perf_counter() - started)
    for stage in stages:
        stage.close()
    rows = sum(t.num_rows for t in batches)
    split = {"us_per_row_by_stage": {n: round(t / rows * 1e6, 2) for n, t in spent.items()}} if len(stages) > 1 else {}
    return {
        **split,
        "rows_per_s": round(rows / sum(times)),
        "first_batch_rows_per_s": round(batches[0].num_rows / times[0]),
        "later_batches_rows_per_s": round((rows - batches[0].num_rows) / sum(times[1:])) if len(times) > 1 else None,
        "us_per_row": round(sum(times) / rows * 1e6, 2),
        "columns_added": len(batch.events.column_names) - len(table.column_names),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000, help="rows per lake-writer flush")
    args = parser.parse_args()
    result: dict[str, Any] = {"events": args.events, "batch_rows": args.batch}
    for profile, make in (("web", generate), ("lolscale", generate_lolscale)):
        result[profile] = run_profile(make(args.events), args.batch)
    result["note"] = (
        "rows/s of the enrichment stages on Arrow batches (one core); normalise_rows_per_s is RowBuilder on the "
        "same events, the work the writer did per row before enrichments. web: a site's traffic at realistic "
        "cardinality; lolscale: bench/ingest.py's events (one address, no user agent or URL, 10k users)"
    )
    emit("enrich", result)


def run_profile(envelopes: list[dict[str, Any]], batch_rows: int) -> dict[str, Any]:
    """Every stage alone and all together on these events."""
    table, normalise_s = normalise(envelopes)
    batches = [table.slice(i, batch_rows) for i in range(0, table.num_rows, batch_rows)]
    with tempfile.TemporaryDirectory(prefix="hw-bench-enrich-") as work:
        mmdb = build_mmdb(Path(work) / "city.mmdb", envelopes)
        engines: list[Any] = []

        def sessions() -> SessionStage:
            engine = open_engine(f"sqlite:///{work}/catalog-{len(engines)}.db")
            engines.append(engine)
            return SessionStage(engine, 30)

        makers = {
            "user_agent": lambda: [UserAgentStage()],
            "bots": lambda: [BotStage()],
            "geoip": lambda: [GeoIPStage(mmdb)],
            "ip_anonymise": lambda: [IPStage("anonymise")],
            "ip_drop": lambda: [IPStage("drop")],
            "referrer": lambda: [ReferrerStage()],
            "sessions": lambda: [sessions()],
            "all": lambda: [
                UserAgentStage(),
                BotStage(),
                GeoIPStage(mmdb),
                IPStage("anonymise"),
                ReferrerStage(),
                sessions(),
            ],
        }
        stages = {name: measure(make, batches) for name, make in makers.items()}
        for engine in engines:
            engine.dispose()
    distinct = {name: len(set(table.column(name).to_pylist())) for name in ("_user_agent", "_ip", "_url", "_referrer")}
    distinct["person_keys"] = len(set(table.column("anonymous_id").to_pylist() + table.column("user_id").to_pylist()))
    return {
        "distinct_values": distinct,
        "normalise_rows_per_s": round(table.num_rows / normalise_s),
        "stages": stages,
    }


if __name__ == "__main__":
    main()
