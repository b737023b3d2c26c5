"""Channel, referrer domain, UTM parameters and click ids from page URLs and referrers."""

from __future__ import annotations

import pytest

from headwater.enrich.referrer import ReferrerStage, site_kind
from tests.unit.test_enrich_common import events_table, run

PAGE = "https://shop.example/p"
# (url, referrer) -> (channel, referrer_domain, utm_source, utm_medium, utm_campaign, utm_term, utm_content, click_id)
CASES = [
    (
        (
            PAGE + "?utm_source=google&utm_medium=cpc&utm_campaign=spring%20sale&gclid=Cj0KCQiA",
            "https://www.google.com/",
        ),
        ("paid", "google.com", "google", "cpc", "spring sale", None, None, "gclid:Cj0KCQiA"),
    ),
    (
        (PAGE + "?msclkid=abc123&utm_source=bing", None),
        ("paid", None, "bing", None, None, None, None, "msclkid:abc123"),
    ),
    (
        (PAGE + "?x=1&ttclid=E.C.P.v3", "https://www.tiktok.com/"),
        ("paid", "tiktok.com", None, None, None, None, None, "ttclid:E.C.P.v3"),
    ),
    (
        (PAGE + "?utm_source=partner&utm_medium=display", None),
        ("paid", None, "partner", "display", None, None, None, None),
    ),
    # Meta adds fbclid to organic links: social, unless the medium says paid
    (
        (PAGE + "?fbclid=IwAR2x", "https://l.facebook.com/"),
        ("social", "l.facebook.com", None, None, None, None, None, "fbclid:IwAR2x"),
    ),
    (
        (PAGE + "?fbclid=IwAR2x&utm_medium=paid_social", None),
        ("paid", None, None, "paid_social", None, None, None, "fbclid:IwAR2x"),
    ),
    (
        (PAGE + "?utm_source=newsletter&utm_medium=email&utm_content=btn+top", None),
        ("email", None, "newsletter", "email", None, None, "btn top", None),
    ),
    ((PAGE, "https://mail.google.com/mail/u/0/"), ("email", "mail.google.com", None, None, None, None, None, None)),
    (
        (PAGE, "android-app://com.google.android.gm/"),
        ("email", "com.google.android.gm", None, None, None, None, None, None),
    ),
    ((PAGE + "#utm_source=fb&utm_medium=social", None), ("social", None, "fb", "social", None, None, None, None)),
    ((PAGE, "https://t.co/abc"), ("social", "t.co", None, None, None, None, None, None)),
    ((PAGE, "https://www.linkedin.com/feed/"), ("social", "linkedin.com", None, None, None, None, None, None)),
    ((PAGE, "https://www.google.co.uk/"), ("search", "google.co.uk", None, None, None, None, None, None)),
    ((PAGE, "https://duckduckgo.com/"), ("search", "duckduckgo.com", None, None, None, None, None, None)),
    (
        (PAGE + "?utm_medium=organic&utm_source=ecosia", None),
        ("search", None, "ecosia", "organic", None, None, None, None),
    ),
    (
        (PAGE + "?utm_source=partner&utm_medium=referral", None),
        ("referral", None, "partner", "referral", None, None, None, None),
    ),
    (
        (PAGE + "?utm_source=partner&utm_medium=weird&utm_term=running%20shoes", None),
        ("other", None, "partner", "weird", None, "running shoes", None, None),
    ),
    ((PAGE, "https://shop.example/cart"), ("internal", "shop.example", None, None, None, None, None, None)),
    (
        ("https://www.shop.example/", "https://blog.shop.example/a"),
        ("internal", "blog.shop.example", None, None, None, None, None, None),
    ),
    ((PAGE, "https://news.site/article?id=3"), ("referral", "news.site", None, None, None, None, None, None)),
    ((PAGE, None), ("direct", None, None, None, None, None, None, None)),
    ((PAGE + "?utm_source=&utm_medium=", ""), ("direct", None, None, None, None, None, None, None)),
    ((None, "https://bing.com/search?q=x"), ("search", "bing.com", None, None, None, None, None, None)),
    ((None, None), (None, None, None, None, None, None, None, None)),  # server-side event: no channel
    (("not a url", "neither"), ("direct", None, None, None, None, None, None, None)),
]
COLUMNS = ["channel", "referrer_domain", "utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content",
           "click_id"]  # fmt: skip


@pytest.mark.parametrize(("inputs", "expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_referrer_case(inputs: tuple[str | None, str | None], expected: tuple[str | None, ...]) -> None:
    url, referrer = inputs
    out = run([ReferrerStage()], events_table([{"_url": url, "_referrer": referrer}]))
    assert tuple(out.column(c)[0].as_py() for c in COLUMNS) == expected


def test_one_batch_gives_the_same_as_one_row_each() -> None:
    rows = [{"_url": url, "_referrer": referrer} for (url, referrer), _ in CASES] * 3
    out = run([ReferrerStage()], events_table(rows))
    got = list(zip(*(out.column(c).to_pylist() for c in COLUMNS), strict=True))
    assert got == [expected for _, expected in CASES] * 3


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("google.com", "search"),
        ("www.google.de", "search"),
        ("google.com.br", "search"),
        ("search.yahoo.com", "search"),
        ("mail.yahoo.com", "email"),
        ("outlook.live.com", "email"),
        ("m.facebook.com", "social"),
        ("pinterest.fr", "social"),
        ("google", "search"),
        ("facebook", "social"),
        ("example.com", None),
        ("x.ai", None),
        (None, None),
    ],
)
def test_site_kind(host: str | None, kind: str | None) -> None:
    assert site_kind(host) == kind
