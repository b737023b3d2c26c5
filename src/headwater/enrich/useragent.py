"""User agent → `browser`, `browser_version`, `os`, `os_version`, `device_type` (setting `enrich_user_agent`).

Parsing is ua-parser 1.x with its precompiled rules (`ua-parser-builtins`) on the Rust resolver (`ua-parser-rs`,
the `regex` crate: `ua_parser.regex.Resolver`), the pure-Python one only when the Rust wheel is missing. It runs
once per distinct user agent of a batch, with an LRU cache across batches (a site sees a few thousand distinct
agents a day), never per event.

- `browser`, `os`: ua-parser's family ("Chrome", "Mobile Safari", "Mac OS X"…); NULL when unknown or no agent.
- `browser_version`, `os_version`: "major.minor" (or "major").
- `device_type`: `bot` (ua-parser's "Spider" device, or a headless browser), `tablet` (iPad, Kindle, Android
  tablets — ua-parser's tablet brands, or an Android browser without "Mobile"), `mobile` (phones: iOS, Android
  and the other phone systems), `desktop` (Windows, macOS, Linux, Chrome OS…), else `other` (TVs, consoles,
  HTTP libraries, unknown). An iPad on iPadOS 13+ sends a Mac desktop agent and is counted as desktop.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re

import pyarrow as pa

from headwater.core.stages import StageBatch
from headwater.enrich.common import column_or_nulls, per_distinct, set_column

COLUMNS = ("browser", "browser_version", "os", "os_version", "device_type")
CACHE_SIZE = 50_000

_TABLET_UA = re.compile(r"iPad|Tablet|Kindle|Silk/|PlayBook|Nexus (?:7|9|10)\b|\bSM-[TPX]\d", re.IGNORECASE)
_PHONE_UA = re.compile(r"Mobi|iPhone|iPod|Windows Phone|BlackBerry|BB10|Opera Mini|IEMobile")
_TV_UA = re.compile(r"SMART-?TV|SmartTV|\bTV\b|CrKey|Roku|AppleTV|PlayStation|Xbox|Nintendo", re.IGNORECASE)
_MOBILE_OS = frozenset({"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Firefox OS", "Symbian OS"})
_DESKTOP_OS = frozenset(
    {
        "Windows", "Mac OS X", "macOS", "Linux", "Ubuntu", "Debian", "Fedora", "Red Hat", "SUSE", "openSUSE",
        "Mint", "Arch Linux", "Gentoo", "Chrome OS", "Chromium OS", "FreeBSD", "OpenBSD", "NetBSD", "Solaris",
    }
)  # fmt: skip
_TABLET_DEVICES = frozenset({"iPad", "Kindle", "Kindle Fire", "Generic Tablet"})
_HEADLESS = re.compile(r"Headless|PhantomJS", re.IGNORECASE)


def _version(major: str | None, minor: str | None) -> str | None:
    if not major:
        return None
    return f"{major}.{minor}" if minor else major


def _parser() -> tuple[object, str]:
    """The parser on the best resolver installed, and that resolver's name (for the start-up log)."""
    from ua_parser import Parser, load_builtins, load_lazy_builtins

    try:
        from ua_parser.regex import Resolver as RegexResolver

        return Parser(RegexResolver(load_lazy_builtins())), f"ua-parser-rs {importlib.metadata.version('ua-parser-rs')}"
    except ImportError:  # no Rust wheel for this platform
        from ua_parser.basic import Resolver as BasicResolver

        return Parser(BasicResolver(load_builtins())), "pure-Python regexes (ua-parser-rs not installed)"


class UserAgentStage:
    """Adds the browser, OS and device columns from `_user_agent`."""

    name = "enrich_user_agent"

    def __init__(self, cache_size: int = CACHE_SIZE) -> None:
        self._parser, self.resolver = _parser()
        self.describe = f"user agent (ua-parser {importlib.metadata.version('ua-parser')}, {self.resolver})"
        self._parse = functools.lru_cache(maxsize=cache_size)(self._parse_one)

    def _parse_one(self, agent: str | None) -> tuple[str | None, ...]:
        if not agent or not agent.strip():
            return (None, None, None, None, None)
        result = self._parser.parse(agent)  # type: ignore[attr-defined]
        browser, system, device = result.user_agent, result.os, result.device
        family = browser.family if browser else None
        os_family = system.family if system else None
        return (
            family,
            _version(browser.major, browser.minor) if browser else None,
            os_family,
            _version(system.major, system.minor) if system else None,
            _device_type(agent, family, os_family, device),
        )

    def parse(self, agent: str | None) -> tuple[str | None, ...]:
        """The five columns for one agent (cached)."""
        return self._parse(agent)

    def apply(self, batch: StageBatch) -> StageBatch:
        events = batch.events
        arrays = per_distinct(column_or_nulls(events, "_user_agent"), self._parse, [pa.string()] * len(COLUMNS))
        for name, values in zip(COLUMNS, arrays, strict=True):
            events = set_column(events, name, values)
        batch.events = events
        return batch

    def close(self) -> None:
        self._parse.cache_clear()


def _device_type(agent: str, family: str | None, os_family: str | None, device: object) -> str:
    device_family = getattr(device, "family", None)
    brand = getattr(device, "brand", None) or ""
    if device_family == "Spider" or (family and _HEADLESS.search(family)) or _HEADLESS.search(agent):
        return "bot"
    if _TV_UA.search(agent):
        return "other"
    if (
        device_family in _TABLET_DEVICES
        or "Tablet" in brand
        or _TABLET_UA.search(agent)
        or (os_family == "Android" and agent.startswith("Mozilla/") and "Mobile" not in agent)
    ):
        return "tablet"
    if os_family in _MOBILE_OS or _PHONE_UA.search(agent):
        return "mobile"
    if os_family in _DESKTOP_OS or device_family == "Mac":
        return "desktop"
    return "other"
