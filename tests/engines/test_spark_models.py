"""Apache Spark reads the tables SQL models built: a model is an Iceberg table of the catalog like `events`.

A real `headwater up` takes the known events and stops; models are then built (as `headwater models run` does)
and Spark, through Iceberg's JdbcCatalog, reads them: an incremental model partitioned by day (built once in full,
then incrementally) and a table model with typed columns. Embedded and cluster deployments, as test_spark.py.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from decimal import Decimal

import pytest
from pyspark.sql import SparkSession
from pyspark.sql.types import DateType, DecimalType, DoubleType, LongType, StringType, TimestampNTZType

from headwater.models.scheduler import ModelScheduler
from tests.engines.common import SENT, Deployment, fill_lake, ground_truth
from tests.engines.test_spark import catalog_session, collect, spark  # noqa: F401 (the module's Spark fixture)
from tests.helpers import make_settings

pytestmark = pytest.mark.spark

DAILY = """\
-- materialized: incremental
-- partition_by: day
-- lookback_days: 1
SELECT CAST(timestamp AS DATE) AS day, count(*) AS n FROM events GROUP BY 1
"""
TYPED = """\
SELECT event_id, timestamp, user_id, CAST(properties->>'$.total' AS DOUBLE) AS total,
       CAST(1.25 AS DECIMAL(10, 2)) AS price, event = 'purchase' AS bought
FROM events
"""


@pytest.fixture(scope="module")
def built(deployment: Deployment) -> Iterator[list[dict[str, object]]]:
    """The lake filled and stopped, then the models built twice (the second build of `daily` is incremental)."""
    assert fill_lake(deployment)["count"] == len(SENT)
    models = deployment.data_dir / "models"
    models.mkdir()
    (models / "daily.sql").write_text(textwrap.dedent(DAILY))
    (models / "typed.sql").write_text(textwrap.dedent(TYPED))
    settings = make_settings(deployment.data_dir, models_dir=models, **deployment.settings)
    scheduler = ModelScheduler(settings)
    try:
        runs = scheduler.run() + scheduler.run(["daily"])
    finally:
        scheduler.close()
    yield runs


def test_spark_reads_the_tables_models_built(spark: SparkSession, deployment: Deployment,  # noqa: F811
                                             built: list[dict[str, object]]) -> None:  # fmt: skip
    assert [(r["model"], r["status"], r["mode"]) for r in built] == [
        ("daily", "ok", "full"), ("typed", "ok", "full"), ("daily", "ok", "incremental")
    ]  # fmt: skip
    session = catalog_session(spark, deployment)
    daily = session.table("headwater.headwater.daily")
    assert daily.schema["day"].dataType == DateType() and daily.schema["n"].dataType == LongType()
    rows = collect(session.sql("SELECT date_format(day, 'yyyy-MM-dd'), n FROM headwater.headwater.daily ORDER BY day"))
    assert [list(r) for r in rows] == ground_truth()["days"]
    partitions = collect(session.sql("SELECT partition.day_day FROM headwater.headwater.daily.partitions"))
    assert len(partitions) == len(ground_truth()["days"])  # partitioned by day, one partition per day

    typed = session.table("headwater.headwater.typed")
    kinds = {f.name: f.dataType for f in typed.schema.fields}
    assert kinds == {"event_id": StringType(), "timestamp": TimestampNTZType(), "user_id": StringType(),
                     "total": DoubleType(), "price": DecimalType(10, 2), "bought": kinds["bought"]}  # fmt: skip
    stored = {r.event_id: r for r in collect(typed)}
    assert {k: r.timestamp for k, r in stored.items()} == {s.message_id: s.utc for s in SENT}
    assert stored["m06"].total == 12.5 and stored["m06"].bought is True and stored["m01"].bought is False
    assert stored["m01"].price == Decimal("1.25") and stored["m07"].user_id is None
