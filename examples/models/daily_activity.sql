-- materialized: incremental
-- partition_by: day
-- lookback_days: 8
-- description: Events and active people per day, event and source (the reference table a BI tool reads)
SELECT
    CAST("timestamp" AS DATE) AS day,
    event,
    source,
    count(*) AS events,
    count(DISTINCT coalesce(user_id, anonymous_id)) AS people
FROM events
GROUP BY ALL
