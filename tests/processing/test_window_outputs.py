"""final() and current() of one aggregate share its window state and report a late record once."""

from __future__ import annotations

from headwater.processing import Pipeline, TestDriver, seconds


def test_final_and_current_of_one_aggregate() -> None:
    p = Pipeline("both")
    counts = p.source("events").tumbling_window(seconds(10)).count()
    counts.final().to_stream("final")
    counts.current().to_stream("current")
    assert counts.final() is counts.final()  # asking again gives the same stream
    driver = TestDriver(p)
    for ts in (1_000, 2_000, 11_000, 500):  # the last one is late: its window closed at 10 s
        driver.send({"n": ts}, key="k", timestamp=ts)
    driver.advance_time(100_000)
    assert [v["value"] for v in driver.values("current")] == [1, 2, 1]
    assert [(v["start"], v["value"]) for v in driver.values("final")] == [(0, 2), (10_000, 1)]
    assert [row["event_time"] for row in driver.late()] == [500]
    assert len(p.outputs()["streams"]) == 2
