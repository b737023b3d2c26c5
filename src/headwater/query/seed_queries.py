"""The lolscale seed's three Athena queries, over `events` and over a hive-partitioned Parquet copy."""

from __future__ import annotations

# month: 'YYYY-MM'
DISTINCT_USERS_IN_MONTH = (
    "SELECT count(DISTINCT user_id) FROM events "
    "WHERE timestamp >= TIMESTAMP '{month}-01 00:00:00' "
    "AND timestamp < TIMESTAMP '{month}-01 00:00:00' + INTERVAL 1 MONTH"
)
EVENTS_BY_DAY = "SELECT CAST(timestamp AS DATE) AS day, count(*) AS events FROM events GROUP BY day ORDER BY day"
DISTINCT_USERS_BY_MONTH = (
    "SELECT year(timestamp) AS year, month(timestamp) AS month, count(DISTINCT user_id) AS users "
    "FROM events GROUP BY year, month ORDER BY year, month"
)

# The same three questions over the seed's Glue output layout: year=/month=/day= directories.
HIVE_DISTINCT_USERS_IN_MONTH = (
    "SELECT count(DISTINCT user_id) FROM {source} WHERE year = {year} AND month = {month_number}"
)
HIVE_EVENTS_BY_DAY = (
    "SELECT make_date(year, month, day) AS day, count(*) AS events FROM {source} GROUP BY year, month, day ORDER BY day"
)
HIVE_DISTINCT_USERS_BY_MONTH = (
    "SELECT year, month, count(DISTINCT user_id) AS users FROM {source} GROUP BY year, month ORDER BY year, month"
)
