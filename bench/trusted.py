"""Batched ingest with a tracking plan enforced and every enrichment on, beside the same load without them.

Two fresh platforms, one after the other, take the same load: wrk posting 64 different bodies of 100 realistic
events in turn (`POST /track`, 16 connections): 20,000 users, a few hundred user agents (some bots), IPs across
networks a generated GeoIP database knows, page URLs with UTM fields and click ids, referrers, properties the plan
declares (a tenth of the events violate it). `baseline`: no plan, every enrichment and identity stitching off.
`enforced`: the example plan (`examples/plan`: warn, Order Completed in quarantine mode, email hashed at ingest)
active, GeoIP on, user agent, IP anonymisation, referrer/UTM, bots,
sessions and identity stitching on. For each: acknowledged and sustained events/s (sustained waits until the lake
writer has caught up: the rate at which events become queryable) and freshness p50/p95 (one event -> visible in
SQL) under a 5,000 events/s background load.
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import ROOT, RunningHeadwater, child_env, emit, make_keys, need_wrk
from bench.freshness import under_load
from bench.ingest import run_mode

BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{s}.1 "
    "Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{f}.0) Gecko/20100101 Firefox/{f}.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{m} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel {m}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Mobile "
    "Safari/537.36",
    "Mozilla/5.0 (iPad; CPU OS 16_{m} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.0 "
    "Mobile/15E148 Safari/604.1",
]
BOTS = [
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "curl/8.5.0",
]
REFERRERS = [None, None, "https://www.google.com/", "https://www.facebook.com/", "https://news.ycombinator.com/",
             "https://mail.google.com/", "https://duckduckgo.com/", "https://t.co/abc"]  # fmt: skip
NETWORKS = [f"{a}.{b}.0.0/16" for a, b in [(81, 2), (90, 45), (151, 101), (185, 60), (203, 0), (24, 48)]]
CITIES = [("FR", "Île-de-France", "Paris"), ("DE", "Berlin", "Berlin"), ("US", "California", "San Francisco"),
          ("GB", "England", "London"), ("JP", "Tokyo", "Tokyo"), ("CA", "Ontario", "Toronto")]  # fmt: skip


def user_agents(rng: random.Random) -> list[str]:
    agents = [
        t.format(v=rng.randrange(110, 131), s=rng.randrange(14, 18), f=rng.randrange(115, 133), m=rng.randrange(1, 9))
        for t in BROWSERS
        for _ in range(60)
    ]
    return sorted(set(agents)) + BOTS


def event(rng: random.Random, agents: list[str], user: int) -> dict[str, Any]:
    name = rng.choice(["Product Viewed", "Product Viewed", "Product Added", "Order Completed", "Signed Up"])
    product = f"TEA-{rng.randrange(500):04d}"
    properties: dict[str, Any] = {"product_id": product, "price": round(rng.uniform(3, 300), 2), "currency": "EUR"}
    if name == "Product Viewed":
        properties.update(name=f"Tea {product}", category=rng.choice(["green", "black", "oolong"]))
    elif name == "Product Added":
        properties["quantity"] = rng.randrange(1, 4)
    elif name == "Order Completed":
        properties = {"order_id": f"o{rng.randrange(10**9)}", "revenue": properties["price"], "currency": "EUR",
                      "email": f"buyer{user}@example.com"}  # fmt: skip
    elif name == "Signed Up":
        properties = {"method": "email", "referral_code": None}
    if rng.random() < 0.1:  # a violation: wrong type
        properties[next(iter(properties))] = 12345 if name != "Signed Up" else 7
    url = f"https://shop.example/p/{rng.randrange(500)}"
    if rng.random() < 0.3:
        source, medium = rng.choice(["newsletter", "google", "facebook"]), rng.choice(["email", "cpc"])
        url += f"?utm_source={source}&utm_medium={medium}"
        url += "&utm_campaign=autumn" + ("&gclid=Cj0K" if rng.random() < 0.3 else "")
    network = ipaddress.ip_network(rng.choice(NETWORKS))
    out: dict[str, Any] = {
        "event": name,
        "userId": f"user{user}" if rng.random() < 0.6 else None,
        "anonymousId": f"anon{user}",
        "dateTime": "2026-11-25 10:00:00",
        "url": url,
        "referrer": rng.choice(REFERRERS),
        "userAgent": rng.choice(agents),
        "ip": str(network[rng.randrange(1, 65000)]),
        **properties,
    }
    return {k: v for k, v in out.items() if v is not None}


def write_bodies(work: Path, count: int, per_body: int) -> Path:
    rng = random.Random(7)
    agents = user_agents(rng)
    base = work / "body.ndjson"
    for i in range(count):
        lines = [orjson.dumps(event(rng, agents, rng.randrange(20_000))) for _ in range(per_body)]
        Path(f"{base}.{i}").write_bytes(b"\n".join(lines))
    return base


def write_geoip(path: Path) -> Path:
    """A tiny GeoLite2-City-shaped database covering NETWORKS (mmdb-writer, a dev dependency)."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City", languages=["en"])
    for network, (country, region, city) in zip(NETWORKS, CITIES, strict=True):
        writer.insert_network(
            IPSet([network]),
            {
                "country": {"iso_code": country, "names": {"en": country}},
                "subdivisions": [{"names": {"en": region}}],
                "city": {"names": {"en": city}},
            },
        )
    writer.to_db_file(str(path))
    return path


def freshness(running: RunningHeadwater, keys: dict[str, str], samples: int) -> dict[str, float]:
    latencies = under_load(running, keys, samples, 5000.0)
    return {
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(statistics.quantiles(latencies, n=20)[18], 3),
    }


def push_plan(running: RunningHeadwater, admin_key: str) -> None:
    files = {
        str(p.relative_to(ROOT / "examples" / "plan")): p.read_text()
        for p in sorted((ROOT / "examples" / "plan").rglob("*.json"))
    }
    response = httpx.post(
        running.url + "/api/plans",
        json={"files": files, "activate": "*"},
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=30,
    )
    response.raise_for_status()


def run(name: str, work: Path, wrk: str, duration: int, samples: int, **settings: Any) -> dict[str, Any]:
    data_dir = work / name
    data_dir.mkdir()
    keys = make_keys(data_dir)
    running = RunningHeadwater(data_dir, child_env(data_dir, query_max_rows=10, **settings), keys=keys).start()
    try:
        if name == "enforced":
            push_plan(running, keys["admin"])
            time.sleep(6)  # plan_refresh_s: collectors and the writer pick it up
        result = run_mode(wrk, running, keys["write"], 100, 16, duration, work, body_count=64)
        result["freshness"] = freshness(running, keys, samples)
        if name == "enforced":
            result["lake_check"] = running.sql(
                "SELECT count(*) FILTER (WHERE country IS NOT NULL), count(*) FILTER (WHERE browser IS NOT NULL), "
                "count(*) FILTER (WHERE plan_violations IS NOT NULL), count(DISTINCT session_id), count(*) FROM events"
            )[0]
    finally:
        running.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    wrk = need_wrk()
    off = {
        "enrich_user_agent": "false", "enrich_referrer": "false", "enrich_bots": "false", "enrich_sessions": "false",
        "identity_stitching": "false", "enrich_ip": "drop",
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hw-bench-") as tmp:
        work = Path(tmp)
        write_bodies(work, 64, 100)
        geoip = write_geoip(work / "geo.mmdb")
        baseline = run("baseline", work, wrk, args.duration, args.samples, **off)
        enforced = run(
            "enforced", work, wrk, args.duration, args.samples, enrich_geoip_database=str(geoip), enrich_ip="anonymise"
        )
    ratio = enforced["sustained_events_per_s"] / baseline["sustained_events_per_s"]
    acknowledged = enforced["acknowledged_events_per_s"] / baseline["acknowledged_events_per_s"]
    emit(
        "trusted",
        {
            "baseline": baseline,
            "enforced": enforced,
            "sustained_ratio": round(ratio, 3),
            "acknowledged_ratio": round(acknowledged, 3),
        },
    )


if __name__ == "__main__":
    main()
