"""Apache Spark reads the Iceberg tables Headwater wrote and gives the same answers as Headwater itself.

A real `headwater up` takes a known set of events, answers a few queries over `/api/query` and is stopped (so
nothing writes); then Spark, through Iceberg's own JdbcCatalog, reads the same tables. Once with the embedded
deployment (SQLite catalog, local warehouse), once with the cluster one (Kafka, PostgreSQL catalog, S3 warehouse).
"""

from __future__ import annotations

import contextlib
import gc
import subprocess
import time
import warnings
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from pyspark import SparkContext
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql.types import StringType, TimestampNTZType

from tests.engines.common import CART, INVALID, PROBE_ID, PROBE_PATH, SENT, Deployment, fill_lake, ground_truth
from tests.helpers import ROOT

pytestmark = pytest.mark.spark

JARS = ROOT / ".tools" / "jars" / "spark"
EVENTS = "headwater.headwater.events"  # Spark catalog `headwater`, Iceberg namespace `headwater`
QUARANTINE = "headwater.headwater.quarantine"
SPARK_CONF = {
    "spark.ui.enabled": "false",
    "spark.driver.memory": "512m",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.shuffle.partitions": "1",
    # the AWS SDK's default checksum headers are not implemented by s3proxy (501 on GET)
    "spark.driver.extraJavaOptions": "-Daws.requestChecksumCalculation=WHEN_REQUIRED "
    "-Daws.responseChecksumValidation=WHEN_REQUIRED",
    # timestamps are `timestamp_ntz` (UTC wall clock): a session time zone far from UTC must change nothing
    "spark.sql.session.timeZone": "Asia/Kolkata",
    "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
}


def spark_catalog(deployment: Deployment) -> dict[str, str]:
    """Properties of the Spark catalog `headwater` (spark.sql.catalog.headwater.KEY) for a deployment."""
    uri, user, password = deployment.jdbc()
    props = {
        "": "org.apache.iceberg.spark.SparkCatalog",
        "catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
        "uri": uri,
        "warehouse": deployment.warehouse,
        # read only: never create or migrate pyiceberg's catalog tables
        "jdbc.schema-version": "V0",
        "jdbc.init-catalog-tables": "false",
    }
    if user:
        props["jdbc.user"] = user
    if password:
        props["jdbc.password"] = password
    settings = deployment.settings
    if deployment.warehouse.startswith("s3://"):
        props |= {
            "io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
            "s3.endpoint": settings["s3_endpoint"],
            "s3.path-style-access": "true",
            "s3.access-key-id": settings["s3_access_key_id"],
            "s3.secret-access-key": settings["s3_secret_access_key"],
            "client.region": settings["s3_region"],
        }
    return props


def stop_spark(session: SparkSession) -> None:
    """Stop the session and the JVM behind it (pyspark otherwise keeps the JVM until Python exits)."""
    gateway = SparkContext._gateway
    try:
        session.stop()
    finally:
        if gateway is not None:
            proc = getattr(gateway, "proc", None)
            with contextlib.suppress(Exception):
                gateway.shutdown()
            SparkContext._gateway = None
            SparkContext._jvm = None
            if proc is not None:
                if proc.stdin is not None:
                    proc.stdin.close()  # the gateway JVM exits when its stdin closes
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    """One local Spark (one core, small heap, no UI) with the Iceberg runtime, AWS bundle and JDBC drivers."""
    if not (JARS / ".complete").exists():
        subprocess.run([str(ROOT / "tools" / "fetch-jars.sh"), "spark"], check=True)
    jars = ",".join(str(jar) for jar in sorted(JARS.glob("*.jar")))
    builder = SparkSession.builder.master("local[1]").appName("headwater-engines").config("spark.jars", jars)
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    started = time.monotonic()
    session = builder.getOrCreate()
    try:
        session.sparkContext.setLogLevel("ERROR")
        print(f"spark session started in {time.monotonic() - started:.1f} s")
        yield session
    finally:
        stop_spark(session)


def catalog_session(spark: SparkSession, deployment: Deployment) -> SparkSession:
    """A new session (catalogs are per session) whose catalog `headwater` reads this deployment's lake."""
    session = spark.newSession()
    for key, value in spark_catalog(deployment).items():
        session.conf.set("spark.sql.catalog.headwater" + (f".{key}" if key else ""), value)
    return session


def collect(frame: DataFrame) -> list[Row]:
    """`frame.collect()`; pyspark leaves the result socket to the garbage collector (a ResourceWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        rows = frame.collect()
        gc.collect()
    return rows


def spark_answers(spark: SparkSession) -> dict[str, Any]:
    """The questions of `headwater_answers`, in Spark SQL."""

    def rows(sql: str) -> list[list[Any]]:
        return [list(row) for row in collect(spark.sql(sql))]

    us = "'yyyy-MM-dd HH:mm:ss.SSSSSS'"
    probe = f"FROM {EVENTS} WHERE event_id = '{PROBE_ID}'"
    return {
        "count": rows(f"SELECT count(*) FROM {EVENTS}")[0][0],
        "days": rows(f"SELECT date_format(timestamp, 'yyyy-MM-dd') AS d, count(*) FROM {EVENTS} GROUP BY d ORDER BY d"),
        "users": rows(f"SELECT count(DISTINCT user_id) FROM {EVENTS}")[0][0],
        "times": rows(f"SELECT event_id, date_format(timestamp, {us}) FROM {EVENTS} ORDER BY event_id"),
        "probe_time": rows(f"SELECT date_format(timestamp, {us}) {probe}")[0][0],
        "probe_title": rows(f"SELECT get_json_object(properties, '{PROBE_PATH}') {probe}")[0][0],
        "quarantine": rows(f"SELECT count(*) FROM {QUARANTINE}")[0][0],
    }


def test_spark_reads_what_headwater_wrote(spark: SparkSession, deployment: Deployment) -> None:
    expected = ground_truth()
    assert fill_lake(deployment) == expected  # Headwater's own answers, taken before it stopped

    columns = deployment.catalog_columns()
    session = catalog_session(spark, deployment)
    table = session.table(EVENTS)
    assert table.schema["timestamp"].dataType == TimestampNTZType()
    assert table.schema["properties"].dataType == StringType()
    assert spark_answers(session) == expected

    # the values themselves, not only their text: naive datetimes, exact to the microsecond
    stored = {row.event_id: row.timestamp for row in collect(table.select("event_id", "timestamp"))}
    assert stored == {sent.message_id: sent.utc for sent in SENT}
    properties = {row.event_id: row.properties for row in collect(table.select("event_id", "properties"))}
    assert orjson.loads(properties[PROBE_ID]) == CART
    assert orjson.loads(properties["m06"]) == {"total": 12.5, "coupon": None, "emoji": "🚀"}
    quarantined = collect(session.sql(f"SELECT raw, reason FROM {QUARANTINE}"))
    assert [row.raw for row in quarantined] == [INVALID] and "timestamp" in quarantined[0].reason

    assert deployment.catalog_columns() == columns  # Spark did not create or migrate catalog tables
