"""GeoIP from a generated MaxMind database, and IP anonymisation in the `ip` column and inside `context`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from headwater.core.errors import ConfigError
from headwater.core.settings import Settings
from headwater.enrich import enrichment_stages
from headwater.enrich.geoip import GeoIPStage
from headwater.enrich.ip import IPStage, anonymise, anonymise_array, rewrite_json
from tests.unit.test_enrich_common import events_table, run

CITY_RECORDS = {
    "81.2.69.0/24": {
        "country": {"iso_code": "GB", "names": {"en": "United Kingdom", "fr": "Royaume-Uni"}},
        "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
        "city": {"names": {"en": "London", "de": "London"}},
    },
    "89.160.20.0/24": {
        "country": {"iso_code": "SE", "names": {"en": "Sweden"}},
        "subdivisions": [{"iso_code": "E", "names": {"en": "Östergötland County"}}],
        "city": {"names": {"en": "Linköping"}},
    },
    "2001:db8:1::/48": {
        "country": {"iso_code": "FR", "names": {"en": "France"}},
        "subdivisions": [{"iso_code": "IDF"}],  # no name: the ISO code
        "city": {"names": {"en": "Paris"}},
    },
    "198.51.100.0/24": {"country": {"iso_code": "US", "names": {"en": "United States"}}},  # country only
}


def build_mmdb(path: Path, database_type: str = "GeoLite2-City") -> Path:
    """A GeoLite2-City-like database: IPv6 tree with IPv4 mapped in, English names."""
    writer = MMDBWriter(ip_version=6, database_type=database_type, languages=["en"], ipv4_compatible=True)
    for network, record in CITY_RECORDS.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def mmdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mmdb(tmp_path_factory.mktemp("geo") / "city.mmdb")


def test_geoip_columns(mmdb: Path) -> None:
    stage = GeoIPStage(mmdb)
    addresses = ["81.2.69.160", "89.160.20.112", "2001:db8:1::7", "198.51.100.4", "8.8.8.8", "not an ip", None,
                 "81.2.69.161", " 81.2.69.160 "]  # fmt: skip
    out = run([stage], events_table([{"_ip": a} for a in addresses]))
    got = list(zip(*(out.column(c).to_pylist() for c in ("country", "region", "city")), strict=True))
    assert got == [
        ("GB", "England", "London"),
        ("SE", "Östergötland County", "Linköping"),
        ("FR", "IDF", "Paris"),
        ("US", None, None),
        (None, None, None),
        (None, None, None),
        (None, None, None),
        ("GB", "England", "London"),
        ("GB", "England", "London"),
    ]
    assert "GeoLite2-City" in stage.describe
    stage.close()


def test_geoip_uses_the_whole_address_before_anonymisation(mmdb: Path, tmp_path: Path) -> None:
    # a /32 network: found only with the whole address, not with the anonymised one
    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    writer.insert_network(IPSet(["192.0.2.77/32"]), {"country": {"iso_code": "NL"}})
    path = tmp_path / "one.mmdb"
    writer.to_db_file(str(path))
    settings = Settings(data_dir=tmp_path, enrich_geoip_database=path, enrich_sessions=False)
    stages = enrichment_stages(settings, None)
    out = run(stages, events_table([{"_ip": "192.0.2.77", "context": '{"ip":"192.0.2.77"}'}]))
    assert out.column("country").to_pylist() == ["NL"]
    assert out.column("ip").to_pylist() == ["192.0.2.0"]
    assert out.column("context").to_pylist() == ['{"ip":"192.0.2.0"}']
    for stage in stages:
        stage.close()


def test_missing_or_bad_database_is_a_config_error_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        enrichment_stages(Settings(data_dir=tmp_path, enrich_geoip_database=tmp_path / "nope.mmdb"), None)
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"this is not a maxmind database" * 100)
    with pytest.raises(ConfigError, match="not a readable MaxMind database"):
        GeoIPStage(garbage)
    asn = build_mmdb(tmp_path / "asn.mmdb", database_type="GeoLite2-ASN")
    with pytest.raises(ConfigError, match="City or Country"):
        GeoIPStage(asn)


ANONYMISED = [
    ("203.0.113.57", "203.0.113.0"),
    ("10.0.0.0", "10.0.0.0"),
    ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
    ("2001:0DB8:0001:0000:0000:0000:0000:0001", "2001:db8:1::"),
    ("::ffff:198.51.100.23", "198.51.100.0"),
    ("::1", "::"),
    (" 203.0.113.57 ", "203.0.113.0"),
    ("999.1.1.1", None),
    ("localhost", None),
    ("", None),
    ("01.2.3.4", None),
    ("1.2.3.256", None),
    ("255.255.255.255", "255.255.255.0"),
    ("1.2.3", None),
]


@pytest.mark.parametrize(("address", "expected"), ANONYMISED)
def test_anonymise(address: str, expected: str | None) -> None:
    assert anonymise(address) == expected


def test_anonymise_array_is_anonymise_per_value() -> None:
    values = [a for a, _ in ANONYMISED] + [None]
    assert anonymise_array(pa.array(values)).to_pylist() == [anonymise(v) for v in values]


CONTEXTS = [
    '{"ip":"203.0.113.57","library":{"name":"analytics.js"}}',
    '{"library":{"name":"a"},"ip":"2001:db8:85a3:8d3:1319:8a2e:370:7348","locale":"fr"}',
    '{"ip": "198.51.100.23", "device": {"ip": "2a00:1450:4007:80e::200e"}}',
    '{"page":{"url":"https://a.test/?ip=1.2.3.4"},"note":"{\\"ip\\":\\"1.2.3.4\\"}"}',
    '{"ip":"::ffff:10.1.2.3"}',
    '{"ip":"unknown"}',
    None,
]


def test_context_anonymised() -> None:
    out = rewrite_json(pa.array(CONTEXTS), "anonymise").to_pylist()
    assert [json.loads(v) if v else v for v in out] == [
        {"ip": "203.0.113.0", "library": {"name": "analytics.js"}},
        {"library": {"name": "a"}, "ip": "2001:db8:85a3::", "locale": "fr"},
        {"ip": "198.51.100.0", "device": {"ip": "2a00:1450:4007::"}},
        {"page": {"url": "https://a.test/?ip=1.2.3.4"}, "note": '{"ip":"1.2.3.4"}'},  # strings are not keys
        {"ip": "10.1.2.0"},
        {"ip": "unknown"},
        None,
    ]


def test_context_ip_dropped() -> None:
    out = rewrite_json(pa.array(CONTEXTS), "drop").to_pylist()
    assert [json.loads(v) if v else v for v in out] == [
        {"library": {"name": "analytics.js"}},
        {"library": {"name": "a"}, "locale": "fr"},
        {"device": {}},
        {"page": {"url": "https://a.test/?ip=1.2.3.4"}, "note": '{"ip":"1.2.3.4"}'},
        {},
        {},
        None,
    ]


@pytest.mark.parametrize(
    ("mode", "column", "context", "properties"),
    [
        ("keep", ["203.0.113.57", "2001:db8:1::7", None], '{"ip":"203.0.113.57"}', '{"ip":"2001:db8:1::7","n":1}'),
        ("anonymise", ["203.0.113.0", "2001:db8:1::", None], '{"ip":"203.0.113.0"}', '{"ip":"2001:db8:1::","n":1}'),
        ("drop", [None, None, None], "{}", '{"n":1}'),
    ],
)
def test_ip_stage_modes(mode: str, column: list[str | None], context: str, properties: str) -> None:
    rows = [
        {"_ip": "203.0.113.57", "context": '{"ip":"203.0.113.57"}', "properties": '{"ip":"10.9.8.7"}'},
        # the lolscale POST /track format keeps a sent `ip` field in properties
        {"_ip": "2001:db8:1::7", "_endpoint": "track-raw", "properties": '{"ip":"2001:db8:1::7","n":1}'},
        {"_ip": None},
    ]
    out = run([IPStage(mode)], events_table(rows))
    assert out.column("ip").to_pylist() == column
    assert out.column("context").to_pylist()[0] == context
    assert out.column("properties").to_pylist()[:2] == ['{"ip":"10.9.8.7"}', properties]  # Segment's: untouched
