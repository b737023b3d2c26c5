"""How the client IP is stored (setting `enrich_ip`): column `ip`, and the `"ip"` keys inside `context`.

- `keep`: `ip` is the address as received; `context` untouched.
- `anonymise` (default): IPv4 with its last octet zeroed (`203.0.113.57` → `203.0.113.0`), IPv6 cut to its /48
  (`2001:db8:85a3:8d3:1319:8a2e:370:7348` → `2001:db8:85a3::`), an IPv4-mapped IPv6 address as IPv4; a value
  that is not an address becomes NULL.
- `drop`: `ip` is NULL and the `"ip"` keys are removed from `context`.

The address comes from `_ip` (`context.ip`, or the client address the collector saw). Geolocation runs before
this stage on the whole address. Every `"ip": "<string>"` key inside the `context` JSON (at any depth) is
rewritten the same way, and so is `properties` for the lolscale `POST /track` format (where a sent `ip` field
lands). All of it is vectorised: `ip` per distinct address (cached), the JSON by RE2 regex replacement over the
column (IPv4 in one pass; IPv6, whose /48 needs arithmetic, by splitting each string around its first
not-yet-anonymised IPv6 value and joining it back with the anonymised distinct value, a few passes at most).
"""

from __future__ import annotations

import functools
import ipaddress

import pyarrow as pa
import pyarrow.compute as pc

from headwater.core.events import RAW_TRACK
from headwater.core.stages import StageBatch
from headwater.enrich.common import column_or_nulls, flat, map_dictionary, set_column

MODES = ("keep", "anonymise", "drop")
_KEY = r'"ip"\s*:\s*"'  # in valid JSON, the string "ip" followed by a colon is always a key
_STRING = r'(?:[^"\\]|\\.)*"'
_IPV4 = "(" + _KEY + r"\d{1,3}\.\d{1,3}\.\d{1,3}\.)\d{1,3}\""
_IPV6_VALUE = r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*[0-9A-Fa-f.]"  # has a colon, does not end with one (a /48 does)
_IPV6_SPLIT = r"(?s)^(?P<head>.*?" + _KEY + r")(?P<ip>" + _IPV6_VALUE + r')(?P<tail>".*)$'
_IPV6_PRESENT = _KEY + _IPV6_VALUE + '"'
_DROP_AFTER_COMMA = r",\s*" + _KEY + _STRING
_DROP_FIRST = r"\{\s*" + _KEY + _STRING + r"\s*,?"
IPV6_PASSES = 4  # "ip" keys holding IPv6 addresses rewritten per JSON value (they are rarely more than one)
_V4_MASK = 0xFFFF_FF00
_V6_MASK = ((1 << 48) - 1) << 80


@functools.lru_cache(maxsize=200_000)
def anonymise(address: str | None) -> str | None:
    """IPv4 /24 or IPv6 /48 network address; NULL for a value that is not an IP address."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is None:
            return str(ipaddress.IPv6Address(int(ip) & _V6_MASK))
        ip = mapped
    return str(ipaddress.IPv4Address(int(ip) & _V4_MASK))


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4_ONLY = rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}$"


def anonymise_array(values: pa.Array) -> pa.Array:
    """`anonymise` over an array: IPv4 by string kernels, anything else through `anonymise` (cached)."""
    values = pc.utf8_trim_whitespace(values)
    ipv4 = pc.fill_null(pc.match_substring_regex(values, _IPV4_ONLY), False)
    out = pc.if_else(ipv4, pc.replace_substring_regex(values, r"\.\d+$", ".0"), pa.nulls(len(values), pa.string()))
    rest = pc.and_(pc.invert(ipv4), pc.is_valid(values))
    if pc.any(rest).as_py():
        others = pa.array([anonymise(v) for v in pc.filter(values, rest).to_pylist()], pa.string())
        out = pc.replace_with_mask(out, rest, others)
    return out


def rewrite_json(column: pa.Array, mode: str) -> pa.Array:
    """JSON strings with every `"ip": "<address>"` key anonymised (`anonymise`) or removed (`drop`)."""
    has = pc.fill_null(pc.match_substring(column, '"ip"'), False)  # a literal search; the regexes run on these
    if not pc.any(has).as_py():
        return column
    return pc.replace_with_mask(column, has, _rewrite(pc.filter(column, has), mode))


def _rewrite(column: pa.Array, mode: str) -> pa.Array:
    if mode == "drop":
        column = pc.replace_substring_regex(column, _DROP_AFTER_COMMA, "")
        return pc.replace_substring_regex(column, _DROP_FIRST, "{")
    column = pc.replace_substring_regex(column, _IPV4, r'\10"')
    for _ in range(IPV6_PASSES):
        present = pc.fill_null(pc.match_substring_regex(column, _IPV6_PRESENT), False)
        if not pc.any(present).as_py():
            break
        rows = pc.filter(column, present)
        parts = pc.extract_regex(rows, _IPV6_SPLIT)
        anonymous = map_dictionary(parts.field("ip"), anonymise_array)
        joined = pc.binary_join_element_wise(parts.field("head"), anonymous, parts.field("tail"), "")
        column = pc.replace_with_mask(column, present, pc.if_else(pc.is_valid(joined), joined, rows))
    return column


class IPStage:
    """Adds `ip` and rewrites the addresses inside `context` (and raw-format `properties`)."""

    name = "enrich_ip"

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"enrich_ip: {mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        self.describe = f"IP {mode}"

    def apply(self, batch: StageBatch) -> StageBatch:
        events = batch.events
        address = column_or_nulls(events, "_ip")
        if self.mode == "keep":
            events = set_column(events, "ip", address)
        elif self.mode == "drop":
            events = set_column(events, "ip", pa.nulls(events.num_rows, pa.string()))
        else:
            events = set_column(events, "ip", map_dictionary(address, anonymise_array))
        if self.mode != "keep":
            events = set_column(events, "context", rewrite_json(flat(events.column("context")), self.mode))
            raw = pc.fill_null(pc.equal(column_or_nulls(events, "_endpoint"), RAW_TRACK), False)
            if pc.any(raw).as_py():
                properties = flat(events.column("properties"))
                rewritten = pc.if_else(raw, rewrite_json(properties, self.mode), properties)
                events = set_column(events, "properties", rewritten)
        batch.events = events
        return batch

    def clean_raw(self, raw: pa.Array) -> pa.Array:
        """Quarantine's raw events with their addresses treated as the stored events' are (the writer calls it)."""
        return raw if self.mode == "keep" else rewrite_json(raw, self.mode)

    def close(self) -> None:
        pass
