"""Page URL and referrer → `channel`, `referrer_domain`, `utm_*`, `click_id` (setting `enrich_referrer`).

Inputs: `_url` (`context.page.url`, or a page call's `properties.url`) and `_referrer` (likewise).
- `utm_source`, `utm_medium`, `utm_campaign`, `utm_term`, `utm_content`: the page URL's query (or fragment)
  parameters, percent-decoded; NULL when absent or empty.
- `click_id`: the first ad click id in the URL as `<parameter>:<value>` (e.g. `gclid:Cj0KCQ…`), from gclid,
  gbraid, wbraid, dclid (Google), msclkid (Microsoft), fbclid (Meta), ttclid (TikTok), twclid (X), li_fat_id
  (LinkedIn), yclid (Yandex), ScCid (Snapchat), epik (Pinterest), irclickid (impact.com).
- `referrer_domain`: the referrer's host, lower-case, without a leading `www.`.
- `channel`, a simplified GA4 default channel grouping, first rule that holds:
  1. `paid`: an ad click id other than fbclid, or utm_medium cpc/ppc/cpm/cpv/cpa/paid…/retargeting/display/
     banner/affiliate;
  2. `email`: utm_source or utm_medium mentions e-mail, or a webmail referrer (Gmail, Outlook, Yahoo Mail…);
  3. `social`: utm_medium social/sm/social-network/social-media, or a social network as utm_source or referrer,
     or an fbclid (Meta adds it to organic links too, so it does not mean paid by itself);
  4. `search`: utm_medium organic, or a search engine as utm_source or referrer;
  5. `referral`: utm_medium referral/app/link;
  6. `other`: any other utm_source/utm_medium;
  7. `internal`: a referrer on the page's own site (same host, or one a subdomain of the other);
  8. `referral`: any other referrer;
  9. `direct`: a page URL without a referrer;
  10. NULL: no page URL and no referrer (server-side events, identify…).
Search engines, social networks and webmail are the lists below, matched on the host and each parent domain.

Vectorised: the URL kernels (RE2 extraction, lower-casing) run over the distinct URLs and referrers of a batch;
the rules above run once per distinct combination of their inputs (cached), then everything is taken back to
the rows.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.stages import StageBatch
from headwater.enrich.common import column_or_nulls, flat, map_dictionary, per_distinct, set_column

UTM = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
COLUMNS = ("channel", "referrer_domain", *UTM, "click_id")
PAID_CLICK_IDS = ("gclid", "gbraid", "wbraid", "dclid", "msclkid", "ttclid", "twclid", "li_fat_id", "yclid",
                  "ScCid", "epik", "irclickid")  # fmt: skip
CLICK_IDS = (*PAID_CLICK_IDS, "fbclid")
_PAID_CLICK_LOWER = frozenset(name.lower() for name in PAID_CLICK_IDS)
_PAID_MEDIUM = re.compile(r"^(.*cp.*|ppc|retargeting|paid.*|display|banner|interstitial|expandable|affiliates?)$")
_EMAIL = re.compile(r"e[-_ ]?mail|newsletter")
_SOCIAL_MEDIUM = frozenset({"social", "social-network", "social-media", "sm", "social network", "social media"})
_REFERRAL_MEDIUM = frozenset({"referral", "app", "link"})
SEARCH = frozenset(
    {
        "bing.com", "duckduckgo.com", "search.yahoo.com", "yahoo.co.jp", "baidu.com", "yandex.ru", "yandex.com",
        "ya.ru", "ecosia.org", "qwant.com", "ask.com", "naver.com", "seznam.cz", "startpage.com",
        "search.brave.com", "sogou.com", "so.com", "daum.net", "aol.com", "search.aol.com", "kagi.com",
        "perplexity.ai", "com.google.android.googlequicksearchbox",
    }
)  # fmt: skip
SOCIAL = frozenset(
    {
        "facebook.com", "fb.com", "instagram.com", "t.co", "twitter.com", "x.com", "linkedin.com", "lnkd.in",
        "reddit.com", "pinterest.com", "tiktok.com", "youtube.com", "youtu.be", "vk.com", "tumblr.com",
        "quora.com", "snapchat.com", "whatsapp.com", "web.whatsapp.com", "telegram.org", "t.me", "discord.com",
        "mastodon.social", "threads.net", "bsky.app", "news.ycombinator.com", "weibo.com", "xing.com",
        "com.facebook.katana", "com.instagram.android", "com.twitter.android", "com.linkedin.android",
        "com.reddit.frontpage", "com.zhiliaoapp.musically",
    }
)  # fmt: skip
WEBMAIL = frozenset(
    {
        "mail.google.com", "outlook.live.com", "outlook.office.com", "outlook.office365.com", "mail.yahoo.com",
        "mail.aol.com", "mail.proton.me", "mail.yandex.ru", "webmail.free.fr", "mail.zoho.com", "gmx.net",
        "web.de", "com.google.android.gm", "com.microsoft.office.outlook",
    }
)  # fmt: skip
SEARCH_NAMES = frozenset({"google", "bing", "yahoo", "duckduckgo", "baidu", "yandex", "ecosia", "qwant", "naver",
                          "ask", "aol", "seznam", "startpage", "brave", "sogou", "daum", "kagi"})  # fmt: skip
SOCIAL_NAMES = frozenset({"facebook", "fb", "instagram", "ig", "twitter", "x", "linkedin", "reddit", "pinterest",
                          "tiktok", "youtube", "vk", "tumblr", "quora", "snapchat", "whatsapp", "telegram",
                          "discord", "mastodon", "threads", "bluesky", "weibo", "xing"})  # fmt: skip
_GOOGLE = re.compile(r"(^|\.)google\.[a-z]{2,3}(\.[a-z]{2})?$")
_HOST = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>[^/?#:]+)"
_SEP = "\x1f"


def _param(name: str) -> str:
    return rf"(?i)[?&#;]{name}=(?P<v>[^&#;]*)"


_CLICK = r"[?&#;](?P<name>" + "|".join(CLICK_IDS) + r")=(?P<v>[^&#;]+)"


def host_of(urls: pa.Array) -> pa.Array:
    """Lower-case host of each URL, without a leading `www.` (NULL when not an absolute URL)."""
    host = pc.utf8_lower(pc.extract_regex(urls, _HOST).field("host"))
    host = pc.replace_substring_regex(host, r"^www\d?\.", "")
    return pc.if_else(pc.equal(host, ""), pa.nulls(len(host), pa.string()), host)


@functools.lru_cache(maxsize=100_000)
def _decode(value: str | None) -> str | None:
    if not value:
        return None
    text = unquote_plus(value) if ("%" in value or "+" in value) else value
    return text.strip() or None


def _decoded(values: pa.Array) -> pa.Array:
    return pa.array([_decode(v) for v in values.to_pylist()], pa.string())


@functools.lru_cache(maxsize=100_000)
def site_kind(host: str | None) -> str | None:
    """`search`, `social`, `email` or None for a host (or a bare utm_source name such as "google")."""
    if not host:
        return None
    host = host.lower().strip().removeprefix("www.")
    if host in SEARCH_NAMES:
        return "search"
    if host in SOCIAL_NAMES:
        return "social"
    parts = host.split(".")
    suffixes = {".".join(parts[i:]) for i in range(len(parts) - 1)} | {host}
    if suffixes & WEBMAIL or host.startswith(("mail.", "webmail.")):
        return "email"
    if suffixes & SEARCH or _GOOGLE.search(host):
        return "search"
    if suffixes & SOCIAL or (len(parts) > 1 and len(parts[-2]) > 2 and parts[-2] in SOCIAL_NAMES):  # pinterest.fr
        return "social"
    return None


def _same_site(referrer: str, page: str) -> bool:
    return referrer == page or referrer.endswith("." + page) or page.endswith("." + referrer)


@functools.lru_cache(maxsize=100_000)
def channel_of(key: str) -> str | None:
    """The channel of one combination of inputs (see the module docstring), joined by `_SEP`."""
    click, medium, source, referrer, page, has_page = key.split(_SEP)
    medium, source, click = medium.lower(), source.lower(), click.lower()
    source_kind = site_kind(source)
    referrer_kind = site_kind(referrer)
    if click in _PAID_CLICK_LOWER or (medium and _PAID_MEDIUM.match(medium)):
        return "paid"
    if _EMAIL.search(medium) or _EMAIL.search(source) or source_kind == "email" or referrer_kind == "email":
        return "email"
    if medium in _SOCIAL_MEDIUM or "social" in (source_kind, referrer_kind) or click == "fbclid":
        return "social"
    if medium == "organic" or "search" in (source_kind, referrer_kind):
        return "search"
    if medium in _REFERRAL_MEDIUM:
        return "referral"
    if medium or source:
        return "other"
    if referrer:
        return "internal" if page and _same_site(referrer, page) else "referral"
    return "direct" if has_page else None


def _url_fields(urls: pa.Array) -> pa.StructArray:
    """Per URL: the page host, each decoded utm parameter, the click id parameter name and `name:value`."""
    arrays: dict[str, pa.Array] = {"host": host_of(urls)}
    for name in UTM:
        arrays[name] = _decoded(pc.extract_regex(urls, _param(name)).field("v"))
    click = pc.extract_regex(urls, _CLICK)
    arrays["click_name"] = click.field("name")
    arrays["click_id"] = pc.binary_join_element_wise(click.field("name"), _decoded(click.field("v")), ":")
    return pa.StructArray.from_arrays(list(arrays.values()), names=list(arrays))


class ReferrerStage:
    """Adds the channel, referrer domain, UTM and click-id columns from `_url` and `_referrer`."""

    name = "enrich_referrer"
    describe = "referrer (channel, UTM, click ids)"

    def apply(self, batch: StageBatch) -> StageBatch:
        events = batch.events
        url = column_or_nulls(events, "_url")
        if url.null_count == len(url) and column_or_nulls(events, "_referrer").null_count == len(url):
            for name in COLUMNS:  # no page context at all (server-side events): nothing to compute
                events = set_column(events, name, pa.nulls(len(url), pa.string()))
            batch.events = events
            return batch
        fields = map_dictionary(url, _url_fields)
        referrer = map_dictionary(column_or_nulls(events, "_referrer"), host_of)
        parts = [
            flat(fields.field("click_name")),
            fields.field("utm_medium"),
            fields.field("utm_source"),
            referrer,
            fields.field("host"),
            pc.if_else(pc.is_valid(url), "1", ""),
        ]
        key = pc.binary_join_element_wise(*parts, _SEP, null_handling="replace", null_replacement="")
        (channel,) = per_distinct(key, lambda k: (channel_of(k),), [pa.string()])
        events = set_column(events, "channel", channel)
        events = set_column(events, "referrer_domain", referrer)
        for name in (*UTM, "click_id"):
            events = set_column(events, name, flat(fields.field(name)))
        batch.events = events
        return batch

    def close(self) -> None:
        pass
