"""The web shop: visitors browse, some sign up (identify), activate, reach checkout and order.

People arrive over the period (growing, weekly and daily seasonality; a warm-up of `WARMUP_DAYS` before it so
the first days already have returning visitors) through an acquisition channel, browse in sessions, and come
back after exponential gaps until they churn (a per-person chance to continue, so retention decays the way real
curves do). Of the visitors `SIGNUP` sign up (in their first session or days later: their earlier anonymous
events are stitched to them by the `identify`), and after signing up:

- `Activated` with probability `ACTIVATE`, within 3 days;
- first `Added to Cart` (reaching checkout) with probability `REACH_CHECKOUT` after activation, within 4 days;
  at that moment the person is exposed to the experiment `checkout-button` (`$experiment_started`, `variant`
  control | new-button, half each);
- first `Order Completed` with the variant's probability `ORDER[variant]`, within 5 days of exposure (so
  every order of the funnel lies within 14 days of signing up);
- buyers come back to buy again (`REPEAT` of their later sessions), which makes retention from `Signed Up` to
  `Order Completed` a real curve.

The ground truth holds those designed rates and the counts realised in the data for the people whose 14-day
window is complete (signed up, or exposed, at least 14 days before the end).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from headwater.loadgen.scenarios.base import (
    COUNTRIES,
    DAY_US,
    HOUR_US,
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

NAMES = ["Page Viewed", "Product Viewed", "Added to Cart", "Signed Up", "identify", "Activated",
         "$experiment_started", "Order Completed"]  # fmt: skip
PAGE, PRODUCT, CART, SIGNUP_EVENT, IDENTIFY, ACTIVATED, EXPOSURE, ORDER_EVENT = range(len(NAMES))
PATHS = ["/", "/products/", "/cart", "/signup", "/signup", "/account/welcome", "/checkout", "/checkout/complete"]
PAGE_PATHS = ["/", "/", "/new", "/sale", "/category/shoes", "/category/bags", "/category/outdoor", "/journal"]
CATEGORIES = ["shoes", "bags", "outdoor", "accessories", "home"]
PLANS = (["free", "pro", "team"], [0.62, 0.28, 0.10])
WARMUP_DAYS = 28
WINDOW_DAYS = 14
SIGNUP = 0.32
ACTIVATE = 0.62
REACH_CHECKOUT = 0.55
VARIANTS = ["control", "new-button"]
ORDER = [0.40, 0.48]  # first order within 5 days of exposure, per variant: new-button lifts it by 8 points
REPEAT = 0.3
PRODUCTS = 60
EVENTS_PER_USER = 11.0  # events per visitor of the period, about (warm-up people included): to size a run by events


def _browse(
    rng: np.random.Generator, person: np.ndarray, start: np.ndarray, channel: np.ndarray, mean: float, gap_s: float
) -> Events:
    """Sessions of page and product views: one session per (person, start)."""
    counts = 1 + rng.poisson(mean - 1, len(person))
    group, pos = segment_offsets(counts)
    gaps = rng.exponential(gap_s * US, len(group)).astype(np.int64)
    gaps[pos == 0] = 0
    total = np.cumsum(gaps)
    first = np.cumsum(counts) - counts
    times = start[group] + total - np.repeat(total[first], counts)
    name = np.where((pos > 0) & (rng.random(len(group)) < 0.45), PRODUCT, PAGE)
    return _with_products(
        rng,
        Events(
            times,
            person[group],
            name,
            np.zeros(len(group), bool),
            channel[group],
            pa.array(np.array(PAGE_PATHS)[rng.integers(0, len(PAGE_PATHS), len(group))]),
        ),
    )


def _with_products(rng: np.random.Generator, events: Events) -> Events:
    """Product properties on product views and cart additions; product paths for product views."""
    n = len(events)
    sku = rng.integers(0, PRODUCTS, n)
    has = np.isin(events.name, [PRODUCT, CART])
    price = np.round(np.exp(3.2 + 0.8 * ((sku * 7919) % 100) / 100.0) - 0.01, 2)
    ids = np.char.add("sku-", sku.astype(str))
    path = np.where(events.name == PRODUCT, np.char.add("/products/", ids), np.asarray(events.path, dtype=str))
    events.path = pa.array(path)
    events.props["product_id"] = pa.array(ids, mask=~has)
    events.props["category"] = pa.array(np.array(CATEGORIES)[sku % len(CATEGORIES)], mask=~has)
    events.props["price"] = pa.array(price, mask=~has)
    return events


def _single(person: np.ndarray, times: np.ndarray, name: int, channel: np.ndarray) -> Events:
    n = len(person)
    return Events(times, person, np.full(n, name), np.ones(n, bool), channel, pa.array([PATHS[name]] * n, pa.string()))


def generate(seed: int, users: int, start_us: int, end_us: int) -> Scenario:
    """`users` visitors arriving in [start, end) (plus the warm-up's), their events in [start, end)."""
    rng = np.random.default_rng(seed)
    days = max(1.0, (end_us - start_us) / DAY_US)
    n = users + int(users * WARMUP_DAYS / days)
    people = population(rng, n, "user")
    plan = rng.choice(len(PLANS[0]), n, p=PLANS[1])
    people.traits["plan"] = pa.array(np.array(PLANS[0])[plan])
    acquired = arrivals(rng, n, start_us - WARMUP_DAYS * DAY_US, end_us)
    everyone = np.arange(n)

    # milestones
    signed = rng.random(n) < SIGNUP
    later = rng.random(n) < 0.4
    signup_delay = np.where(
        later, HOUR_US + rng.exponential(2 * DAY_US, n), rng.uniform(2 * MINUTE_US, 12 * MINUTE_US, n)
    ).astype(np.int64)
    signup_t = np.where(signed, acquired + signup_delay, np.iinfo(np.int64).max)
    activated = signed & (rng.random(n) < ACTIVATE)
    act_t = signup_t + np.clip(rng.lognormal(np.log(5 * HOUR_US), 1.0, n), 10 * MINUTE_US, 3 * DAY_US).astype(np.int64)
    exposed = activated & (rng.random(n) < REACH_CHECKOUT)
    cart_t = act_t + np.clip(rng.lognormal(np.log(20 * HOUR_US), 1.0, n), 5 * MINUTE_US, 4 * DAY_US).astype(np.int64)
    variant = rng.integers(0, 2, n)
    ordered = exposed & (rng.random(n) < np.array(ORDER)[variant])
    soon = rng.random(n) < 0.65
    order_delay = np.where(
        soon, rng.uniform(3 * MINUTE_US, 20 * MINUTE_US, n), rng.uniform(DAY_US / 2, 5 * DAY_US, n)
    ).astype(np.int64)
    order_t = cart_t + order_delay

    # returning visits: a per-person chance to come back after each visit, gaps of a per-person mean
    keep_on = np.where(signed, rng.beta(6, 2.2, n), rng.beta(1.5, 5, n))
    visits = np.minimum(rng.geometric(1 - keep_on) - 1, 80)
    who, _ = segment_offsets(visits)
    mean_gap = np.where(signed, rng.lognormal(np.log(4 * DAY_US), 0.7, n), rng.lognormal(np.log(6 * DAY_US), 0.7, n))
    gaps = rng.exponential(1.0, len(who)) * mean_gap[who]
    total = np.cumsum(gaps)
    first = np.cumsum(visits) - visits
    before = np.concatenate([[0.0], total])[first]  # the gaps of earlier people
    return_t = snap_to_day_profile(rng, (acquired[who] + total - np.repeat(before, visits)).astype(np.int64))
    keep = keep_by_weekday(rng, return_t) & (return_t < end_us) & (return_t >= start_us - DAY_US)
    who, return_t = who[keep], return_t[keep]
    revisit_channel = np.where(
        rng.random(len(who)) < 0.45, people.channel[who], np.where(signed[who] & (rng.random(len(who)) < 0.4), 6, 0)
    )

    parts = [
        _browse(rng, everyone, acquired, people.channel, 4.5, 45),
        _browse(rng, who, return_t, revisit_channel, 3.5, 40),
    ]
    # sessions leading to each milestone that is not in the first visit
    for mask, times in ((signed & later, signup_t), (activated, act_t), (exposed, cart_t), (ordered & ~soon, order_t)):
        idx = everyone[mask]
        lead = rng.uniform(MINUTE_US, 6 * MINUTE_US, len(idx)).astype(np.int64)
        session = _browse(rng, idx, times[idx] - lead, people.channel[idx], 2.2, 30)
        session.time = np.minimum(session.time, times[session.person] - US)
        parts.append(session)
    idx = everyone[signed]
    parts.append(_single(idx, signup_t[idx], SIGNUP_EVENT, people.channel[idx]))
    parts[-1].props["method"] = pa.array(
        np.array(["email", "google", "apple"])[rng.choice(3, len(idx), p=[0.55, 0.35, 0.1])]
    )
    parts.append(_single(idx, signup_t[idx] + 1000, IDENTIFY, people.channel[idx]))
    idx = everyone[activated]
    parts.append(_single(idx, act_t[idx], ACTIVATED, people.channel[idx]))
    idx = everyone[exposed]
    parts.append(_with_products(rng, _single(idx, cart_t[idx], CART, people.channel[idx])))
    exposure = _single(idx, cart_t[idx] + 2 * US, EXPOSURE, people.channel[idx])
    exposure.props["experiment"] = pa.array(["checkout-button"] * len(idx), pa.string())
    exposure.props["variant"] = pa.array(np.array(VARIANTS)[variant[idx]])
    parts.append(exposure)
    idx = everyone[ordered]
    parts.append(_order(rng, people.country, plan, idx, order_t[idx], people.channel[idx]))
    # repeat purchases in later visits of buyers, abandoned carts of exposed people who did not buy
    again = ordered[who] & (return_t > order_t[who] + HOUR_US) & (rng.random(len(who)) < REPEAT)
    abandon = exposed[who] & ~ordered[who] & (return_t > cart_t[who] + HOUR_US) & (rng.random(len(who)) < 0.08)
    for mask in (again, abandon):
        at = return_t[mask] + rng.uniform(MINUTE_US, 5 * MINUTE_US, int(mask.sum())).astype(np.int64)
        parts.append(_with_products(rng, _single(who[mask], at, CART, revisit_channel[mask])))
    at = return_t[again] + rng.uniform(6 * MINUTE_US, 15 * MINUTE_US, int(again.sum())).astype(np.int64)
    parts.append(_order(rng, people.country, plan, who[again], at, revisit_channel[again]))

    events = concat(parts)
    events.identified = signed[events.person] & (events.time >= signup_t[events.person])
    events = events.take(np.flatnonzero((events.time >= start_us) & (events.time < end_us)))
    truth = _truth(
        seed, users, start_us, end_us, events, signed, signup_t, activated, exposed, cart_t, ordered, variant
    )
    never = np.iinfo(np.int64).max
    state = {
        "signed_at": np.where(signup_t < end_us, signup_t, never), "plan": plan, "keep_on": keep_on,
        "activated": activated & (act_t < end_us), "exposed": exposed & (cart_t < end_us), "variant": variant,
        "ordered": ordered & (order_t < end_us), "arrived": acquired < end_us,
    }  # fmt: skip
    return Scenario(events, people, NAMES, "shop.example.com", truth, state)


def _order(
    rng: np.random.Generator, country: np.ndarray, plan: np.ndarray, person: np.ndarray, times: np.ndarray,
    channel: np.ndarray,
) -> Events:  # fmt: skip
    events = _single(person, times, ORDER_EVENT, channel)
    items = 1 + rng.poisson(0.7, len(person))
    spend = 1.0 + 0.35 * plan[person]
    revenue = np.round(items * rng.lognormal(np.log(42), 0.45, len(person)) * spend, 2)
    events.props["revenue"] = pa.array(revenue)
    events.props["currency"] = pa.array(np.array([c[2] for c in COUNTRIES])[country[person]])
    events.props["items"] = pa.array(items.astype(np.int64))
    return events


def _truth(
    seed: int, users: int, start_us: int, end_us: int, events: Events, signed: np.ndarray, signup_t: np.ndarray,
    activated: np.ndarray, exposed: np.ndarray, cart_t: np.ndarray, ordered: np.ndarray, variant: np.ndarray,
) -> GroundTruth:  # fmt: skip
    complete_end = end_us - WINDOW_DAYS * DAY_US
    seen = np.zeros(len(signed), bool)
    seen[events.person] = True
    cohort = signed & (signup_t >= start_us) & (signup_t < complete_end)
    reached = [int(cohort.sum()), int((cohort & activated).sum()), int((cohort & activated & ordered).sum())]
    exposures = exposed & (cart_t + 2 * US >= start_us) & (cart_t + 2 * US < complete_end)
    per_variant = {}
    for index, name in enumerate(VARIANTS):
        group = exposures & (variant == index)
        per_variant[name] = {
            "true_rate": ORDER[index],
            "exposed": int(group.sum()),
            "converted": int((group & ordered).sum()),
        }
    order_rate = REACH_CHECKOUT * (ORDER[0] + ORDER[1]) / 2
    return GroundTruth(
        scenario="shop", seed=seed, users=users, events=len(events), start=to_iso(start_us), end=to_iso(end_us),
        identified_people=int((seen & signed & (signup_t < end_us)).sum()),
        anonymous_people=int((seen & ~(signed & (signup_t < end_us))).sum()),
        funnel={
            "steps": ["Signed Up", "Activated", "Order Completed"], "window_days": WINDOW_DAYS,
            "rates_from_previous": [1.0, ACTIVATE, order_rate], "range": [to_iso(start_us), to_iso(complete_end)],
            "reached": reached,
        },
        experiment={
            "experiment": "checkout-button", "exposure_event": "$experiment_started", "variant_property": "variant",
            "goal_event": "Order Completed", "window_days": WINDOW_DAYS, "control": "control",
            "true_difference": ORDER[1] - ORDER[0], "true_lift": (ORDER[1] - ORDER[0]) / ORDER[0],
            "range": [to_iso(start_us), to_iso(complete_end)], "variants": per_variant,
        },
        notes={"signup_rate": SIGNUP, "warmup_days": WARMUP_DAYS, "repeat_purchase_per_visit": REPEAT},
    )  # fmt: skip


def _grow(rng: np.random.Generator, scenario: Scenario, count: int) -> None:
    """`count` more people who have not arrived yet (ids continue the scenario's)."""
    if count <= 0:  # a block of fewer than 4 visits (a low live rate) brings nobody new
        return
    more = population(rng, count, "user", first_user=scenario.people.size)
    plan = rng.choice(len(PLANS[0]), count, p=PLANS[1])
    more.traits["plan"] = pa.array(np.array(PLANS[0])[plan])
    scenario.people = scenario.people.extend(more)
    st = scenario.state
    added = {
        "signed_at": np.full(count, np.iinfo(np.int64).max), "plan": plan, "keep_on": rng.beta(1.5, 5, count),
        "activated": np.zeros(count, bool), "exposed": np.zeros(count, bool), "variant": rng.integers(0, 2, count),
        "ordered": np.zeros(count, bool), "arrived": np.zeros(count, bool),
    }  # fmt: skip
    for key, values in added.items():
        st[key] = np.concatenate([st[key], values])


def live(rng: np.random.Generator, scenario: Scenario, start_us: int, end_us: int, sessions: int) -> Events:
    """`sessions` visits starting in [start, end) by the scenario's people (updating `scenario.state`): regulars
    come back more often, people who had not arrived yet arrive, and each step of the funnel happens with a
    per-visit chance (the experiment's variants keep their conversion rates)."""
    fresh = int(sessions * 0.3)
    _grow(rng, scenario, fresh)
    st, people = scenario.state, scenario.people
    pool = np.flatnonzero(st["arrived"])
    newcomers = np.flatnonzero(~st["arrived"])
    weight = st["keep_on"][pool] / st["keep_on"][pool].sum()
    person = np.concatenate([rng.choice(pool, sessions - fresh, p=weight), newcomers[:fresh]])
    st["arrived"][newcomers[:fresh]] = True
    begin = rng.integers(start_us, end_us, len(person))
    channel = np.where(rng.random(len(person)) < 0.5, people.channel[person], 0)
    parts = [_browse(rng, person, begin, channel, 4.0, 25)]
    end_of = begin + 4 * MINUTE_US
    never = np.iinfo(np.int64).max
    signs = (st["signed_at"][person] == never) & (rng.random(len(person)) < 0.12)
    idx = person[signs]
    st["signed_at"][idx] = end_of[signs]
    parts.append(_single(idx, end_of[signs], SIGNUP_EVENT, channel[signs]))
    parts[-1].props["method"] = pa.array(np.array(["email", "google", "apple"])[rng.integers(0, 3, len(idx))])
    parts.append(_single(idx, end_of[signs] + 1000, IDENTIFY, channel[signs]))
    acts = (st["signed_at"][person] < begin) & ~st["activated"][person] & (rng.random(len(person)) < 0.35)
    st["activated"][person[acts]] = True
    parts.append(_single(person[acts], end_of[acts], ACTIVATED, channel[acts]))
    carts = st["activated"][person] & ~st["exposed"][person] & ~acts & (rng.random(len(person)) < 0.3)
    idx = person[carts]
    st["exposed"][idx] = True
    parts.append(_with_products(rng, _single(idx, end_of[carts], CART, channel[carts])))
    exposure = _single(idx, end_of[carts] + 2 * US, EXPOSURE, channel[carts])
    exposure.props["experiment"] = pa.array(["checkout-button"] * len(idx), pa.string())
    exposure.props["variant"] = pa.array(np.array(VARIANTS)[st["variant"][idx]])
    parts.append(exposure)
    buys = carts & (rng.random(len(person)) < np.array(ORDER)[st["variant"][person]])
    again = st["ordered"][person] & (rng.random(len(person)) < REPEAT)
    st["ordered"][person[buys]] = True
    parts.append(_with_products(rng, _single(person[again], end_of[again], CART, channel[again])))
    buyers = buys | again
    at = end_of[buyers] + rng.uniform(MINUTE_US, 6 * MINUTE_US, int(buyers.sum())).astype(np.int64)
    parts.append(_order(rng, people.country, st["plan"], person[buyers], at, channel[buyers]))
    events = concat(parts)
    events.identified = st["signed_at"][events.person] <= events.time
    return events
