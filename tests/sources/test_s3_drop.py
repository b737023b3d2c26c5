"""A file drop on an S3 prefix (s3proxy): NDJSON and GRIB objects taken once, done objects moved aside."""

from __future__ import annotations

import gzip
import uuid
from datetime import datetime
from pathlib import Path

import orjson
import pyarrow.fs as pafs
import pytest

from headwater.lake.tables import NAMESPACE, open_catalog
from headwater.loadgen.grib import Field, grib_message
from headwater.sources.file_store import FileStore
from tests.services import S3Server
from tests.sources.support import drain, events_of, log_envelopes, make_runner

pytestmark = pytest.mark.services


def _s3(server: S3Server) -> tuple[pafs.S3FileSystem, dict[str, str]]:
    settings = {
        "s3_endpoint": server.endpoint, "s3_access_key_id": server.access_key,
        "s3_secret_access_key": server.secret_key, "s3_region": server.region,
    }  # fmt: skip
    fs = pafs.S3FileSystem(
        endpoint_override=server.endpoint.removeprefix("http://"), scheme="http", access_key=server.access_key,
        secret_key=server.secret_key, region=server.region,
    )  # fmt: skip
    return fs, settings


def test_objects_under_a_prefix_are_taken_once_and_moved(s3_server: S3Server, data_dir: Path) -> None:
    bucket = f"drop-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(bucket)
    fs, settings = _s3(s3_server)
    lines = b"\n".join(orjson.dumps({"event": "e", "userId": f"u{i}", "n": i}) for i in range(50))
    with fs.open_output_stream(f"{bucket}/in/a.ndjson.gz", compression=None) as out:  # (default: gzip by name)
        out.write(gzip.compress(lines))
    with fs.open_output_stream(f"{bucket}/in/grid.grib2") as out:
        out.write(grib_message(Field("2t", reference=datetime(2026, 11, 1), ni=5, nj=4)))
    runner = make_runner(
        data_dir, settings, kind="files", format="ndjson", path=f"s3://{bucket}/in/", pattern="*.ndjson*",
        move_to=f"s3://{bucket}/done",
    )  # fmt: skip
    assert drain(runner) == 50
    assert sorted(e["n"] for e in events_of(log_envelopes(runner.event_log))) == list(range(50))
    assert fs.get_file_info(f"{bucket}/done/a.ndjson.gz").type == pafs.FileType.File
    assert fs.get_file_info(f"{bucket}/in/a.ndjson.gz").type == pafs.FileType.NotFound
    runner.close()
    grib = make_runner(
        data_dir, settings, kind="files", format="grib", path=f"s3://{bucket}/in", pattern="*.grib2",
        table="grid", name="grid",
    )  # fmt: skip
    assert drain(grib) == 1
    table = open_catalog(grib.settings).load_table((NAMESPACE, "grid"))
    assert table.scan().to_arrow().num_rows == 20
    store = FileStore(grib.settings.effective_catalog_uri, "grid")
    assert store.counts() == {"done": 1}
    store.close()
    grib.close()
