"""A mobile app: installs, sessions of screens, push notifications, a trial and paid subscriptions.

People install the app (`App Installed`, then `App Opened` and screens: `Screen Viewed` with `screen`), come back
in sessions (a per-person chance to return and a per-person mean gap: the retention curve of an app), get push
notifications (`Push Received`, of which `PUSH_OPEN` are opened: `Push Opened` then a session), sign in
(`Signed In` + `identify`), and some start a trial (`Trial Started`) and subscribe (`Subscription Started`:
plan, revenue, currency). The truth's funnel: App Installed → Signed In → Subscription Started within 14 days.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from headwater.loadgen.scenarios.base import (
    AGENTS,
    COUNTRIES,
    DAY_US,
    MINUTE_US,
    US,
    Events,
    GroundTruth,
    Scenario,
    arrivals,
    concat,
    keep_by_weekday,
    population,
    segment_offsets,
    snap_to_day_profile,
    to_iso,
)

NAMES = ["App Installed", "App Opened", "Screen Viewed", "Push Received", "Push Opened", "Signed In", "identify",
         "Trial Started", "Subscription Started"]  # fmt: skip
INSTALL, OPEN, SCREEN, PUSH, PUSH_OPEN_EVENT, SIGN_IN, IDENTIFY, TRIAL, SUBSCRIBE = range(len(NAMES))
SCREENS = ["Home", "Home", "Feed", "Search", "Item", "Item", "Profile", "Settings", "Paywall"]
SIGN_IN_P, SUBSCRIBE_P, PUSH_OPEN = 0.55, 0.22, 0.18
PLANS = (["monthly", "yearly"], [0.7, 0.3], [7.99, 59.99])
EVENTS_PER_USER = 27.0


def _one(person: np.ndarray, times: np.ndarray, name: int, channel: np.ndarray) -> Events:
    n = len(person)
    path = "/" + NAMES[name].lower().replace(" ", "-")
    return Events(times, person, np.full(n, name), np.ones(n, bool), channel, pa.array([path] * n, pa.string()))


def _sessions(rng: np.random.Generator, person: np.ndarray, start: np.ndarray, channel: np.ndarray) -> list[Events]:
    """`App Opened` then screens, 10 to 60 s apart."""
    opened = _one(person, start, OPEN, channel)
    counts = 1 + rng.poisson(3.5, len(person))
    group, pos = segment_offsets(counts)
    times = start[group] + (pos + 1) * rng.integers(10 * US, 60 * US, len(group))
    screen = np.array(SCREENS)[rng.integers(0, len(SCREENS), len(group))]
    screens = Events(times, person[group], np.full(len(group), SCREEN), np.ones(len(group), bool), channel[group],
                     pa.array(np.char.add("/", np.char.lower(screen))), {"screen": pa.array(screen)})  # fmt: skip
    return [opened, screens]


def generate(seed: int, users: int, start_us: int, end_us: int) -> Scenario:
    """`users` installs over [start, end) (and a warm-up month before), their events in [start, end)."""
    rng = np.random.default_rng(seed)
    days = max(1.0, (end_us - start_us) / DAY_US)
    n = users + int(users * 28 / days)
    people = population(rng, n, "member")
    phones = np.array([i for i, agent in enumerate(AGENTS) if agent[0] != "desktop"])
    people.agent = phones[rng.integers(0, len(phones), n)]  # an app: phones and tablets
    people.traits["app_version"] = pa.array(
        np.array(["5.2.0", "5.3.1", "5.4.0"])[rng.choice(3, n, p=[0.15, 0.35, 0.5])]
    )
    everyone = np.arange(n)
    installed = arrivals(rng, n, start_us - 28 * DAY_US, end_us)
    signed = rng.random(n) < SIGN_IN_P
    sign_t = np.where(signed, installed + rng.integers(MINUTE_US, 3 * DAY_US, n), np.iinfo(np.int64).max)
    subscribed = signed & (rng.random(n) < SUBSCRIBE_P)
    trial_t = sign_t + rng.integers(MINUTE_US, 2 * DAY_US, n)
    sub_t = trial_t + 7 * DAY_US  # a 7-day trial
    keep_on = rng.beta(4, 2, n)
    visits = np.minimum(rng.geometric(1 - keep_on) - 1, 120)
    who, _ = segment_offsets(visits)
    gaps = rng.exponential(1.0, len(who)) * rng.lognormal(np.log(1.5 * DAY_US), 0.8, n)[who]
    total = np.cumsum(gaps)
    before = np.concatenate([[0.0], total])[np.cumsum(visits) - visits]
    at = snap_to_day_profile(rng, (installed[who] + total - np.repeat(before, visits)).astype(np.int64))
    keep = keep_by_weekday(rng, at) & (at >= start_us - DAY_US) & (at < end_us)
    who, at = who[keep], at[keep]
    pushes = rng.random(len(who)) < 0.25  # some visits follow a push notification
    parts = _sessions(rng, np.concatenate([everyone, who]), np.concatenate([installed + US, at]),
                      people.channel[np.concatenate([everyone, who])])  # fmt: skip
    parts.append(_one(everyone, installed, INSTALL, people.channel))
    push_t = at[pushes] - rng.integers(10 * US, 10 * MINUTE_US, int(pushes.sum()))
    parts.append(_one(who[pushes], push_t, PUSH, people.channel[who[pushes]]))
    parts.append(_one(who[pushes], at[pushes] - US, PUSH_OPEN_EVENT, people.channel[who[pushes]]))
    idle = rng.random(n) < 0.5  # pushes that were not opened
    idle_t = installed + rng.integers(DAY_US, 10 * DAY_US, n)
    parts.append(_one(everyone[idle], idle_t[idle], PUSH, people.channel[idle]))
    for mask, times, name in (
        (signed, sign_t, SIGN_IN),
        (signed, sign_t + 1000, IDENTIFY),
        (subscribed, trial_t, TRIAL),
    ):
        parts.append(_one(everyone[mask], times[mask], name, people.channel[mask]))
    idx = everyone[subscribed]
    plan = rng.choice(2, len(idx), p=PLANS[1])
    subscription = _one(idx, sub_t[idx], SUBSCRIBE, people.channel[idx])
    subscription.props["plan"] = pa.array(np.array(PLANS[0])[plan])
    subscription.props["revenue"] = pa.array(np.array(PLANS[2])[plan])
    subscription.props["currency"] = pa.array(np.array([c[2] for c in COUNTRIES])[people.country[idx]])
    parts.append(subscription)
    events = concat(parts)
    events.identified = events.time >= sign_t[events.person]
    events = events.take(np.flatnonzero((events.time >= start_us) & (events.time < end_us)))
    complete = end_us - 14 * DAY_US
    cohort = (installed >= start_us) & (installed < complete)
    seen = np.zeros(n, bool)
    seen[events.person] = True
    truth = GroundTruth(
        scenario="app", seed=seed, users=users, events=len(events), start=to_iso(start_us), end=to_iso(end_us),
        identified_people=int((seen & (sign_t < end_us)).sum()),
        anonymous_people=int((seen & (sign_t >= end_us)).sum()),
        funnel={"steps": ["App Installed", "Signed In", "Subscription Started"], "window_days": 14,
                "rates_from_previous": [1.0, SIGN_IN_P, SUBSCRIBE_P], "range": [to_iso(start_us), to_iso(complete)],
                "reached": [int(cohort.sum()), int((cohort & signed).sum()), int((cohort & subscribed).sum())]},
        notes={"trial_days": 7, "push_open_rate": PUSH_OPEN},
    )  # fmt: skip
    state = {"keep_on": keep_on, "signed_at": sign_t}
    return Scenario(events, people, NAMES, "app.example.com", truth, state)


def live(rng: np.random.Generator, scenario: Scenario, start_us: int, end_us: int, sessions: int) -> Events:
    """`sessions` app sessions starting in [start, end) by the scenario's people (regulars more often)."""
    weight = scenario.state["keep_on"] / scenario.state["keep_on"].sum()
    person = rng.choice(len(weight), sessions, p=weight)
    begin = rng.integers(start_us, end_us, sessions)
    events = concat(_sessions(rng, person, begin, scenario.people.channel[person]))
    events.identified = scenario.state["signed_at"][events.person] <= events.time
    return events
