"""Reading a models directory: header configuration, dependencies, order, and every misdeclaration as a ModelError
naming the file and the model (no lake needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.core.errors import ModelError
from headwater.models.project import Project, load_project


def project(tmp_path: Path, files: dict[str, str], known: set[str] | None = None, strict: bool = True) -> Project:
    for name, sql in files.items():
        (tmp_path / name).write_text(sql)
    return load_project(tmp_path, known, strict=strict)


def test_headers_configure_a_model_and_refs_give_the_order(tmp_path: Path) -> None:
    found = load_project(tmp_path)
    assert found.models == {} and found.errors == {}
    (tmp_path / "daily.sql").write_text(
        "-- materialized: incremental\n-- partition_by: day\n-- lookback_days: 2\n-- schedule: 0 3 * * *\n"
        "-- description: per day\n-- any other comment\n"
        "WITH e AS (SELECT * FROM events) SELECT CAST(timestamp AS DATE) AS day, count(*) AS n FROM e GROUP BY 1;\n"
    )
    (tmp_path / "b_top.sql").write_text("SELECT * FROM daily JOIN persons p ON true ORDER BY n DESC LIMIT 1")
    (tmp_path / "a_last.sql").write_text("SELECT * FROM b_top UNION ALL SELECT * FROM main.daily")
    (tmp_path / "checks.toml").write_text("")
    found = load_project(tmp_path, known={"events"})
    assert list(found.models) == ["daily", "b_top", "a_last"]
    daily = found.models["daily"]
    assert daily.config() == {"materialized": "incremental", "partition_by": "day", "lookback_days": 2,
                              "schedule": "0 3 * * *", "description": "per day"}  # fmt: skip
    assert daily.refs == ("events",) and daily.deps == () and not daily.sql.endswith(";")
    assert found.models["b_top"].refs == ("daily", "persons") and found.models["b_top"].deps == ("daily",)
    assert found.models["a_last"].deps == ("b_top", "daily")
    assert found.downstream({"b_top"}) == {"b_top", "a_last"}
    assert found.models["b_top"].config()["schedule"] == "on_change"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"Bad-Name.sql": "SELECT 1"}, "Bad-Name.sql (model Bad-Name): a model name is lower case"),
        ({"events.sql": "SELECT 1"}, "events.sql (model events): events is a built-in table"),
        ({"x.sql": "-- materialized: view\nSELECT 1"}, "x.sql (model x): materialized is table or incremental"),
        ({"x.sql": "-- materialized: incremental\nSELECT 1"}, "x.sql (model x): an incremental model needs"),
        ({"x.sql": "-- schedule: every day\nSELECT 1"}, "x.sql (model x): schedule 'every day' is neither"),
        ({"x.sql": "-- lookback_days: -1\nSELECT 1"}, "x.sql (model x): lookback_days is a whole number"),
        ({"x.sql": "DELETE FROM events"}, "x.sql (model x): not one SELECT"),
        ({"x.sql": "SELECT FROM WHERE ("}, "x.sql (model x): not one SELECT"),
        ({"x.sql": "   "}, "x.sql (model x): the file is empty"),
        ({"x.sql": "SELECT * FROM x"}, "x.sql (model x): reads itself"),
        ({"x.sql": "SELECT * FROM nowhere"}, "x.sql (model x): reads nowhere, which is neither a model nor a table"),
        (
            {"a.sql": "SELECT * FROM c", "b.sql": "SELECT * FROM a", "c.sql": "SELECT * FROM b"},
            "a.sql (model a): dependency cycle a -> c -> b -> a",
        ),
        ({"a.sql": "SELECT * FROM b", "b.sql": "SELECT FROM ("}, "a.sql (model a): reads model b, which has an error"),
    ],
)
def test_each_misdeclaration_names_the_file_and_the_model(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(ModelError) as caught:
        project(tmp_path, files, known={"events"})
    assert message in str(caught.value)


def test_without_strict_the_good_models_stay_usable(tmp_path: Path) -> None:
    found = project(tmp_path, {"good.sql": "SELECT 1 AS x", "loop.sql": "SELECT * FROM loop2",
                               "loop2.sql": "SELECT * FROM loop"}, known=set(), strict=False)  # fmt: skip
    assert list(found.models) == ["good"]
    assert set(found.errors) == {"loop", "loop2"}
    with pytest.raises(ModelError, match="dependency cycle"):
        found.raise_errors()
