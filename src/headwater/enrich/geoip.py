"""Client IP → `country`, `region`, `city` from a MaxMind-format database (setting `enrich_geoip_database`).

Any `.mmdb` with GeoIP2/GeoLite2 City or Country records works (MaxMind's, DB-IP's "lite" City, IPinfo's in the
same layout): `country` is the ISO 3166-1 code, `region` the first subdivision's English name (its ISO code when
it has no name), `city` the English city name. Lookups use the whole address (the IP stage anonymises the stored
one afterwards) and run once per distinct address of a batch, with an LRU cache across batches. Without a
database the stage is skipped (and the writer's start-up log says so); a database that is missing or unreadable
stops the writer at start with a ConfigError, never on a batch.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import maxminddb
import pyarrow as pa

from headwater.core.errors import ConfigError
from headwater.core.stages import StageBatch
from headwater.enrich.common import column_or_nulls, per_distinct, set_column

COLUMNS = ("country", "region", "city")
CACHE_SIZE = 100_000
_NOTHING: tuple[str | None, str | None, str | None] = (None, None, None)


def _name(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    names = record.get("names")
    if isinstance(names, dict) and isinstance(names.get("en"), str):
        return str(names["en"])
    code = record.get("iso_code")
    return code if isinstance(code, str) else None


def open_reader(path: Path) -> maxminddb.Reader:
    """The database, or a ConfigError naming the setting and the problem."""
    if not path.is_file():
        raise ConfigError(f"enrich_geoip_database: {path} does not exist (give a MaxMind-format .mmdb file)")
    try:
        reader = maxminddb.open_database(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise ConfigError(f"enrich_geoip_database: {path} is not a readable MaxMind database ({exc})") from exc
    kind = reader.metadata().database_type
    if "City" not in kind and "Country" not in kind:
        reader.close()
        raise ConfigError(f"enrich_geoip_database: {path} is a {kind!r} database; a City or Country database is needed")
    return reader


class GeoIPStage:
    """Adds `country`, `region`, `city` from `_ip`."""

    name = "enrich_geoip"

    def __init__(self, path: Path, cache_size: int = CACHE_SIZE) -> None:
        self.path = path
        self.reader = open_reader(path)
        meta = self.reader.metadata()
        built = datetime.fromtimestamp(meta.build_epoch, UTC).date().isoformat()
        self.describe = f"GeoIP ({path.name}: {meta.database_type}, built {built}, {meta.node_count} nodes)"
        self._lookup = functools.lru_cache(maxsize=cache_size)(self._lookup_one)

    def _lookup_one(self, address: str | None) -> tuple[str | None, str | None, str | None]:
        if not address:
            return _NOTHING
        try:
            record = self.reader.get(address.strip())
        except ValueError:  # not an IP address
            return _NOTHING
        if not isinstance(record, dict):
            return _NOTHING
        country = record.get("country")  # where the user is (not `registered_country`, the ISP's)
        code = country.get("iso_code") if isinstance(country, dict) else None
        subdivisions = record.get("subdivisions")
        region = _name(subdivisions[0]) if isinstance(subdivisions, list) and subdivisions else None
        return (code if isinstance(code, str) else None, region, _name(record.get("city")))

    def lookup(self, address: str | None) -> tuple[str | None, str | None, str | None]:
        """(country, region, city) of one address (cached)."""
        return self._lookup(address)

    def apply(self, batch: StageBatch) -> StageBatch:
        events = batch.events
        arrays = per_distinct(column_or_nulls(events, "_ip"), self._lookup, [pa.string()] * len(COLUMNS))
        for name, values in zip(COLUMNS, arrays, strict=True):
            events = set_column(events, name, values)
        batch.events = events
        return batch

    def close(self) -> None:
        self._lookup.cache_clear()
        self.reader.close()
