"""What every demo scenario shares: people with stable traits, seasonality, and events rendered as Segment JSON.

A scenario simulates people in numpy (no Python loop per event) and returns `Events`, one array per column, in
any order; `render()` turns them into NDJSON lines of the Segment spec with Arrow string kernels, so that the
writer's enrichments fill `browser`, `os`, `device_type` (from `context.userAgent`), `channel`, `utm_*`,
`referrer_domain` (from `context.page.url` and `referrer`) and identity stitching links anonymous ids to user
ids (events that carry both). Everything is drawn from one `numpy.random.Generator` seeded by the caller: the
same seed gives the same people and events.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

US = 1_000_000
DAY_US = 86_400 * US
HOUR_US = 3_600 * US
MINUTE_US = 60 * US
# traffic by hour of day (UTC): night trough, lunch bump, evening peak
HOUR_WEIGHTS = np.array(
    [0.25, 0.18, 0.13, 0.11, 0.12, 0.18, 0.32, 0.55, 0.78, 0.9, 0.95, 1.0,
     1.08, 1.02, 0.95, 0.93, 0.97, 1.05, 1.18, 1.32, 1.38, 1.25, 0.9, 0.5]
)  # fmt: skip
# Monday .. Sunday
WEEKDAY_WEIGHTS = np.array([0.92, 0.95, 0.97, 1.0, 1.06, 1.18, 1.1])
# (ISO2, locale, currency, weight, first octets of its addresses)
COUNTRIES = [
    ("US", "en-US", "USD", 0.27, (23, 68, 98)), ("GB", "en-GB", "GBP", 0.11, (51, 81, 86)),
    ("DE", "de-DE", "EUR", 0.11, (46, 79, 91)), ("FR", "fr-FR", "EUR", 0.12, (37, 82, 90)),
    ("ES", "es-ES", "EUR", 0.06, (83, 88, 95)), ("IT", "it-IT", "EUR", 0.05, (79, 93, 151)),
    ("NL", "nl-NL", "EUR", 0.04, (31, 77, 145)), ("BR", "pt-BR", "BRL", 0.07, (177, 179, 187)),
    ("CA", "en-CA", "CAD", 0.05, (24, 70, 99)), ("IN", "en-IN", "INR", 0.06, (49, 103, 117)),
    ("JP", "ja-JP", "JPY", 0.03, (60, 126, 153)), ("AU", "en-AU", "AUD", 0.03, (1, 101, 110)),
]  # fmt: skip
# (device, user agent, weight)
AGENTS = [
    ("desktop", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36", 0.22),
    ("desktop", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/18.1 Safari/605.1.15", 0.08),
    ("desktop", "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0", 0.05),
    ("desktop", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0", 0.05),
    ("desktop", "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36", 0.06),
    ("mobile", "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/18.1 Mobile/15E148 Safari/604.1", 0.24),
    ("mobile", "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Mobile Safari/537.36", 0.16),
    ("mobile", "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/26.0 Chrome/122.0.0.0 Mobile Safari/537.36", 0.06),
    ("tablet", "Mozilla/5.0 (iPad; CPU OS 17_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.6 Mobile/15E148 Safari/604.1", 0.05),
    ("tablet", "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/131.0.0.0 Safari/537.36", 0.03),
]  # fmt: skip
# acquisition channels: (name, referrer, utm_source, utm_medium, utm_campaign, weight); the enrichment derives
# `channel` from them (search, paid, social, email, referral, direct)
CHANNELS = [
    ("direct", "", "", "", "", 0.26),
    ("search", "https://www.google.com/", "", "", "", 0.24),
    ("search", "https://www.bing.com/", "", "", "", 0.03),
    ("paid", "https://www.google.com/", "google", "cpc", "brand-search", 0.14),
    ("social", "https://www.instagram.com/", "instagram", "social", "autumn-drop", 0.09),
    ("social", "https://www.facebook.com/", "", "", "", 0.05),
    ("email", "", "newsletter", "email", "weekly-picks", 0.11),
    ("referral", "https://www.reddit.com/r/BuyItForLife/", "", "", "", 0.04),
    ("referral", "https://blog.example.org/best-of-2026", "", "", "", 0.04),
]  # fmt: skip


def weights(values: list[tuple[Any, ...]], index: int) -> np.ndarray:
    w = np.array([row[index] for row in values], dtype=float)
    return w / w.sum()


def to_iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / US, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Population:
    """People (index i): ids and stable traits, as arrays."""

    anonymous_id: pa.Array  # string
    user_id: pa.Array  # string (set for everyone; used once the person identified)
    country: np.ndarray  # index into COUNTRIES
    agent: np.ndarray  # index into AGENTS
    ip: pa.Array  # string
    channel: np.ndarray  # acquisition channel: index into CHANNELS
    traits: dict[str, pa.Array] = field(default_factory=dict)  # scenario traits sent as properties (plan, ...)

    @property
    def size(self) -> int:
        return len(self.country)

    def extend(self, more: Population) -> Population:
        """These people, then `more`."""
        return Population(
            pa.concat_arrays([self.anonymous_id, more.anonymous_id]), pa.concat_arrays([self.user_id, more.user_id]),
            np.concatenate([self.country, more.country]), np.concatenate([self.agent, more.agent]),
            pa.concat_arrays([self.ip, more.ip]), np.concatenate([self.channel, more.channel]),
            {k: pa.concat_arrays([_flat(v), _flat(more.traits[k])]) for k, v in self.traits.items()},
        )  # fmt: skip


def population(rng: np.random.Generator, n: int, prefix: str, first_user: int = 0) -> Population:
    """`n` people with ids `<prefix>-<n>` and hex anonymous ids; countries, devices and channels by weight."""
    country = rng.choice(len(COUNTRIES), n, p=weights(COUNTRIES, 3))
    octets = np.array([c[4] for c in COUNTRIES])[country, rng.integers(0, 3, n)]
    parts = [pa.array(octets.astype(str))] + [pa.array(rng.integers(1, 255, n).astype(str)) for _ in range(3)]
    anon = rng.integers(0, 2**63 - 1, n, dtype=np.int64)
    return Population(
        anonymous_id=_flat(pa.array(np.char.add("anon-", np.char.zfill(np.char.mod("%x", anon), 16)))),
        user_id=_flat(pa.array(np.char.add(f"{prefix}-", (np.arange(n) + first_user).astype(str)))),
        country=country,
        agent=rng.choice(len(AGENTS), n, p=weights(AGENTS, 2)),
        ip=_flat(pc.binary_join_element_wise(*parts, ".")),
        channel=rng.choice(len(CHANNELS), n, p=weights(CHANNELS, 5)),
    )


def arrivals(rng: np.random.Generator, n: int, start_us: int, end_us: int, growth: float = 0.5) -> np.ndarray:
    """`n` times in [start, end): days weighted by weekday and a linear growth, hours by HOUR_WEIGHTS."""
    first_day = start_us // DAY_US
    days = np.arange(first_day, (end_us - 1) // DAY_US + 1)
    w = WEEKDAY_WEIGHTS[(days + 3) % 7] * (1 + growth * np.linspace(0, 1, len(days)))
    day = rng.choice(days, n, p=w / w.sum())
    times = day * DAY_US + time_of_day(rng, n)
    # a partial first or last day: times outside the range are drawn again uniformly within its part of that day
    early, late = times < start_us, times >= end_us
    times[early] = rng.integers(start_us, min(end_us, (start_us // DAY_US + 1) * DAY_US), int(early.sum()))
    times[late] = rng.integers(max(start_us, (end_us - 1) // DAY_US * DAY_US), end_us, int(late.sum()))
    return times


def time_of_day(rng: np.random.Generator, n: int) -> np.ndarray:
    hour = rng.choice(24, n, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    return hour * HOUR_US + rng.integers(0, HOUR_US, n)


def snap_to_day_profile(rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
    """The same days, at a time of day drawn from HOUR_WEIGHTS."""
    return (times // DAY_US) * DAY_US + time_of_day(rng, len(times))


def keep_by_weekday(rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
    """A mask thinning `times` by weekday (the busiest day keeps all)."""
    accept = WEEKDAY_WEIGHTS / WEEKDAY_WEIGHTS.max()
    return rng.random(len(times)) < accept[(times // DAY_US + 3) % 7]


def segment_offsets(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of `counts` items: each item's group index and its position within the group."""
    group = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return group, np.arange(int(counts.sum())) - np.repeat(starts, counts)


@dataclass
class Events:
    """Events as columns: time (µs), person index, event name index, whether the user id is sent, session
    channel (index into CHANNELS), page path, and extra properties (Arrow arrays, null where absent)."""

    time: np.ndarray
    person: np.ndarray
    name: np.ndarray
    identified: np.ndarray
    channel: np.ndarray
    path: pa.Array
    props: dict[str, pa.Array] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.time)

    def take(self, index: np.ndarray) -> Events:
        idx = pa.array(index)
        return Events(
            self.time[index], self.person[index], self.name[index], self.identified[index], self.channel[index],
            self.path.take(idx), {k: v.take(idx) for k, v in self.props.items()},
        )  # fmt: skip

    def sorted(self) -> Events:
        return self.take(np.argsort(self.time, kind="stable"))


def _flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array (pa.array of a large numpy array may give a chunked one)."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def concat(parts: list[Events]) -> Events:
    names = sorted({k for p in parts for k in p.props})

    def column(p: Events, key: str, typ: pa.DataType) -> pa.Array:
        return _flat(p.props[key]).cast(typ) if key in p.props else pa.nulls(len(p), typ)

    types = {k: next(p.props[k].type for p in parts if k in p.props) for k in names}
    return Events(
        np.concatenate([p.time for p in parts]), np.concatenate([p.person for p in parts]),
        np.concatenate([p.name for p in parts]), np.concatenate([p.identified for p in parts]),
        np.concatenate([p.channel for p in parts]), pa.concat_arrays([_flat(p.path) for p in parts]),
        {k: pa.concat_arrays([column(p, k, types[k]) for p in parts]) for k in names},
    )  # fmt: skip


def _fragment(key: str, values: pa.Array) -> pa.Array:
    """`,"key":value` (JSON) per row, null where the value is null."""
    if pa.types.is_string(values.type):
        return pc.binary_join_element_wise(f',"{key}":"', values, '"', "")
    if pa.types.is_boolean(values.type):
        text = pc.if_else(values, "true", "false")
    else:
        text = values.cast(pa.string())
    return pc.binary_join_element_wise(f',"{key}":', text, "")


def _parts(events: Events, people: Population, names: list[str], site: str) -> dict[str, pa.Array]:
    """The pieces of each event's Segment JSON: ids, name, properties body, context fields (Arrow arrays)."""
    n = len(events)
    person = pa.array(events.person)
    name = pa.array(np.array(names, dtype=object)[events.name].astype(str))
    props = [_fragment(k, v.take(person)) for k, v in people.traits.items()]
    props.append(
        _fragment("country", pa.array([c[0] for c in COUNTRIES]).take(pa.array(people.country[events.person])))
    )
    props.append(_fragment("device", pa.array([a[0] for a in AGENTS]).take(pa.array(people.agent[events.person]))))
    props += [_fragment(k, v) for k, v in events.props.items()]
    body = pc.binary_join_element_wise(*props, "", null_handling="replace", null_replacement="")
    channel = pa.array(events.channel)
    query = pa.array(
        [f"?utm_source={c[2]}&utm_medium={c[3]}&utm_campaign={c[4]}" if c[2] else "" for c in CHANNELS]
    ).take(channel)
    campaign = pa.array(
        [f',"campaign":{{"source":"{c[2]}","medium":"{c[3]}","name":"{c[4]}"}}' if c[2] else "" for c in CHANNELS]
    ).take(channel)
    return {
        "name": name,
        "identify": pc.equal(name, "identify"),
        "user": pc.if_else(pa.array(events.identified), people.user_id.take(person), pa.nulls(n, pa.string())),
        "anonymous": people.anonymous_id.take(person),
        "body": pc.utf8_slice_codeunits(body, 1),  # without the first fragment's comma
        "ip": people.ip.take(person),
        "agent": pa.array([a[1] for a in AGENTS]).take(pa.array(people.agent[events.person])),
        "locale": pa.array([c[1] for c in COUNTRIES]).take(pa.array(people.country[events.person])),
        "url": pc.binary_join_element_wise(f"https://{site}", events.path, query, ""),
        "referrer": pa.array([c[1] for c in CHANNELS]).take(channel),
        "campaign": campaign,
        "row": pa.array(np.arange(n).astype(str)),
    }


def _context(p: dict[str, pa.Array]) -> pa.Array:
    return pc.binary_join_element_wise(
        '{"ip":"', p["ip"], '","userAgent":"', p["agent"], '","locale":"', p["locale"], '","page":{"url":"', p["url"],
        '","referrer":"', p["referrer"], '"}', p["campaign"], "}", "",
    )  # fmt: skip


def render(events: Events, people: Population, names: list[str], site: str, message_prefix: str) -> pa.Array:
    """One Segment JSON text per event (an `identify` call where the name is `identify`); `messageId` is
    `<message_prefix>-<row>`. Values are known to need no JSON escaping (ids, names and paths of the scenarios)."""
    p = _parts(events, people, names, site)
    head = pc.if_else(
        p["identify"],
        '{"type":"identify"',
        pc.binary_join_element_wise('{"type":"track","event":"', p["name"], '"', ""),
    )
    stamp = pc.strftime(pa.array(events.time // 1000, pa.timestamp("ms")), format="%Y-%m-%dT%H:%M:%S")
    pieces = [
        head, pc.binary_join_element_wise(',"userId":"', p["user"], '"', ""),
        ',"anonymousId":"', p["anonymous"], f'","messageId":"{message_prefix}-', p["row"], '","timestamp":"', stamp,
        'Z"', pc.if_else(p["identify"], ',"traits":{', ',"properties":{'), p["body"], '},"context":', _context(p), "}",
    ]  # fmt: skip
    return _flat(pc.binary_join_element_wise(*pieces, "", null_handling="replace", null_replacement=""))


def lake_rows(
    events: Events, people: Population, names: list[str], site: str, message_prefix: str, source: str,
    received_us: int, first_row: int,
) -> pa.Table:  # fmt: skip
    """The rows the importer would make of `render()`'s lines (headwater.core.events.EVENTS_SCHEMA), with the
    stage inputs (`_ip`, `_user_agent`, ...; `_log_offset` from `first_row`), built without parsing JSON."""
    from headwater.core.events import EVENTS_SCHEMA
    from headwater.core.stages import INPUT_COLUMNS

    n = len(events)
    p = _parts(events, people, names, site)
    body = pc.binary_join_element_wise("{", p["body"], "}", "")
    none = pa.nulls(n, pa.string())
    ts = pa.timestamp("us")
    columns: dict[str, pa.Array] = {
        "event_id": pc.binary_join_element_wise(f"{message_prefix}-", p["row"], ""),
        "type": pc.if_else(p["identify"], "identify", "track"),
        "event": pc.if_else(p["identify"], none, p["name"]),
        "user_id": p["user"],
        "anonymous_id": p["anonymous"],
        "group_id": none,
        "previous_id": none,
        "timestamp": pa.array(events.time // 1000 * 1000).cast(ts),
        "received_at": pa.array(np.full(n, received_us, np.int64)).cast(ts),
        "sent_at": pa.nulls(n, ts),
        "source": pa.array(np.full(n, source, dtype=object), pa.string()),
        "properties": pc.if_else(p["identify"], none, body),
        "context": _context(p),
        "traits": pc.if_else(p["identify"], body, none),
        "_ip": p["ip"],
        "_user_agent": p["agent"],
        "_url": p["url"],
        "_referrer": pc.if_else(pc.equal(p["referrer"], ""), none, p["referrer"]),
        "_endpoint": pa.array(np.full(n, "batch", dtype=object), pa.string()),
        "_log_partition": pa.array(np.zeros(n, np.int32)),
        "_log_offset": pa.array(np.arange(first_row, first_row + n, dtype=np.int64)),
    }
    schema = pa.schema([*EVENTS_SCHEMA, *(pa.field(k, v) for k, v in INPUT_COLUMNS.items())])
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in schema], schema=schema)


@dataclass
class GroundTruth:
    """What the generator put in the data, for tests and curious analysts (written as JSON by `--truth`)."""

    scenario: str
    seed: int
    users: int
    events: int
    start: str
    end: str
    identified_people: int = 0
    anonymous_people: int = 0
    funnel: dict[str, Any] = field(default_factory=dict)
    experiment: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Scenario:
    """A generated scenario: events (unsorted), the people, the event names and the truth."""

    events: Events
    people: Population
    names: list[str]
    site: str
    truth: GroundTruth
    state: dict[str, np.ndarray] = field(default_factory=dict)  # per person, at the end (for live traffic)
