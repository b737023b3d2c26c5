-- materialized: table
-- description: One row per day: events and distinct people over every event and source
SELECT day, sum(events) AS events, max(people) AS busiest_event_people
FROM daily_activity
GROUP BY day
ORDER BY day
